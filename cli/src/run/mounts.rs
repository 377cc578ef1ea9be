//! Docker's mount options: `-v SRC:DST[:ro|rw]` and `--mount
//! type=bind|volume,source=…,target=…[,readonly]`. A source starting with
//! `/` is a host directory (shared through virtio-fs), a bare name is a
//! named volume. Everything is checked here, the host directories
//! included, so a bad mount fails before any disk is made.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A named volume: an ext4 disk kept by bulkhead.
    Volume(String),
    /// A host directory, absolute with symlinks resolved.
    HostDir(PathBuf),
}

/// One mount of the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountArg {
    pub source: MountSource,
    /// Absolute, normalised (no `.`, repeated or trailing `/`), not `/`.
    pub destination: String,
    pub read_only: bool,
}

/// Why a mount option cannot be used; `arg` is the option as given.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MountError {
    #[error("invalid {arg} (expected NAME:/path[:ro] or /host/dir:/path[:ro])")]
    VolumeSyntax { arg: String },
    #[error("invalid {arg}: {path} is a relative path: bind mounts need an absolute host path")]
    RelativeHostPath { arg: String, path: String },
    #[error("invalid {arg}: host directory {path} does not exist")]
    MissingHostDir { arg: String, path: String },
    #[error("invalid {arg}: {path} is not a directory (only directories can be shared)")]
    NotADirectory { arg: String, path: String },
    #[error("invalid {arg}: cannot use host directory {path}: {reason}")]
    HostDir {
        arg: String,
        path: String,
        reason: String,
    },
    #[error("invalid {arg}: {reason}")]
    VolumeName { arg: String, reason: String },
    #[error("invalid {arg}: the container path {path:?} must be absolute, not /, without `..`")]
    BadDestination { arg: String, path: String },
    #[error("invalid {arg}: unknown mode {mode:?} (expected ro or rw)")]
    BadMode { arg: String, mode: String },
    #[error("invalid {arg}: unsupported type {kind:?} (expected bind or volume)")]
    UnsupportedType { arg: String, kind: String },
    #[error("invalid {arg}: {key} is not supported")]
    UnsupportedKey { arg: String, key: String },
    #[error("invalid {arg}: unknown key {key:?}")]
    UnknownKey { arg: String, key: String },
    #[error("invalid {arg}: {key} needs a value")]
    MissingValue { arg: String, key: String },
    #[error("invalid {arg}: {key} given twice")]
    RepeatedKey { arg: String, key: String },
    #[error("invalid {arg}: {key}={value} (expected true or false)")]
    BadBool {
        arg: String,
        key: String,
        value: String,
    },
    #[error("invalid {arg}: no {what}")]
    Missing { arg: String, what: &'static str },
    #[error("{first} and {second} both mount on {destination}")]
    SameDestination {
        first: String,
        second: String,
        destination: String,
    },
}

/// Every `-v` then every `--mount`, each checked, with no two on one
/// destination.
pub fn parse_all(volumes: &[String], mounts: &[String]) -> Result<Vec<MountArg>, MountError> {
    let given: Vec<String> = volumes
        .iter()
        .map(|v| format!("-v {v}"))
        .chain(mounts.iter().map(|m| format!("--mount {m}")))
        .collect();
    let parsed = volumes
        .iter()
        .map(|v| parse_volume(v))
        .chain(mounts.iter().map(|m| parse_mount(m)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (m, arg) in parsed.iter().zip(&given) {
        if let Some(first) = seen.insert(&m.destination, arg) {
            return Err(MountError::SameDestination {
                first: first.to_string(),
                second: arg.clone(),
                destination: m.destination.clone(),
            });
        }
    }
    Ok(parsed)
}

/// `-v NAME:/path[:ro|rw]` or `-v /host/dir:/path[:ro|rw]`.
pub fn parse_volume(s: &str) -> Result<MountArg, MountError> {
    let arg = format!("-v {s}");
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dest, mode) = match parts.as_slice() {
        [src, dest] => (*src, *dest, None),
        [src, dest, mode] => (*src, *dest, Some(*mode)),
        _ => return Err(MountError::VolumeSyntax { arg }),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            return Err(MountError::BadMode {
                arg,
                mode: m.to_string(),
            })
        }
    };
    let source = if src.starts_with('/') {
        MountSource::HostDir(host_dir(&arg, src)?)
    } else if src.starts_with(['.', '~']) || src.contains('/') {
        return Err(MountError::RelativeHostPath {
            arg,
            path: src.to_string(),
        });
    } else {
        MountSource::Volume(volume_name(&arg, src)?)
    };
    Ok(MountArg {
        source,
        destination: destination(&arg, dest)?,
        read_only,
    })
}

