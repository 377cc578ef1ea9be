//! A network namespace a test makes for itself (`ip netns add`), so every
//! packet a networking test moves stays inside it: bulkhead runs there
//! (`ip netns exec`), and the test talks to its loopback, bridges and
//! containers from a thread that joined it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct NetNs {
    name: String,
}

impl NetNs {
    /// A new namespace with `lo` up and IPv4 forwarding on (what a host
    /// that publishes container ports has).
    pub fn new() -> NetNs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "bh-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the namespace is bound, for `nsenter --net=` and `setns`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that joined the namespace: its sockets are the
    /// namespace's.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            enter_path(&path);
            f()
        })
        .join()
        .expect("the thread in the test's netns panicked")
    }

    /// The body of `GET /` from `addr`, asked from inside the namespace and
    /// retried for up to two minutes, until a server there answers.
    pub fn http_get(&self, addr: &str) -> String {
        let addr = addr.to_string();
        self.run(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                match get_once(&addr) {
                    Ok(body) => return body,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(250))
                    }
                    Err(e) => panic!("GET http://{addr}/: {e}"),
                }
            }
        })
    }

    /// What `cmd ARGS` prints inside the namespace (stdout), and whether it
    /// succeeded.
    pub fn output(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn get_once(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {reply:?}")))
}

/// Moves the calling thread into the network namespace bound at `path`.
pub fn enter_path(path: &str) {
    let ns = std::fs::File::open(path).expect("open the test's netns");
    // SAFETY: setns on a namespace descriptor we hold; it changes only the
    // calling thread.
    let rc = unsafe { libc::setns(ns.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}
