//! OCI `linux.seccomp` compiled on the host into the classic-BPF program
//! that the guest's init installs: the guest has no libseccomp, and
//! compiling here makes a bad profile fail before a VM is started.
//!
//! The translation follows runc's, so that a profile made for Docker or
//! podman means the same here: names unknown to libseccomp are skipped,
//! rules whose action is the default one are dropped, errno defaults to
//! EPERM, comparisons of distinct arguments are ANDed in one rule and
//! repeated comparisons of one argument become one rule each (ORed).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use libseccomp::error::SeccompError as LibError;
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag,
    LinuxSeccompOperator, LinuxSyscall,
};
use thiserror::Error;

/// The size of one `struct sock_filter`.
const INSN_LEN: usize = 8;

/// The kernel clamps a larger SECCOMP_RET_ERRNO datum to this (MAX_ERRNO),
/// and libseccomp truncates past 16 bits: neither returns what was asked.
const MAX_ERRNO: u32 = 4095;

/// seccomp(2) compares six arguments, numbered from 0.
const MAX_ARGS: usize = 6;

/// Why a `linux.seccomp` section cannot be compiled. `rule` is the position
/// of the entry in `linux.seccomp.syscalls`. Unknown action, flag, operator
/// and architecture names never get here: oci-spec's closed enums refuse
/// them when the configuration is parsed, naming the value.
#[derive(Debug, Error)]
pub enum SeccompError {
    #[error(
        "seccomp: SCMP_ACT_NOTIFY (in {place}) is not supported: \
         there is no seccomp notify agent for the guest"
    )]
    Notify { place: String },
    #[error(
        "seccomp: listenerPath {0:?} is not supported: \
         there is no seccomp notify agent for the guest"
    )]
    ListenerPath(PathBuf),
    #[error(
        "seccomp: flag {0} cannot be honoured: it is a flag of the seccomp(2) call, \
         not part of the BPF program that the guest's init installs"
    )]
    Flag(LinuxSeccompFilterFlag),
    #[error("seccomp: architecture {arch} cannot be added to an x86_64 filter: {cause}")]
    Architecture { arch: Arch, cause: LibError },
    #[error("seccomp: errnoRet {value} of {place} is larger than the largest errno, {MAX_ERRNO}")]
    Errno { place: String, value: u32 },
    #[error(
        "seccomp: errnoRet {value} of {place} is too large for SCMP_ACT_TRACE (at most 65535)"
    )]
    TraceValue { place: String, value: u32 },
    #[error("seccomp: syscalls[{rule}] has an empty syscall name")]
    EmptyName { rule: usize },
    #[error(
        "seccomp: syscalls[{rule}] compares argument {index}: a syscall has only \
         {MAX_ARGS} (indexes 0 to 5)"
    )]
    ArgIndex { rule: usize, index: usize },
    #[error("seccomp: syscalls[{rule}] ({name}) is refused by libseccomp: {cause}")]
    Rule {
        rule: usize,
        name: String,
        cause: LibError,
    },
    #[error("seccomp: libseccomp failed to {step}: {cause}")]
    Library { step: &'static str, cause: LibError },
    #[error("seccomp: cannot keep the exported program in memory: {0}")]
    Buffer(std::io::Error),
    #[error("seccomp: the exported program is {0} bytes, not whole 8-byte instructions")]
    Length(usize),
}

/// Compiles OCI `linux.seccomp` into a classic-BPF program: the bytes of a
/// `struct sock_filter` array for x86_64, ready for SECCOMP_SET_MODE_FILTER.
pub fn compile(seccomp: &LinuxSeccomp) -> Result<Vec<u8>, SeccompError> {
    refuse_what_cannot_be_honoured(seccomp)?;

    let default = action(
        seccomp.default_action(),
        seccomp.default_errno_ret(),
        "defaultAction",
    )?;
    // The context starts with the native architecture, x86_64 like the
    // guest's, so the program always covers it.
    let mut ctx = ScmpFilterContext::new(default).map_err(|cause| SeccompError::Library {
        step: "create a filter",
        cause,
    })?;
    for &arch in seccomp.architectures().iter().flatten() {
        ctx.add_arch(scmp_arch(arch))
            .map_err(|cause| SeccompError::Architecture { arch, cause })?;
    }
    for (rule, syscall) in seccomp.syscalls().iter().flatten().enumerate() {
        add_rules(&mut ctx, rule, syscall, default)?;
    }
    export(&ctx)
}

