//! What the jailed VMM gives up once its VM is built and before the guest
//! runs: root (for a uid and gid of its own, with no groups), every
//! capability (effective, permitted, inheritable, ambient and the
//! bounding set), the right to gain any back (`no_new_privs`), being
//! traced or dumped, and more than a VMM's share of descriptors and
//! threads.

use std::io;

use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

/// Jail ids are this plus the VMM's host pid: distinct for every live VM
/// without a registry, above any range hosts give users and subordinate
/// ids, and below 2^31.
pub const ID_BASE: u32 = 2_000_000_000;

/// Enough for the VM's devices and the host's vsock connections.
const MAX_FILES: u64 = 4096;
/// Tasks of the jail's uid: the VMM's threads (vCPUs, event loop,
/// populate), never a process.
const MAX_TASKS: u64 = 256;

#[derive(Debug, thiserror::Error)]
#[error("cannot drop the VMM's privileges ({step}): {source}")]
pub struct DropError {
    step: &'static str,
    source: io::Error,
}

fn step<T, E: Into<io::Error>>(step: &'static str, r: Result<T, E>) -> Result<T, DropError> {
    r.map_err(|e| DropError {
        step,
        source: e.into(),
    })
}

fn errno(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Becomes `id`:`id` with nothing else. Called with only the calling
/// thread alive, so every thread started later inherits it.
pub fn drop_to(id: u32) -> Result<(), DropError> {
    step("bounding set", drop_bounding_set())?;
    step("groups", setgroups(&[]))?;
    step(
        "gid",
        setresgid(Gid::from_raw(id), Gid::from_raw(id), Gid::from_raw(id)),
    )?;
    // Without SECBIT_KEEP_CAPS (never set here) this empties the
    // permitted, effective and ambient sets.
    step(
        "uid",
        setresuid(Uid::from_raw(id), Uid::from_raw(id), Uid::from_raw(id)),
    )?;
    step("inheritable", clear_inheritable())?;
    // SAFETY: prctl with integer arguments only changes this process's flags.
    step(
        "no_new_privs",
        errno(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
    )?;
    // SAFETY: as above.
    step(
        "dumpable",
        errno(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }),
    )?;
    step(
        "file limit",
        setrlimit(Resource::RLIMIT_NOFILE, MAX_FILES, MAX_FILES),
    )?;
    step(
        "task limit",
        setrlimit(Resource::RLIMIT_NPROC, MAX_TASKS, MAX_TASKS),
    )?;
    Ok(())
}

/// Every capability out of the bounding set (the kernel's last one ends
/// the loop with EINVAL).
fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINVAL) if cap > 0 => Ok(()),
                _ => Err(e),
            };
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn clear_inheritable() -> io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads a version-3 header and two data structs, both
    // valid for the call; all-zero sets only ever lower privileges.
    errno(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int)
}
