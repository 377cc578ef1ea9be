//! Command-line configuration.
//!
//! Production runs the agent as `/init` with no arguments; the flags exist
//! so the same logic can run on a host as an ordinary process for tests.

use std::path::PathBuf;

use bulkhead_protocol::AGENT_VSOCK_PORT;
use thiserror::Error;

pub const USAGE: &str = "\
usage: bulkhead-agent [--listen-unix PATH | --vsock-port PORT] [--state-dir DIR]
                      [--cgroup-root DIR | --no-cgroups] [--no-init]

  --listen-unix PATH  serve on a Unix socket instead of vsock
  --vsock-port PORT   vsock port to listen on (default 1024)
  --state-dir DIR     where container mount points are made (default /run/bulkhead)
  --cgroup-root DIR   cgroup v2 mount to create container groups in (default /sys/fs/cgroup)
  --no-cgroups        do not put containers in a cgroup
  --no-init           do not act as PID 1 (no system mounts, exit on shutdown)";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("invalid vsock port {0:?}")]
    BadPort(String),
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("help requested")]
    Help,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Vsock { port: u32 },
    Unix(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    /// Perform PID-1 duties: system mounts, console, power-off.
    pub init: bool,
    pub state_dir: PathBuf,
    /// `None` runs containers without a cgroup.
    pub cgroup_root: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Listen::Vsock {
                port: AGENT_VSOCK_PORT,
            },
            init: true,
            state_dir: PathBuf::from("/run/bulkhead"),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
        }
    }
}

impl Config {
    /// Parses the arguments after the program name.
    pub fn from_args<I: IntoIterator<Item = String>>(args: I) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| ConfigError::MissingValue(name.to_string()))
            };
            match arg.as_str() {
                "--listen-unix" => config.listen = Listen::Unix(value(&arg)?.into()),
                "--vsock-port" => {
                    let v = value(&arg)?;
                    let port = v.parse().map_err(|_| ConfigError::BadPort(v))?;
                    config.listen = Listen::Vsock { port };
                }
                "--state-dir" => config.state_dir = value(&arg)?.into(),
                "--cgroup-root" => config.cgroup_root = Some(value(&arg)?.into()),
                "--no-cgroups" => config.cgroup_root = None,
                "--no-init" => config.init = false,
                "-h" | "--help" => return Err(ConfigError::Help),
                // The kernel passes unknown boot parameters to init as
                // arguments; PID 1 must not die of them.
                _ if config.init && !arg.starts_with("--") => {}
                _ => return Err(ConfigError::Unknown(arg)),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_are_the_guest_setup() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, Listen::Vsock { port: 1024 });
        assert!(c.init);
        assert_eq!(c.cgroup_root, Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn host_test_mode() {
        let c = parse(&[
            "--listen-unix",
            "/tmp/a.sock",
            "--state-dir",
            "/tmp/s",
            "--cgroup-root",
            "/sys/fs/cgroup/unified",
            "--no-init",
        ])
        .unwrap();
        assert_eq!(c.listen, Listen::Unix("/tmp/a.sock".into()));
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert!(!c.init);
        assert_eq!(parse(&["--no-cgroups"]).unwrap().cgroup_root, None);
    }

    #[test]
    fn bad_arguments() {
        assert_eq!(
            parse(&["--state-dir"]),
            Err(ConfigError::MissingValue("--state-dir".into()))
        );
        assert_eq!(
            parse(&["--vsock-port", "x"]),
            Err(ConfigError::BadPort("x".into()))
        );
        assert_eq!(
            parse(&["--bogus"]),
            Err(ConfigError::Unknown("--bogus".into()))
        );
        assert_eq!(
            parse(&["--no-init", "stray"]),
            Err(ConfigError::Unknown("stray".into()))
        );
    }

    #[test]
    fn init_ignores_kernel_leftovers() {
        assert!(parse(&["ro", "quiet"]).unwrap().init);
    }
}
