//! Image references with containers/image-style transports.
//!
//! * `oci:DIR[:TAG]` — an OCI image layout directory.
//! * `oci-archive:FILE[:TAG]` — the same layout packed in a tar file.
//! * `docker-archive:FILE[:NAME[:TAG]]` — a `docker save` / `podman save` tarball.
//! * `dir:PATH` — a plain root directory, used as is; it has no image config.
//! * `NAME[:TAG]` — an image in the local store, or (`[HOST[:PORT]/]REPO[:TAG][@DIGEST]`, also
//!   spelled `docker://…`) one to pull from a registry into it.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Transports of containers/image that we recognise but cannot serve: naming them gives a clear
/// error instead of silently treating `docker://x` as a store name.
const UNSUPPORTED_TRANSPORTS: &[&str] = &[
    "docker-daemon",
    "containers-storage",
    "ostree",
    "sif",
    "tarball",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    OciLayout {
        dir: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        file: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    Dir(PathBuf),
    /// A name in the local store, e.g. `busybox` or `alpine:3.20`.
    Name(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("empty image reference")]
    Empty,
    #[error("unknown or unsupported transport {transport:?} in image reference {reference:?} (supported: oci:, oci-archive:, docker-archive:, dir:, or a local image name)")]
    UnknownTransport {
        transport: String,
        reference: String,
    },
    #[error("image reference {0:?} has no path after the transport")]
    MissingPath(String),
    #[error("image reference {0:?} ends with an empty tag")]
    EmptyTag(String),
    #[error("invalid image name {0:?}: names are [a-zA-Z0-9] followed by [a-zA-Z0-9._/-], optionally :TAG")]
    InvalidName(String),
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        s.parse()
    }

    /// True for references that name something outside the store (files or directories).
    pub fn is_external(&self) -> bool {
        !matches!(self, ImageRef::Name(_))
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let Some((transport, rest)) = s.split_once(':') else {
            validate_name(s)?;
            return Ok(ImageRef::Name(s.to_string()));
        };
        match transport {
            "oci" => {
                let (dir, tag) = path_and_suffix(s, rest)?;
                Ok(ImageRef::OciLayout { dir, tag })
            }
            "oci-archive" => {
                let (file, tag) = path_and_suffix(s, rest)?;
                Ok(ImageRef::OciArchive { file, tag })
            }
            "docker-archive" => {
                let (file, reference) = path_and_suffix(s, rest)?;
                Ok(ImageRef::DockerArchive { file, reference })
            }
            "dir" => {
                if rest.is_empty() {
                    return Err(ReferenceError::MissingPath(s.to_string()));
                }
                Ok(ImageRef::Dir(PathBuf::from(rest)))
            }
            // skopeo's spelling of a registry reference.
            "docker" if rest.starts_with("//") => {
                let name = &rest[2..];
                validate_name(name)?;
                Ok(ImageRef::Name(name.to_string()))
            }
            t if UNSUPPORTED_TRANSPORTS.contains(&t) || rest.starts_with("//") => {
                Err(ReferenceError::UnknownTransport {
                    transport: t.to_string(),
                    reference: s.to_string(),
                })
            }
            _ => {
                // `alpine:3.20` is a name with a tag, not a transport.
                validate_name(s)?;
                Ok(ImageRef::Name(s.to_string()))
            }
        }
    }
}

/// Splits `PATH[:SUFFIX]` at the first colon, like containers/image does (so paths cannot
/// contain a colon).
fn path_and_suffix(whole: &str, rest: &str) -> Result<(PathBuf, Option<String>), ReferenceError> {
    let (path, suffix) = match rest.split_once(':') {
        Some((path, suffix)) => {
            if suffix.is_empty() {
                return Err(ReferenceError::EmptyTag(whole.to_string()));
            }
            (path, Some(suffix.to_string()))
        }
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(ReferenceError::MissingPath(whole.to_string()));
    }
    Ok((PathBuf::from(path), suffix))
}

