//! Registry references, normalised as Docker does: `nginx` is
//! `docker.io/library/nginx:latest`, `127.0.0.1:5000/app@sha256:…` keeps its digest.

use std::fmt;

use oci_client::Reference;

use crate::error::PullError;

/// A parsed, normalised registry reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteRef {
    inner: Reference,
}

impl RemoteRef {
    pub fn parse(s: &str) -> Result<RemoteRef, PullError> {
        let s = s.strip_prefix("docker://").unwrap_or(s);
        let inner: Reference = s.parse().map_err(|e| PullError::BadReference {
            reference: s.to_string(),
            reason: format!("{e}"),
        })?;
        if inner.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(PullError::BadReference {
                reference: s.to_string(),
                reason: "repository names must be lowercase".into(),
            });
        }
        Ok(RemoteRef { inner })
    }

    /// The registry as references spell it (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The name the store keeps a pulled image under: the whole normalised reference.
    pub fn store_name(&self) -> String {
        self.inner.whole()
    }

    /// The same repository at `digest`, for fetching what an index points at.
    pub(crate) fn at_digest(&self, digest: &str) -> Reference {
        self.inner.clone_with_digest(digest.to_string())
    }

    pub(crate) fn oci(&self) -> &Reference {
        &self.inner
    }

    /// Where an image pulled from here at manifest `digest` came from, for `image ls`.
    pub fn source_with(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry(), self.repository())
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.whole())
    }
}

/// True for a registry host on a loopback address, which may speak plain HTTP unlisted (as
/// Docker allows: such traffic never leaves the machine).
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry.rsplit_once(':').map_or(registry, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                registry
            }
        }),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_as_docker_does() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("library/nginx:1.25", "docker.io/library/nginx:1.25"),
            ("docker.io/team/app", "docker.io/team/app:latest"),
            ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app:v1"),
            ("docker://localhost:5000/app", "localhost:5000/app:latest"),
            (
                "registry:5000/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "registry:5000/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                RemoteRef::parse(input).unwrap().store_name(),
                want,
                "{input}"
            );
        }
        assert_eq!(RemoteRef::parse("nginx").unwrap().registry(), "docker.io");
    }

    #[test]
    fn bad_references_are_named() {
        for bad in ["UPPER/case", "a b", "", "x@sha256:zz"] {
            let err = RemoteRef::parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid image reference"), "{err}");
        }
    }

    #[test]
    fn loopback_registries() {
        for yes in [
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "docker.io",
            "10.0.0.1:5000",
            "registry:5000",
            "localhost.example:5000",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
    }
}
