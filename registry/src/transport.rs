//! How bulkhead talks to a registry: TLS with the system's roots plus the CAs given, plain HTTP
//! only where allowed, and timeouts so that a registry that stops answering ends the pull.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};

use crate::error::PullError;
use crate::reference::is_loopback;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Where Docker and podman keep per-registry CAs: `<dir>/<registry>/*.crt`.
const CERTS_DIRS: &[&str] = &["/etc/docker/certs.d", "/etc/containers/certs.d"];

/// What the user said about transports: flags, extended from the environment.
#[derive(Clone, Debug, Default)]
pub struct TransportOptions {
    /// PEM files of CAs to trust on top of the system's (`--tls-ca`).
    pub ca_files: Vec<PathBuf>,
    /// Registries (`HOST[:PORT]`) to talk to in plain HTTP (`--insecure-registry`).
    pub insecure: Vec<String>,
    /// Connect and read timeout; `None` for `$BULKHEAD_REGISTRY_TIMEOUT` or 30 s.
    pub timeout: Option<Duration>,
}

impl TransportOptions {
    /// Adds `$BULKHEAD_TLS_CA` (`:`-separated files), `$BULKHEAD_INSECURE_REGISTRIES`
    /// (`,`-separated) and `$BULKHEAD_REGISTRY_TIMEOUT` (seconds), so that an operator can set
    /// them once for every `run` and `pull`.
    pub fn with_env(mut self) -> TransportOptions {
        if let Some(v) = std::env::var_os("BULKHEAD_TLS_CA") {
            self.ca_files
                .extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
        if let Ok(v) = std::env::var("BULKHEAD_INSECURE_REGISTRIES") {
            self.insecure.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        if self.timeout.is_none() {
            self.timeout = std::env::var("BULKHEAD_REGISTRY_TIMEOUT")
                .ok()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64);
        }
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Https,
    Http,
}

/// Transport settings resolved for use: CA files read, timeouts fixed.
pub(crate) struct Transport {
    cas: Vec<Vec<u8>>,
    insecure: Vec<String>,
    pub(crate) timeout: Duration,
}

impl Transport {
    pub(crate) fn new(opts: &TransportOptions) -> Result<Transport, PullError> {
        install_crypto_provider();
        let mut cas = Vec::new();
        for path in &opts.ca_files {
            let pem = std::fs::read(path).map_err(|e| PullError::BadCa {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|certs| !certs.is_empty())
                .ok_or_else(|| PullError::BadCa {
                    path: path.clone(),
                    reason: "no PEM certificate in it".into(),
                })?;
            cas.push(pem);
        }
        Ok(Transport {
            cas,
            insecure: opts.insecure.clone(),
            timeout: opts.timeout.unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    /// The CAs for `registry`: the given ones and those in Docker's and podman's
    /// `certs.d/<registry>/`.
    fn cas_for(&self, registry: &str) -> Vec<Vec<u8>> {
        let mut cas = self.cas.clone();
        for dir in CERTS_DIRS {
            cas.extend(crt_files(&Path::new(dir).join(registry)));
        }
        cas
    }

    fn listed_insecure(&self, registry: &str) -> bool {
        self.insecure
            .iter()
            .any(|r| r.trim_start_matches("http://").trim_end_matches('/') == registry)
    }

    /// HTTPS unless the registry is listed insecure. A loopback registry is asked over HTTPS
    /// first and spoken to in HTTP only if it answers as a registry there: never a downgrade
    /// for a registry that speaks TLS, even badly.
    pub(crate) async fn scheme_for(&self, registry: &str) -> Result<Scheme, PullError> {
        if self.listed_insecure(registry) {
            return Ok(Scheme::Http);
        }
        if !is_loopback(registry) {
            return Ok(Scheme::Https);
        }
        let client = self.http_client(registry)?;
        let ctx = self.ctx(registry);
        let https = client.get(format!("https://{registry}/v2/")).send().await;
        let tls_err = match https {
            Ok(_) => return Ok(Scheme::Https),
            Err(e) if e.is_timeout() => return Err(ctx.transfer(&e)),
            Err(e) => e,
        };
        match client.get(format!("http://{registry}/v2/")).send().await {
            Ok(r) if matches!(r.status().as_u16(), 200 | 401) => Ok(Scheme::Http),
            _ => Err(ctx.transfer(&tls_err)),
        }
    }

    /// A plain HTTP client with these settings (login, probing).
    pub(crate) fn http_client(&self, registry: &str) -> Result<reqwest::Client, PullError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .user_agent(concat!("bulkhead/", env!("CARGO_PKG_VERSION")));
        for pem in self.cas_for(registry) {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                builder = builder.add_root_certificate(cert);
            }
        }
        builder.build().map_err(|e| PullError::Unreachable {
            registry: registry.to_string(),
            cause: format!("cannot set up the HTTP client: {e}"),
        })
    }

    /// The distribution client for `registry` in `scheme`.
    pub(crate) fn oci_client(&self, registry: &str, scheme: Scheme) -> oci_client::Client {
        let protocol = match scheme {
            Scheme::Https => ClientProtocol::Https,
            Scheme::Http => ClientProtocol::HttpsExcept(vec![registry.to_string()]),
        };
        oci_client::Client::new(ClientConfig {
            protocol,
            extra_root_certificates: self
                .cas_for(registry)
                .into_iter()
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data,
                })
                .collect(),
            // bulkhead resolves indexes itself, to keep their bytes and name the platform.
            platform_resolver: None,
            read_timeout: Some(self.timeout),
            connect_timeout: Some(self.timeout),
            user_agent: concat!("bulkhead/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        })
    }

    pub(crate) fn ctx<'a>(&self, registry: &'a str) -> crate::error::Ctx<'a> {
        crate::error::Ctx {
            registry,
            user: None,
            timeout: self.timeout,
            what: "",
        }
    }
}

fn crt_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// rustls needs one process-wide crypto provider; ring is built without a C toolchain step.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