/// Validates a store name: `[HOST[:PORT]/]REPO[:TAG][@sha256:HEX]`, the forms Docker names
/// images by (a pulled image is stored under its full reference).
pub(crate) fn validate_name(s: &str) -> Result<(), ReferenceError> {
    let invalid = || ReferenceError::InvalidName(s.to_string());
    let (named, digest) = match s.split_once('@') {
        Some((named, digest)) => (named, Some(digest)),
        None => (s, None),
    };
    if let Some(digest) = digest {
        digest
            .parse::<crate::digest::Digest>()
            .map_err(|_| invalid())?;
    }
    // A tag follows the last colon after the last slash; a colon before it is a port.
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match named[last_slash..].rfind(':') {
        Some(i) => (&named[..last_slash + i], Some(&named[last_slash + i + 1..])),
        None => (named, None),
    };
    let (host, path) = match repo.split_once('/') {
        Some((host, path)) if host.contains(':') => (Some(host), path),
        _ => (None, repo),
    };
    if let Some(host) = host {
        let (name, port) = host.split_once(':').expect("checked above");
        let host_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        let port_ok =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !host_ok || !port_ok {
            return Err(invalid());
        }
    }
    let mut chars = path.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        || path.contains("//")
        || path.ends_with('/')
        || path.split('/').any(|part| part == "." || part == "..")
    {
        return Err(invalid());
    }
    if let Some(tag) = tag {
        let mut chars = tag.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok
            || tag.len() > 128
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid());
        }
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_suffix = |f: &mut fmt::Formatter<'_>, t: &str, p: &PathBuf, s: &Option<String>| {
            write!(f, "{t}:{}", p.display())?;
            match s {
                Some(s) => write!(f, ":{s}"),
                None => Ok(()),
            }
        };
        match self {
            ImageRef::OciLayout { dir, tag } => with_suffix(f, "oci", dir, tag),
            ImageRef::OciArchive { file, tag } => with_suffix(f, "oci-archive", file, tag),
            ImageRef::DockerArchive { file, reference } => {
                with_suffix(f, "docker-archive", file, reference)
            }
            ImageRef::Dir(path) => write!(f, "dir:{}", path.display()),
            ImageRef::Name(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<ImageRef, ReferenceError> {
        s.parse()
    }

    #[test]
    fn parses_each_transport() {
        let cases: &[(&str, ImageRef)] = &[
            (
                "oci:/images/alpine",
                ImageRef::OciLayout {
                    dir: "/images/alpine".into(),
                    tag: None,
                },
            ),
            (
                "oci:./layout:v1.2",
                ImageRef::OciLayout {
                    dir: "./layout".into(),
                    tag: Some("v1.2".into()),
                },
            ),
            (
                "oci-archive:a.tar:latest",
                ImageRef::OciArchive {
                    file: "a.tar".into(),
                    tag: Some("latest".into()),
                },
            ),
            (
                "docker-archive:/tmp/bb.tar",
                ImageRef::DockerArchive {
                    file: "/tmp/bb.tar".into(),
                    reference: None,
                },
            ),
            (
                "docker-archive:/tmp/bb.tar:busybox:latest",
                ImageRef::DockerArchive {
                    file: "/tmp/bb.tar".into(),
                    reference: Some("busybox:latest".into()),
                },
            ),
            (
                "dir:/srv/root:with:colons",
                ImageRef::Dir("/srv/root:with:colons".into()),
            ),
            ("busybox", ImageRef::Name("busybox".into())),
            (
                "127.0.0.1:5000/team/app:1.0",
                ImageRef::Name("127.0.0.1:5000/team/app:1.0".into()),
            ),
            (
                "localhost:5000/app",
                ImageRef::Name("localhost:5000/app".into()),
            ),
            (
                "registry.example/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ImageRef::Name("registry.example/team/app@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into()),
            ),
            ("alpine:3.20", ImageRef::Name("alpine:3.20".into())),
            (
                "library/alpine:latest",
                ImageRef::Name("library/alpine:latest".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&p(input).unwrap(), want, "{input}");
            assert_eq!(
                &p(&want.to_string()).unwrap(),
                want,
                "display round trip of {input}"
            );
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(p(""), Err(ReferenceError::Empty));
        assert_eq!(p("oci:"), Err(ReferenceError::MissingPath("oci:".into())));
        assert_eq!(p("dir:"), Err(ReferenceError::MissingPath("dir:".into())));
        assert_eq!(
            p("oci:/x:"),
            Err(ReferenceError::EmptyTag("oci:/x:".into()))
        );
        assert_eq!(
            p("docker://127.0.0.1:5000/a:1"),
            Ok(ImageRef::Name("127.0.0.1:5000/a:1".into()))
        );
        for unknown in [
            "docker-daemon:alpine",
            "containers-storage:alpine",
            "foo://bar",
        ] {
            let err = p(unknown).unwrap_err();
            assert!(
                matches!(err, ReferenceError::UnknownTransport { .. }),
                "{unknown}: {err:?}"
            );
            assert!(err.to_string().contains("transport"), "{err}");
        }
        for bad in [
            "-x",
            "a b",
            "a:b:c",
            "a:",
            "../x",
            "a/../b",
            "x:.tag",
            "/abs",
            "h:port/x",
            "h:5000/",
            "x@sha256:zz",
            "x@md5:00",
        ] {
            assert!(
                matches!(p(bad), Err(ReferenceError::InvalidName(_))),
                "{bad}"
            );
        }
    }
}
