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
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
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
