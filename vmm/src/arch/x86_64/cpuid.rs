//! The CPUID a vCPU reports: KVM's supported set, with this vCPU's APIC ID
//! and topology filled in.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
/// AMD leaf 0x80000001 ECX: "core multi-processing legacy mode" and TOPOEXT.
const AMD_ECX_CMP_LEGACY: u32 = 1 << 1;
const AMD_ECX_TOPOEXT: u32 = 1 << 22;
/// "AuthenticAMD" in leaf 0's EBX.
const AMD_VENDOR_EBX: u32 = 0x6874_7541;

/// Adjusts `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU
/// `cpu_id` of `cpu_count`: one socket, one thread per core.
pub fn patch_cpuid(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) {
    let is_amd = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == 0 && e.ebx == AMD_VENDOR_EBX);
    // Bits of the APIC ID that number cores within the package.
    let core_bits = u32::from(cpu_count).next_power_of_two().trailing_zeros();
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
                entry.eax =
                    (entry.eax & 0x03ff_ffff) | (u32::from(cpu_count.saturating_sub(1)) << 26);
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
                        entry.eax = core_bits;
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
            // AMD derives packages from these leaves, not from leaf 0xb.
            // KVM hands them over zeroed, which makes every vCPU a package
            // of its own and stalls secondary CPU bring-up.
            LEAF_AMD_FEATURES if is_amd => {
                entry.ecx |= AMD_ECX_TOPOEXT;
                if cpu_count > 1 {
                    entry.ecx |= AMD_ECX_CMP_LEGACY;
                } else {
                    entry.ecx &= !AMD_ECX_CMP_LEGACY;
                }
            }
            LEAF_AMD_SIZES if is_amd => {
                // ECX[15:12] APIC ID core bits, ECX[7:0] cores - 1.
                entry.ecx = (entry.ecx & !0xf0ff)
                    | (core_bits << 12)
                    | u32::from(cpu_count.saturating_sub(1));
            }
            LEAF_AMD_TOPOLOGY if is_amd => {
                // Extended APIC ID; core ID with one thread per core; node 0
                // of one node per package.
                entry.eax = u32::from(cpu_id);
                entry.ebx = u32::from(cpu_id);
                entry.ecx = 0;
                entry.edx = 0;
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
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xffff_1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, (3 << 24) | (4 << 16) | 0x1234);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].edx, e[1].ebx, e[1].eax), (3, 4, 2));
    }

    #[test]
    fn amd_topology_leaves_make_one_package() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0,
                ebx: AMD_VENDOR_EBX,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_FEATURES,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_SIZES,
                ecx: 0x1_0000,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_TOPOLOGY,
                ecx: 0x55,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut cpuid, 2, 3);
        let e = cpuid.as_slice();
        assert_eq!(e[1].ecx, AMD_ECX_TOPOEXT | AMD_ECX_CMP_LEGACY);
        // 3 cores need 2 APIC ID bits; NC = 2; other bits kept.
        assert_eq!(e[2].ecx, 0x1_0000 | (2 << 12) | 2);
        assert_eq!((e[3].eax, e[3].ebx, e[3].ecx), (2, 2, 0));
    }

    #[test]
    fn amd_leaves_untouched_on_intel() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0,
                ebx: 0x756e_6547,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: LEAF_AMD_SIZES,
                ecx: 7,
                ..Default::default()
            },
        ];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        patch_cpuid(&mut cpuid, 1, 2);
        assert_eq!(cpuid.as_slice()[1].ecx, 7);
    }
}
