//! The container's seccomp filter: a classic-BPF program the host compiled
//! from OCI `linux.seccomp`, copied by the agent into instructions (the
//! wire bytes have no alignment) and installed by the init.
//!
//! When it is installed follows runc: without no_new_privileges the kernel
//! lets only a CAP_SYS_ADMIN holder install a filter, so the init does it
//! while still fully privileged, before the bounding set shrinks and the
//! user switch; the filter must then allow what the init does afterwards
//! (prctl, setgroups, setresgid, setresuid, capset, mkdir, chdir, umask,
//! rt_sigprocmask, rt_sigaction, getrusage, execve). With
//! no_new_privileges it is the last step before execve.

use nix::errno::Errno;
use thiserror::Error;

/// `struct sock_filter`: u16 code, u8 jt, u8 jf, u32 k.
const INSN_LEN: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error(
        "seccomp_bpf is {0} bytes: not a whole, non-zero number of {INSN_LEN}-byte instructions"
    )]
    Size(usize),
    #[error("seccomp_bpf has {0} instructions; the kernel takes at most {max}", max = libc::BPF_MAXINSNS)]
    TooLong(usize),
    #[error("cannot install the seccomp filter ({len} instructions): {source}")]
    Install { len: usize, source: Errno },
}

/// A filter ready to install.
#[derive(Clone)]
pub struct Filter {
    insns: Vec<libc::sock_filter>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("len", &self.insns.len())
            .finish_non_exhaustive()
    }
}

impl Filter {
    /// Reads the native-endian `struct sock_filter` array of the spec.
    pub fn from_bytes(bytes: &[u8]) -> Result<Filter, SeccompError> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(INSN_LEN) {
            return Err(SeccompError::Size(bytes.len()));
        }
        let len = bytes.len() / INSN_LEN;
        if len > libc::BPF_MAXINSNS as usize {
            return Err(SeccompError::TooLong(len));
        }
        let insns = bytes
            .chunks_exact(INSN_LEN)
            .map(|b| libc::sock_filter {
                code: u16::from_ne_bytes([b[0], b[1]]),
                jt: b[2],
                jf: b[3],
                k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            })
            .collect();
        Ok(Filter { insns })
    }

    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// Installs the filter on the calling thread (the init is
    /// single-threaded). The kernel checks the program here: a bad one
    /// fails with EINVAL. Allocation-free.
    pub fn install(&self) -> Result<(), Errno> {
        let prog = libc::sock_fprog {
            // At most BPF_MAXINSNS, checked in `from_bytes`.
            len: self.insns.len() as libc::c_ushort,
            filter: self.insns.as_ptr().cast_mut(),
        };
        // SAFETY: seccomp(2) reads `prog` and the `len` instructions it
        // points to, all alive for the call; it keeps its own copy.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0 as libc::c_uint,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    pub fn error(&self, source: Errno) -> SeccompError {
        SeccompError::Install {
            len: self.len(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Vec<u8> {
        let mut b = code.to_ne_bytes().to_vec();
        b.extend([jt, jf]);
        b.extend(k.to_ne_bytes());
        b
    }

    #[test]
    fn bytes_become_aligned_instructions() {
        // Off by one byte: the copy must not care about alignment.
        let mut bytes = vec![0xff];
        bytes.extend(insn(0x20, 0, 0, 4));
        bytes.extend(insn(0x06, 1, 2, libc::SECCOMP_RET_ALLOW));
        let f = Filter::from_bytes(&bytes[1..]).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(
            (f.insns[0].code, f.insns[0].k),
            (0x20, 4),
            "BPF_LD|BPF_W|BPF_ABS of seccomp_data.arch"
        );
        assert_eq!(
            (f.insns[1].code, f.insns[1].jt, f.insns[1].jf, f.insns[1].k),
            (0x06, 1, 2, libc::SECCOMP_RET_ALLOW)
        );
        assert_eq!(format!("{f:?}"), "Filter { len: 2, .. }");
    }

    /// A filter failing `nrs` with EPERM on x86_64, allowing the rest.
    #[cfg(target_arch = "x86_64")]
    fn deny(nrs: &[libc::c_long]) -> Vec<u8> {
        const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
        let n = nrs.len();
        let mut p = insn(0x20, 0, 0, 4); // ld [arch]
        p.extend(insn(0x15, 1, 0, AUDIT_ARCH_X86_64)); // jeq: skip the allow
        p.extend(insn(0x06, 0, 0, libc::SECCOMP_RET_ALLOW));
        p.extend(insn(0x20, 0, 0, 0)); // ld [nr]
        for (i, nr) in nrs.iter().enumerate() {
            p.extend(insn(0x15, (n - i) as u8, 0, *nr as u32)); // jeq: to deny
        }
        p.extend(insn(0x06, 0, 0, libc::SECCOMP_RET_ALLOW));
        p.extend(insn(
            0x06,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ));
        p
    }

    /// Runs `child` in a forked process and returns its exit code: a
    /// filter must never land on the test runner.
    fn in_child(child: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only makes syscalls (prctl, seccomp, getppid)
        // and _exits; it allocates nothing and takes no locks.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = child();
                // SAFETY: leaves the forked copy without running anything
                // of the test harness.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                match nix::sys::wait::waitpid(child, None).unwrap() {
                    nix::sys::wait::WaitStatus::Exited(_, code) => code,
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn installed_filters_deny_what_they_name() {
        let f = Filter::from_bytes(&deny(&[libc::SYS_getppid])).unwrap();
        let code = in_child(|| {
            if nix::sys::prctl::set_no_new_privs().is_err() || f.install().is_err() {
                return 2;
            }
            // SAFETY: getppid takes no arguments.
            let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
            let denied = ppid == -1 && Errno::last() == Errno::EPERM;
            // SAFETY: getpid takes no arguments.
            let allowed = unsafe { libc::syscall(libc::SYS_getpid) } > 0;
            if denied && allowed {
                0
            } else {
                1
            }
        });
        assert_eq!(code, 0, "2: install failed, 1: the filter did not apply");

        // A jump past the end: the kernel's checker refuses it.
        let bad = Filter::from_bytes(&insn(0x15, 9, 9, 0)).unwrap();
        let code = in_child(|| {
            if nix::sys::prctl::set_no_new_privs().is_err() {
                return 2;
            }
            match bad.install() {
                Err(Errno::EINVAL) => 0,
                _ => 1,
            }
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn sizes_are_checked() {
        assert_eq!(Filter::from_bytes(&[]).unwrap_err(), SeccompError::Size(0));
        assert_eq!(
            Filter::from_bytes(&[0; 12]).unwrap_err(),
            SeccompError::Size(12)
        );
        let max = libc::BPF_MAXINSNS as usize;
        assert!(Filter::from_bytes(&vec![0; max * INSN_LEN]).is_ok());
        assert_eq!(
            Filter::from_bytes(&vec![0; (max + 1) * INSN_LEN]).unwrap_err(),
            SeccompError::TooLong(max + 1)
        );
        let f = Filter::from_bytes(&insn(0x06, 0, 0, 0)).unwrap();
        assert_eq!(
            f.error(Errno::EINVAL).to_string(),
            "cannot install the seccomp filter (1 instructions): EINVAL: Invalid argument"
        );
    }
}
