//! What bulkhead may leave on the host, looked for by the tests that check
//! it left nothing: processes, TAPs, mounts.

use std::path::Path;

/// Live (not zombie) processes whose command line or environment mentions
/// `needle`: monitors and virtiofsd get the root through their env.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if pid.parse::<u32>().is_err() || pid == std::process::id().to_string() {
            continue;
        }
        if !alive(&entry.path()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let hit = |b: &[u8]| String::from_utf8_lossy(b).contains(needle);
        if hit(&cmdline) || hit(&environ) {
            out.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    out
}

/// Whether process `pid` still runs: any of its threads is not a zombie.
/// The leader turns zombie as soon as its own thread exits, while the
/// others (a vCPU leaving KVM_RUN, the event loop) still hold the
/// process's files and locks.
pub fn process_alive(pid: i32) -> bool {
    alive(Path::new(&format!("/proc/{pid}")))
}

fn alive(proc_dir: &Path) -> bool {
    let Ok(tasks) = std::fs::read_dir(proc_dir.join("task")) else {
        return false;
    };
    tasks.flatten().any(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        !stat.is_empty() && !stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z'))
    })
}

/// Whether an `ip -o link` line is a container's TAP: `bh` and 12 hex
/// digits (bridges are `bulkhead0` and `bh-NAME`).
pub fn is_tap(line: &str) -> bool {
    line.split(": ").nth(1).is_some_and(|name| {
        let name = name.split(['@', ':']).next().unwrap_or("");
        name.len() == 14
            && name.starts_with("bh")
            && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// Mount points at or below `dir` in this process's mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Host cgroups of VMs (`bulkhead-<run>-<pid>`, beside this process's
/// own) whose process is gone.
pub fn dead_vm_cgroups() -> Vec<std::path::PathBuf> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, list, path) = (parts.next(), parts.next(), parts.next());
        let (Some(list), Some(path)) = (list, path) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        let base = match list.split(',').next() {
            Some("") | None => ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .iter()
                .map(Path::new)
                .find(|p| p.join("cgroup.procs").exists())
                .map(Path::to_path_buf),
            Some(first) => Some(Path::new("/sys/fs/cgroup").join(first)),
        };
        if let Some(base) = base {
            dirs.push(base.join(path));
        }
    }
    let mut dead = Vec::new();
    for dir in dirs {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("bulkhead-")
                .and_then(|n| n.rsplit_once('-'))
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new("/proc").join(pid.to_string()).exists() {
                dead.push(e.path());
            }
        }
    }
    dead
}
