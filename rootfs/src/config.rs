//! The runtime part of an image config, and Docker's rules for combining it with what the user
//! asked for on the command line.

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

/// Docker's default `PATH`, used when neither the image nor the user sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entrypoint, Cmd, Env, WorkingDir and User from an image config (all empty for `dir:` images).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// `PORT/PROTO` entries (`80/tcp`): what `run -P` publishes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposed_ports: Vec<String>,
}

impl From<&ImageConfiguration> for ImageConfig {
    fn from(image: &ImageConfiguration) -> Self {
        let Some(c) = image.config() else {
            return ImageConfig::default();
        };
        let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        ImageConfig {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: non_empty(c.working_dir()),
            user: non_empty(c.user()),
            exposed_ports: c.exposed_ports().clone().unwrap_or_default(),
        }
    }
}

/// What the user passed to `bulkhead run`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOverrides {
    /// `--entrypoint`: `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    /// Arguments after the image name.
    pub args: Vec<String>,
    /// `-e NAME=VALUE` or `-e NAME` (value taken from the host environment).
    pub env: Vec<String>,
    /// `-w DIR`.
    pub working_dir: Option<String>,
    /// `-u USER[:GROUP]`.
    pub user: Option<String>,
}

/// The process to start in the container, before user names are resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` or `uid[:gid]`, to be resolved with [`crate::user::resolve_user`].
    pub user: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("invalid environment variable {0:?}: the name must not be empty")]
    InvalidEnv(String),
    #[error("working directory {0:?} must be an absolute path")]
    RelativeWorkingDir(String),
}

/// Combines the image config with the user's overrides, taking `-e NAME` values from this
/// process's environment.
pub fn resolve_process(image: &ImageConfig, ov: &RunOverrides) -> Result<ProcessSpec, ConfigError> {
    resolve_process_with(image, ov, |name| std::env::var(name).ok())
}