/// `--mount type=bind|volume,source=…,target=…[,readonly[=true|false]]`,
/// keys as Docker spells them (`src`, `destination`/`dst`, `ro`).
pub fn parse_mount(s: &str) -> Result<MountArg, MountError> {
    let arg = format!("--mount {s}");
    let (mut kind, mut source, mut target, mut read_only) = (None, None, None, None);
    for field in s.split(',') {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let slot = match key.as_str() {
            "type" => &mut kind,
            "source" | "src" => &mut source,
            "target" | "destination" | "dst" => &mut target,
            "readonly" | "ro" => {
                let value = value.unwrap_or("true");
                let ro = match value.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(MountError::BadBool {
                            arg,
                            key,
                            value: value.to_string(),
                        })
                    }
                };
                if read_only.replace(ro).is_some() {
                    return Err(MountError::RepeatedKey { arg, key });
                }
                continue;
            }
            "bind-propagation" | "bind-recursive" | "bind-nonrecursive" | "consistency"
            | "volume-driver" | "volume-label" | "volume-nocopy" | "volume-opt"
            | "volume-subpath" | "tmpfs-size" | "tmpfs-mode" | "image-subpath" => {
                return Err(MountError::UnsupportedKey { arg, key })
            }
            _ => return Err(MountError::UnknownKey { arg, key }),
        };
        let Some(value) = value.filter(|v| !v.is_empty()) else {
            return Err(MountError::MissingValue { arg, key });
        };
        if slot.replace(value).is_some() {
            return Err(MountError::RepeatedKey { arg, key });
        }
    }
    // Docker's default type.
    let bind = match kind.unwrap_or("volume") {
        "bind" => true,
        "volume" => false,
        other => {
            return Err(MountError::UnsupportedType {
                arg,
                kind: other.to_string(),
            })
        }
    };
    let Some(target) = target else {
        return Err(MountError::Missing {
            arg,
            what: "target",
        });
    };
    let Some(src) = source else {
        return Err(MountError::Missing {
            arg,
            what: "source",
        });
    };
    let source = if !bind {
        MountSource::Volume(volume_name(&arg, src)?)
    } else if src.starts_with('/') {
        MountSource::HostDir(host_dir(&arg, src)?)
    } else {
        return Err(MountError::RelativeHostPath {
            arg,
            path: src.to_string(),
        });
    };
    Ok(MountArg {
        source,
        destination: destination(&arg, target)?,
        read_only: read_only.unwrap_or(false),
    })
}

fn volume_name(arg: &str, name: &str) -> Result<String, MountError> {
    bulkhead_rootfs::validate_volume_name(name).map_err(|e| MountError::VolumeName {
        arg: arg.to_string(),
        reason: e.to_string(),
    })?;
    Ok(name.to_string())
}

/// The host directory at absolute `path`, resolved.
fn host_dir(arg: &str, path: &str) -> Result<PathBuf, MountError> {
    let (arg, shown) = (arg.to_string(), path.to_string());
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(MountError::NotADirectory { arg, path: shown }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MountError::MissingHostDir { arg, path: shown })
        }
        Err(e) => {
            return Err(MountError::HostDir {
                arg,
                path: shown,
                reason: e.to_string(),
            })
        }
    }
    std::fs::canonicalize(path).map_err(|e| MountError::HostDir {
        arg,
        path: shown,
        reason: e.to_string(),
    })
}

