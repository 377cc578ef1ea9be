//! A volume's OCI mount options (`ro`, `nosuid`, `size=64m`, ...) read
//! into mount(2) flags and, for a tmpfs, its data string.
//!
//! Only what bulkhead can honour is accepted: an option that would be
//! silently dropped is an error naming it, so a spec never means more than
//! what the container gets.

use nix::mount::MsFlags;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unsupported mount option {0:?}")]
    Unsupported(String),
    #[error("tmpfs option {0:?} needs a value without ','")]
    BadValue(String),
}

/// What a volume's options ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Per-mount flags, `MS_RDONLY` included for `ro`.
    pub flags: MsFlags,
    /// The tmpfs data (`size=64m,mode=1777`); `None` when there is none.
    pub data: Option<String>,
    /// `tmpcopyup`: the tmpfs starts with a copy of what the container's
    /// root has at its destination (a tmpfs only; `notmpcopyup` undoes it).
    pub copy_up: bool,
}

/// Options that set (`true`) or clear a flag, later ones winning as in
/// mount(8). The clearing forms are accepted for symmetry: an OCI spec may
/// spell out a default.
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("ro", true, MsFlags::MS_RDONLY),
    ("rw", false, MsFlags::MS_RDONLY),
    ("nosuid", true, MsFlags::MS_NOSUID),
    ("suid", false, MsFlags::MS_NOSUID),
    ("nodev", true, MsFlags::MS_NODEV),
    ("dev", false, MsFlags::MS_NODEV),
    ("noexec", true, MsFlags::MS_NOEXEC),
    ("exec", false, MsFlags::MS_NOEXEC),
    ("relatime", true, MsFlags::MS_RELATIME),
    ("norelatime", false, MsFlags::MS_RELATIME),
    ("strictatime", true, MsFlags::MS_STRICTATIME),
    ("nostrictatime", false, MsFlags::MS_STRICTATIME),
    ("noatime", true, MsFlags::MS_NOATIME),
    ("atime", false, MsFlags::MS_NOATIME),
    ("nodiratime", true, MsFlags::MS_NODIRATIME),
    ("diratime", false, MsFlags::MS_NODIRATIME),
];

/// Options that mean nothing more here: every volume is a bind of a mount
/// the agent made, every guest mount is private (nothing propagates to or
/// from a VM), and there are no SELinux labels or async writes to choose.
const IGNORED: &[&str] = &[
    "bind",
    "rbind",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
    "z",
    "Z",
    "async",
    "defaults",
];

/// tmpfs's own `key=value` options (tmpfs(5)).
const TMPFS_KEYS: &[&str] = &[
    "size",
    "nr_blocks",
    "nr_inodes",
    "mode",
    "uid",
    "gid",
    "huge",
    "mpol",
];

/// tmpfs's own bare options.
const TMPFS_WORDS: &[&str] = &["noswap", "inode32", "inode64"];

/// Reads `options`; `tmpfs` says whether the volume is a fresh tmpfs, the
/// only kind that takes filesystem data.
pub fn parse(options: &[String], tmpfs: bool) -> Result<MountOptions, OptionError> {
    let mut flags = MsFlags::empty();
    let mut data = String::new();
    let mut copy_up = false;
    for option in options {
        if let Some(&(_, set, flag)) = FLAGS.iter().find(|(name, ..)| name == option) {
            flags.set(flag, set);
            continue;
        }
        if IGNORED.contains(&option.as_str()) {
            continue;
        }
        if !tmpfs {
            return Err(OptionError::Unsupported(option.clone()));
        }
        if let Some(set) = match option.as_str() {
            "tmpcopyup" => Some(true),
            "notmpcopyup" => Some(false),
            _ => None,
        } {
            copy_up = set;
            continue;
        }
        let known = match option.split_once('=') {
            Some((key, value)) if TMPFS_KEYS.contains(&key) => {
                // A ',' would smuggle further options past this check.
                if value.is_empty() || value.contains(',') {
                    return Err(OptionError::BadValue(option.clone()));
                }
                true
            }
            Some(_) => false,
            None => TMPFS_WORDS.contains(&option.as_str()),
        };
        if !known {
            return Err(OptionError::Unsupported(option.clone()));
        }
        if !data.is_empty() {
            data.push(',');
        }
        data.push_str(option);
    }
    Ok(MountOptions {
        flags,
        data: (!data.is_empty()).then_some(data),
        copy_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_and_their_opposites() {
        let o = parse(
            &opts(&["ro", "nosuid", "nodev", "noexec", "noatime"]),
            false,
        )
        .unwrap();
        assert_eq!(
            o.flags,
            MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
        );
        assert_eq!(o.data, None);
        // The last word wins.
        let o = parse(&opts(&["ro", "noexec", "rw", "exec", "strictatime"]), false).unwrap();
        assert_eq!(o.flags, MsFlags::MS_STRICTATIME);
        assert_eq!(
            parse(&[], false).unwrap(),
            MountOptions {
                flags: MsFlags::empty(),
                data: None,
                copy_up: false,
            }
        );
    }

    #[test]
    fn bind_and_propagation_options_are_accepted() {
        let o = parse(
            &opts(&["rbind", "rprivate", "z", "Z", "defaults", "nodiratime"]),
            false,
        )
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_NODIRATIME);
    }

    #[test]
    fn tmpfs_data_keeps_its_order() {
        let o = parse(
            &opts(&["nosuid", "size=64m", "mode=1777", "noswap", "uid=1000"]),
            true,
        )
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        assert_eq!(
            o.data.as_deref(),
            Some("size=64m,mode=1777,noswap,uid=1000")
        );
        assert!(!o.copy_up);
    }

    #[test]
    fn tmpcopyup_is_a_tmpfs_option_outside_its_data() {
        let o = parse(&opts(&["tmpcopyup", "size=1m", "nosuid"]), true).unwrap();
        assert!(o.copy_up);
        assert_eq!(o.data.as_deref(), Some("size=1m"));
        assert_eq!(o.flags, MsFlags::MS_NOSUID);
        // The last word wins.
        let o = parse(&opts(&["tmpcopyup", "notmpcopyup"]), true).unwrap();
        assert!(!o.copy_up);
        assert_eq!(o.data, None);
        assert!(
            parse(&opts(&["notmpcopyup", "tmpcopyup"]), true)
                .unwrap()
                .copy_up
        );
    }

    #[test]
    fn anything_else_is_named() {
        for (list, tmpfs, bad) in [
            (&["ro", "bogus"][..], false, "bogus"),
            (&["size=1m"][..], false, "size=1m"),
            (&["tmpcopyup"][..], false, "tmpcopyup"),
            (&["notmpcopyup"][..], false, "notmpcopyup"),
            (&["color=red"][..], true, "color=red"),
        ] {
            assert_eq!(
                parse(&opts(list), tmpfs),
                Err(OptionError::Unsupported(bad.into())),
                "{list:?}"
            );
        }
        for bad in ["size=", "size=1m,uid=0"] {
            assert_eq!(
                parse(&opts(&[bad]), true),
                Err(OptionError::BadValue(bad.into()))
            );
        }
        assert!(OptionError::Unsupported("x".into())
            .to_string()
            .contains("\"x\""));
    }
}
