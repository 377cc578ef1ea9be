//! The Intel MultiProcessor table. With no ACPI in the guest, this is how
//! the kernel learns how many CPUs there are and where the IOAPIC is.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_DEFAULT_PHYS_BASE, EBDA_START, IO_APIC_DEFAULT_PHYS_BASE, IRQ_MAX};

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
const MP_SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
/// CPUID family 6 signature and "has FPU + APIC" feature flags, as QEMU and
/// Firecracker report: the kernel only checks they are non-zero.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

const BUS_ID_ISA: u8 = 0;
const MAX_CPUS: u8 = 254;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MptableError {
    /// The MP table holds at most 254 CPUs (APIC IDs 0-253, the IOAPIC takes the next).
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_CPUS})")]
    TooManyCpus(u8),
    #[error("no vCPUs")]
    NoCpus,
    #[error("cannot write the MP table into guest memory at {0:#x}")]
    Write(u64),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Serialises the configuration table (header + entries) for `cpus` CPUs.
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    for cpu in 0..cpus {
        entries.push(MP_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IO_APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        // Default polarity and trigger (ISA: active high, edge), pin == IRQ.
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, BUS_ID_ISA, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, BUS_ID_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, BUS_ID_ISA, 0, 0xff, 1]);

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(MPC_SIGNATURE);
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(MP_SPEC_REV);
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"BULKHEAD");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&(cpus as u16 + 1 + 1 + IRQ_MAX as u16 + 1 + 2).to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_PHYS_BASE.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// The 16-byte floating pointer structure the kernel scans for.
fn floating_pointer(table_addr: u32) -> [u8; 16] {
    let mut mpf = [0u8; 16];
    mpf[..4].copy_from_slice(MPF_SIGNATURE);
    mpf[4..8].copy_from_slice(&table_addr.to_le_bytes());
    mpf[8] = 1; // length in 16-byte units
    mpf[9] = MP_SPEC_REV;
    mpf[10] = checksum(&mpf);
    mpf
}

/// Writes the MP floating pointer and table at the start of the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    if cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let table_addr = EBDA_START + 16;
    mem.write_slice(
        &floating_pointer(table_addr as u32),
        GuestAddress(EBDA_START),
    )
    .map_err(|_| MptableError::Write(EBDA_START))?;
    mem.write_slice(&config_table(cpus), GuestAddress(table_addr))
        .map_err(|_| MptableError::Write(table_addr))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup_mptable(&mem, 2).unwrap();
        let mut mpf = [0u8; 16];
        mem.read_slice(&mut mpf, GuestAddress(EBDA_START)).unwrap();
        assert_eq!(&mpf[..4], b"_MP_");
        assert_eq!(sum(&mpf), 0);
        let table_addr = u32::from_le_bytes(mpf[4..8].try_into().unwrap()) as u64;
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(table_addr)).unwrap();
        assert_eq!(&hdr[..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(sum(&table), 0);
        // 2 CPUs (20 bytes each) + bus + ioapic + 24 intsrc + 2 lintsrc (8 bytes each).
        assert_eq!(len, 44 + 2 * 20 + 8 * (1 + 1 + 24 + 2));
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        // The second CPU is enabled but not the BSP.
        assert_eq!(table[44 + 20 + 3], CPU_ENABLED);
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BOOTPROCESSOR);
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        assert_eq!(setup_mptable(&mem, 0), Err(MptableError::NoCpus));
        assert_eq!(
            setup_mptable(&mem, 255),
            Err(MptableError::TooManyCpus(255))
        );
    }
}
