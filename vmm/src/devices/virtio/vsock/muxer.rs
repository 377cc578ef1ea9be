//! The host side of hybrid vsock: the listening Unix socket, the connection
//! table and the queue of packets waiting for guest rx buffers.
//!
//! The muxer never touches epoll directly. Operations record which fds need
//! their registration re-evaluated (and which closed streams must leave the
//! epoll set first); [`Muxer::sync_epoll`] applies that through the event
//! manager. Streams are only closed after leaving epoll, so an fd number can
//! never be reused while the event manager still maps it to us.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::{EventOps, EventSet, Events};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vm_memory::VolatileSlice;

use super::connection::{Connection, RxOutcome, Verdict};
use super::device::VsockError;
use super::host_connect::HostConnect;
use super::packet::{op, RxHeader, TxHeader, HOST_CID, TYPE_STREAM};

/// Cap on host streams (connected or handshaking), bounding fds a guest or
/// host program can make us hold.
pub const MAX_CONNECTIONS: usize = 1024;
/// Cap on RST replies waiting for rx buffers; more are dropped, which only
/// makes a misbehaving guest wait for its own timeouts.
const MAX_PENDING_RST: usize = 1024;
/// Host-initiated connections use local ports from here up, away from the
/// ports guest programs connect to.
const LOCAL_PORT_BASE: u32 = 1 << 30;

/// A connection's identity: (host-side port, guest-side port).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxItem {
    /// Ask this connection for its next packet.
    Conn(ConnKey),
    /// Tell the guest this connection does not exist (any more).
    Rst(ConnKey),
}

#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    /// Identifies our socket file, so Drop never removes a replacement.
    uds_ino: u64,
    listener: UnixListener,
    /// What the listener is registered for; None while paused or not yet added.
    listener_registered: Option<EventSet>,
    /// Accepting failed for lack of fds: stop watching the listener (it would
    /// stay readable and spin the loop) until some stream closes.
    listener_paused: bool,
    /// New host connections wait in the listen backlog (the device holds
    /// them while the guest has a transport reset to handle).
    listener_held: bool,
    conns: HashMap<ConnKey, Connection>,
    conn_fds: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, HostConnect>,
    rx_queue: VecDeque<RxItem>,
    queued: HashSet<ConnKey>,
    pending_rst: usize,
    dirty: Vec<RawFd>,
    /// Closed streams still in the epoll set, with what they were registered for.
    graveyard: Vec<(UnixStream, Option<EventSet>)>,
    next_local_port: u32,
}

impl Muxer {
    /// Listens on `uds_path`, replacing a stale socket left by a previous run.
    pub fn new(guest_cid: u32, uds_path: &Path) -> Result<Self, VsockError> {
        let path = uds_path.to_path_buf();
        match std::fs::symlink_metadata(uds_path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(uds_path).map_err(|source| VsockError::RemoveStale {
                    path: path.clone(),
                    source,
                })?
            }
            Ok(_) => return Err(VsockError::NotASocket { path }),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(VsockError::Bind { path, source }),
        }
        let bind_err = |source| VsockError::Bind {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let uds_ino = std::fs::metadata(uds_path).map_err(bind_err)?.ino();
        Ok(Self {
            guest_cid: u64::from(guest_cid),
            uds_path: path,
            uds_ino,
            listener,
            listener_registered: None,
            listener_paused: false,
            listener_held: false,
            conns: HashMap::new(),
            conn_fds: HashMap::new(),
            handshakes: HashMap::new(),
            rx_queue: VecDeque::new(),
            queued: HashSet::new(),
            pending_rst: 0,
            dirty: Vec::new(),
            graveyard: Vec::new(),
            next_local_port: LOCAL_PORT_BASE,
        })
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether packets are waiting for guest rx buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.rx_queue.is_empty()
    }

