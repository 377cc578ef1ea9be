//! The jailed VMM's own process: namespaces already made by `launch`, it
//! reads its request, mounts its jail and pivots into it, builds the VM,
//! drops its privileges, reports ready and runs the VM until it ends or
//! its driver says stop (or dies).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use bulkhead_vmm::devices::virtio::net::Tap;
use bulkhead_vmm::vmm::{VmExit, Vmm};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::layout::{Bind, Layout};
use super::privileges::{self, ID_BASE};
use super::{Ended, Report, Request, CONSOLE_FD, TAP_FD};
use crate::confine;
use crate::lifecycle::vm_spec::VmFiles;

/// Where the jail's root is mounted, in the run directory (and in this
/// process's mount namespace only: the host sees an empty directory).
pub const JAIL_ROOT: &str = "jail";

/// Never returns: the process ends with the VM.
pub fn main() -> ! {
    // SAFETY: fd 0 is the pipe `launch` made for this process's requests;
    // nothing else in this process uses it.
    let mut control = File::from(unsafe { OwnedFd::from_raw_fd(0) });
    let request = match read_request(&mut control) {
        Ok(r) => r,
        Err(e) => fail(&format!("cannot read the VM's spec: {e}"), false),
    };
    let pid = host_pid();
    let id = ID_BASE + pid;
    let layout = Layout::of(&request.spec, &request.run_dir);
    if let Err(e) = enter(&layout, &request.run_dir.join(JAIL_ROOT)) {
        fail(&format!("cannot jail the VMM: {e}"), false);
    }
    let tap_name = request.spec.net.as_ref().map(|n| n.tap_name.clone());
    let mut vmm = match build(&layout, tap_name) {
        Ok(vmm) => vmm,
        Err((message, template_fault)) => fail(&message, template_fault),
    };
    if let Err(e) = privileges::drop_to(id) {
        fail(&e.to_string(), false);
    }
    vmm.stop_when_readable(control.into());
    name_thread("vmm");
    report(&Report::Ready { pid });
    let ended = match vmm.run() {
        Ok(VmExit::Stopped) => Ended::Stopped,
        Ok(VmExit::GuestShutdown | VmExit::Snapshotted) => Ended::GuestShutdown,
        Err(e) => Ended::Failed(e.to_string()),
    };
    report(&Report::Ended(ended));
    // SAFETY: _exit ends the process without running exit handlers, which
    // the event loop's seccomp filter does not allow (and which have
    // nothing to do here).
    unsafe { libc::_exit(0) }
}

/// The request line, read a byte at a time: what follows it on the pipe
/// is the stop signal, for the event loop.
fn read_request(control: &mut File) -> anyhow::Result<Request> {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while control.read(&mut byte)? == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    Ok(serde_json::from_slice(&line)?)
}

/// This process's pid on the host (it is 1 in its own namespace), read
/// while the host's /proc is still in view.
fn host_pid() -> u32 {
    std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or(0)
}

/// Mounts a tmpfs at `root` with `layout`'s binds, pivots into it and
/// leaves the host's tree behind; the new root is then read-only.
fn enter(layout: &Layout, root: &Path) -> nix::Result<()> {
    let none: Option<&str> = None;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    match std::fs::create_dir(root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io_errno(e)),
        _ => {}
    }
    let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        locked,
        Some("mode=0755,size=64k"),
    )?;
    for bind in &layout.binds {
        bind_into(root, bind)?;
    }
    std::env::set_current_dir(root).map_err(io_errno)?;
    nix::unistd::pivot_root(".", ".")?;
    umount2(".", MntFlags::MNT_DETACH)?;
    std::env::set_current_dir("/").map_err(io_errno)?;
    mount(
        none,
        "/",
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | locked,
        none,
    )
}

fn bind_into(root: &Path, bind: &Bind) -> nix::Result<()> {
    let target = root.join(bind.jail.strip_prefix("/").unwrap_or(&bind.jail));
    let made = match target.parent() {
        Some(parent) => std::fs::create_dir_all(parent),
        None => Ok(()),
    }
    .and_then(|()| {
        if bind.is_dir {
            std::fs::create_dir(&target)
        } else {
            File::create(&target).map(drop)
        }
    });
    made.map_err(io_errno)?;
    let none: Option<&str> = None;
    mount(Some(&bind.host), &target, none, MsFlags::MS_BIND, none)?;
    // The device node keeps its mount's flags; everything else may not
    // run, carry set-id bits or be a device.
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    if bind.jail != Path::new(super::layout::KVM) {
        flags |= MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    }
    if bind.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(none, &target, none, flags, none)
}

fn io_errno(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Builds (or restores) the VM of the jailed spec, with the console log
/// and TAP `launch` left open. A failure says why and whether the
/// template is to blame.
fn build(layout: &Layout, tap_name: Option<String>) -> Result<Vmm, (String, bool)> {
    let files = VmFiles {
        // SAFETY: `launch` leaves the console log open at CONSOLE_FD for
        // this process; nothing else owns it.
        console: unsafe { File::from_raw_fd(CONSOLE_FD) },
        tap: tap_name.map(|name| {
            // SAFETY: likewise the TAP at TAP_FD, when the VM has one.
            Tap::from_handed_over(unsafe { OwnedFd::from_raw_fd(TAP_FD) }, name)
        }),
    };
    let seccomp = confine::vmm_filters().map_err(|e| (format!("{e:#}"), false))?;
    let built = layout.spec.config(files, seccomp).build();
    built.map_err(|e| (e.to_string(), e.is_snapshot_fault()))
}

fn name_thread(name: &str) {
    let name = std::ffi::CString::new(name).unwrap_or_default();
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16
    // bytes, which `name` is.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
}

fn report(report: &Report) {
    let mut line = serde_json::to_vec(report).unwrap_or_default();
    line.push(b'\n');
    // Unbuffered: the line must be out before the process may end.
    let mut out = std::io::stdout().lock();
    if out.write_all(&line).and_then(|()| out.flush()).is_err() {
        // The driver is gone: nothing is left to run the VM for.
        // SAFETY: as in `main`.
        unsafe { libc::_exit(1) }
    }
}

fn fail(message: &str, template_fault: bool) -> ! {
    report(&Report::Failed {
        message: message.to_string(),
        template_fault,
    });
    // SAFETY: as in `main`.
    unsafe { libc::_exit(1) }
}
