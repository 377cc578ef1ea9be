//! `login` and `logout`: credentials checked against the registry the way `docker login`
//! does (`GET /v2/`, answering a bearer challenge at its realm), then kept in the auth file.

use std::path::Path;

use oci_client::errors::OciDistributionError;

use crate::auth_file::{AuthFile, Credentials};
use crate::error::{refused_whom, PullError};
use crate::pull::runtime;
use crate::transport::{Scheme, Transport, TransportOptions};

/// Checks `creds` against `registry` and records them; returns the file written.
pub fn login(
    registry: &str,
    creds: &Credentials,
    transport: &TransportOptions,
    authfile: Option<&Path>,
) -> Result<std::path::PathBuf, PullError> {
    let registry = normalise_registry(registry);
    let file = AuthFile::locate(authfile)?;
    let transport = Transport::new(transport)?;
    runtime()?.block_on(check(&transport, &registry, creds))?;
    file.set(&registry, creds)?;
    Ok(file.path().to_path_buf())
}

/// Forgets `registry`'s credentials; false if there were none.
pub fn logout(registry: &str, authfile: Option<&Path>) -> Result<bool, PullError> {
    Ok(AuthFile::locate(authfile)?.remove(&normalise_registry(registry))?)
}

/// `https://reg:5000/` and `reg:5000` name the same registry; Docker Hub is `docker.io`.
fn normalise_registry(registry: &str) -> String {
    let bare = registry
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match bare {
        "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => "docker.io".into(),
        other => other.to_string(),
    }
}

async fn check(
    transport: &Transport,
    registry: &str,
    creds: &Credentials,
) -> Result<(), PullError> {
    let scheme = transport.scheme_for(registry).await?;
    let host = if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    };
    let base = match scheme {
        Scheme::Https => format!("https://{host}/v2/"),
        Scheme::Http => format!("http://{host}/v2/"),
    };
    let client = transport.http_client(registry)?;
    let ctx = transport.ctx(registry);
    let refused = || PullError::Unauthorized {
        registry: registry.to_string(),
        who: refused_whom(Some(&creds.username)),
    };
    let response = client
        .get(&base)
        .basic_auth(&creds.username, Some(&creds.password))
        .send()
        .await
        .map_err(|e| ctx.transfer(&e))?;
    if response.status().is_success() {
        return Ok(());
    }
    if response.status().as_u16() != 401 {
        return Err(PullError::Registry {
            registry: registry.to_string(),
            message: format!("GET /v2/ answered HTTP {}", response.status()),
        });
    }
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some((realm, service)) = bearer_realm(&challenge) else {
        // A basic challenge to a request that carried basic credentials: they are wrong.
        return Err(refused());
    };
    let mut request = client
        .get(&realm)
        .basic_auth(&creds.username, Some(&creds.password));
    if let Some(service) = service {
        request = request.query(&[("service", service)]);
    }
    let token = request.send().await.map_err(|e| ctx.transfer(&e))?;
    match token.status().as_u16() {
        200 => Ok(()),
        401 | 403 => Err(refused()),
        code => Err(ctx.classify(OciDistributionError::ServerError {
            code,
            url: realm,
            message: "the token endpoint refused the login".into(),
        })),
    }
}

/// `Bearer realm="…",service="…"` → (realm, service).
fn bearer_realm(header: &str) -> Option<(String, Option<String>)> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut service = None;
    for part in split_params(rest) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some((realm?, service))
}

/// Splits `a="x,y",b=z` at the commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        assert_eq!(
            bearer_realm(
                r#"Bearer realm="https://auth.example/token",service="reg,x",scope="repository:a:pull""#
            ),
            Some(("https://auth.example/token".into(), Some("reg,x".into())))
        );
        assert_eq!(bearer_realm(r#"Basic realm="Registry Realm""#), None);
    }

    #[test]
    fn registry_names_are_normalised() {
        assert_eq!(normalise_registry("https://reg:5000/"), "reg:5000");
        assert_eq!(normalise_registry("index.docker.io"), "docker.io");
        assert_eq!(normalise_registry("127.0.0.1:5000"), "127.0.0.1:5000");
    }
}
