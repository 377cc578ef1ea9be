//! Firecracker's HTTP API over its Unix socket, by hand: one small
//! HTTP/1.1 request per connection, and its response read back up to the
//! length it announces (Firecracker keeps connections open, so reading to
//! EOF would hang).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Longest response we accept: Firecracker's are a few hundred bytes.
const MAX_RESPONSE: usize = 64 << 10;
/// How long one API call may take (a full snapshot of 128 MiB on a slow
/// disk included).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Firecracker API socket {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed HTTP response from Firecracker: {0}")]
    Malformed(&'static str),
    #[error("Firecracker answered {method} {uri} with {status}: {body}")]
    Status {
        method: &'static str,
        uri: String,
        status: u16,
        body: String,
    },
    #[error("Firecracker exited before its API socket {0} came up")]
    Exited(String),
    #[error("Firecracker's API socket {0} did not come up in time")]
    NoSocket(String),
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// The bytes of a request with a JSON body.
pub fn format_request(method: &str, uri: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A complete response at the start of `buf`, or `None` while more bytes
/// are needed. No `Content-Length` means no body (Firecracker's 204s).
pub fn parse_response(buf: &[u8]) -> Result<Option<Response>, ApiError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ApiError::Malformed("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ApiError::Malformed("no HTTP/1.x status line"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(ApiError::Malformed("no status code"))?;
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| ApiError::Malformed("bad Content-Length"))?;
            }
        }
    }
    let body_start = head_end + 4;
    if length > MAX_RESPONSE {
        return Err(ApiError::Malformed("response too large"));
    }
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = String::from_utf8_lossy(&buf[body_start..body_start + length]).into_owned();
    Ok(Some(Response { status, body }))
}

/// Sends one request on a fresh connection; a status other than 2xx is an
/// error carrying Firecracker's own message.
pub fn call(
    socket: &Path,
    method: &'static str,
    uri: &str,
    body: &serde_json::Value,
) -> Result<Response, ApiError> {
    let io = |source| ApiError::Io {
        path: socket.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT)).map_err(io)?;
    stream
        .write_all(&format_request(method, uri, &body.to_string()))
        .map_err(io)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let response = loop {
        if let Some(r) = parse_response(&buf)? {
            break r;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(ApiError::Malformed("response too large"));
        }
        match stream.read(&mut chunk).map_err(io)? {
            0 => return Err(ApiError::Malformed("connection closed mid-response")),
            n => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if !(200..300).contains(&response.status) {
        return Err(ApiError::Status {
            method,
            uri: uri.to_string(),
            status: response.status,
            body: response.body,
        });
    }
    Ok(response)
}

/// Waits until `child` accepts connections on `socket`. Polls every
/// 200 µs: this wait is inside the timed restore, so it must add little.
pub fn wait_for_socket(
    socket: &Path,
    child: &mut Child,
    timeout: Duration,
) -> Result<(), ApiError> {
    let deadline = Instant::now() + timeout;
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return Err(ApiError::Exited(socket.display().to_string()));
        }
        if Instant::now() >= deadline {
            return Err(ApiError::NoSocket(socket.display().to_string()));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn requests_carry_their_body_length() {
        let req = format_request("PUT", "/vm", r#"{"state":"Paused"}"#);
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("PUT /vm HTTP/1.1\r\n"));
        assert!(text.contains("\r\nContent-Length: 18\r\n"));
        assert!(text.contains("\r\nContent-Type: application/json\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"state\":\"Paused\"}"));
    }

    #[test]
    fn responses_parse_once_complete() {
        let full = b"HTTP/1.1 400 Bad Request\r\nServer: Firecracker API\r\n\
            Content-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"fault_message\":\"no\"}";
        for cut in [0, 10, 40, full.len() - 1] {
            assert_eq!(parse_response(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        let r = parse_response(full).unwrap().unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, "{\"fault_message\":\"no\"}");
        let no_content = b"HTTP/1.1 204 \r\nServer: Firecracker API\r\n\r\n";
        assert_eq!(
            parse_response(no_content).unwrap(),
            Some(Response {
                status: 204,
                body: String::new()
            })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        ] {
            assert!(matches!(parse_response(bad), Err(ApiError::Malformed(_))));
        }
    }

    /// A one-shot fake Firecracker answering with `reply`; returns what it
    /// was sent.
    fn fake_server(socket: &Path, reply: &'static [u8]) -> std::thread::JoinHandle<Vec<u8>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            s.write_all(reply).unwrap();
            // Keep the connection open, as Firecracker does.
            std::thread::sleep(Duration::from_millis(100));
            buf.truncate(n);
            buf
        })
    }

    #[test]
    fn calls_succeed_on_2xx_and_report_faults() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let server = fake_server(&sock, b"HTTP/1.1 204 \r\n\r\n");
        let body = serde_json::json!({"state": "Paused"});
        assert_eq!(call(&sock, "PATCH", "/vm", &body).unwrap().status, 204);
        let sent = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(sent.starts_with("PATCH /vm HTTP/1.1") && sent.ends_with(&body.to_string()));

        std::fs::remove_file(&sock).unwrap();
        let server = fake_server(
            &sock,
            b"HTTP/1.1 400 \r\nContent-Length: 26\r\n\r\n{\"fault_message\":\"nope!\"}\n",
        );
        let e = call(&sock, "PUT", "/snapshot/load", &body).unwrap_err();
        server.join().unwrap();
        assert!(matches!(e, ApiError::Status { status: 400, .. }));
        assert!(e.to_string().contains("nope!"));
    }

    #[test]
    fn a_child_that_exits_never_brings_its_socket_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let e = wait_for_socket(&dir.path().join("s"), &mut child, Duration::from_secs(5));
        assert!(matches!(e, Err(ApiError::Exited(_))));
    }
}
