//! The boot GDT and its conversion into KVM segment registers.

use kvm_bindings::kvm_segment;

/// Builds a GDT entry from flags (access byte in bits 0-7, flags in 12-15 as
/// in the descriptor's high dword), a base and a limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// null, 64-bit code, data, TSS: what the kernel's startup_64 expects.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With the granularity bit set the limit counts 4 KiB pages.
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The KVM segment register that loading selector `table_index * 8` of this
/// GDT would produce.
pub fn kvm_segment_from_gdt(entry: u64, table_index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let present = bit(47);
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(table_index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64bit_present_ring0() {
        let cs = kvm_segment_from_gdt(BOOT_GDT[1], 1);
        assert_eq!(cs.selector, 8);
        assert_eq!(
            (cs.l, cs.db, cs.present, cs.dpl, cs.s, cs.g),
            (1, 0, 1, 0, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let ds = kvm_segment_from_gdt(BOOT_GDT[2], 2);
        assert_eq!((ds.selector, ds.type_, ds.db, ds.l), (16, 3, 1, 0));
        let tss = kvm_segment_from_gdt(BOOT_GDT[3], 3);
        assert_eq!((tss.selector, tss.type_, tss.s), (24, 0xb, 0));
        let null = kvm_segment_from_gdt(BOOT_GDT[0], 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let s = kvm_segment_from_gdt(e, 5);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
    }
}
