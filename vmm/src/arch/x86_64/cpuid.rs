//! The CPUID a vCPU reports: KVM's supported set, with this vCPU's APIC ID
//! and topology filled in, less what the host cannot serve.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_VENDOR: u32 = 0x0;
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
/// Level types in ECX[15:8] of leaves 0xb/0x1f.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// "KVMKVMKVM\0\0\0" in EBX/ECX/EDX of the hypervisor base leaf.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// Where hypervisors may put their leaves: 0x40000000 + n * 0x100.
const HYPERVISOR_LEAVES: std::ops::RangeInclusive<u32> = 0x4000_0000..=0x4000_ff00;
/// KVM paravirtual features (leaf base + 1, EAX) whose guest side makes
/// hypercalls: PV spinlock kicks, PV IPIs, yielding to a preempted vCPU.
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;
const KVM_HYPERCALL_FEATURES: u32 =
    KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD;

#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    #[error("the vCPU's CPUID does not fit in a KVM CPUID table: {0}")]
    TooManyEntries(vmm_sys_util::fam::Error),
}

/// Adjusts `cpuid` (as returned by KVM_GET_SUPPORTED_CPUID) for vCPU
/// `cpu_id` of `cpu_count`: one socket, one thread per core.
pub fn patch_cpuid(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8) -> Result<(), CpuidError> {
    let mut entries = cpuid.as_slice().to_vec();
    let vendor = entries
        .iter()
        .find(|e| e.function == LEAF_VENDOR)
        .copied()
        .unwrap_or_default();
    let is_amd = vendor.ebx == AMD_VENDOR_EBX;
    // Bits of the APIC ID that number cores within the package.
    let core_bits = u32::from(cpu_count).next_power_of_two().trailing_zeros();
    for entry in entries.iter_mut() {
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
            // AMD derives packages from these leaves (and from leaf 0xb once
            // TOPOEXT is set). KVM hands them over zeroed, which makes every
            // vCPU a package of its own.
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
    // KVM may list only sub-leaf 0 of the topology leaves (it copies what
    // the host reports). The kernel walks the sub-leaves up to the first
    // invalid one and takes the package ID from the widest level it found:
    // with the core level missing, each vCPU's APIC ID is its package ID.
    entries.retain(|e| !is_topology_leaf(e.function));
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        if leaf <= vendor.eax {
            entries.extend(topology_subleaves(leaf, cpu_id, cpu_count, core_bits));
        }
    }
    *cpuid = CpuId::from_entries(&entries).map_err(CpuidError::TooManyEntries)?;
    Ok(())
}

fn is_topology_leaf(function: u32) -> bool {
    function == LEAF_EXT_TOPOLOGY || function == LEAF_EXT_TOPOLOGY_V2
}

/// Sub-leaves 0 (SMT level: one thread per core), 1 (core level: every
/// vCPU in one package) and 2 (the invalid level that ends the list).
fn topology_subleaves(
    leaf: u32,
    cpu_id: u8,
    cpu_count: u8,
    core_bits: u32,
) -> [kvm_cpuid_entry2; 3] {
    let level = |index: u32, shift: u32, count: u32, level_type: u32| kvm_cpuid_entry2 {
        function: leaf,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: (level_type << 8) | index,
        edx: u32::from(cpu_id),
        ..Default::default()
    };
    [
        level(0, 0, 1, LEVEL_TYPE_SMT),
        level(1, core_bits, u32::from(cpu_count), LEVEL_TYPE_CORE),
        level(2, 0, 0, 0),
    ]
}

