//! A host cgroup per microVM: the process that holds a VM (its vCPU and
//! device threads, and the virtiofsd it starts) moves into a cgroup of its
//! own, `bulkhead-<run>-<pid>`, below the cgroup it was started in, so an
//! operator can account for and limit the whole VM's CPU and memory. Our
//! hosts are hybrid: each cgroup v1 hierarchy with the cpu, cpuacct, memory
//! or pids controller is used; the v2 hierarchy only where there is no v1
//! one (a pure v2 host). Leaving it moves the process back and removes the
//! cgroup; `bulkhead gc` removes those of dead processes, first killing
//! what they left in them (a jailed VMM still stopping, a virtiofsd).

use std::path::{Path, PathBuf};

const PREFIX: &str = "bulkhead-";
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids"];

/// The cgroups this process joined, one per hierarchy.
pub struct HostCgroup {
    joined: Vec<PathBuf>,
}

impl HostCgroup {
    /// Moves this process into `bulkhead-<name>-<pid>` in each hierarchy
    /// it can.
    /// Best effort: a host that does not let us (a read-only cgroupfs in a
    /// container) runs the VM in the cgroup it was started in.
    pub fn join(name: &str) -> HostCgroup {
        let mut joined = Vec::new();
        for parent in own_cgroups() {
            let dir = parent.join(format!("{PREFIX}{name}-{}", std::process::id()));
            match enter(&dir) {
                Ok(()) => joined.push(dir),
                Err(e) => {
                    log::debug!("cannot use host cgroup {}: {e}", dir.display());
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        HostCgroup { joined }
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        let pid = std::process::id().to_string();
        for dir in &self.joined {
            if let Some(parent) = dir.parent() {
                let _ = std::fs::write(parent.join("cgroup.procs"), &pid);
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                log::debug!("cannot remove host cgroup {}: {e}", dir.display());
            }
        }
    }
}

fn enter(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// Removes the `bulkhead-*` cgroups beside ours whose process died
/// without leaving, with what is left in them. Returns how many went.
pub fn sweep_dead() -> usize {
    let mut swept = 0;
    for parent in own_cgroups() {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(PREFIX) && holder_is_dead(&name) && empty_and_remove(&e.path()) {
                swept += 1;
            }
        }
    }
    swept
}

/// Whether the process a cgroup is named after (`…-<pid>`) is gone.
fn holder_is_dead(name: &str) -> bool {
    name.rsplit('-')
        .next()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
}

/// Kills what is left in `dir` and removes it (rmdir fails on a cgroup
/// that still has processes, so it is retried while they die).
fn empty_and_remove(dir: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(dir).is_ok() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The directories of this process's cgroups in the hierarchies we use.
fn own_cgroups() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    cgroup_dirs(&mountinfo, &membership)
}

/// A mounted cgroup hierarchy: where, and its v1 controllers (none: v2).
struct Hierarchy {
    mount: PathBuf,
    controllers: Vec<String>,
}

fn hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or("");
            let controllers = match fstype {
                "cgroup2" => Vec::new(),
                "cgroup" => options
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_string)
                    .collect(),
                _ => return None,
            };
            if fstype == "cgroup" && controllers.is_empty() {
                return None;
            }
            Some(Hierarchy {
                mount: PathBuf::from(mount),
                controllers,
            })
        })
        .collect()
}

fn cgroup_dirs(mountinfo: &str, membership: &str) -> Vec<PathBuf> {
    let all = hierarchies(mountinfo);
    let has_v1 = all.iter().any(|h| !h.controllers.is_empty());
    let path_of = |h: &Hierarchy| -> Option<String> {
        membership.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
            let matches = if h.controllers.is_empty() {
                list.is_empty()
            } else {
                h.controllers
                    .iter()
                    .all(|c| list.split(',').any(|x| x == c))
            };
            matches.then(|| path.to_string())
        })
    };
    all.iter()
        .filter(|h| has_v1 != h.controllers.is_empty())
        .filter_map(|h| {
            let path = path_of(h)?;
            Some(h.mount.join(path.trim_start_matches('/')))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices
34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
    const HYBRID_MEMBERSHIP: &str = "4:memory:/process_api/ab\n2:devices:/\n1:cpu:/\n0::/\n";

    #[test]
    fn a_hybrid_host_uses_its_v1_hierarchies_below_our_cgroup() {
        let dirs = cgroup_dirs(HYBRID_MOUNTS, HYBRID_MEMBERSHIP);
        assert_eq!(
            dirs,
            [
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/ab"),
            ]
        );
    }

    #[test]
    fn a_pure_v2_host_uses_the_unified_hierarchy() {
        let mounts = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let dirs = cgroup_dirs(mounts, "0::/user.slice/session-1.scope\n");
        assert_eq!(
            dirs,
            [PathBuf::from("/sys/fs/cgroup/user.slice/session-1.scope")]
        );
    }
}