/// Checked before anything is built, so that the error names the
/// configuration's problem rather than whatever libseccomp trips on.
fn refuse_what_cannot_be_honoured(seccomp: &LinuxSeccomp) -> Result<(), SeccompError> {
    if let Some(path) = seccomp.listener_path() {
        return Err(SeccompError::ListenerPath(path.clone()));
    }
    if seccomp.default_action() == LinuxSeccompAction::ScmpActNotify {
        return Err(SeccompError::Notify {
            place: "defaultAction".into(),
        });
    }
    for (rule, syscall) in seccomp.syscalls().iter().flatten().enumerate() {
        if syscall.action() == LinuxSeccompAction::ScmpActNotify {
            return Err(SeccompError::Notify {
                place: format!("syscalls[{rule}] ({})", syscall.names().join(", ")),
            });
        }
    }
    for &flag in seccomp.flags().iter().flatten() {
        match flag {
            // Synchronising the other threads is moot: the init that
            // installs the filter has no other thread.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => {}
            // libseccomp keeps these as attributes that only its own
            // seccomp_load passes to the kernel; the exported program
            // carries no trace of them, and the protocol has no field to
            // carry them beside it.
            LinuxSeccompFilterFlag::SeccompFilterFlagLog
            | LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                return Err(SeccompError::Flag(flag))
            }
        }
    }
    Ok(())
}

/// `errno_ret` defaults to EPERM, as in runc, for SCMP_ACT_ERRNO and
/// SCMP_ACT_TRACE; the other actions carry no value and ignore it.
fn action(
    action: LinuxSeccompAction,
    errno_ret: Option<u32>,
    place: &str,
) -> Result<ScmpAction, SeccompError> {
    let value = errno_ret.unwrap_or(libc::EPERM as u32);
    Ok(match action {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            if value > MAX_ERRNO {
                return Err(SeccompError::Errno {
                    place: place.into(),
                    value,
                });
            }
            ScmpAction::Errno(value as i32)
        }
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(u16::try_from(value).map_err(|_| SeccompError::TraceValue {
                place: place.into(),
                value,
            })?)
        }
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        // Refused with its place named before any action is translated.
        LinuxSeccompAction::ScmpActNotify => {
            return Err(SeccompError::Notify {
                place: place.into(),
            })
        }
    })
}

fn scmp_arch(arch: Arch) -> ScmpArch {
    match arch {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
    }
}

fn add_rules(
    ctx: &mut ScmpFilterContext,
    rule: usize,
    syscall: &LinuxSyscall,
    default: ScmpAction,
) -> Result<(), SeccompError> {
    let place = format!("syscalls[{rule}]");
    let act = action(syscall.action(), syscall.errno_ret(), &place)?;
    let groups = comparisons(rule, syscall.args().as_deref().unwrap_or_default())?;
    // libseccomp refuses a rule that repeats the default action, and such
    // a rule changes nothing; profiles have them (Docker's ERRNO rules
    // under an ERRNO default).
    if act == default {
        return Ok(());
    }
    for name in syscall.names() {
        if name.is_empty() {
            return Err(SeccompError::EmptyName { rule });
        }
        // Profiles list every architecture's names (Docker's has
        // arm_fadvise64_64, s390_pci_mmio_read, ...) and names newer than
        // this libseccomp; runc skips what it cannot resolve, and so do we.
        let Ok(nr) = ScmpSyscall::from_name(name) else {
            continue;
        };
        let added = if groups.is_empty() {
            ctx.add_rule(act, nr).map(|_| ())
        } else {
            groups
                .iter()
                .try_for_each(|cmps| ctx.add_rule_conditional(act, nr, cmps).map(|_| ()))
        };
        added.map_err(|cause| SeccompError::Rule {
            rule,
            name: name.clone(),
            cause,
        })?;
    }
    Ok(())
}

