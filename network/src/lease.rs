//! Leases: the record of an endpoint, one file per address at
//! `<root>/networks/<name>/leases/<ip>`, created with O_EXCL so no two
//! containers can ever hold one address. A lease names its owner process
//! by pid and start time (a pid alone may be reused): once that process is
//! gone the lease is stale, whatever killed it, and `sweep` removes it.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, NetworkError};
use crate::PortMapping;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container_id: String,
    pub name: Option<String>,
    #[serde(with = "crate::mac::serde_str")]
    pub mac: [u8; 6],
    /// Host ports resolved (never 0).
    pub ports: Vec<PortMapping>,
    pub owner_pid: u32,
    /// Field 22 of /proc/PID/stat (clock ticks since boot).
    pub owner_start_time: u64,
    /// The bridge port the container's frames arrive by (its VM's TAP):
    /// what the anti-spoofing rules match. None in leases written before
    /// there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
}

impl Lease {
    pub fn owner_alive(&self) -> bool {
        start_time(self.owner_pid) == Some(self.owner_start_time)
    }
}

/// A lease as read back, with the address its file is named after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Held {
    pub address: Ipv4Addr,
    /// None when the file is empty or unreadable JSON: every writer holds
    /// the state lock, so such a file is from one that died mid-write.
    pub lease: Option<Lease>,
    pub path: PathBuf,
}

impl Held {
    pub(crate) fn live(&self) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.owner_alive())
    }
}

/// The start time of process `pid`, None if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Field 22 of a /proc/PID/stat line. The command (field 2) is in
/// parentheses and may itself hold spaces and ')', so fields are counted
/// from the last ')'.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // The text after ')' starts at field 3 (state).
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Every lease file in `dir` (a network's `leases/`), by address. Names
/// that are not addresses (a staging file) are not leases.
pub(crate) fn read_all(dir: &Path) -> Result<Vec<Held>, NetworkError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot list", dir)(e)),
    };
    let mut held = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("cannot list", dir))?;
        let Some(address) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            // Removed since the listing: not held.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io("cannot read", &path)(e)),
        };
        held.push(Held {
            address,
            lease: serde_json::from_slice(&bytes).ok(),
            path,
        });
    }
    held.sort_by_key(|h| h.address);
    Ok(held)
}

/// Creates the lease for `address`; `Ok(false)` if one exists already.
pub(crate) fn create(dir: &Path, address: Ipv4Addr, lease: &Lease) -> Result<bool, NetworkError> {
    let path = dir.join(address.to_string());
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(io("cannot create", &path)(e)),
    };
    let bytes = serde_json::to_vec_pretty(lease).unwrap_or_default();
    if let Err(e) = file.write_all(&bytes).and_then(|()| file.sync_data()) {
        let _ = std::fs::remove_file(&path);
        return Err(io("cannot write", &path)(e));
    }
    Ok(true)
}

/// Removes a lease file; one already gone is fine.
pub(crate) fn remove(path: &Path) -> Result<(), NetworkError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22() {
        let line =
            "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21";
        assert_eq!(parse_start_time(line), Some(424242));
        assert_eq!(parse_start_time("1 (x) S 1 2"), None);
        assert!(start_time(std::process::id()).is_some());
    }

    #[test]
    fn a_dead_owner_is_noticed() {
        let me = Lease {
            container_id: "c".into(),
            name: None,
            mac: [2, 0, 0, 0, 0, 1],
            ports: vec![],
            owner_pid: std::process::id(),
            owner_start_time: start_time(std::process::id()).unwrap(),
            tap: None,
        };
        assert!(me.owner_alive());
        let reused = Lease {
            owner_start_time: me.owner_start_time + 1,
            ..me.clone()
        };
        assert!(!reused.owner_alive(), "same pid, another process");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!Lease {
            owner_pid: pid,
            ..me
        }
        .owner_alive());
    }

    #[test]
    fn create_is_exclusive() {
        let tmp = tempfile::tempdir().unwrap();
        let ip = Ipv4Addr::new(10, 89, 0, 2);
        let lease = Lease {
            container_id: "c".into(),
            name: Some("web".into()),
            mac: [2, 0xab, 0, 0, 0, 1],
            ports: vec!["8080:80".parse().unwrap()],
            owner_pid: 1,
            owner_start_time: 0,
            tap: Some("bh-c".into()),
        };
        assert!(create(tmp.path(), ip, &lease).unwrap());
        assert!(!create(tmp.path(), ip, &lease).unwrap());
        std::fs::write(tmp.path().join("10.89.0.3"), b"").unwrap();
        std::fs::write(tmp.path().join("10.89.0.4.bulkhead-new"), b"{}").unwrap();
        let held = read_all(tmp.path()).unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].lease.as_ref(), Some(&lease));
        assert_eq!(held[1].lease, None, "torn write");
        let text = std::fs::read_to_string(tmp.path().join("10.89.0.2")).unwrap();
        assert!(text.contains(r#""mac": "02:ab:00:00:00:01""#), "{text}");
        assert!(text.contains(r#""owner_start_time": 0"#), "{text}");
    }
}
