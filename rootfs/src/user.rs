//! Resolves `-u user[:group]` / `uid[:gid]` against the image's own /etc/passwd and /etc/group.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::fsutil::open_in_root;

/// Bigger account files than this are not something a container image legitimately ships.
const MAX_ACCOUNT_FILE: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every /etc/group entry listing the user, minus the primary group.
    pub additional_gids: Vec<u32>,
    /// Home directory from /etc/passwd ("/" when the user has no entry), for `HOME`.
    pub home: String,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid user specification {0:?}: expected user[:group] or uid[:gid]")]
    InvalidSpec(String),
    #[error("unable to find user {user:?}: no matching entry in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("unable to find group {group:?}: no matching entry in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("reading {path} in the image root {root}: {source}")]
    Read {
        root: PathBuf,
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `spec` within the unpacked image at `rootfs`.
///
/// A numeric uid needs no passwd entry (gid then defaults to 0); names must exist. `root` always
/// resolves, so images without /etc/passwd can run as the default user.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() || group_part == Some("") || group_part.is_some_and(|g| g.contains(':'))
    {
        return Err(UserError::InvalidSpec(spec.to_string()));
    }
    let passwd = read_account_file(rootfs, "etc/passwd")?;
    let passwd: Vec<PasswdEntry> = passwd.lines().filter_map(parse_passwd_line).collect();

    let numeric_uid = user_part.parse::<u32>().ok();
    let entry = passwd.iter().find(|e| match numeric_uid {
        Some(uid) => e.uid == uid,
        None => e.name == user_part,
    });
    let (uid, mut gid, name, home) = match (entry, numeric_uid) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str()), e.home.clone()),
        (None, Some(uid)) => (uid, 0, None, "/".to_string()),
        (None, None) if user_part == "root" => (0, 0, Some("root"), "/root".to_string()),
        (None, None) => {
            return Err(UserError::UnknownUser {
                user: user_part.to_string(),
            })
        }
    };

    // Only read /etc/group when it can matter: a group name, or a named user's memberships.
    let groups: Vec<GroupEntry> =
        if name.is_some() || group_part.is_some_and(|g| g.parse::<u32>().is_err()) {
            read_account_file(rootfs, "etc/group")?
                .lines()
                .filter_map(parse_group_line)
                .collect()
        } else {
            Vec::new()
        };

    if let Some(group) = group_part {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|g| g.name == group)
                .map(|g| g.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    group: group.to_string(),
                })?,
        };
    }

    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for g in &groups {
            if g.gid != gid
                && g.members.iter().any(|m| m == name)
                && !additional_gids.contains(&g.gid)
            {
                additional_gids.push(g.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// The file's content, or "" if the image does not have it.
fn read_account_file(rootfs: &Path, path: &'static str) -> Result<String, UserError> {
    let err = |source| UserError::Read {
        root: rootfs.to_path_buf(),
        path,
        source,
    };
    let fd = match open_in_root(rootfs, Path::new(path), OFlag::O_RDONLY | OFlag::O_NOCTTY) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(err(e)),
    };
    let mut bytes = Vec::new();
    File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn parse_passwd_line(line: &str) -> Option<PasswdEntry> {
    if line.starts_with('#') {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 7 || f[0].is_empty() {
        return None;
    }
    Some(PasswdEntry {
        name: f[0].to_string(),
        uid: f[2].parse().ok()?,
        gid: f[3].parse().ok()?,
        home: f[5].to_string(),
    })
}

fn parse_group_line(line: &str) -> Option<GroupEntry> {
    if line.starts_with('#') {
        return None;
    }
    let f: Vec<&str> = line.split(':').collect();
    if f.len() < 4 || f[0].is_empty() {
        return None;
    }
    Some(GroupEntry {
        name: f[0].to_string(),
        gid: f[2].parse().ok()?,
        members: f[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken line\n\
             app:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:root,app\naudio:x:29:app\nnogroup:x:65534:\n",
        )
        .unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, extra: &[u32], home: &str) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: extra.to_vec(),
            home: home.to_string(),
        }
    }

    #[test]
    fn resolves_names_and_numbers() {
        let r = rootfs();
        let cases: &[(&str, ResolvedUser)] = &[
            ("root", user(0, 0, &[10], "/root")),
            ("app", user(1000, 1000, &[10, 29], "/home/app")),
            ("1000", user(1000, 1000, &[10, 29], "/home/app")),
            ("app:audio", user(1000, 29, &[10], "/home/app")),
            ("app:4242", user(1000, 4242, &[10, 29], "/home/app")),
            ("nobody:nogroup", user(65534, 65534, &[], "/nonexistent")),
            ("5000", user(5000, 0, &[], "/")),
            ("5000:5000", user(5000, 5000, &[], "/")),
            ("5000:wheel", user(5000, 10, &[], "/")),
        ];
        for (spec, want) in cases {
            assert_eq!(&resolve_user(r.path(), spec).unwrap(), want, "{spec}");
        }
    }

    #[test]
    fn unknown_names_are_errors() {
        let r = rootfs();
        let e = resolve_user(r.path(), "ghost").unwrap_err();
        assert!(
            matches!(e, UserError::UnknownUser { ref user } if user == "ghost"),
            "{e}"
        );
        let e = resolve_user(r.path(), "app:ghosts").unwrap_err();
        assert!(
            matches!(e, UserError::UnknownGroup { ref group } if group == "ghosts"),
            "{e}"
        );
        for bad in ["", ":0", "app:", "a:b:c"] {
            assert!(
                matches!(resolve_user(r.path(), bad), Err(UserError::InvalidSpec(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn image_without_account_files() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_user(empty.path(), "root").unwrap(),
            user(0, 0, &[], "/root")
        );
        assert_eq!(
            resolve_user(empty.path(), "0:0").unwrap(),
            user(0, 0, &[], "/")
        );
        assert!(matches!(
            resolve_user(empty.path(), "app"),
            Err(UserError::UnknownUser { .. })
        ));
    }

    #[test]
    fn passwd_symlink_to_host_is_resolved_inside_the_image() {
        let r = tempfile::tempdir().unwrap();
        fs::create_dir(r.path().join("etc")).unwrap();
        // The host's /etc/passwd has "daemon"; inside this image both links point at
        // themselves or at nothing, so the lookup must fail rather than read the host's files.
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../etc/group", r.path().join("etc/group")).unwrap();
        assert!(resolve_user(r.path(), "daemon").is_err());
        fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/missing", r.path().join("etc/passwd")).unwrap();
        assert!(matches!(
            resolve_user(r.path(), "daemon"),
            Err(UserError::UnknownUser { .. })
        ));
    }
}
