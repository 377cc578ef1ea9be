//! Capability sets: the OCI defaults, parsing, and applying them.

use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CapError {
    #[error("unknown capability {0:?}")]
    Unknown(String),
    #[error("cannot set capabilities ({what}): {source}")]
    Apply {
        what: &'static str,
        source: caps::errors::CapsError,
    },
}

/// The OCI / Docker default set.
pub const DEFAULT_CAPABILITIES: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The five sets a process gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilitySets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

/// Parses names like `CAP_NET_ADMIN` or `net_admin`.
pub fn parse_capability(name: &str) -> Result<Capability, CapError> {
    let upper = name.trim().to_ascii_uppercase();
    let canonical = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    canonical
        .parse()
        .map_err(|_| CapError::Unknown(name.to_string()))
}

/// The sets for a process running as `uid` with the `requested` bounding
/// set (`None`: the defaults). Like Docker, root gets the set as effective
/// and permitted too; other users start with none (exec would clear them
/// anyway), and inheritable/ambient stay empty.
pub fn capability_sets(requested: Option<&[String]>, uid: u32) -> Result<CapabilitySets, CapError> {
    let bounding: CapsHashSet = match requested {
        None => DEFAULT_CAPABILITIES.iter().copied().collect(),
        Some(names) => names
            .iter()
            .map(|n| parse_capability(n))
            .collect::<Result<_, _>>()?,
    };
    let process = if uid == 0 {
        bounding.clone()
    } else {
        CapsHashSet::new()
    };
    Ok(CapabilitySets {
        bounding,
        effective: process.clone(),
        permitted: process,
        inheritable: CapsHashSet::new(),
        ambient: CapsHashSet::new(),
    })
}

/// Shrinks the bounding set. Must run while we still hold CAP_SETPCAP,
/// i.e. before switching user.
pub fn drop_bounding(sets: &CapabilitySets) -> Result<(), CapError> {
    for cap in caps::all().difference(&sets.bounding) {
        if let Err(source) = caps::drop(None, CapSet::Bounding, *cap) {
            // Capabilities newer than the running kernel cannot be dropped
            // because they do not exist; reading them fails the same way.
            if caps::has_cap(None, CapSet::Bounding, *cap).is_ok() {
                return Err(CapError::Apply {
                    what: "bounding",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Sets effective, permitted, inheritable and ambient; runs after the
/// user switch. Effective goes first: it must stay a subset of permitted.
pub fn apply_process_sets(sets: &CapabilitySets) -> Result<(), CapError> {
    let apply = |set, value: &CapsHashSet, what| {
        caps::set(None, set, value).map_err(|source| CapError::Apply { what, source })
    };
    apply(CapSet::Effective, &sets.effective, "effective")?;
    apply(CapSet::Permitted, &sets.permitted, "permitted")?;
    apply(CapSet::Inheritable, &sets.inheritable, "inheritable")?;
    caps::clear(None, CapSet::Ambient).map_err(|source| CapError::Apply {
        what: "ambient",
        source,
    })?;
    for cap in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *cap).map_err(|source| CapError::Apply {
            what: "ambient",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_for_root() {
        let s = capability_sets(None, 0).unwrap();
        assert_eq!(s.bounding.len(), 14);
        assert!(s.bounding.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(!s.bounding.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!s.bounding.contains(&Capability::CAP_NET_ADMIN));
        assert_eq!(s.effective, s.bounding);
        assert_eq!(s.permitted, s.bounding);
        assert!(s.inheritable.is_empty());
        assert!(s.ambient.is_empty());
    }

    #[test]
    fn non_root_gets_only_a_bounding_set() {
        let s = capability_sets(None, 1000).unwrap();
        assert_eq!(s.bounding.len(), 14);
        assert!(s.effective.is_empty());
        assert!(s.permitted.is_empty());
    }

    #[test]
    fn explicit_sets_and_name_forms() {
        let names = vec!["CAP_NET_ADMIN".to_string(), "sys_ptrace".to_string()];
        let s = capability_sets(Some(&names), 0).unwrap();
        assert_eq!(
            s.bounding,
            [Capability::CAP_NET_ADMIN, Capability::CAP_SYS_PTRACE]
                .into_iter()
                .collect()
        );
        assert!(capability_sets(Some(&[]), 0).unwrap().bounding.is_empty());
        assert!(matches!(
            capability_sets(Some(&["CAP_FLY".to_string()]), 0),
            Err(CapError::Unknown(n)) if n == "CAP_FLY"
        ));
    }
}