/// The comparisons of one entry, as the conditions of the rules to add:
/// one rule with all of them when each argument is compared once (ANDed),
/// else one rule per comparison (ORed), since libseccomp compares an
/// argument at most once per rule. This is runc's reading of the spec.
fn comparisons(
    rule: usize,
    args: &[LinuxSeccompArg],
) -> Result<Vec<Vec<ScmpArgCompare>>, SeccompError> {
    let mut seen = [false; MAX_ARGS];
    let mut repeated = false;
    let mut cmps = Vec::with_capacity(args.len());
    for arg in args {
        let index = arg.index();
        if index >= MAX_ARGS {
            return Err(SeccompError::ArgIndex { rule, index });
        }
        repeated |= std::mem::replace(&mut seen[index], true);
        cmps.push(compare(arg));
    }
    Ok(match (cmps.is_empty(), repeated) {
        (true, _) => Vec::new(),
        (false, false) => vec![cmps],
        (false, true) => cmps.into_iter().map(|cmp| vec![cmp]).collect(),
    })
}

fn compare(arg: &LinuxSeccompArg) -> ScmpArgCompare {
    let op = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI puts the mask in `value` and the masked datum in `valueTwo`
        // (Docker's clone rule: value = the CLONE_NEW* bits, valueTwo = 0).
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            return ScmpArgCompare::new(
                arg.index() as u32,
                ScmpCompareOp::MaskedEqual(arg.value()),
                arg.value_two().unwrap_or(0),
            )
        }
    };
    ScmpArgCompare::new(arg.index() as u32, op, arg.value())
}

