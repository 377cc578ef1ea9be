//! The frontend against a real virtiofsd: the vhost-user handshake, the
//! memory table and rings, a FUSE_INIT through the request queue and its
//! reply through the used ring and call eventfd, for a cold-started device
//! and for a slot restored from a snapshot into a fresh backend.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempdir::TempDir;

use super::*;
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::test_utils::{activate, round_trip, Desc, GuestQueue};
use crate::vstate::memory::create_shared_guest_memory;

const FUSE_INIT: u32 = 26;
const IN_HDR: u64 = 0x10_0000;
const OUT_HDR: u64 = 0x11_0000;

/// `$BULKHEAD_VIRTIOFSD`, `virtiofsd` on PATH, or cargo's bin directory:
/// `scripts/deps.sh` installs it, and these tests need the real one.
fn virtiofsd() -> PathBuf {
    let candidates = std::env::var_os("BULKHEAD_VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("virtiofsd"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/virtiofsd")));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("virtiofsd not found: run scripts/deps.sh")
}

/// A virtiofsd serving `shared` on `socket`, ended on drop.
struct Daemon(Child);

impl Daemon {
    fn start(shared: &Path, socket: &Path) -> Self {
        let child = Command::new(virtiofsd())
            .arg("--shared-dir")
            .arg(shared)
            .arg("--socket-path")
            .arg(socket)
            .args(["--sandbox", "none", "--log-level", "error"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Lays out both queues of a driver and starts the device through its
/// transport, as the guest does.
fn start_driver(mem: &GuestMemoryMmap, dev: Arc<Mutex<Fs>>) -> (MmioTransport, GuestQueue) {
    let mut t = MmioTransport::new(mem.clone(), dev);
    let hiprio = GuestQueue::new(GuestAddress(0x1000), FS_QUEUE_SIZE);
    let request = GuestQueue::new(GuestAddress(0x8000), FS_QUEUE_SIZE);
    activate(&mut t, &[&hiprio, &request]);
    (t, request)
}

/// Sends FUSE_INIT on the request queue and checks virtiofsd's reply.
fn fuse_init(mem: &GuestMemoryMmap, dev: &Mutex<Fs>, request: &mut GuestQueue, unique: u64) {
    // fuse_in_header (40 bytes) + fuse_init_in (64 bytes): version 7.31.
    let mut msg = vec![0u8; 104];
    msg[0..4].copy_from_slice(&104u32.to_le_bytes());
    msg[4..8].copy_from_slice(&FUSE_INIT.to_le_bytes());
    msg[8..16].copy_from_slice(&unique.to_le_bytes());
    msg[40..44].copy_from_slice(&7u32.to_le_bytes());
    msg[44..48].copy_from_slice(&31u32.to_le_bytes());
    mem.write_slice(&msg, GuestAddress(IN_HDR)).unwrap();
    request.add_chain(mem, &[Desc::r(IN_HDR, 104), Desc::w(OUT_HDR, 16 + 64)]);
    let dev = dev.lock().unwrap();
    dev.queue_events()[1].write(1).unwrap();

    let call = &dev.calls[1];
    let mut pfd = libc::pollfd {
        fd: call.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    assert_eq!(ready, 1, "virtiofsd never signalled the call eventfd");
    let (_, len) = request.next_used(mem).expect("a used entry");
    assert!(len >= 16, "reply of {len} bytes");
    let error: i32 = mem.read_obj(GuestAddress(OUT_HDR + 4)).unwrap();
    let got_unique: u64 = mem.read_obj(GuestAddress(OUT_HDR + 8)).unwrap();
    let major: u32 = mem.read_obj(GuestAddress(OUT_HDR + 16)).unwrap();
    assert_eq!((error, got_unique, major), (0, unique, 7));
}

#[test]
fn a_cold_device_serves_fuse_through_virtiofsd() {
    let dir = TempDir::new().unwrap();
    let socket = dir.as_path().join("fs.sock");
    let _daemon = Daemon::start(dir.as_path(), &socket);
    let mem = create_shared_guest_memory(16 << 20).unwrap();
    let dev = Arc::new(Mutex::new(Fs::new("share0", Some(&socket)).unwrap()));
    let (_t, mut request) = start_driver(&mem, dev.clone());
    // What the event loop does on the activation event.
    dev.lock().unwrap().start_backend().unwrap();
    fuse_init(&mem, &dev, &mut request, 1);
}

#[test]
fn a_restored_slot_serves_fuse_through_a_fresh_virtiofsd() {
    let dir = TempDir::new().unwrap();
    // The template: a slot without a backend that the driver started.
    let mem = create_shared_guest_memory(16 << 20).unwrap();
    let slot = Arc::new(Mutex::new(Fs::new("share1", None).unwrap()));
    let (t, request) = start_driver(&mem, slot.clone());
    assert!(slot.lock().unwrap().start_backend().is_ok());
    let state = round_trip(&slot.lock().unwrap().save());
    let regs = round_trip(&t.save());
    assert!(state.core.activated);

    let socket = dir.as_path().join("fs.sock");
    let _daemon = Daemon::start(dir.as_path(), &socket);
    let restored_mem = create_shared_guest_memory(16 << 20).unwrap();
    let mut image = vec![0u8; 16 << 20];
    mem.read_slice(&mut image, GuestAddress(0)).unwrap();
    restored_mem.write_slice(&image, GuestAddress(0)).unwrap();
    let dev = Arc::new(Mutex::new(
        Fs::restore(&state, Some(&socket), &restored_mem).unwrap(),
    ));
    let _t = MmioTransport::restore(restored_mem.clone(), dev.clone(), &regs).unwrap();
    assert!(dev.lock().unwrap().is_connected());
    assert_eq!(dev.lock().unwrap().tag(), "share1");
    let mut request = request;
    fuse_init(&restored_mem, &dev, &mut request, 7);
}

#[test]
fn backends_that_do_not_fit_are_refused() {
    let dir = TempDir::new().unwrap();
    let socket = dir.as_path().join("fs.sock");
    let _daemon = Daemon::start(dir.as_path(), &socket);
    // Anonymous memory has no file to share: starting must fail cleanly.
    let mem = crate::vstate::memory::create_guest_memory(16 << 20).unwrap();
    let dev = Arc::new(Mutex::new(Fs::new("s", Some(&socket)).unwrap()));
    let _ = start_driver(&mem, dev.clone());
    let err = dev.lock().unwrap().start_backend().unwrap_err();
    assert!(matches!(err, FsError::NotShareable { .. }), "{err}");

    // A socket nobody listens on.
    let dead = dir.as_path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let err = Fs::new("s", Some(&dead)).unwrap_err();
    assert!(matches!(err, FsError::Connect { .. }), "{err}");
}
