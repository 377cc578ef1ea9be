//! The host side of vsock targets: the device's Unix socket path, and a
//! program listening on host port 1024 so guest REQUESTs there connect and
//! the stream paths run (other ports get RST, as with nobody listening).

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The host port a listener serves.
pub const LISTENED_PORT: u32 = 1024;

struct Host {
    _dir: tempfile::TempDir,
    uds: PathBuf,
    listener: UnixListener,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let listener = UnixListener::bind(dir.path().join(format!("v.sock_{LISTENED_PORT}")))
            .expect("bind the host listener");
        listener.set_nonblocking(true).unwrap();
        Host {
            _dir: dir,
            uds,
            listener,
        }
    })
}

/// Where the device under test listens (it replaces its own stale socket).
pub fn uds_path() -> &'static Path {
    &host().uds
}

/// Accepts every connection the guest made, sending `greeting` on each so
/// the device has host data to deliver. Dropping them closes the streams;
/// accepting at all keeps the listen backlog from filling across inputs.
pub fn accept_all(greeting: &[u8]) -> Vec<UnixStream> {
    let mut streams = Vec::new();
    while let Ok((mut s, _)) = host().listener.accept() {
        s.set_nonblocking(true).unwrap();
        let _ = s.write(greeting);
        streams.push(s);
    }
    streams
}
