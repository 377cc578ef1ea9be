//! The allow-lists: the syscalls each kind of VMM thread makes, taken from
//! traces of cold boots, template snapshots, warm restores, disks, vsock,
//! virtio-fs and virtio-net, and nothing more. ioctl is allowed only with
//! the request numbers listed, mmap and mprotect never with PROT_EXEC,
//! signals only to this process. A new device or KVM call needs its line
//! here: the e2e suite runs with the filters on and fails until it has one.

use std::collections::BTreeMap;

use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// What any thread needs to run Rust code: memory, locks, time, logging
/// to stderr, a signal handler returning, and ending the thread.
const RUNTIME: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
];

/// The event loop: device backends on disk files, Unix sockets (vsock,
/// vhost-user), eventfds and the TAP; kicking vCPUs; writing a snapshot;
/// removing the vsock socket when the VM ends; ending the process (a
/// jailed VMM's event loop is its main thread, and its process ends with
/// the VM).
const EVENT_LOOP: &[i64] = &[
    libc::SYS_exit_group,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_ftruncate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_openat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
];

/// A vCPU: KVM_RUN, and the device registers it serves on MMIO and port
/// exits (a queue notify is an eventfd write; the console a file write).
const VCPU: &[i64] = &[libc::SYS_read, libc::SYS_sendmsg, libc::SYS_recvmsg];

/// Reading a snapshot's memory file into guest memory.
const POPULATE: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_lseek,
];

mod kvm {
    //! KVM's ioctl numbers, as `<linux/kvm.h>` defines them.
    use kvm_bindings as kb;
    use std::mem::size_of;

    const KVMIO: u64 = 0xAE;
    const fn io(nr: u64) -> u64 {
        (KVMIO << 8) | nr
    }
    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
    }
    const fn ior(nr: u64, size: usize) -> u64 {
        ioc(2, nr, size)
    }
    const fn iowr(nr: u64, size: usize) -> u64 {
        ioc(3, nr, size)
    }

    pub const CHECK_EXTENSION: u64 = io(0x03);
    pub const GET_MSR_INDEX_LIST: u64 = iowr(0x02, size_of::<kb::kvm_msr_list>());
    pub const GET_SUPPORTED_CPUID: u64 = iowr(0x05, size_of::<kb::kvm_cpuid2>());
    pub const GET_IRQCHIP: u64 = iowr(0x62, size_of::<kb::kvm_irqchip>());
    pub const GET_CLOCK: u64 = ior(0x7c, size_of::<kb::kvm_clock_data>());
    pub const RUN: u64 = io(0x80);
    pub const GET_REGS: u64 = ior(0x81, size_of::<kb::kvm_regs>());
    pub const GET_SREGS: u64 = ior(0x83, size_of::<kb::kvm_sregs>());
    pub const TRANSLATE: u64 = iowr(0x85, size_of::<kb::kvm_translation>());
    pub const GET_MSRS: u64 = iowr(0x88, size_of::<kb::kvm_msrs>());
    pub const GET_FPU: u64 = ior(0x8c, size_of::<kb::kvm_fpu>());
    pub const GET_LAPIC: u64 = ior(0x8e, size_of::<kb::kvm_lapic_state>());
    pub const GET_CPUID2: u64 = iowr(0x91, size_of::<kb::kvm_cpuid2>());
    pub const GET_MP_STATE: u64 = ior(0x98, size_of::<kb::kvm_mp_state>());
    pub const GET_VCPU_EVENTS: u64 = ior(0x9f, size_of::<kb::kvm_vcpu_events>());
    pub const GET_PIT2: u64 = ior(0x9f, size_of::<kb::kvm_pit_state2>());
    pub const GET_DEBUGREGS: u64 = ior(0xa1, size_of::<kb::kvm_debugregs>());
    pub const GET_TSC_KHZ: u64 = io(0xa3);
    pub const GET_XSAVE: u64 = ior(0xa4, size_of::<kb::kvm_xsave>());
    pub const GET_XCRS: u64 = ior(0xa6, size_of::<kb::kvm_xcrs>());
}

/// Telling the TAP which offloads the guest acked: virtio-net activation,
/// which follows the guest driver's DRIVER_OK write on a vCPU (a cold
/// boot, or a guest that resets the device).
const TUN_SET_OFFLOAD: u64 = libc::TUNSETOFFLOAD;

/// A vCPU's KVM calls: running the guest, and the registers and code
/// bytes (at the translated RIP) a failure is reported with; and the
/// TAP's offloads, set when the guest activates virtio-net.
const VCPU_IOCTLS: &[u64] = &[
    kvm::RUN,
    kvm::GET_REGS,
    kvm::GET_SREGS,
    kvm::TRANSLATE,
    TUN_SET_OFFLOAD,
];

