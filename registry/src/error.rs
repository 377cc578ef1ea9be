//! What can go wrong in a pull or a login, each naming its cause in words a user can act on.
//! The caller names the reference: `cannot pull REF: <this>`.

use std::error::Error as _;
use std::path::PathBuf;
use std::time::Duration;

use bulkhead_rootfs::{SourceError, StoreError};
use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::auth_file::AuthFileError;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("--tls-ca {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot reach registry {registry}: {cause}")]
    Unreachable { registry: String, cause: String },
    #[error("registry {registry} timed out (no answer within {}s)", timeout.as_secs())]
    TimedOut { registry: String, timeout: Duration },
    #[error("unauthorized: registry {registry} refused {who}")]
    Unauthorized { registry: String, who: String },
    #[error("manifest unknown: {what} is not in registry {registry}")]
    NotFound { registry: String, what: String },
    #[error("blob {digest}: digest mismatch: the registry sent content with digest {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest}: size mismatch: the registry sent {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("unsupported manifest: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Image(SourceError),
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    AuthFile(#[from] AuthFileError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who was refused, for [`PullError::Unauthorized`].
pub(crate) fn refused_whom(user: Option<&str>) -> String {
    match user {
        Some(u) => format!("the credentials of user {u:?} (wrong username or password?)"),
        None => "anonymous access (log in with `bulkhead login`, or give --authfile)".into(),
    }
}

/// Context for turning a client error into a [`PullError`].
pub(crate) struct Ctx<'a> {
    pub registry: &'a str,
    pub user: Option<&'a str>,
    pub timeout: Duration,
    /// What was being fetched, for "not found".
    pub what: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn classify(&self, err: OciDistributionError) -> PullError {
        let registry = self.registry.to_string();
        match err {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => PullError::Unauthorized {
                registry,
                who: refused_whom(self.user),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => self.not_found(),
            OciDistributionError::RegistryError { envelope, .. } => {
                let unknown = envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                            | OciErrorCode::BlobUnknown
                    )
                });
                let denied = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
                if unknown {
                    self.not_found()
                } else if denied {
                    PullError::Unauthorized {
                        registry,
                        who: refused_whom(self.user),
                    }
                } else {
                    let message = envelope
                        .errors
                        .iter()
                        .map(|e| format!("{:?}: {}", e.code, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    PullError::Registry { registry, message }
                }
            }
            OciDistributionError::ServerError { code: 404, .. } => self.not_found(),
            OciDistributionError::ServerError { code, message, .. } => PullError::Registry {
                registry,
                message: format!("HTTP {code}: {}", first_line(&message)),
            },
            OciDistributionError::DigestError(e) => PullError::Registry {
                registry,
                message: format!("digest mismatch: {e}"),
            },
            OciDistributionError::RequestError(e) => self.transfer(&e),
            OciDistributionError::IoError(e) => self.transfer(&e),
            other => PullError::Registry {
                registry,
                message: other.to_string(),
            },
        }
    }

    fn not_found(&self) -> PullError {
        PullError::NotFound {
            registry: self.registry.to_string(),
            what: self.what.to_string(),
        }
    }

    /// A connection-level failure: timed out, refused, TLS, reset.
    pub(crate) fn transfer(&self, err: &(dyn std::error::Error + 'static)) -> PullError {
        if is_timeout(err) {
            return PullError::TimedOut {
                registry: self.registry.to_string(),
                timeout: self.timeout,
            };
        }
        PullError::Unreachable {
            registry: self.registry.to_string(),
            cause: innermost(err),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(|r| r.is_timeout())
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.to_string().contains("timed out")
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The most specific message in an error chain (`Connection refused (os error 111)`,
/// `invalid peer certificate: UnknownIssuer`), with a hint where one helps.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        last = e.to_string();
        cur = e.source();
    }
    if last.contains("certificate") || last.contains("UnknownIssuer") {
        format!("{last} (give the registry's CA with --tls-ca)")
    } else {
        last
    }
}

impl PullError {
    /// Turns a failure of reading the body of a download into its cause.
    pub(crate) fn from_stream(ctx: &Ctx<'_>, err: std::io::Error) -> PullError {
        match err
            .source()
            .and_then(|s| s.downcast_ref::<reqwest::Error>())
        {
            Some(r) => ctx.transfer(r),
            None => ctx.transfer(&err),
        }
    }
}
