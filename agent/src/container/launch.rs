//! Everything the container's init needs, prepared by the agent before the
//! clone. The init runs in the agent's memory until it execs (see
//! `spawn`), so it must not allocate: every string, path, list and
//! descriptor it uses is made here, and resolving the user (which reads
//! the image's /etc/passwd) happens here too, so its errors are the reply
//! to CreateContainer.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use bulkhead_protocol::{ContainerSpec, Rlimit, TtySize, User};
use nix::errno::Errno;

use super::capabilities::{capability_sets, CapMasks};
use super::child::ChildError;
use super::fsops::FsOp;
use super::masks::PathRules;
use super::process::{
    complete_env, env_value, inherit_tunables, ExecPlan, Identity, DEFAULT_PATH, GLIBC_TUNABLES,
};
use super::seccomp::Filter;
use super::sysctl::Sysctls;
use super::user::resolve;
use crate::stdio::ChildStdio;

/// The init's whole job, as data.
#[derive(Debug)]
pub struct Launch {
    /// Its mounts in the new namespace (/proc, /sys, /dev, volume binds).
    pub plan: Vec<FsOp>,
    pub rootfs: PathBuf,
    /// The container cgroup's `cgroup.procs`, opened for writing: the init
    /// joins with one write.
    pub cgroup_procs: Option<File>,
    /// A network namespace made beforehand (lo up) for the init to join;
    /// without one the init gets a new namespace at clone.
    pub netns: Option<OwnedFd>,
    pub hostname: Option<String>,
    /// Written after the pivot, in the container's namespaces.
    pub sysctls: Sysctls,
    /// Masked and read-only paths, applied after the sysctls (which may
    /// need /proc/sys before it turns read-only).
    pub paths: PathRules,
    pub seccomp: Option<Filter>,
    pub terminal: bool,
    pub console_size: Option<TtySize>,
    /// The init's ends of the stdio pipes (`None` with a terminal).
    pub stdio: Option<ChildStdio>,
    pub rlimits: Vec<Rlimit>,
    pub identity: Identity,
    pub caps: CapMasks,
    pub no_new_privileges: bool,
    /// The working directory, and each of its ancestors below `/` in
    /// order, for creating it when missing as Docker does.
    pub cwd: CString,
    pub cwd_ancestors: Vec<CString>,
    pub exec: ExecPlan,
}

fn cstring(s: &str, field: &'static str) -> Result<CString, ChildError> {
    CString::new(s).map_err(|_| ChildError::Nul(field))
}

fn cstrings(items: &[String], field: &'static str) -> Result<Vec<CString>, ChildError> {
    items.iter().map(|s| cstring(s, field)).collect()
}

/// `/a`, `/a/b` for `/a/b/c`: the directories to create before `cwd`.
pub fn ancestors(cwd: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = PathBuf::from("/");
    let parts: Vec<Component<'_>> = Path::new(cwd).components().collect();
    for c in parts.iter().take(parts.len().saturating_sub(1)) {
        if let Component::Normal(name) = c {
            path.push(name);
            out.push(path.display().to_string());
        }
    }
    out
}

/// Opens `path` (relative) inside `root` with openat2's RESOLVE_IN_ROOT:
/// an absolute symlink in the image resolves within the image, never into
/// the agent's filesystem. `flags` and `mode` are open(2)'s.
pub fn open_in_root(root: &Path, path: &str, flags: i32, mode: u32) -> Result<File, Errno> {
    let dir =
        File::open(root).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let c_path = CString::new(path).map_err(|_| Errno::EINVAL)?;
    // SAFETY: open_how is plain data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_IN_ROOT;
    // SAFETY: openat2 reads the path and an open_how of the given size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c_path.as_ptr(),
            &how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: openat2 just returned this descriptor; nobody else owns it.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The image's `path` as text; empty when it has none.
fn read_in_root(root: &Path, path: &str) -> String {
    let mut text = String::new();
    if let Ok(mut f) = open_in_root(root, path, libc::O_RDONLY, 0) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

impl Launch {
    /// Prepares the init for `spec` in `rootfs`, which the agent has
    /// mounted already.
    pub fn prepare(
        spec: &ContainerSpec,
        rootfs: PathBuf,
        plan: Vec<FsOp>,
        cgroup_procs: Option<&Path>,
        netns: Option<OwnedFd>,
        stdio: Option<ChildStdio>,
    ) -> Result<Launch, ChildError> {
        let process = &spec.process;
        let needs_passwd =
            matches!(process.user, User::Name { .. }) || env_value(&process.env, "HOME").is_none();
        let (passwd, group) = if needs_passwd {
            (
                read_in_root(&rootfs, "etc/passwd"),
                read_in_root(&rootfs, "etc/group"),
            )
        } else {
            (String::new(), String::new())
        };
        let user = resolve(&process.user, &passwd, &group)?;
        let caps = capability_sets(process.capabilities.as_deref(), user.uid)?.masks();

        let mut env = complete_env(
            &process.env,
            user.home.as_deref(),
            spec.hostname.as_deref(),
            process.terminal,
        );
        inherit_tunables(&mut env, std::env::var(GLIBC_TUNABLES).ok());
        let path_var = env_value(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();
        let exec = ExecPlan::new(
            cstrings(&process.args, "process.args")?,
            cstrings(&env, "process.env")?,
            &path_var,
        );
        let cgroup_procs = cgroup_procs
            .map(|p| OpenOptions::new().write(true).open(p))
            .transpose()
            .map_err(ChildError::Cgroup)?;
        Ok(Launch {
            plan,
            rootfs,
            cgroup_procs,
            netns,
            hostname: spec.hostname.clone(),
            sysctls: Sysctls::new(&spec.sysctls)?,
            paths: PathRules::new(&spec.masked_paths, &spec.readonly_paths)?,
            seccomp: spec
                .seccomp_bpf
                .as_deref()
                .map(Filter::from_bytes)
                .transpose()?,
            terminal: process.terminal,
            console_size: process.console_size,
            stdio,
            rlimits: process.rlimits.clone(),
            identity: (&user).into(),
            caps,
            no_new_privileges: process.no_new_privileges,
            cwd: cstring(&process.cwd, "process.cwd")?,
            cwd_ancestors: ancestors(&process.cwd)
                .iter()
                .map(|a| cstring(a, "process.cwd"))
                .collect::<Result<_, _>>()?,
            exec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cwd_ancestors() {
        assert!(ancestors("/").is_empty());
        assert!(ancestors("/work").is_empty());
        assert_eq!(ancestors("/a/b/c"), ["/a", "/a/b"]);
        assert_eq!(ancestors("/a//b/"), ["/a"]);
    }

    #[test]
    fn image_files_resolve_inside_the_image() {
        let root = std::env::temp_dir().join(format!("bulkhead-launch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real"), "inside\n").unwrap();
        // An absolute link in the image means the image's /etc/real.
        std::os::unix::fs::symlink("/etc/real", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "etc/passwd"), "inside\n");
        // Escapes stay inside the root.
        std::os::unix::fs::symlink("../../../../../etc/hostname", root.join("etc/group")).unwrap();
        assert_eq!(read_in_root(&root, "etc/group"), "");
        assert_eq!(read_in_root(&root, "etc/missing"), "");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