/// [`resolve_process`] with an explicit host environment lookup.
pub fn resolve_process_with(
    image: &ImageConfig,
    ov: &RunOverrides,
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<ProcessSpec, ConfigError> {
    let args = resolve_command(image, ov.entrypoint.as_deref(), &ov.args)?;
    let env = merge_env(&image.env, &ov.env, host_env)?;
    let cwd = ov
        .working_dir
        .clone()
        .filter(|d| !d.is_empty())
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".to_string());
    if !cwd.starts_with('/') {
        return Err(ConfigError::RelativeWorkingDir(cwd));
    }
    let user = ov
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .or_else(|| image.user.clone())
        .unwrap_or_else(|| "root".to_string());
    Ok(ProcessSpec {
        args,
        env,
        cwd,
        user,
    })
}

/// Docker's rules: an `--entrypoint` override (even "") drops the image's Cmd; user arguments
/// replace Cmd; the command is entrypoint followed by cmd.
pub fn resolve_command(
    image: &ImageConfig,
    entrypoint: Option<&str>,
    args: &[String],
) -> Result<Vec<String>, ConfigError> {
    let (entrypoint, default_cmd): (Vec<String>, &[String]) = match entrypoint {
        Some("") => (Vec::new(), &[]),
        Some(e) => (vec![e.to_string()], &[]),
        None => (image.entrypoint.clone(), &image.cmd),
    };
    let cmd = if args.is_empty() { default_cmd } else { args };
    let mut command = entrypoint;
    command.extend_from_slice(cmd);
    if command.is_empty() {
        return Err(ConfigError::NoCommand);
    }
    Ok(command)
}

/// Image `Env` overridden by key with the user's `-e` values; new keys are appended in the order
/// given. `-e NAME` copies NAME from the host, or is ignored when the host does not set it.
/// A default `PATH` is added when none is set, as Docker does.
pub fn merge_env(
    image_env: &[String],
    user_env: &[String],
    host_env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, ConfigError> {
    let mut env: Vec<String> = image_env.to_vec();
    for item in user_env {
        let entry = match item.split_once('=') {
            Some(("", _)) => return Err(ConfigError::InvalidEnv(item.clone())),
            Some(_) => item.clone(),
            None if item.is_empty() => return Err(ConfigError::InvalidEnv(item.clone())),
            None => match host_env(item) {
                Some(value) => format!("{item}={value}"),
                None => continue,
            },
        };
        let key = env_key(&entry);
        match env.iter_mut().find(|e| env_key(e) == key) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    }
    if !env.iter().any(|e| env_key(e) == "PATH") {
        env.push(DEFAULT_PATH.to_string());
    }
    Ok(env)
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_override_rules() {
        struct Case {
            entrypoint: &'static [&'static str],
            cmd: &'static [&'static str],
            ep_override: Option<&'static str>,
            args: &'static [&'static str],
            want: Result<&'static [&'static str], ConfigError>,
        }
        let cases = [
            // Image defaults only.
            Case {
                entrypoint: &[],
                cmd: &["sh"],
                ep_override: None,
                args: &[],
                want: Ok(&["sh"]),
            },
            Case {
                entrypoint: &["/ep", "-x"],
                cmd: &["a"],
                ep_override: None,
                args: &[],
                want: Ok(&["/ep", "-x", "a"]),
            },
            // User args replace Cmd but keep the entrypoint.
            Case {
                entrypoint: &["/ep"],
                cmd: &["a"],
                ep_override: None,
                args: &["b", "c"],
                want: Ok(&["/ep", "b", "c"]),
            },
            Case {
                entrypoint: &[],
                cmd: &["sh"],
                ep_override: None,
                args: &["ls", "-l"],
                want: Ok(&["ls", "-l"]),
            },
            // An entrypoint override resets the image Cmd.
            Case {
                entrypoint: &["/ep"],
                cmd: &["a"],
                ep_override: Some("/bin/echo"),
                args: &[],
                want: Ok(&["/bin/echo"]),
            },
            Case {
                entrypoint: &["/ep"],
                cmd: &["a"],
                ep_override: Some("/bin/echo"),
                args: &["hi"],
                want: Ok(&["/bin/echo", "hi"]),
            },
            // "" clears the entrypoint (and, being an override, the Cmd).
            Case {
                entrypoint: &["/ep"],
                cmd: &["a"],
                ep_override: Some(""),
                args: &["ls"],
                want: Ok(&["ls"]),
            },
            Case {
                entrypoint: &["/ep"],
                cmd: &["a"],
                ep_override: Some(""),
                args: &[],
                want: Err(ConfigError::NoCommand),
            },
            // Nothing at all.
            Case {
                entrypoint: &[],
                cmd: &[],
                ep_override: None,
                args: &[],
                want: Err(ConfigError::NoCommand),
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let image = ImageConfig {
                entrypoint: v(c.entrypoint),
                cmd: v(c.cmd),
                ..Default::default()
            };
            let got = resolve_command(&image, c.ep_override, &v(c.args));
            let want = c.want.clone().map(v);
            assert_eq!(got, want, "case {i}");
        }
        assert_eq!(
            ConfigError::NoCommand.to_string(),
            "no command specified: the image has no Entrypoint or Cmd and none was given"
        );
    }

    #[test]
    fn env_merge_overrides_by_key_and_reads_host() {
        let host = |name: &str| match name {
            "HOST_ONLY" => Some("from-host".to_string()),
            _ => None,
        };
        let image = v(&["PATH=/bin", "A=1", "B=2"]);
        let got = merge_env(
            &image,
            &v(&["B=20", "C=3", "HOST_ONLY", "UNSET_ON_HOST", "A="]),
            host,
        )
        .unwrap();
        assert_eq!(
            got,
            v(&["PATH=/bin", "A=", "B=20", "C=3", "HOST_ONLY=from-host"])
        );

        let got = merge_env(&[], &v(&["X=1"]), host).unwrap();
        assert_eq!(got, v(&["X=1", DEFAULT_PATH]));

        assert_eq!(
            merge_env(&[], &v(&["=oops"]), host),
            Err(ConfigError::InvalidEnv("=oops".into()))
        );
    }

    #[test]
    fn process_defaults_and_overrides() {
        let image = ImageConfig {
            cmd: v(&["sh"]),
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
            ..Default::default()
        };
        let p = resolve_process_with(&image, &RunOverrides::default(), |_| None).unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/app", "1000:1000"));

        let ov = RunOverrides {
            working_dir: Some("/tmp".into()),
            user: Some("nobody".into()),
            ..Default::default()
        };
        let p = resolve_process_with(&image, &ov, |_| None).unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/tmp", "nobody"));

        let p = resolve_process_with(
            &ImageConfig {
                cmd: v(&["x"]),
                ..Default::default()
            },
            &RunOverrides::default(),
            |_| None,
        )
        .unwrap();
        assert_eq!((p.cwd.as_str(), p.user.as_str()), ("/", "root"));

        let ov = RunOverrides {
            working_dir: Some("rel".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_process_with(&image, &ov, |_| None),
            Err(ConfigError::RelativeWorkingDir("rel".into()))
        );
    }

    #[test]
    fn reads_docker_style_config_json() {
        let json = r#"{
            "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["nginx", "-g", "daemon off;"],
                       "Entrypoint": null, "WorkingDir": "", "User": "101",
                       "ExposedPorts": {"80/tcp": {}}, "Volumes": null},
            "container_config": {"Hostname": "x"},
            "rootfs": {"type": "layers", "diff_ids": []}
        }"#;
        let parsed = ImageConfiguration::from_reader(json.as_bytes()).unwrap();
        let cfg = ImageConfig::from(&parsed);
        assert_eq!(
            cfg,
            ImageConfig {
                entrypoint: vec![],
                cmd: v(&["nginx", "-g", "daemon off;"]),
                env: v(&["PATH=/usr/bin"]),
                working_dir: None,
                user: Some("101".into()),
                exposed_ports: v(&["80/tcp"]),
            }
        );
    }
}
