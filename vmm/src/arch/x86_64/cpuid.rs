//! The CPUID a vCPU reports: KVM's supported set, with this vCPU's APIC ID
//! and topology filled in.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Adjusts `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU
/// `cpu_id` of `cpu_count`: one socket, one thread per core.
pub fn patch_cpuid(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(cpu_id) << 24)
                    | (u32::from(cpu_count) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if cpu_count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_TOPOLOGY => {
                // EAX[31:26]: cores per package - 1.
                entry.eax = (entry.eax & 0x03ff_ffff) | (u32::from(cpu_count.saturating_sub(1)) << 26);
            }
            LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
                entry.edx = u32::from(cpu_id);
                match entry.index {
                    // SMT level: one thread per core.
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = 0x100;
                    }
                    // Core level: all vCPUs in one package.
                    1 => {
                        entry.eax = u32::from(cpu_count.next_power_of_two().trailing_zeros());
                        entry.ebx = u32::from(cpu_count);
                        entry.ecx = 0x200 | 1;
                    }
                    n => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = n;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn sets_apic_id_and_topology() {
        let entries = [
            kvm_cpuid_entry2 { function: 1, ebx: 0xffff_1234, ..Default::default() },
            kvm_cpuid_entry2 { function: 0xb, index: 1, ..Default::default() },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, (3 << 24) | (4 << 16) | 0x1234);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].edx, e[1].ebx, e[1].eax), (3, 4, 2));
    }
}
