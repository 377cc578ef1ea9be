//! The container's eth0: the guest's virtio-net interface, moved into the
//! container's network namespace and given the address, MTU and routes the
//! host plumbed; and the name-service files written into its root.
//!
//! The interface is moved rather than shared so the container's network
//! namespace is the only one that sees it: the agent's own namespace keeps
//! nothing but `lo` and its vsock.

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::Path;

use bulkhead_netlink::{in_netns, Ipv4Cidr, Link, Netlink, NetlinkError, Route};
use bulkhead_protocol::{NetworkFiles, NetworkSpec};
use nix::errno::Errno;
use thiserror::Error;

use super::launch::open_in_root;

#[derive(Debug, Error)]
pub enum NetworkSetupError {
    #[error("the guest has no network interface (is virtio-net attached?)")]
    NoInterface,
    #[error("cannot configure the container's eth0: {0}")]
    Netlink(#[from] NetlinkError),
    #[error("cannot write the container's {path}: {source}")]
    File { path: &'static str, source: Errno },
}

/// What the interface is called in the container, as in Docker.
const CONTAINER_IFNAME: &str = "eth0";

/// Moves the guest's NIC into `netns` and configures it there per `spec`.
pub fn configure(spec: &NetworkSpec, netns: BorrowedFd<'_>) -> Result<(), NetworkSetupError> {
    let mut nl = Netlink::open()?;
    let nic = guest_nic(&mut nl)?;
    // Down first: a MAC cannot change on a running interface, and it must
    // not send a frame with the template's MAC.
    nl.set_up(nic.index, false)?;
    nl.set_mac(nic.index, spec.mac)?;
    nl.set_mtu(nic.index, spec.mtu)?;
    if nic.name != CONTAINER_IFNAME {
        nl.set_name(nic.index, CONTAINER_IFNAME)?;
    }
    nl.set_netns(nic.index, netns)?;
    in_netns(netns, || address_and_route(spec))?
}

/// The virtio-net interface: the one link that is not loopback.
fn guest_nic(nl: &mut Netlink) -> Result<Link, NetworkSetupError> {
    nl.links()?
        .into_iter()
        .find(|l| l.name != "lo" && l.mac.is_some_and(|m| m != [0; 6]))
        .ok_or(NetworkSetupError::NoInterface)
}

fn address_and_route(spec: &NetworkSpec) -> Result<(), NetworkSetupError> {
    let mut nl = Netlink::open()?;
    let eth = nl
        .link_by_name(CONTAINER_IFNAME)?
        .ok_or(NetworkSetupError::NoInterface)?;
    for a in &spec.addresses {
        nl.add_address(eth.index, cidr(a.addr, a.prefix))?;
    }
    nl.set_up(eth.index, true)?;
    for r in &spec.routes {
        nl.add_route(Route {
            dst: r.destination.map(|d| cidr(d.addr, d.prefix)),
            gateway: r.gateway,
            oif: Some(eth.index),
        })?;
    }
    Ok(())
}

fn cidr(addr: std::net::Ipv4Addr, prefix: u8) -> Ipv4Cidr {
    Ipv4Cidr { addr, prefix }
}

/// Writes `/etc/hosts`, `/etc/resolv.conf` and (when given)
/// `/etc/hostname` into the container's root, which the agent has
/// mounted at `rootfs`. Paths resolve inside the root, so an image whose
/// `/etc` is a symlink cannot make the agent write outside it.
pub fn write_files(rootfs: &Path, files: &NetworkFiles) -> Result<(), NetworkSetupError> {
    make_etc(rootfs).map_err(|source| NetworkSetupError::File {
        path: "/etc",
        source,
    })?;
    let mut entries = vec![
        ("/etc/hosts", files.hosts.as_str()),
        ("/etc/resolv.conf", files.resolv_conf.as_str()),
    ];
    let hostname = files.hostname.as_ref().map(|h| format!("{h}\n"));
    if let Some(h) = &hostname {
        entries.push(("/etc/hostname", h));
    }
    for (path, text) in entries {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
        open_in_root(rootfs, path.trim_start_matches('/'), flags, 0o644)
            .and_then(|mut f| {
                f.write_all(text.as_bytes())
                    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            })
            .map_err(|source| NetworkSetupError::File { path, source })?;
    }
    Ok(())
}

/// `/etc` in the root, if the image has none (one component: nothing to
/// resolve).
fn make_etc(rootfs: &Path) -> Result<(), Errno> {
    match std::fs::create_dir(rootfs.join("etc")) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> NetworkFiles {
        NetworkFiles {
            hosts: "127.0.0.1\tlocalhost\n10.89.0.2\tweb\n".into(),
            resolv_conf: "nameserver 10.0.0.53\n".into(),
            hostname: Some("web".into()),
        }
    }

    /// A fresh directory, removed when dropped.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p =
                std::env::temp_dir().join(format!("bulkhead-net-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn files_land_in_the_root() {
        let dir = Scratch::new("files");
        write_files(dir.path(), &files()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("etc/hosts"), files().hosts);
        assert_eq!(read("etc/resolv.conf"), "nameserver 10.0.0.53\n");
        assert_eq!(read("etc/hostname"), "web\n");
    }

    #[test]
    fn a_symlinked_etc_stays_inside_the_root() {
        let dir = Scratch::new("root");
        let outside = Scratch::new("outside");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("etc")).unwrap();
        // The absolute link resolves inside the root, where it names a
        // directory that does not exist: the write fails, nothing escapes.
        assert!(write_files(dir.path(), &files()).is_err());
        assert!(!outside.path().join("hosts").exists());
    }
}
