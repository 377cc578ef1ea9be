//! Registry credentials in Docker's `config.json` format (also podman's `auth.json`):
//! `{"auths": {"REGISTRY": {"auth": base64("user:password")}}}`. Other keys in the file are
//! kept as they are when `login` and `logout` rewrite it.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("credentials file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("credentials file {path} is not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("credentials file {path}: the entry for {registry} is not base64 of USER:PASSWORD")]
    BadEntry { path: PathBuf, registry: String },
    #[error(
        "no credentials file: set $HOME, $DOCKER_CONFIG or $REGISTRY_AUTH_FILE, or pass --authfile"
    )]
    NoPath,
}

/// A username and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

pub struct AuthFile {
    path: PathBuf,
}

impl AuthFile {
    pub fn at(path: impl Into<PathBuf>) -> AuthFile {
        AuthFile { path: path.into() }
    }

    /// `explicit` (`--authfile`), else `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`,
    /// else `~/.docker/config.json`: the file `docker login` and `podman login
    /// --compat-auth-file` write.
    pub fn locate(explicit: Option<&Path>) -> Result<AuthFile, AuthFileError> {
        if let Some(p) = explicit {
            return Ok(AuthFile::at(p));
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(p) = var("REGISTRY_AUTH_FILE") {
            return Ok(AuthFile::at(p));
        }
        if let Some(dir) = var("DOCKER_CONFIG") {
            return Ok(AuthFile::at(PathBuf::from(dir).join("config.json")));
        }
        match var("HOME") {
            Some(home) => Ok(AuthFile::at(
                PathBuf::from(home).join(".docker/config.json"),
            )),
            None => Err(AuthFileError::NoPath),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials stored for `registry`, if any. A missing file has none.
    pub fn get(&self, registry: &str) -> Result<Option<Credentials>, AuthFileError> {
        let doc = self.read()?;
        let Some(entry) = lookup(&doc, registry) else {
            return Ok(None);
        };
        let bad = || AuthFileError::BadEntry {
            path: self.path.clone(),
            registry: registry.to_string(),
        };
        if let Some(encoded) = entry.get("auth").and_then(Value::as_str) {
            if encoded.is_empty() {
                return Ok(None);
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            let (username, password) = text.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        // The older split form some tools write.
        match (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            (Some(u), Some(p)) => Ok(Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            })),
            _ => Ok(None),
        }
    }

    /// Records `creds` for `registry`, keeping every other entry and key.
    pub fn set(&self, registry: &str, creds: &Credentials) -> Result<(), AuthFileError> {
        let mut doc = self.read()?;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.username, creds.password));
        auths_mut(&mut doc).insert(registry.to_string(), serde_json::json!({ "auth": auth }));
        self.write(&doc)
    }

    /// Forgets `registry`'s credentials; false if there were none.
    pub fn remove(&self, registry: &str) -> Result<bool, AuthFileError> {
        let mut doc = self.read()?;
        let removed = auths_mut(&mut doc).remove(registry).is_some();
        if removed {
            self.write(&doc)?;
        }
        Ok(removed)
    }

    fn read(&self) -> Result<Map<String, Value>, AuthFileError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(source) => {
                return Err(AuthFileError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        serde_json::from_slice(&bytes).map_err(|source| AuthFileError::Json {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the file 0600 (it holds passwords) through a sibling renamed over it.
    fn write(&self, doc: &Map<String, Value>) -> Result<(), AuthFileError> {
        let io_err = |source| AuthFileError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let json = serde_json::to_vec_pretty(doc).expect("JSON values always serialize");
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.write_all(b"\n")?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io_err)
    }
}

/// The entry for `registry`; Docker Hub is also found under its legacy URL key.
fn lookup<'a>(doc: &'a Map<String, Value>, registry: &str) -> Option<&'a Value> {
    let auths = doc.get("auths")?.as_object()?;
    let keys: &[&str] = if registry == "docker.io" {
        &[
            "docker.io",
            "index.docker.io",
            "https://index.docker.io/v1/",
        ]
    } else {
        &[registry]
    };
    keys.iter().find_map(|k| auths.get(*k)).or_else(|| {
        // `https://registry:5000` and `registry:5000/` name the same registry.
        auths.iter().find_map(|(k, v)| {
            let bare = k
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            (bare == registry).then_some(v)
        })
    })
}

fn auths_mut(doc: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let auths = doc
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    auths.as_object_mut().expect("just made an object")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn set_get_remove_keep_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(
            &path,
            r#"{"auths": {"other:1": {"auth": "YTpi"}}, "credsStore": "x"}"#,
        )
        .unwrap();
        let file = AuthFile::at(&path);
        file.set("127.0.0.1:5000", &creds("user", "pa:ss")).unwrap();
        assert_eq!(
            file.get("127.0.0.1:5000").unwrap(),
            Some(creds("user", "pa:ss"))
        );
        assert_eq!(file.get("other:1").unwrap(), Some(creds("a", "b")));
        let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["credsStore"], "x");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(file.remove("127.0.0.1:5000").unwrap());
        assert!(!file.remove("127.0.0.1:5000").unwrap());
        assert_eq!(file.get("127.0.0.1:5000").unwrap(), None);
    }

    #[test]
    fn docker_hub_and_url_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "YTpi"}, "https://reg:5000/": {"username": "u", "password": "p"}}}"#,
        )
        .unwrap();
        let file = AuthFile::at(&path);
        assert_eq!(file.get("docker.io").unwrap(), Some(creds("a", "b")));
        assert_eq!(file.get("reg:5000").unwrap(), Some(creds("u", "p")));
        assert_eq!(file.get("nope").unwrap(), None);
    }

    #[test]
    fn missing_file_has_no_credentials_and_garbage_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            AuthFile::at(dir.path().join("none.json")).get("x").unwrap(),
            None
        );
        let path = dir.path().join("bad.json");
        fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            AuthFile::at(&path).get("x"),
            Err(AuthFileError::Json { .. })
        ));
        fs::write(&path, r#"{"auths": {"x": {"auth": "!!!"}}}"#).unwrap();
        assert!(matches!(
            AuthFile::at(&path).get("x"),
            Err(AuthFileError::BadEntry { .. })
        ));
    }
}