/// seccomp_export_bpf writes to a file descriptor (the in-memory export
/// needs libseccomp 2.6; Debian 12 has 2.5): a memfd keeps it off disk.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    let fd = memfd_create(c"bulkhead-seccomp", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|errno| SeccompError::Buffer(errno.into()))?;
    let mut file = File::from(fd);
    ctx.export_bpf(&file)
        .map_err(|cause| SeccompError::Library {
            step: "export the program",
            cause,
        })?;
    let mut program = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut program))
        .map_err(SeccompError::Buffer)?;
    if program.is_empty() || program.len() % INSN_LEN != 0 {
        return Err(SeccompError::Length(program.len()));
    }
    Ok(program)
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

    use super::*;

    /// AUDIT_ARCH_I386: the k of the program's architecture check.
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;

    fn rule(names: &[&str], action: LinuxSeccompAction, errno: Option<u32>) -> LinuxSyscall {
        let mut b = LinuxSyscallBuilder::default()
            .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .action(action);
        if let Some(errno) = errno {
            b = b.errno_ret(errno);
        }
        b.build().unwrap()
    }

    fn arg(
        index: usize,
        op: LinuxSeccompOperator,
        value: u64,
        two: Option<u64>,
    ) -> LinuxSeccompArg {
        let mut b = LinuxSeccompArgBuilder::default()
            .index(index)
            .op(op)
            .value(value);
        if let Some(two) = two {
            b = b.value_two(two);
        }
        b.build().unwrap()
    }

    fn with_args(mut syscall: LinuxSyscall, args: Vec<LinuxSeccompArg>) -> LinuxSyscall {
        syscall.set_args(Some(args));
        syscall
    }

    fn profile(default: LinuxSeccompAction, syscalls: Vec<LinuxSyscall>) -> LinuxSeccomp {
        LinuxSeccompBuilder::default()
            .default_action(default)
            .syscalls(syscalls)
            .build()
            .unwrap()
    }

    /// The program as (code, jt, jf, k) instructions, checking its length.
    fn insns(program: &[u8]) -> Vec<libc::sock_filter> {
        assert_eq!(program.len() % INSN_LEN, 0, "{} bytes", program.len());
        program
            .chunks_exact(INSN_LEN)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect()
    }

    fn has_k(program: &[u8], k: u32) -> bool {
        insns(program).iter().any(|i| i.k == k)
    }

    /// The shape of Docker's and podman's default profile as runc receives
    /// it on an x86_64 host, cut down to a few names.
    fn docker_like(extra_names: &[&str]) -> LinuxSeccomp {
        let mut allowed = vec![
            "accept4",
            "arch_prctl",
            "brk",
            "close",
            "execve",
            "exit_group",
            "mmap",
            "openat",
            "read",
            "write",
            // Other architectures' names, which x86_64 lacks.
            "arm_fadvise64_64",
            "socketcall",
        ];
        allowed.extend_from_slice(extra_names);
        let mut seccomp = profile(
            LinuxSeccompAction::ScmpActErrno,
            vec![
                rule(&allowed, LinuxSeccompAction::ScmpActAllow, None),
                // Docker's clone rule: allowed without CLONE_NEW* flags.
                with_args(
                    rule(&["clone"], LinuxSeccompAction::ScmpActAllow, None),
                    vec![arg(
                        0,
                        LinuxSeccompOperator::ScmpCmpMaskedEq,
                        0x7e02_0000,
                        Some(0),
                    )],
                ),
                rule(&["clone3"], LinuxSeccompAction::ScmpActErrno, Some(38)),
                // Repeats the default action: dropped, not refused.
                rule(&["bpf"], LinuxSeccompAction::ScmpActErrno, Some(1)),
            ],
        );
        seccomp.set_default_errno_ret(Some(1));
        seccomp.set_architectures(Some(vec![
            Arch::ScmpArchX86_64,
            Arch::ScmpArchX86,
            Arch::ScmpArchX32,
        ]));
        seccomp
    }

    #[test]
    fn docker_default_profile_shape_compiles() {
        let program = compile(&docker_like(&["bulkhead_no_such_syscall"])).unwrap();
        assert_eq!(program.len() % INSN_LEN, 0, "{} bytes", program.len());
        // Three architectures, a dozen names: far more than a bare filter.
        assert!(program.len() > 30 * INSN_LEN, "{} bytes", program.len());
        assert!(has_k(&program, AUDIT_ARCH_I386), "no i386 section");
        // The unknown name is skipped, leaving exactly the program without it.
        assert_eq!(program, compile(&docker_like(&[])).unwrap());
    }

    #[test]
    fn architectures_are_only_those_asked_for() {
        let mut seccomp = docker_like(&[]);
        seccomp.set_architectures(None);
        assert!(!has_k(&compile(&seccomp).unwrap(), AUDIT_ARCH_I386));
    }

    #[test]
    fn a_big_endian_architecture_is_refused_by_name() {
        let mut seccomp = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
        seccomp.set_architectures(Some(vec![Arch::ScmpArchS390x]));
        let err = compile(&seccomp).unwrap_err();
        assert!(matches!(err, SeccompError::Architecture { .. }), "{err:?}");
        assert!(err.to_string().contains("SCMP_ARCH_S390X"), "{err}");
    }

    #[test]
    fn allow_everything_with_no_syscalls() {
        let none = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .unwrap();
        let program = compile(&none).unwrap();
        assert!(!program.is_empty());
        assert_eq!(program.len() % INSN_LEN, 0, "{} bytes", program.len());
        // Past the architecture check, the default action is returned.
        let ret = (libc::BPF_RET | libc::BPF_K) as u16;
        assert!(
            insns(&program)
                .iter()
                .any(|i| i.code == ret && i.k == libc::SECCOMP_RET_ALLOW),
            "no SECCOMP_RET_ALLOW"
        );
        let empty = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
        assert_eq!(compile(&empty).unwrap(), program);
    }

    #[test]
    fn an_argument_comparison_is_compiled() {
        let plain = rule(&["mkdir"], LinuxSeccompAction::ScmpActErrno, Some(13));
        let compared = with_args(
            plain.clone(),
            vec![arg(1, LinuxSeccompOperator::ScmpCmpEq, 0o700, None)],
        );
        let without = compile(&profile(LinuxSeccompAction::ScmpActAllow, vec![plain])).unwrap();
        let with = compile(&profile(LinuxSeccompAction::ScmpActAllow, vec![compared])).unwrap();
        assert_eq!(with.len() % INSN_LEN, 0, "{} bytes", with.len());
        assert!(with.len() > without.len(), "the comparison left no code");
        assert!(
            has_k(&with, 0o700),
            "the compared value is not in the program"
        );
    }

    #[test]
    fn a_seventh_argument_is_refused() {
        let seccomp = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![with_args(
                rule(&["mkdir"], LinuxSeccompAction::ScmpActErrno, None),
                vec![arg(6, LinuxSeccompOperator::ScmpCmpEq, 0, None)],
            )],
        );
        let err = compile(&seccomp).unwrap_err();
        assert!(
            matches!(err, SeccompError::ArgIndex { rule: 0, index: 6 }),
            "{err:?}"
        );
    }

    #[test]
    fn notify_is_refused_by_name() {
        let default = profile(LinuxSeccompAction::ScmpActNotify, vec![]);
        let err = compile(&default).unwrap_err();
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
        assert!(err.to_string().contains("defaultAction"), "{err}");

        let in_rule = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![
                rule(&["read"], LinuxSeccompAction::ScmpActAllow, None),
                rule(&["getcwd"], LinuxSeccompAction::ScmpActNotify, None),
            ],
        );
        let err = compile(&in_rule).unwrap_err();
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
        assert!(err.to_string().contains("syscalls[1] (getcwd)"), "{err}");

        let mut listener = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
        listener.set_listener_path(Some("/run/agent.sock".into()));
        let err = compile(&listener).unwrap_err();
        assert!(matches!(err, SeccompError::ListenerPath(_)), "{err:?}");
        assert!(err.to_string().contains("/run/agent.sock"), "{err}");
    }

    #[test]
    fn flags_that_the_program_cannot_carry_are_refused() {
        for flag in [
            LinuxSeccompFilterFlag::SeccompFilterFlagLog,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow,
        ] {
            let mut seccomp = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
            seccomp.set_flags(Some(vec![flag]));
            let err = compile(&seccomp).unwrap_err();
            assert!(err.to_string().contains(&flag.to_string()), "{err}");
        }
        let mut tsync = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
        tsync.set_flags(Some(vec![LinuxSeccompFilterFlag::SeccompFilterFlagTsync]));
        let plain = profile(LinuxSeccompAction::ScmpActAllow, vec![]);
        assert_eq!(compile(&tsync).unwrap(), compile(&plain).unwrap());
    }

    /// Unknown names never reach `compile`: the parse of config.json fails,
    /// and its message names the value.
    #[test]
    fn unknown_action_flag_and_operator_fail_to_parse_by_name() {
        for (json, name) in [
            (r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#, "SCMP_ACT_BOGUS"),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_BOGUS"]}"#,
                "SECCOMP_FILTER_FLAG_BOGUS",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                   "action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_BOGUS"}]}]}"#,
                "SCMP_CMP_BOGUS",
            ),
            (
                r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_BOGUS"]}"#,
                "SCMP_ARCH_BOGUS",
            ),
        ] {
            let err = serde_json::from_str::<LinuxSeccomp>(json).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn errno_beyond_max_errno_is_refused() {
        let seccomp = profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![rule(
                &["mkdir"],
                LinuxSeccompAction::ScmpActErrno,
                Some(70000),
            )],
        );
        let err = compile(&seccomp).unwrap_err();
        assert!(err.to_string().contains("syscalls[0]"), "{err}");
        assert!(err.to_string().contains("70000"), "{err}");
    }

    /// Runs `probe` in a child under `program` and returns its exit code.
    /// The child does nothing but syscalls, as the only safe thing after a
    /// fork in the threaded test harness: everything is prepared here.
    fn exit_code_under(program: &[u8], probe: impl FnOnce() -> i32) -> i32 {
        let mut filter = insns(program);
        let fprog = libc::sock_fprog {
            len: u16::try_from(filter.len()).unwrap(),
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: the child only makes syscalls (prctl, seccomp, those of
        // `probe`) and leaves with _exit: it takes no lock and allocates
        // nothing, so the harness's other threads cannot leave it stuck.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers; it lets
                // an unprivileged process install a filter.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    // SAFETY: _exit ends the child without running the
                    // parent's atexit handlers or flushing its buffers.
                    unsafe { libc::_exit(100) };
                }
                // SAFETY: `fprog` points at `filter`, both alive in this
                // frame; the kernel copies the program during the call.
                let rc = unsafe {
                    libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        0,
                        &fprog as *const libc::sock_fprog,
                    )
                };
                if rc != 0 {
                    // SAFETY: as above.
                    unsafe { libc::_exit(101) };
                }
                let code = probe();
                // SAFETY: as above.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("the child did not exit: {other:?}"),
            },
        }
    }

    fn c_path(path: &Path) -> CString {
        CString::new(path.as_os_str().as_bytes()).unwrap()
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn a_compiled_filter_loads_and_denies_mkdir() {
        let dir = tempfile::tempdir().unwrap();
        let denied = c_path(&dir.path().join("denied"));
        let allowed = c_path(&dir.path().join("allowed"));
        let program = compile(&profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![rule(
                &["mkdir", "mkdirat"],
                LinuxSeccompAction::ScmpActErrno,
                None,
            )],
        ))
        .unwrap();

        let code = exit_code_under(&program, || {
            // SAFETY: `denied` is a NUL-terminated path that outlives the call.
            if unsafe { libc::mkdir(denied.as_ptr(), 0o755) } == 0 {
                return 1;
            }
            if errno() != libc::EPERM {
                return 2;
            }
            // Everything else is allowed: a file can still be made.
            // SAFETY: as above, for `allowed`.
            let fd = unsafe { libc::open(allowed.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
            if fd < 0 {
                return 3;
            }
            0
        });
        assert_eq!(
            code, 0,
            "1: mkdir succeeded, 2: not EPERM, 3: open denied, 10x: install"
        );
        assert!(!dir.path().join("denied").exists());
        assert!(dir.path().join("allowed").exists());
    }

    /// The comparisons mean what runc makes of them: mask in `value`,
    /// repeated arguments ORed, distinct arguments ANDed.
    #[test]
    fn a_compiled_filter_compares_arguments_as_runc_does() {
        use LinuxSeccompOperator::{ScmpCmpEq, ScmpCmpMaskedEq};
        let mkdir = |errno| rule(&["mkdir"], LinuxSeccompAction::ScmpActErrno, Some(errno));
        let program = compile(&profile(
            LinuxSeccompAction::ScmpActAllow,
            vec![
                with_args(
                    mkdir(libc::EACCES as u32),
                    vec![arg(1, ScmpCmpMaskedEq, 0o777, Some(0o700))],
                ),
                with_args(
                    mkdir(libc::EROFS as u32),
                    vec![
                        arg(1, ScmpCmpEq, 0o711, None),
                        arg(1, ScmpCmpEq, 0o733, None),
                    ],
                ),
                // Never true: the path is not NULL.
                with_args(
                    mkdir(libc::ENOSPC as u32),
                    vec![arg(1, ScmpCmpEq, 0o744, None), arg(0, ScmpCmpEq, 0, None)],
                ),
            ],
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<CString> = (0..6)
            .map(|i| c_path(&dir.path().join(i.to_string())))
            .collect();
        // (mode, the errno expected, 0 for success); a full register, as
        // the filter compares all 64 bits and a variadic int leaves the
        // upper half undefined.
        let cases: [(libc::c_ulong, i32); 6] = [
            (0o700, libc::EACCES),
            (0o1700, libc::EACCES),
            (0o711, libc::EROFS),
            (0o733, libc::EROFS),
            (0o744, 0),
            (0o755, 0),
        ];

        let code = exit_code_under(&program, || {
            for (step, ((mode, want), path)) in cases.iter().zip(&paths).enumerate() {
                // The raw syscall, so that the compared arguments are
                // mkdir's whatever libc's mkdir calls.
                // SAFETY: `path` is a NUL-terminated path that outlives the call.
                let rc = unsafe { libc::syscall(libc::SYS_mkdir, path.as_ptr(), *mode) };
                let got = if rc == 0 { 0 } else { errno() };
                if got != *want {
                    return step as i32 + 1;
                }
            }
            0
        });
        assert_eq!(
            code,
            0,
            "case {} of {cases:?} failed (10x: install)",
            code - 1
        );
    }
}
