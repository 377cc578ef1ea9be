//! The container process's last steps: environment, rlimits, identity and
//! the exec itself, with Docker's exit codes for exec failures.

use std::ffi::CString;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bulkhead_protocol::{Rlimit, RlimitKind};
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use thiserror::Error;

use super::user::ResolvedUser;

/// Docker's default PATH, used when the spec has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Error)]
pub enum ProcessError {
    #[error("cannot set {kind:?} to soft={soft} hard={hard}: {source}")]
    Rlimit {
        kind: RlimitKind,
        soft: u64,
        hard: u64,
        source: Errno,
    },
    #[error("cannot switch to uid {uid} gid {gid}: {step}: {source}")]
    User {
        uid: u32,
        gid: u32,
        step: &'static str,
        source: Errno,
    },
}

fn has_var(env: &[String], key: &str) -> bool {
    env.iter()
        .any(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
}

/// The process environment: the spec's, plus what Docker adds when
/// missing (PATH, HOSTNAME, HOME, and TERM for a terminal).
pub fn complete_env(
    env: &[String],
    home: Option<&str>,
    hostname: Option<&str>,
    terminal: bool,
) -> Vec<String> {
    let mut out = env.to_vec();
    if !has_var(env, "PATH") {
        out.push(format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(h) = hostname.filter(|_| !has_var(env, "HOSTNAME")) {
        out.push(format!("HOSTNAME={h}"));
    }
    if !has_var(env, "HOME") {
        out.push(format!("HOME={}", home.unwrap_or("/")));
    }
    if terminal && !has_var(env, "TERM") {
        out.push("TERM=xterm".to_string());
    }
    out
}

/// The variable through which the VMM masks CPU features for glibc.
pub const GLIBC_TUNABLES: &str = "GLIBC_TUNABLES";

/// Passes the agent's own `GLIBC_TUNABLES` (set by the VMM on the kernel
/// command line) on to the container unless the spec sets it. On PVM hosts
/// the guest kernel cannot save AVX state (no XSAVE under the emulator)
/// while guest user code still sees AVX; masking it keeps glibc's string
/// functions from using registers that leak across context switches.
pub fn inherit_tunables(env: &mut Vec<String>, agent_value: Option<String>) {
    if let Some(v) = agent_value.filter(|_| !has_var(env, GLIBC_TUNABLES)) {
        env.push(format!("{GLIBC_TUNABLES}={v}"));
    }
}

/// The value of `key` in a `KEY=value` list.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

pub fn rlimit_resource(kind: RlimitKind) -> Resource {
    match kind {
        RlimitKind::RlimitCpu => Resource::RLIMIT_CPU,
        RlimitKind::RlimitFsize => Resource::RLIMIT_FSIZE,
        RlimitKind::RlimitData => Resource::RLIMIT_DATA,
        RlimitKind::RlimitStack => Resource::RLIMIT_STACK,
        RlimitKind::RlimitCore => Resource::RLIMIT_CORE,
        RlimitKind::RlimitRss => Resource::RLIMIT_RSS,
        RlimitKind::RlimitNproc => Resource::RLIMIT_NPROC,
        RlimitKind::RlimitNofile => Resource::RLIMIT_NOFILE,
        RlimitKind::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        RlimitKind::RlimitAs => Resource::RLIMIT_AS,
        RlimitKind::RlimitLocks => Resource::RLIMIT_LOCKS,
        RlimitKind::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        RlimitKind::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        RlimitKind::RlimitNice => Resource::RLIMIT_NICE,
        RlimitKind::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        RlimitKind::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Sets the limits in order; on failure, the index of the one refused.
/// Allocation-free.
pub fn apply_rlimits(rlimits: &[Rlimit]) -> Result<(), (usize, Errno)> {
    for (i, r) in rlimits.iter().enumerate() {
        setrlimit(rlimit_resource(r.kind), r.soft, r.hard).map_err(|e| (i, e))?;
    }
    Ok(())
}

pub fn rlimit_error(r: &Rlimit, source: Errno) -> ProcessError {
    ProcessError::Rlimit {
        kind: r.kind,
        soft: r.soft,
        hard: r.hard,
        source,
    }
}

/// The container user as the init applies it, prepared by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<Gid>,
}

impl From<&ResolvedUser> for Identity {
    fn from(user: &ResolvedUser) -> Identity {
        Identity {
            uid: user.uid,
            gid: user.gid,
            groups: user
                .additional_gids
                .iter()
                .map(|&g| Gid::from_raw(g))
                .collect(),
        }
    }
}

/// The steps of [`switch_user`], named in its errors.
pub const USER_STEPS: [&str; 3] = ["setgroups", "setresgid", "setresuid"];

/// Switches to the container user. Groups go first: afterwards we would no
/// longer be allowed to change them. On failure, the index of the step in
/// [`USER_STEPS`]; allocation-free.
pub fn switch_user(id: &Identity) -> Result<(), (usize, Errno)> {
    setgroups(&id.groups).map_err(|e| (0, e))?;
    let gid = Gid::from_raw(id.gid);
    setresgid(gid, gid, gid).map_err(|e| (1, e))?;
    let uid = Uid::from_raw(id.uid);
    setresuid(uid, uid, uid).map_err(|e| (2, e))
}

pub fn user_error(id: &Identity, step: usize, source: Errno) -> ProcessError {
    ProcessError::User {
        uid: id.uid,
        gid: id.gid,
        step: USER_STEPS.get(step).copied().unwrap_or("?"),
        source,
    }
}

/// Where `arg0` is looked for, in order, like execvp(3).
pub fn exec_candidates(arg0: &str, path_var: &str) -> Vec<PathBuf> {
    if arg0.contains('/') {
        return vec![PathBuf::from(arg0)];
    }
    path_var
        .split(':')
        .map(|dir| {
            if dir.is_empty() {
                Path::new(".")
            } else {
                Path::new(dir)
            }
            .join(arg0)
        })
        .collect()
}

/// Why an exec failed, as Docker words it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    NotInPath,
    NoSuchFile,
    PermissionDenied,
    FormatError,
    Other(Errno),
}

/// How an exec failure is reported: exit code and the line written to the
/// container's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecFailure {
    pub code: i32,
    reason: Reason,
}

/// Docker's convention: 127 when there is nothing to run, 126 when there
/// is something that cannot be run.
pub fn exec_failure(errno: Errno, searched_path: bool) -> ExecFailure {
    let (code, reason) = match errno {
        Errno::ENOENT | Errno::ENOTDIR if searched_path => (127, Reason::NotInPath),
        Errno::ENOENT | Errno::ENOTDIR => (127, Reason::NoSuchFile),
        Errno::EACCES => (126, Reason::PermissionDenied),
        Errno::ENOEXEC => (126, Reason::FormatError),
        other => (126, Reason::Other(other)),
    };
    ExecFailure { code, reason }
}

impl ExecFailure {
    /// Writes `bulkhead: exec "ARG0": REASON` without allocating.
    pub fn write_message(&self, arg0: &str, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "bulkhead: exec {arg0:?}: ")?;
        match self.reason {
            Reason::NotInPath => out.write_str("executable file not found in $PATH"),
            Reason::NoSuchFile => out.write_str("no such file or directory"),
            Reason::PermissionDenied => out.write_str("permission denied"),
            Reason::FormatError => out.write_str("exec format error"),
            Reason::Other(e) => e
                .desc()
                .chars()
                .try_for_each(|c| out.write_char(c.to_ascii_lowercase())),
        }
    }

    #[cfg(test)]
    pub fn message(&self, arg0: &str) -> String {
        let mut s = String::new();
        let _ = self.write_message(arg0, &mut s);
        s
    }
}

/// Everything an exec needs, built by the agent: the container's init
/// only passes pointers to execve.
pub struct ExecPlan {
    arg0: String,
    searched: bool,
    candidates: Vec<CString>,
    // Own the strings `argv`/`envp` point into; a CString's buffer does
    // not move when the CString does.
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl std::fmt::Debug for ExecPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecPlan")
            .field("arg0", &self.arg0)
            .field("candidates", &self.candidates)
            .finish_non_exhaustive()
    }
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

impl ExecPlan {
    /// `args` must not be empty (the spec was validated).
    pub fn new(args: Vec<CString>, env: Vec<CString>, path_var: &str) -> ExecPlan {
        let arg0 = args
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default();
        let candidates = exec_candidates(&arg0, path_var)
            .iter()
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect();
        ExecPlan {
            searched: !arg0.contains('/'),
            arg0,
            candidates,
            argv: pointers(&args),
            envp: pointers(&env),
            _args: args,
            _env: env,
        }
    }

    pub fn arg0(&self) -> &str {
        &self.arg0
    }

    /// Execs the process; returns only on failure, without allocating.
    /// Tries every PATH entry like execvp(3): a "permission denied" along
    /// the way wins over a final "not found", any other error stops the
    /// search.
    pub fn exec(&self) -> ExecFailure {
        let mut seen_eacces = false;
        let mut last = Errno::ENOENT;
        for path in &self.candidates {
            // SAFETY: `path` is NUL-terminated; argv/envp are
            // null-terminated arrays of pointers into strings `self` owns.
            unsafe { libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
            let err = Errno::last();
            match err {
                Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE | Errno::ENAMETOOLONG => {}
                Errno::EACCES => seen_eacces = true,
                other => return exec_failure(other, self.searched),
            }
            last = err;
        }
        let errno = if seen_eacces { Errno::EACCES } else { last };
        exec_failure(errno, self.searched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunables_are_inherited_unless_set() {
        let mut env = vec!["A=1".to_string()];
        inherit_tunables(&mut env, Some("glibc.cpu.hwcaps=-AVX".into()));
        assert_eq!(env, ["A=1", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX"]);
        let mut env = vec!["GLIBC_TUNABLES=mine".to_string()];
        inherit_tunables(&mut env, Some("glibc.cpu.hwcaps=-AVX".into()));
        assert_eq!(env, ["GLIBC_TUNABLES=mine"]);
        let mut env = vec![];
        inherit_tunables(&mut env, None);
        assert!(env.is_empty());
    }

    #[test]
    fn env_gets_docker_defaults() {
        let env = complete_env(&["A=1".into()], Some("/root"), Some("box"), true);
        assert_eq!(
            env,
            [
                "A=1".to_string(),
                format!("PATH={DEFAULT_PATH}"),
                "HOSTNAME=box".into(),
                "HOME=/root".into(),
                "TERM=xterm".into()
            ]
        );
        let given = vec![
            "PATH=/bin".to_string(),
            "HOME=/h".into(),
            "HOSTNAME=x".into(),
            "TERM=vt100".into(),
        ];
        assert_eq!(
            complete_env(&given, Some("/root"), Some("box"), true),
            given
        );
        let env = complete_env(&[], None, None, false);
        assert_eq!(env, [format!("PATH={DEFAULT_PATH}"), "HOME=/".into()]);
    }

    #[test]
    fn env_lookup() {
        let env = vec!["PATH=/a:/b".to_string(), "X=y=z".into()];
        assert_eq!(env_value(&env, "PATH"), Some("/a:/b"));
        assert_eq!(env_value(&env, "X"), Some("y=z"));
        assert_eq!(env_value(&env, "PAT"), None);
    }

    #[test]
    fn candidates_follow_execvp() {
        assert_eq!(exec_candidates("./run", "/bin"), [PathBuf::from("./run")]);
        assert_eq!(
            exec_candidates("/bin/sh", "/usr/bin"),
            [PathBuf::from("/bin/sh")]
        );
        assert_eq!(
            exec_candidates("ls", "/usr/bin::/bin"),
            [
                PathBuf::from("/usr/bin/ls"),
                PathBuf::from("./ls"),
                PathBuf::from("/bin/ls")
            ]
        );
    }

    #[test]
    fn exec_error_codes() {
        let f = exec_failure(Errno::ENOENT, true);
        assert_eq!(f.code, 127);
        assert_eq!(
            f.message("nope"),
            "bulkhead: exec \"nope\": executable file not found in $PATH"
        );
        assert_eq!(exec_failure(Errno::ENOENT, false).code, 127);
        assert!(exec_failure(Errno::ENOENT, false)
            .message("/x")
            .contains("no such file"));
        assert_eq!(exec_failure(Errno::EACCES, false).code, 126);
        assert_eq!(exec_failure(Errno::ENOEXEC, false).code, 126);
        let busy = exec_failure(Errno::ETXTBSY, false);
        assert_eq!(busy.code, 126);
        assert_eq!(busy.message("/f"), "bulkhead: exec \"/f\": text file busy");
    }

    fn plan(arg0: &str, path_var: &str) -> ExecPlan {
        ExecPlan::new(vec![CString::new(arg0).unwrap()], vec![], path_var)
    }

    #[test]
    fn exec_reports_missing_and_unrunnable_files() {
        // Failing execs return without replacing the test process.
        let f = plan("definitely-not-a-command", "/nonexistent:/also-missing").exec();
        assert_eq!(f.code, 127);
        assert_eq!(plan("/etc/passwd", DEFAULT_PATH).exec().code, 126);
        assert_eq!(plan("/", DEFAULT_PATH).exec().code, 126);
        assert_eq!(plan("/", DEFAULT_PATH).arg0(), "/");
    }

    #[test]
    fn every_rlimit_kind_maps() {
        assert_eq!(
            rlimit_resource(RlimitKind::RlimitNofile),
            Resource::RLIMIT_NOFILE
        );
        assert_eq!(
            rlimit_resource(RlimitKind::RlimitRttime),
            Resource::RLIMIT_RTTIME
        );
    }
}
