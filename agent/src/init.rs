//! PID-1 duties: the system mounts, the console, cgroup controllers,
//! and powering off.
//!
//! If PID 1 exits the kernel panics, so nothing in here may fail hard:
//! mounts that already exist are fine, and fatal paths end in
//! [`power_off`], never in a return from `main`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use thiserror::Error;

use crate::log::agent_log;

#[derive(Debug, Error)]
pub enum InitError {
    #[error("cannot mount {fstype} on {target}: {source}")]
    Mount {
        fstype: &'static str,
        target: &'static str,
        source: Errno,
    },
}

/// One system mount made at boot.
#[derive(Debug, PartialEq, Eq)]
pub struct SystemMount {
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
}

const fn sys_mount(
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> SystemMount {
    SystemMount {
        fstype,
        target,
        flags,
        data,
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The mounts PID 1 makes, in order (/dev first: the console lives there).
pub const SYSTEM_MOUNTS: &[SystemMount] = &[
    sys_mount("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
    sys_mount("proc", "/proc", NOSUID_NODEV_NOEXEC, None),
    sys_mount("sysfs", "/sys", NOSUID_NODEV_NOEXEC, None),
    sys_mount(
        "devpts",
        "/dev/pts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("mode=0620,ptmxmode=0666"),
    ),
    sys_mount("cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, None),
    sys_mount(
        "tmpfs",
        "/run",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
];

/// The controllers containers get, when the kernel has them.
const WANTED_CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io", "cpuset"];

/// Builds the `cgroup.subtree_control` line enabling the wanted controllers
/// among those listed in `cgroup.controllers`.
pub fn subtree_control_line(available: &str) -> Option<String> {
    let enable: Vec<String> = available
        .split_whitespace()
        .filter(|c| WANTED_CONTROLLERS.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    (!enable.is_empty()).then(|| enable.join(" "))
}

/// Everything PID 1 sets up before serving. Failures of optional parts are
/// logged and skipped.
pub fn setup() -> Result<(), InitError> {
    make_root_pivotable();
    for m in SYSTEM_MOUNTS {
        // Creating a directory that exists is one cheap failing syscall,
        // cheaper than checking first.
        let _ = nix::unistd::mkdir(m.target, Mode::from_bits_truncate(0o755));
        match mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            // Already mounted (e.g. the kernel auto-mounted devtmpfs).
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(source) => {
                return Err(InitError::Mount {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
        }
        if m.target == "/dev" {
            attach_console();
        }
    }
    enable_controllers(Path::new("/sys/fs/cgroup"));
    enable_huge_pages_on_request();
    Ok(())
}

/// The kernel turns transparent huge pages off in guests under 512 MiB.
/// Measured on PVM hosts (4 MiB of anonymous memory): a program touching
/// all of it runs 4.8x faster with huge pages, one touching a page every
/// 256 KiB 7.8x slower; container starts are the sparse kind. So huge
/// pages only for memory a program asks for with madvise(MADV_HUGEPAGE).
fn enable_huge_pages_on_request() {
    let knob = "/sys/kernel/mm/transparent_hugepage/enabled";
    if let Err(e) = std::fs::write(knob, "madvise") {
        if e.kind() != std::io::ErrorKind::NotFound {
            agent_log!("cannot set {knob} to madvise: {e}");
        }
    }
}

/// The initramfs root is the namespace's root mount, which `pivot_root`
/// refuses to move. Re-rooting onto a bind mount of it (what switch_root
/// does with a real disk) gives the container setup a root it can pivot
/// away from.
fn make_root_pivotable() {
    const NEW_ROOT: &str = "/.bulkhead-root";
    let result = (|| -> nix::Result<()> {
        nix::unistd::mkdir(NEW_ROOT, Mode::from_bits_truncate(0o755))?;
        // Recursive so nothing mounted before us (nothing, in the guest)
        // disappears from view.
        mount(
            Some("/"),
            NEW_ROOT,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
        nix::unistd::chdir(NEW_ROOT)?;
        mount(
            Some(NEW_ROOT),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )?;
        nix::unistd::chroot(".")?;
        nix::unistd::chdir("/")
    })();
    match result {
        // The directory is no longer a mount point in the new root's view.
        Ok(()) => {
            let _ = std::fs::remove_dir(NEW_ROOT);
        }
        Err(e) => agent_log!("cannot re-root onto a bind mount ({e}); containers will use chroot"),
    }
}

/// Points stdin/stdout/stderr at /dev/console. The kernel only does this
/// when the initramfs ships a /dev/console node; without it fds 0-2 would
/// be closed and the first sockets opened would land on them.
fn attach_console() {
    let Ok(console) = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    let fd = console.as_raw_fd();
    for target in 0..=2 {
        if fd != target {
            // SAFETY: dup2 onto 0-2 only replaces the standard streams, which
            // no Rust object owns in this process.
            unsafe { libc::dup2(fd, target) };
        }
    }
    if fd <= 2 {
        // The console landed on a standard fd: keep it open.
        std::mem::forget(console);
    }
}

fn enable_controllers(root: &Path) {
    let Ok(available) = std::fs::read_to_string(root.join("cgroup.controllers")) else {
        agent_log!(
            "no cgroup2 at {}; containers get no resource limits",
            root.display()
        );
        return;
    };
    let Some(line) = subtree_control_line(&available) else {
        return;
    };
    let result = OpenOptions::new()
        .write(true)
        .open(root.join("cgroup.subtree_control"))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = result {
        agent_log!("cannot enable cgroup controllers {line:?}: {e}");
    }
}

/// Announces readiness on the console; the host times boot by this line.
pub fn announce_ready() {
    let line = format!("{}\n", bulkhead_protocol::READY_MARKER);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// What to write back before powering off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Every filesystem (`sync`): for fatal paths, where nobody flushed the
    /// volumes.
    All,
    /// Nothing: the volumes were flushed already.
    Skip,
}

/// Asks the kernel to reboot, which with `reboot=k` ends the VM (unless
/// the host killed it first). Never returns.
///
/// Only PID 1 reboots: started in init mode by mistake on a host, the agent
/// must not take the machine down, so it exits instead. (Inside a pid
/// namespace, reboot only ends that namespace.)
pub fn power_off(flush: Flush) -> ! {
    if std::process::id() != 1 {
        agent_log!("not PID 1: exiting instead of powering off");
        std::process::exit(1);
    }
    if flush == Flush::All {
        nix::unistd::sync();
    }
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reachable if reboot failed: PID 1 must still not exit.
    loop {
        nix::unistd::pause();
    }
}

/// Makes a panic in PID 1 log and power off instead of killing init (which
/// would panic the kernel and leave the VM hanging).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        agent_log!("fatal: {info}");
        power_off(Flush::All);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_enabled_only_when_available() {
        assert_eq!(
            subtree_control_line("cpuset cpu io memory hugetlb pids rdma misc\n").as_deref(),
            Some("+cpuset +cpu +io +memory +pids")
        );
        assert_eq!(subtree_control_line("hugetlb\n"), None);
        assert_eq!(subtree_control_line(""), None);
    }

    #[test]
    fn dev_is_mounted_first_and_pts_after_it() {
        assert_eq!(SYSTEM_MOUNTS[0].target, "/dev");
        let pos = |t: &str| SYSTEM_MOUNTS.iter().position(|m| m.target == t).unwrap();
        assert!(pos("/dev/pts") > pos("/dev"));
        assert!(pos("/sys/fs/cgroup") > pos("/sys"));
    }
}
