//! The host side of hybrid vsock in tests: serving a guest's connection
//! and connecting to a guest's port through the VMM's Unix socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::{Spawned, VM_TIMEOUT};

/// Accepts one guest connection on `PATH_5000`, answers its line and
/// returns it.
pub fn serve_guest_connection(listener: UnixListener) -> std::io::Result<String> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + VM_TIMEOUT;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(VM_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    (&stream).write_all(b"pong from host\n")?;
    Ok(line)
}

/// Connects to the guest's port through `uds`: `CONNECT` until the guest
/// listens (until then the device closes the stream; before the guest's
/// driver is up the first attempt just waits), then `OK <port>`.
pub fn connect_to_guest(
    vm: &mut Spawned,
    uds: &Path,
    port: u32,
) -> Result<(UnixStream, String), String> {
    let start = Instant::now();
    let mut attempts = 0;
    let mut last = String::from("never tried");
    while vm.is_running() && start.elapsed() < VM_TIMEOUT {
        attempts += 1;
        // A VMM that exits closes the stream, which ends the wait too.
        let patience = VM_TIMEOUT.saturating_sub(start.elapsed());
        match try_connect(uds, port, patience) {
            Ok(Some(connected)) => return Ok(connected),
            Ok(None) => last = "guest refused (not listening yet?)".into(),
            Err(e) => last = format!("{e} at {:?}", start.elapsed()),
        }
        thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "cannot reach guest port {port} through {} in {attempts} attempts over {:?}: {last}",
        uds.display(),
        start.elapsed()
    ))
}

fn try_connect(
    uds: &Path,
    port: u32,
    patience: Duration,
) -> std::io::Result<Option<(UnixStream, String)>> {
    let mut stream = UnixStream::connect(uds)?;
    stream.set_read_timeout(Some(patience.max(Duration::from_secs(1))))?;
    writeln!(stream, "CONNECT {port}")?;
    // Byte by byte: whatever follows the line is the guest's data.
    let mut line = Vec::new();
    let mut byte = [0u8];
    loop {
        match stream.read(&mut byte)? {
            0 => return Ok(None),
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(Some((stream, String::from_utf8_lossy(&line).into_owned())))
}

/// Sends `payload` through the guest's echo on `port` and returns the
/// `OK` line and what came back.
pub fn echo_through_guest(
    vm: &mut Spawned,
    uds: &Path,
    port: u32,
    payload: &[u8],
) -> Result<(String, Vec<u8>), String> {
    let (stream, ok) = connect_to_guest(vm, uds, port)?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sent = payload.to_vec();
    // Concurrently: the guest echoes while we send, and both directions
    // stall on credit once a window is full.
    let send = thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&sent)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut echoed = Vec::new();
    let read = (&stream).read_to_end(&mut echoed);
    let sent = send.join().expect("sender thread panicked");
    sent.map_err(|e| format!("send to the guest: {e}"))?;
    read.map_err(|e| format!("read the echo after {} bytes: {e}", echoed.len()))?;
    Ok((ok, echoed))
}
