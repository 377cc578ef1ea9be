//! The monitor's control socket (`control.sock` in the container's
//! directory): how `start` and `kill` reach the process that holds the
//! VM. One request line per connection, one reply line:
//! `start` | `kill SIGNAL [all]`  ->  `ok` | `error MESSAGE`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
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

/// Sends `request` to the monitor of the container in `dir`.
pub fn send(dir: &Path, request: Request) -> anyhow::Result<()> {
    let path = dir.join(super::state::CONTROL_SOCKET);
    let mut stream = UnixStream::connect(&path).with_context(|| {
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
        let listener = UnixListener::bind(&path)
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
}