/// The container path, normalised so that `/data/` and `/data` are one
/// destination.
fn destination(arg: &str, path: &str) -> Result<String, MountError> {
    let bad = || MountError::BadDestination {
        arg: arg.to_string(),
        path: path.to_string(),
    };
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(bad());
    }
    let normal: PathBuf = p.components().collect();
    if normal == Path::new("/") {
        return Err(bad());
    }
    normal.into_os_string().into_string().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(name: &str, dest: &str, read_only: bool) -> MountArg {
        MountArg {
            source: MountSource::Volume(name.into()),
            destination: dest.into(),
            read_only,
        }
    }

    fn bind(host: &Path, dest: &str, read_only: bool) -> MountArg {
        MountArg {
            source: MountSource::HostDir(host.canonicalize().unwrap()),
            destination: dest.into(),
            read_only,
        }
    }

    #[test]
    fn named_volumes() {
        assert_eq!(
            parse_volume("data:/data:ro").unwrap(),
            volume("data", "/data", true)
        );
        assert_eq!(
            parse_volume("data:/data").unwrap(),
            volume("data", "/data", false)
        );
        assert_eq!(
            parse_volume("data:/data/./x/:rw").unwrap(),
            volume("data", "/data/x", false)
        );
        for bad in ["data:rel", "data:/", "data://", "data:/a/../b", "data"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_volume("data:/x:rx"),
            Err(MountError::BadMode { .. })
        ));
        assert!(matches!(
            parse_volume("-bad:/x"),
            Err(MountError::VolumeName { .. })
        ));
        assert!(matches!(
            parse_volume("a:b:c:d"),
            Err(MountError::VolumeSyntax { .. })
        ));
    }

    #[test]
    fn host_directories() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().display().to_string();
        assert_eq!(
            parse_volume(&format!("{host}:/srv:ro")).unwrap(),
            bind(t.path(), "/srv", true)
        );
        assert_eq!(
            parse_volume(&format!("{host}/:/srv")).unwrap(),
            bind(t.path(), "/srv", false)
        );
        // Symlinks are resolved: the daemon serves the real directory.
        std::os::unix::fs::symlink(t.path(), t.path().join("link")).unwrap();
        assert_eq!(
            parse_volume(&format!("{host}/link:/srv")).unwrap(),
            bind(t.path(), "/srv", false)
        );

        let missing = format!("{host}/missing");
        let err = parse_volume(&format!("{missing}:/srv")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid -v {missing}:/srv: host directory {missing} does not exist")
        );
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = parse_volume(&format!("{}:/srv", file.display())).unwrap_err();
        assert!(matches!(err, MountError::NotADirectory { .. }), "{err}");
        let err = parse_volume(&format!("{host}:srv")).unwrap_err();
        assert!(matches!(err, MountError::BadDestination { .. }), "{err}");
        let err = parse_volume(&format!("{host}:/")).unwrap_err();
        assert!(matches!(err, MountError::BadDestination { .. }), "{err}");
    }

    #[test]
    fn relative_host_paths_are_refused_by_name() {
        for src in ["./x", ".", "..", "~/x", "~", "a/b", "x/"] {
            let err = parse_volume(&format!("{src}:/srv")).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid -v {src}:/srv: {src} is a relative path: \
                     bind mounts need an absolute host path"
                ),
                "{src}"
            );
        }
        let err = parse_mount("type=bind,src=rel,dst=/srv").unwrap_err();
        assert!(matches!(err, MountError::RelativeHostPath { .. }), "{err}");
    }

    #[test]
    fn mount_flag() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().display().to_string();
        let m = |s: &str| parse_mount(&s.replace("HOST", &host));
        let want_rw = bind(t.path(), "/srv", false);
        let want_ro = bind(t.path(), "/srv", true);
        assert_eq!(m("type=bind,source=HOST,target=/srv").unwrap(), want_rw);
        assert_eq!(m("type=bind,src=HOST,dst=/srv,readonly").unwrap(), want_ro);
        assert_eq!(
            m("Type=bind,src=HOST,destination=/srv,ro=true").unwrap(),
            want_ro
        );
        assert_eq!(
            m("type=bind,src=HOST,dst=/srv,readonly=false").unwrap(),
            want_rw
        );
        assert_eq!(
            m("target=/srv,type=bind,source=HOST,ro=1").unwrap(),
            want_ro
        );
        assert_eq!(
            m("type=volume,source=data,target=/data").unwrap(),
            volume("data", "/data", false)
        );
        // Docker's default type is a volume.
        assert_eq!(
            m("src=data,dst=/data,ro").unwrap(),
            volume("data", "/data", true)
        );

        let err = m("type=bind,src=HOST,dst=/srv,bind-propagation=rshared").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid --mount type=bind,src={host},dst=/srv,bind-propagation=rshared: \
                 bind-propagation is not supported"
            )
        );
        for (bad, pattern) in [
            ("type=tmpfs,dst=/t", "unsupported type \"tmpfs\""),
            ("type=bind,src=HOST", "no target"),
            ("type=bind,dst=/srv", "no source"),
            ("type=bind,src=HOST,dst=/srv,colour=red", "unknown key"),
            (
                "type=bind,src=HOST,dst=/srv,ro=maybe",
                "expected true or false",
            ),
            ("type=bind,src=HOST,src=HOST,dst=/srv", "given twice"),
            ("type=bind,src=HOST,dst=/srv,ro,readonly", "given twice"),
            ("type=bind,src=,dst=/srv", "needs a value"),
            ("type=bind,src=HOST,dst=/srv,", "unknown key"),
            ("type=bind,src=HOST,dst=/", "must be absolute"),
            ("type=bind,src=HOST/nope,dst=/srv", "does not exist"),
        ] {
            let err = m(bad).unwrap_err().to_string();
            assert!(err.contains(pattern), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn one_mount_per_destination_and_order_kept() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().display().to_string();
        let all = parse_all(
            &["data:/a/b".into(), format!("{host}:/a:ro")],
            &[format!("type=bind,src={host},dst=/c")],
        )
        .unwrap();
        assert_eq!(
            all,
            [
                volume("data", "/a/b", false),
                bind(t.path(), "/a", true),
                bind(t.path(), "/c", false),
            ]
        );
        let err = parse_all(
            &["data:/srv".into()],
            &[format!("type=bind,src={host},dst=/srv/")],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("-v data:/srv and --mount type=bind,src={host},dst=/srv/ both mount on /srv")
        );
        let err = parse_all(&[format!("{host}:/x"), format!("{host}:/y/../x")], &[]);
        assert!(matches!(err, Err(MountError::BadDestination { .. })));
        let err = parse_all(&[format!("{host}:/x"), format!("{host}://x/.")], &[]);
        assert!(matches!(err, Err(MountError::SameDestination { .. })));
    }
}
