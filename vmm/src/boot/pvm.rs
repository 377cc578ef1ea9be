//! PVM hosts: KVM served by `kvm_pvm` (shadow paging, no VT-x/AMD-V), where
//! the guest kernel runs in KVM's instruction emulator. The guest needs
//! features it cannot emulate hidden and our SYSCALL fix turned on
//! (guest-kernel-config/patches/0003-pvm-syscall-fault.patch).

use std::path::Path;

/// The compatibility command line, kept beside the patches that need it so
/// the kernel build can check the feature bit numbers against its source.
const PVM_CMDLINE: &str = include_str!("../../../guest-kernel-config/pvm-cmdline.txt");

/// Extra parameters that only pay off under the emulator (measured in
/// guest-kernel-config/README.md):
/// * `rodata=off`: mapping kernel text read-only splits huge pages and costs
///   hundreds of emulated faults.
/// * `percpu_alloc=page`: the default "embed" first chunk takes a 2 MiB
///   (1 vCPU) or 1 MiB-per-vCPU unit from memblock and zeroes all of it;
///   4K pages allocate only the ~150 KiB per CPU that is used (~1 s saved
///   with 1 vCPU, ~1.5 s with 2).
/// * `noreplace-smp`: with one vCPU the kernel rewrites its ~4000 `lock`
///   prefixes one by one (each a serialising text poke), ~2 s here; the
///   locked forms cost next to nothing under the emulator.
const PVM_SPEED_CMDLINE: &str = "rodata=off percpu_alloc=page noreplace-smp";

/// Guest user code runs natively and sees the host's AVX through CPUID, but
/// the guest kernel runs without XSAVE (the emulator cannot execute it) and
/// so does not switch AVX register state between processes: glibc's AVX
/// string functions then corrupt each other's data. The kernel hands
/// unknown `KEY=value` parameters to init as environment; the agent passes
/// this one on to containers. Programs with their own AVX code (not glibc's
/// string functions) are not covered: that needs XSAVE in the guest.
const PVM_GLIBC_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX_Fast_Unaligned_Load,-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4";

/// Whether to add the PVM compatibility command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PvmCompat {
    /// Add it when this host is a PVM host.
    #[default]
    Auto,
    On,
    Off,
}

/// True when /dev/kvm is served by kvm_pvm.
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

impl PvmCompat {
    pub fn enabled(self) -> bool {
        match self {
            PvmCompat::Auto => host_is_pvm(),
            PvmCompat::On => true,
            PvmCompat::Off => false,
        }
    }
}

/// The parameters added on PVM hosts.
pub fn compat_cmdline() -> String {
    format!(
        "{} {} {}",
        PVM_CMDLINE.trim(),
        PVM_SPEED_CMDLINE,
        PVM_GLIBC_TUNABLES
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_line_hides_features_and_enables_syscall_fix() {
        let line = compat_cmdline();
        assert!(line.contains("noxsave"));
        assert!(line.contains("clearcpuid="));
        assert!(line.split_whitespace().any(|w| w == "pvm_syscall_fault"));
        assert!(!line.contains('\n'));
        assert!(
            line.contains("GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX_Fast_Unaligned_Load,-AVX,-AVX2,")
        );
    }

    #[test]
    fn explicit_settings_ignore_the_host() {
        assert!(PvmCompat::On.enabled());
        assert!(!PvmCompat::Off.enabled());
    }
}