/// The event loop's: finishing a stopped vCPU's port I/O (a device write
/// among them, so the TAP's offloads too), and everything a snapshot
/// saves; FIONBIO for sockets it accepts.
const EVENT_LOOP_IOCTLS: &[u64] = &[
    kvm::RUN,
    kvm::CHECK_EXTENSION,
    kvm::GET_MSR_INDEX_LIST,
    kvm::GET_SUPPORTED_CPUID,
    kvm::GET_IRQCHIP,
    kvm::GET_CLOCK,
    kvm::GET_REGS,
    kvm::GET_SREGS,
    kvm::GET_MSRS,
    kvm::GET_FPU,
    kvm::GET_LAPIC,
    kvm::GET_CPUID2,
    kvm::GET_MP_STATE,
    kvm::GET_VCPU_EVENTS,
    kvm::GET_PIT2,
    kvm::GET_DEBUGREGS,
    kvm::GET_TSC_KHZ,
    kvm::GET_XSAVE,
    kvm::GET_XCRS,
    libc::FIONBIO,
    TUN_SET_OFFLOAD,
];

pub fn event_loop() -> Result<Rules, BackendError> {
    let mut rules = common(&[RUNTIME, EVENT_LOOP])?;
    rules.insert(libc::SYS_ioctl, ioctl_requests(EVENT_LOOP_IOCTLS)?);
    // Guest-initiated vsock connections go to host listeners' Unix sockets.
    rules.insert(libc::SYS_socket, vec![rule(&[(0, libc::AF_UNIX as u64)])?]);
    // Kicking vCPU threads out of KVM_RUN, with this process's pid.
    rules.insert(
        libc::SYS_tgkill,
        vec![rule(&[(0, u64::from(std::process::id()))])?],
    );
    Ok(rules)
}

pub fn vcpu() -> Result<Rules, BackendError> {
    let mut rules = common(&[RUNTIME, VCPU])?;
    rules.insert(libc::SYS_ioctl, ioctl_requests(VCPU_IOCTLS)?);
    Ok(rules)
}

pub fn populate() -> Result<Rules, BackendError> {
    common(&[RUNTIME, POPULATE])
}

/// The plain syscalls of `lists`, and memory mappings that are never
/// executable (no thread of ours loads code once the VM runs).
fn common(lists: &[&[i64]]) -> Result<Rules, BackendError> {
    let mut rules: Rules = lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|&nr| (nr, Vec::new()))
        .collect();
    rules.insert(libc::SYS_mmap, vec![not_executable(2)?]);
    rules.insert(libc::SYS_mprotect, vec![not_executable(2)?]);
    Ok(rules)
}

fn not_executable(prot_arg: u8) -> Result<SeccompRule, BackendError> {
    let exec = libc::PROT_EXEC as u64;
    let condition = SeccompCondition::new(
        prot_arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(exec),
        0,
    )?;
    SeccompRule::new(vec![condition])
}

/// One rule per request number: ioctl(fd, request, ...) with any fd.
fn ioctl_requests(requests: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    requests.iter().map(|&r| rule(&[(1, r)])).collect()
}

/// A rule matching when each listed argument equals its value.
fn rule(args: &[(u8, u64)]) -> Result<SeccompRule, BackendError> {
    let conditions = args
        .iter()
        .map(|&(index, value)| {
            SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        })
        .collect::<Result<_, _>>()?;
    SeccompRule::new(conditions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers `<linux/kvm.h>` gives on x86_64, as strace prints them.
    #[test]
    fn kvm_request_numbers_match_the_kernel_header() {
        assert_eq!(kvm::RUN, 0xae80);
        assert_eq!(kvm::CHECK_EXTENSION, 0xae03);
        assert_eq!(kvm::GET_REGS, 0x8090_ae81);
        assert_eq!(kvm::GET_SREGS, 0x8138_ae83);
        assert_eq!(kvm::TRANSLATE, 0xc018_ae85);
        assert_eq!(kvm::GET_MSRS, 0xc008_ae88);
        assert_eq!(kvm::GET_LAPIC, 0x8400_ae8e);
        assert_eq!(kvm::GET_XSAVE, 0x9000_aea4);
        assert_eq!(kvm::GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(kvm::GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(kvm::GET_PIT2, 0x8070_ae9f);
    }

    #[test]
    fn every_filter_compiles() {
        for rules in [event_loop(), vcpu(), populate()] {
            let filter = seccompiler::SeccompFilter::new(
                rules.unwrap(),
                seccompiler::SeccompAction::KillProcess,
                seccompiler::SeccompAction::Allow,
                seccompiler::TargetArch::x86_64,
            )
            .unwrap();
            let bpf: seccompiler::BpfProgram = filter.try_into().unwrap();
            assert!(!bpf.is_empty());
        }
    }
}
