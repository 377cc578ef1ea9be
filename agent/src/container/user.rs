//! Resolving the spec's user against the container's /etc/passwd and
//! /etc/group (read by the agent inside the container's root, so it is the
//! image's view).

use bulkhead_protocol::User;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the container's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the container's /etc/group")]
    UnknownGroup(String),
    #[error("empty user name")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// Home directory from /etc/passwd, used for a missing `HOME`.
    pub home: Option<String>,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3],
        })
    })
}

/// Resolves `user` given the contents of /etc/passwd and /etc/group (empty
/// when the image has none). Numeric ids need no entry, as in Docker.
pub fn resolve(user: &User, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    match user {
        User::Id {
            uid,
            gid,
            additional_gids,
        } => Ok(ResolvedUser {
            uid: *uid,
            gid: *gid,
            additional_gids: additional_gids.clone(),
            home: passwd_entries(passwd)
                .find(|e| e.uid == *uid)
                .map(|e| e.home.to_string()),
        }),
        User::Name { name } => resolve_name(name, passwd, group),
    }
}

fn resolve_name(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(UserError::Empty);
    }
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user_part
            .parse()
            .map_err(|_| UserError::UnknownUser(user_part.to_string()))?,
    };
    let gid = match group_part.filter(|g| !g.is_empty()) {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = &entry {
        for g in group_entries(group) {
            if g.gid != gid
                && g.members.split(',').any(|m| m == e.name)
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
        home: entry.map(|e| e.home.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
                          www:x:33:33:www:/var/www:/bin/sh\n\
                          broken line\n";
    const GROUP: &str =
        "root:x:0:\nstaff:x:50:www,alice\nnogroup:x:65534:\nwww:x:33:\nvideo:x:44:www\n";

    fn name(s: &str) -> Result<ResolvedUser, UserError> {
        resolve(&User::Name { name: s.into() }, PASSWD, GROUP)
    }

    #[test]
    fn numeric_ids_pass_through() {
        let r = resolve(
            &User::Id {
                uid: 33,
                gid: 7,
                additional_gids: vec![9],
            },
            PASSWD,
            GROUP,
        )
        .unwrap();
        assert_eq!((r.uid, r.gid, r.additional_gids), (33, 7, vec![9]));
        assert_eq!(r.home.as_deref(), Some("/var/www"));
        let r = resolve(&User::default(), "", "").unwrap();
        assert_eq!((r.uid, r.gid, r.home), (0, 0, None));
    }

    #[test]
    fn names_and_supplementary_groups() {
        let r = name("www").unwrap();
        assert_eq!((r.uid, r.gid), (33, 33));
        assert_eq!(r.additional_gids, vec![50, 44]);
        assert_eq!(r.home.as_deref(), Some("/var/www"));

        let r = name("www:staff").unwrap();
        assert_eq!((r.uid, r.gid), (33, 50));
        assert_eq!(r.additional_gids, vec![44]);

        let r = name("nobody:0").unwrap();
        assert_eq!((r.uid, r.gid), (65534, 0));
    }

    #[test]
    fn unknown_numeric_uid_gets_gid_zero() {
        let r = name("1234").unwrap();
        assert_eq!((r.uid, r.gid, r.home), (1234, 0, None));
        let r = name("1234:5").unwrap();
        assert_eq!((r.uid, r.gid), (1234, 5));
        let r = name("0").unwrap();
        assert_eq!(r.home.as_deref(), Some("/root"));
    }

    #[test]
    fn unknown_names_fail() {
        assert_eq!(name("ghost"), Err(UserError::UnknownUser("ghost".into())));
        assert_eq!(
            name("www:ghosts"),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
        assert_eq!(name(""), Err(UserError::Empty));
    }
}