/// Stops advertising the KVM paravirtual features that make the guest
/// issue hypercalls. On a PVM host every guest kernel instruction goes
/// through KVM's instruction emulator, and the emulator never performs a
/// VMCALL/VMMCALL: it takes it for the other vendor's hypercall, rewrites it
/// to the "native" one and re-executes it, which lands in the emulator
/// again. The vCPU then spins on that instruction forever (seen as a hang
/// after the first PV IPI once a second vCPU is up). Without these bits the
/// guest uses plain APIC IPIs, which the in-kernel LAPIC handles.
pub fn hide_hypercall_features(cpuid: &mut CpuId) {
    let Some(base) = cpuid
        .as_slice()
        .iter()
        .find(|e| {
            HYPERVISOR_LEAVES.contains(&e.function)
                && e.function & 0xff == 0
                && [e.ebx, e.ecx, e.edx] == KVM_SIGNATURE
        })
        .map(|e| e.function)
    else {
        return;
    };
    for entry in cpuid.as_mut_slice() {
        if entry.function == base + 1 {
            entry.eax &= !KVM_HYPERCALL_FEATURES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL_VENDOR_EBX: u32 = 0x756e_6547;

    fn vendor(ebx: u32, max_leaf: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function: LEAF_VENDOR,
            eax: max_leaf,
            ebx,
            ..Default::default()
        }
    }

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no leaf {function:#x}.{index}"))
    }

    fn patched(entries: &[kvm_cpuid_entry2], cpu_id: u8, count: u8) -> CpuId {
        let mut cpuid = CpuId::from_entries(entries).unwrap();
        patch_cpuid(&mut cpuid, cpu_id, count).unwrap();
        cpuid
    }

    #[test]
    fn sets_apic_id_and_topology() {
        let cpuid = patched(
            &[
                vendor(INTEL_VENDOR_EBX, 0xd),
                kvm_cpuid_entry2 {
                    function: 1,
                    ebx: 0xffff_1234,
                    ..Default::default()
                },
            ],
            3,
            4,
        );
        let e = find(&cpuid, 1, 0);
        assert_eq!(e.ebx, (3 << 24) | (4 << 16) | 0x1234);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
    }

    /// Decodes leaf 0xb the way Linux's detect_extended_topology() does and
    /// returns (package ID, cores per package).
    fn linux_package(cpuid: &CpuId, leaf: u32) -> (u32, u32) {
        let smt = find(cpuid, leaf, 0);
        assert_eq!((smt.ecx >> 8) & 0xff, LEVEL_TYPE_SMT);
        let (mut shift, mut siblings) = (smt.eax & 0x1f, smt.ebx & 0xffff);
        let mut index = 1;
        loop {
            let e = cpuid
                .as_slice()
                .iter()
                .find(|e| e.function == leaf && e.index == index)
                .copied()
                .unwrap_or_default();
            assert_eq!(e.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            match (e.ecx >> 8) & 0xff {
                0 => break,
                LEVEL_TYPE_CORE => (shift, siblings) = (e.eax & 0x1f, e.ebx & 0xffff),
                _ => {}
            }
            index += 1;
        }
        (smt.edx >> shift, siblings / (smt.ebx & 0xffff))
    }

    #[test]
    fn every_vcpu_is_in_package_zero() {
        // What KVM on an AMD host hands over: leaf 0xb with sub-leaf 0 only.
        let supported = [
            vendor(AMD_VENDOR_EBX, 0x1f),
            kvm_cpuid_entry2 {
                function: LEAF_EXT_TOPOLOGY,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ebx: 1,
                ecx: 0x100,
                ..Default::default()
            },
        ];
        for count in [1u8, 2, 3, 8] {
            for id in 0..count {
                let cpuid = patched(&supported, id, count);
                for l in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
                    assert_eq!(linux_package(&cpuid, l), (0, u32::from(count)));
                    assert_eq!(find(&cpuid, l, 0).edx, u32::from(id));
                }
            }
        }
    }

    #[test]
    fn topology_leaves_only_within_the_basic_range() {
        let cpuid = patched(&[vendor(AMD_VENDOR_EBX, 0x10), leaf(0x1f, 0)], 0, 2);
        assert!(cpuid.as_slice().iter().any(|e| e.function == 0xb));
        assert!(!cpuid.as_slice().iter().any(|e| e.function == 0x1f));
    }

    #[test]
    fn amd_topology_leaves_make_one_package() {
        let cpuid = patched(
            &[
                vendor(AMD_VENDOR_EBX, 0xd),
                leaf(LEAF_AMD_FEATURES, 0),
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
            ],
            2,
            3,
        );
        assert_eq!(
            find(&cpuid, LEAF_AMD_FEATURES, 0).ecx,
            AMD_ECX_TOPOEXT | AMD_ECX_CMP_LEGACY
        );
        // 3 cores need 2 APIC ID bits; NC = 2; other bits kept.
        assert_eq!(
            find(&cpuid, LEAF_AMD_SIZES, 0).ecx,
            0x1_0000 | (2 << 12) | 2
        );
        let topo = find(&cpuid, LEAF_AMD_TOPOLOGY, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (2, 2, 0));
    }

    #[test]
    fn amd_leaves_untouched_on_intel() {
        let cpuid = patched(
            &[
                vendor(INTEL_VENDOR_EBX, 0xd),
                kvm_cpuid_entry2 {
                    function: LEAF_AMD_SIZES,
                    ecx: 7,
                    ..Default::default()
                },
            ],
            1,
            2,
        );
        assert_eq!(find(&cpuid, LEAF_AMD_SIZES, 0).ecx, 7);
    }

    #[test]
    fn full_table_is_an_error_not_a_panic() {
        let mut entries = vec![vendor(AMD_VENDOR_EBX, 0x1f)];
        entries.extend(
            (1..kvm_bindings::KVM_MAX_CPUID_ENTRIES as u32).map(|i| leaf(0x8000_0000 + i, 0)),
        );
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        assert!(matches!(
            patch_cpuid(&mut cpuid, 0, 2),
            Err(CpuidError::TooManyEntries(_))
        ));
    }

    fn kvm_leaves(base: u32, features: u32) -> Vec<kvm_cpuid_entry2> {
        vec![
            kvm_cpuid_entry2 {
                function: base,
                eax: base + 1,
                ebx: KVM_SIGNATURE[0],
                ecx: KVM_SIGNATURE[1],
                edx: KVM_SIGNATURE[2],
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: base + 1,
                eax: features,
                ..Default::default()
            },
        ]
    }

    #[test]
    fn hides_only_hypercall_features() {
        // What KVM reported on the PVM development host.
        let mut cpuid = CpuId::from_entries(&kvm_leaves(0x4000_0000, 0x0100_7efb)).unwrap();
        hide_hypercall_features(&mut cpuid);
        let eax = find(&cpuid, 0x4000_0001, 0).eax;
        assert_eq!(eax & KVM_HYPERCALL_FEATURES, 0);
        assert_eq!(eax, 0x0100_7efb & !((1 << 7) | (1 << 11) | (1 << 13)));
    }

    #[test]
    fn finds_kvm_leaves_at_another_base() {
        let mut entries = vec![kvm_cpuid_entry2 {
            function: 0x4000_0001,
            eax: u32::MAX,
            ..Default::default()
        }];
        entries.extend(kvm_leaves(0x4000_0100, u32::MAX));
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        hide_hypercall_features(&mut cpuid);
        // Not KVM's leaf: another hypervisor's, left alone.
        assert_eq!(find(&cpuid, 0x4000_0001, 0).eax, u32::MAX);
        assert_eq!(find(&cpuid, 0x4000_0101, 0).eax, !KVM_HYPERCALL_FEATURES);
    }

    #[test]
    fn no_kvm_leaves_no_change() {
        let mut features = leaf(0x4000_0001, 0);
        features.eax = u32::MAX;
        let mut cpuid = CpuId::from_entries(&[vendor(AMD_VENDOR_EBX, 1), features]).unwrap();
        hide_hypercall_features(&mut cpuid);
        assert_eq!(find(&cpuid, 0x4000_0001, 0).eax, u32::MAX);
    }
}