    /// Handles one packet from the guest's tx queue.
    pub fn send_pkt(&mut self, h: &TxHeader, data: Option<&VolatileSlice<'_, ()>>) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            log::debug!(
                "vsock: dropping packet from CID {} to CID {}",
                h.src_cid,
                h.dst_cid
            );
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if h.type_ != TYPE_STREAM {
            if h.op != op::RST {
                self.push_rst(key);
            }
            return;
        }
        match self.conns.get_mut(&key) {
            Some(conn) => {
                // A second REQUEST for a live connection: the guest lost track of it.
                let verdict = if h.op == op::REQUEST {
                    Verdict::Reset
                } else {
                    conn.send_pkt(h, data)
                };
                self.settle(key, verdict);
            }
            None if h.op == op::REQUEST => self.guest_connect(key, h),
            None if h.op != op::RST => self.push_rst(key),
            None => {}
        }
    }

    /// Produces the next packet for the guest, writing any payload into
    /// `data`; `None` when nothing can be sent right now.
    pub fn recv_pkt(&mut self, data: &VolatileSlice<'_, ()>) -> Option<RxHeader> {
        while let Some(item) = self.rx_queue.pop_front() {
            match item {
                RxItem::Rst(key) => {
                    self.pending_rst -= 1;
                    return Some(RxHeader {
                        src_port: key.local_port,
                        dst_port: key.peer_port,
                        op: op::RST,
                        ..Default::default()
                    });
                }
                RxItem::Conn(key) => {
                    self.queued.remove(&key);
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    match conn.recv_pkt(data) {
                        RxOutcome::Packet(h) => {
                            self.settle(key, Verdict::Keep);
                            return Some(h);
                        }
                        RxOutcome::Nothing => self.settle(key, Verdict::Keep),
                        RxOutcome::Reset => self.settle(key, Verdict::Reset),
                    }
                }
            }
        }
        None
    }

    /// Reacts to epoll readiness of one of our fds.
    pub fn handle_event(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept_host_connections();
        } else if self.handshakes.contains_key(&fd) {
            self.continue_handshake(fd);
        } else if let Some(&key) = self.conn_fds.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                let verdict = conn.notify(events);
                self.settle(key, verdict);
            }
        } else {
            log::debug!("vsock: event for unknown fd {fd}");
        }
    }

    /// Drops every connection (the guest reset the device); host programs
    /// see their streams close. The listener stays up for the next driver.
    pub fn reset(&mut self) {
        for (_, conn) in self.conns.drain() {
            let registered = conn.registered;
            self.graveyard.push((conn.into_stream(), registered));
        }
        self.conn_fds.clear();
        self.rx_queue.clear();
        self.queued.clear();
        self.pending_rst = 0;
    }

    /// Leaves new host connections in the listen backlog while `held`.
    pub fn hold_host_connections(&mut self, held: bool) {
        self.listener_held = held;
    }

    /// Brings the epoll set in line with what each fd needs now.
    pub fn sync_epoll(&mut self, ops: &mut EventOps) {
        let closed_any = !self.graveyard.is_empty();
        for (stream, registered) in self.graveyard.drain(..) {
            if let Some(events) = registered {
                if let Err(e) = ops.remove(Events::new(&stream, events)) {
                    log::error!("vsock: cannot unwatch a closed stream: {e}");
                }
            }
        }
        if closed_any {
            self.listener_paused = false;
        }
        let listener_wanted = if self.listener_paused || self.listener_held {
            EventSet::empty()
        } else {
            EventSet::IN
        };
        apply_interest(
            ops,
            self.listener.as_raw_fd(),
            listener_wanted,
            &mut self.listener_registered,
        );
        for fd in std::mem::take(&mut self.dirty) {
            let (wanted, registered) = if let Some(hc) = self.handshakes.get_mut(&fd) {
                (EventSet::IN, &mut hc.registered)
            } else if let Some(conn) = self.conn_fds.get(&fd).and_then(|k| self.conns.get_mut(k)) {
                (conn.wanted_events(), &mut conn.registered)
            } else {
                continue;
            };
            apply_interest(ops, fd, wanted, registered);
        }
    }

    /// Applies a connection's verdict and schedules its follow-up work.
    fn settle(&mut self, key: ConnKey, verdict: Verdict) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let verdict = match verdict {
            Verdict::Keep if conn.finished() => Verdict::Reset,
            v => v,
        };
        match verdict {
            Verdict::Keep => {
                self.dirty.push(conn.fd());
                if conn.has_pending_rx() && self.queued.insert(key) {
                    self.rx_queue.push_back(RxItem::Conn(key));
                }
            }
            Verdict::Reset => {
                self.remove_conn(key);
                self.push_rst(key);
            }
            Verdict::Drop => self.remove_conn(key),
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            self.conn_fds.remove(&conn.fd());
            let registered = conn.registered;
            self.graveyard.push((conn.into_stream(), registered));
        }
    }

    fn push_rst(&mut self, key: ConnKey) {
        if self.pending_rst >= MAX_PENDING_RST {
            log::warn!("vsock: too many pending resets, dropping one");
            return;
        }
        self.pending_rst += 1;
        self.rx_queue.push_back(RxItem::Rst(key));
    }

    fn stream_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    fn insert_conn(&mut self, key: ConnKey, conn: Connection) {
        self.conn_fds.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.settle(key, Verdict::Keep);
    }

    /// The guest connects to host port `key.local_port`: reach `PATH_<port>`.
    fn guest_connect(&mut self, key: ConnKey, request: &TxHeader) {
        if self.stream_count() >= MAX_CONNECTIONS {
            log::warn!("vsock: connection limit reached, refusing guest connect");
            self.push_rst(key);
            return;
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = Connection::peer_init(stream, key.local_port, request);
                self.insert_conn(key, conn);
            }
            Err(e) => {
                log::debug!(
                    "vsock: guest connect to {}: {e}",
                    Path::new(&path).display()
                );
                self.push_rst(key);
            }
        }
    }

    fn accept_host_connections(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.stream_count() >= MAX_CONNECTIONS {
                        log::warn!("vsock: connection limit reached, refusing host connect");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("vsock: cannot make host stream non-blocking: {e}");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.handshakes.insert(fd, HostConnect::new(stream));
                    self.dirty.push(fd);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    log::warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    let out_of_fds = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    self.listener_paused |= out_of_fds;
                    break;
                }
            }
        }
    }

    fn continue_handshake(&mut self, fd: RawFd) {
        let Some(hc) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let Some(line) = hc.poll_line().transpose() else {
            return; // The line is not complete yet.
        };
        let Some(hc) = self.handshakes.remove(&fd) else {
            return;
        };
        let ports = match line {
            Ok(peer_port) => self
                .alloc_local_port()
                .map(|local_port| (peer_port, local_port))
                .ok_or_else(|| "no free host port".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (peer_port, local_port) = match ports {
            Ok(ports) => ports,
            Err(why) => {
                log::debug!("vsock: refusing host connection: {why}");
                self.graveyard.push((hc.stream, hc.registered));
                return;
            }
        };
        let mut conn = Connection::local_init(hc.stream, local_port, peer_port);
        // Same fd, still in the epoll set from the handshake.
        conn.registered = hc.registered;
        let key = ConnKey {
            local_port,
            peer_port,
        };
        self.insert_conn(key, conn);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        // At most one port per connection is taken, so this many tries suffice.
        for _ in 0..=self.conns.len() {
            let port = self.next_local_port;
            self.next_local_port = if port == u32::MAX - 1 {
                LOCAL_PORT_BASE
            } else {
                port + 1
            };
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.uds_path)
            .map(|m| m.ino() == self.uds_ino)
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

/// Connects without ever blocking the event loop: a full backlog fails
/// (EAGAIN) instead of waiting.
fn connect_nonblocking(path: &Path) -> nix::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(UnixStream::from(fd))
}

/// Adds, changes or removes `fd`'s registration so it matches `wanted`.
fn apply_interest(
    ops: &mut EventOps,
    fd: RawFd,
    wanted: EventSet,
    registered: &mut Option<EventSet>,
) {
    let result = match (*registered, wanted.is_empty()) {
        (None, true) => return,
        (None, false) => ops.add(Events::new_raw(fd, wanted)),
        (Some(current), true) => ops.remove(Events::new_raw(fd, current)),
        (Some(current), false) if current == wanted => return,
        (Some(_), false) => ops.modify(Events::new_raw(fd, wanted)),
    };
    match result {
        Ok(()) => *registered = (!wanted.is_empty()).then_some(wanted),
        Err(e) => log::error!("vsock: cannot update epoll interest for fd {fd}: {e}"),
    }
}
