//! The monitor's control socket (`control.sock` in the container's
//! directory): how `start` and `kill` reach the process that holds the
//! VM. One request line per connection, one reply line:
//! `start` | `kill SIGNAL [all]`  ->  `ok` | `error MESSAGE`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

/// A request to the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Start,
    Kill { signal: i32, all: bool },
}

impl Request {
    fn line(self) -> String {
        match self {
            Request::Start => "start\n".into(),
            Request::Kill { signal, all } => {
                format!("kill {signal}{}\n", if all { " all" } else { "" })
            }
        }
    }

    fn parse(line: &str) -> Option<Request> {
        let mut words = line.split_whitespace();
        match (words.next()?, words.next(), words.next(), words.next()) {
            ("start", None, None, None) => Some(Request::Start),
            ("kill", Some(sig), all, None) => Some(Request::Kill {
                signal: sig.parse().ok()?,
                all: match all {
                    None => false,
                    Some("all") => true,
                    Some(_) => return None,
                },
            }),
            _ => None,
        }
    }
}

/// How long a command waits for the monitor's answer: `start` waits for
/// the guest to exec the process, which takes seconds on PVM hosts.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest path a unix socket address holds (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// `dir` as a prefix short enough for the sockets made in it (each name
/// under 20 bytes): itself, or, for a deep container directory
/// (containerd's and Docker's state roots with 64-character ids make
/// paths over 107 bytes), `/proc/self/fd/N` through the returned
/// descriptor of `dir`, which must stay open while the paths are used.
pub fn socket_dir(dir: &Path) -> anyhow::Result<(PathBuf, Option<File>)> {
    if dir.as_os_str().len() + 20 <= SUN_PATH_MAX {
        return Ok((dir.to_path_buf(), None));
    }
    let fd = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let short = Path::new("/proc/self/fd").join(fd.as_raw_fd().to_string());
    Ok((short, Some(fd)))
}

/// The socket at `path` as an address that fits (see [`socket_dir`]).
pub fn socket_path(path: &Path) -> anyhow::Result<(PathBuf, Option<File>)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if path.as_os_str().len() > SUN_PATH_MAX => {
            let (dir, fd) = socket_dir(dir)?;
            Ok((dir.join(name), fd))
        }
        _ => Ok((path.to_path_buf(), None)),
    }
}

/// Sends `request` to the monitor of the container in `dir`.
pub fn send(dir: &Path, request: Request) -> anyhow::Result<()> {
    let path = dir.join(super::state::CONTROL_SOCKET);
    let (address, _dir_fd) = socket_path(&path)?;
    let mut stream = UnixStream::connect(&address).with_context(|| {
        format!(
            "the container's monitor does not answer at {}",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.write_all(request.line().as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("no answer from the container's monitor")?;
    match reply.trim_end().split_once(' ') {
        _ if reply.trim_end() == "ok" => Ok(()),
        Some(("error", message)) => bail!("{message}"),
        _ if reply.is_empty() => bail!("the container's monitor exited without answering"),
        _ => bail!("garbled answer from the container's monitor: {reply:?}"),
    }
}

/// The monitor's end.
pub struct Server {
    listener: UnixListener,
}

/// One received request, to be answered.
pub struct Incoming {
    pub request: Option<Request>,
    stream: UnixStream,
}

impl Incoming {
    pub fn reply(mut self, result: Result<(), String>) {
        let line = match result {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {}\n", e.replace('\n', " ")),
        };
        let _ = self.stream.write_all(line.as_bytes());
    }
}

impl Server {
    pub fn bind(dir: &Path) -> anyhow::Result<Server> {
        let path = dir.join(super::state::CONTROL_SOCKET);
        let _ = std::fs::remove_file(&path);
        let (address, _dir_fd) = socket_path(&path)?;
        let listener = UnixListener::bind(&address)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        Ok(Server { listener })
    }

    /// The next request; garbled ones come back as `request: None`.
    pub fn next(&self) -> anyhow::Result<Incoming> {
        loop {
            let (stream, _) = self.listener.accept()?;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut line = String::new();
            let Ok(mut reader) = stream.try_clone().map(BufReader::new) else {
                continue;
            };
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            return Ok(Incoming {
                request: Request::parse(&line),
                stream,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Start,
            Request::Kill {
                signal: 15,
                all: false,
            },
            Request::Kill {
                signal: 9,
                all: true,
            },
        ] {
            assert_eq!(Request::parse(&r.line()), Some(r));
        }
        for bad in ["", "stop", "kill", "kill x", "kill 9 some", "start now"] {
            assert_eq!(Request::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_gets_its_reply() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::bind(dir.path()).unwrap();
        let t = std::thread::spawn(move || {
            let a = server.next().unwrap();
            assert_eq!(a.request, Some(Request::Start));
            a.reply(Ok(()));
            let b = server.next().unwrap();
            b.reply(Err("no such\nthing".into()));
        });
        send(dir.path(), Request::Start).unwrap();
        let e = send(
            dir.path(),
            Request::Kill {
                signal: 9,
                all: false,
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "no such thing");
        t.join().unwrap();
    }

    #[test]
    fn a_deep_container_dir_still_gets_its_socket() {
        // containerd's shim: /run/containerd/runc/NAMESPACE/<64-char id>.
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("x".repeat(40)).join("y".repeat(64));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            dir.join(super::super::state::CONTROL_SOCKET)
                .as_os_str()
                .len()
                > SUN_PATH_MAX
        );
        let server = Server::bind(&dir).unwrap();
        assert!(dir.join(super::super::state::CONTROL_SOCKET).exists());
        let t = std::thread::spawn(move || server.next().unwrap().reply(Ok(())));
        send(&dir, Request::Start).unwrap();
        t.join().unwrap();
    }
}
