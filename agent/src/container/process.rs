//! The container process's last steps: environment, rlimits, identity and
//! the exec itself, with Docker's exit codes for exec failures.

use std::ffi::CString;
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

pub fn apply_rlimits(rlimits: &[Rlimit]) -> Result<(), ProcessError> {
    for r in rlimits {
        setrlimit(rlimit_resource(r.kind), r.soft, r.hard).map_err(|source| {
            ProcessError::Rlimit {
                kind: r.kind,
                soft: r.soft,
                hard: r.hard,
                source,
            }
        })?;
    }
    Ok(())
}

/// Switches to the container user. Groups go first: afterwards we would no
/// longer be allowed to change them.
pub fn switch_user(user: &ResolvedUser) -> Result<(), ProcessError> {
    let fail = |step, source| ProcessError::User {
        uid: user.uid,
        gid: user.gid,
        step,
        source,
    };
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|&g| Gid::from_raw(g))
        .collect();
    setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    let gid = Gid::from_raw(user.gid);
    setresgid(gid, gid, gid).map_err(|e| fail("setresgid", e))?;
    let uid = Uid::from_raw(user.uid);
    setresuid(uid, uid, uid).map_err(|e| fail("setresuid", e))
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

/// How an exec failure is reported: exit code and the line written to the
/// container's stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFailure {
    pub code: i32,
    pub message: String,
}

/// Docker's convention: 127 when there is nothing to run, 126 when there
/// is something that cannot be run.
pub fn exec_failure(arg0: &str, errno: Errno, searched_path: bool) -> ExecFailure {
    let (code, reason) = match errno {
        Errno::ENOENT | Errno::ENOTDIR if searched_path => {
            (127, "executable file not found in $PATH".to_string())
        }
        Errno::ENOENT | Errno::ENOTDIR => (127, "no such file or directory".to_string()),
        Errno::EACCES => (126, "permission denied".to_string()),
        Errno::ENOEXEC => (126, "exec format error".to_string()),
        other => (126, other.desc().to_lowercase()),
    };
    ExecFailure {
        code,
        message: format!("bulkhead: exec {arg0:?}: {reason}"),
    }
}

fn to_cstring(s: &std::ffi::OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

/// Execs the process; returns only on failure. Tries every PATH entry
/// like execvp(3): a "permission denied" along the way wins over a final
/// "not found", any other error stops the search.
pub fn exec(args: &[CString], env: &[CString], path_var: &str) -> ExecFailure {
    let arg0 = args[0].to_string_lossy().into_owned();
    let searched = !arg0.contains('/');
    let mut seen_eacces = false;
    let mut last = Errno::ENOENT;
    for candidate in exec_candidates(&arg0, path_var) {
        let Some(path) = to_cstring(candidate.as_os_str()) else {
            continue;
        };
        let err = match nix::unistd::execve(&path, args, env) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        match err {
            Errno::ENOENT | Errno::ENOTDIR | Errno::ESTALE | Errno::ENAMETOOLONG => {}
            Errno::EACCES => seen_eacces = true,
            other => return exec_failure(&arg0, other, searched),
        }
        last = err;
    }
    let errno = if seen_eacces { Errno::EACCES } else { last };
    exec_failure(&arg0, errno, searched)
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
        let f = exec_failure("nope", Errno::ENOENT, true);
        assert_eq!(f.code, 127);
        assert_eq!(
            f.message,
            "bulkhead: exec \"nope\": executable file not found in $PATH"
        );
        assert_eq!(exec_failure("/x", Errno::ENOENT, false).code, 127);
        assert!(exec_failure("/x", Errno::ENOENT, false)
            .message
            .contains("no such file"));
        assert_eq!(exec_failure("/etc", Errno::EACCES, false).code, 126);
        assert_eq!(exec_failure("/f", Errno::ENOEXEC, false).code, 126);
        assert_eq!(exec_failure("/f", Errno::ETXTBSY, false).code, 126);
    }

    #[test]
    fn exec_reports_missing_and_unrunnable_files() {
        // Failing execs return without replacing the test process.
        let args = [CString::new("definitely-not-a-command").unwrap()];
        let f = exec(&args, &[], "/nonexistent:/also-missing");
        assert_eq!(f.code, 127);
        let args = [CString::new("/etc/passwd").unwrap()];
        let f = exec(&args, &[], DEFAULT_PATH);
        assert_eq!(f.code, 126);
        let args = [CString::new("/").unwrap()];
        assert_eq!(exec(&args, &[], DEFAULT_PATH).code, 126);
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
