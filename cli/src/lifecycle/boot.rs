//! The container's microVM coming up: a virtiofsd per shared directory,
//! then a template restored with the container's disks and shares in its
//! slots (made on first use), or a fresh boot of the guest kernel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bulkhead_vmm::boot::pvm::PvmCompat;

use super::network::{self, Attached};
use super::plan::Plan;
use super::signals::SignalRouter;
use super::vm::{RunningVm, StartError};
use super::vm_spec::{DiskSpec, NetSpec, Source, VmFiles, VmSpec, VM_DIR};
use crate::paths;
use crate::share::{self, Shares};
use crate::template::{self, TemplateSpec};

/// How long a failed start waits for a dying virtiofsd's exit status, to
/// blame it rather than what its death broke.
pub const SHARE_GRACE: Duration = Duration::from_millis(200);

/// The names of a container's VM files in its directory.
pub const VSOCK_SOCKET: &str = "vsock.sock";
pub const CONSOLE_LOG: &str = "console.log";

/// The agent's vsock socket of the container whose directory is `dir`.
pub fn vsock_socket(dir: &Path) -> PathBuf {
    dir.join(VM_DIR).join(VSOCK_SOCKET)
}

/// How the VM came to be.
#[derive(Debug, Clone)]
pub enum Boot {
    Cold,
    Warm { template: String, built: bool },
}

/// A running VM with its share daemons and network. Fields drop in order:
/// the VM before the daemons that serve it and its network lease.
pub struct Booted {
    pub vm: RunningVm,
    pub shares: Shares,
    /// eth0's TAP and what the agent is to make of it; `None`: only `lo`.
    pub net: Option<Attached>,
    pub boot: Boot,
    pub uds: PathBuf,
    pub console_log: PathBuf,
    /// The host cgroup this process (the VM and its virtiofsd) runs in;
    /// left once the VM and the virtiofsd above are gone.
    _cgroup: Option<super::host_cgroup::HostCgroup>,
    /// Holds `dir` open while the sockets are reached through it.
    _dir: Option<std::fs::File>,
}

/// Starts `plan`'s VM with its files in `dir`. A signal that arrives
/// meanwhile stops the VM (through `router`).
pub fn boot(plan: &Plan, dir: &Path, router: &SignalRouter) -> anyhow::Result<Booted> {
    let run_dir = dir;
    let kernel = paths::kernel()?;
    let agent = paths::agent()?;
    let initramfs = paths::agent_initramfs(&agent)?;
    // First, so that the virtiofsd started below are in it too.
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let cgroup = plan
        .host_cgroup
        .then(|| super::host_cgroup::HostCgroup::join(name.as_deref().unwrap_or("vm")));
    let vm_dir = run_dir.join(VM_DIR);
    std::fs::create_dir_all(&vm_dir)
        .with_context(|| format!("cannot create {}", vm_dir.display()))?;
    // Sockets are bound by path; a deep `dir` is reached through a descriptor.
    let (sockets, dir_fd) = super::control::socket_dir(&vm_dir)?;
    let sockets = sockets.as_path();
    let net = network::attach(&plan.network)?;
    let mut shares = if plan.host_dirs.is_empty() {
        Shares::default()
    } else {
        Shares::start(&share::locate()?, &plan.host_dirs, sockets, run_dir)?
    };
    let machine = Machine {
        kernel,
        initramfs,
        mem_mib: plan.mem_mib,
        disks: plan
            .disks
            .iter()
            .map(|d| DiskSpec {
                path: d.path.clone(),
                read_only: d.read_only,
            })
            .collect(),
        shares: shares.sockets(),
        uds: sockets.join(VSOCK_SOCKET),
        console_log: run_dir.join(CONSOLE_LOG),
        net: net.as_ref(),
        run_dir: run_dir.to_path_buf(),
    };
    let started = if !plan.cold && plan.fits_a_template() {
        start_warm(&machine, &mut shares, &|stop| router.set_vm(stop))
    } else {
        start_cold(&machine).map(|vm| (vm, Boot::Cold))
    };
    // A virtiofsd that died makes the VM fail to connect (or its guest
    // hang): its own message says why.
    let (vm, boot) = match started {
        Ok(started) => started,
        Err(e) => return Err(shares.failure_within(SHARE_GRACE).map_or(e, Into::into)),
    };
    if let Some(e) = shares.failure() {
        return Err(e.into());
    }
    let stop = vm.stopper();
    shares.watch(move || stop.stop());
    router.set_vm(vm.stopper());
    let (uds, console_log) = (machine.uds, machine.console_log);
    Ok(Booted {
        vm,
        shares,
        net,
        boot,
        uds,
        console_log,
        _cgroup: cgroup,
        _dir: dir_fd,
    })
}

/// The VM's hardware, whether it boots or is restored.
struct Machine<'a> {
    kernel: PathBuf,
    initramfs: PathBuf,
    mem_mib: u64,
    /// Image (read-only), scratch, volumes: vda, vdb, vdc...
    disks: Vec<DiskSpec>,
    /// The listening virtiofsd socket of each share, in tag order.
    shares: Vec<PathBuf>,
    uds: PathBuf,
    console_log: PathBuf,
    net: Option<&'a Attached>,
    /// The container's directory (`uds` may reach it by a shorter path).
    run_dir: PathBuf,
}

impl Machine<'_> {
    fn spec(&self, source: Source) -> VmSpec {
        VmSpec {
            source,
            disks: self.disks.clone(),
            shares: self.shares.clone(),
            uds: self.uds.clone(),
            net: self.net.map(|n| NetSpec {
                tap_name: n.tap.name().to_string(),
                mac: n.spec.mac,
            }),
        }
    }

    /// The VM's own files: a new console log, its own handle on the TAP
    /// (a retried restore gets another).
    fn files(&self) -> anyhow::Result<VmFiles> {
        let path = &self.console_log;
        let console = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let tap = self
            .net
            .map(|n| {
                n.tap
                    .try_clone()
                    .context("cannot share the TAP with the VM")
            })
            .transpose()?;
        Ok(VmFiles { console, tap })
    }

    fn start(&self, source: Source) -> anyhow::Result<RunningVm> {
        Ok(RunningVm::start(
            &self.spec(source),
            self.files()?,
            &self.run_dir,
        )?)
    }
}

/// Boots the guest kernel with the container's disks.
fn start_cold(m: &Machine<'_>) -> anyhow::Result<RunningVm> {
    m.start(Source::Boot {
        kernel: m.kernel.clone(),
        initrd: m.initramfs.clone(),
        mem_mib: m.mem_mib,
        pvm_compat: PvmCompat::Auto.enabled(),
    })
    .context("cannot start the microVM")
}

/// Restores the template for this VM's shape (made on first use) with the
/// container's disks and shares in its slots; a template that cannot be
/// restored is made again, once.
fn start_warm(
    m: &Machine<'_>,
    shares: &mut Shares,
    on_boot: template::OnBoot<'_>,
) -> anyhow::Result<(RunningVm, Boot)> {
    let spec = TemplateSpec {
        kernel: m.kernel.clone(),
        initramfs: m.initramfs.clone(),
        vcpus: 1,
        mem_mib: m.mem_mib,
    };
    let mut tpl = template::ensure(&spec, on_boot)?;
    let restore = |dir: &Path| {
        m.start(Source::Restore {
            snapshot_dir: dir.to_path_buf(),
        })
    };
    let vm = match restore(&tpl.dir) {
        Ok(vm) => vm,
        Err(e) if is_template_fault(&e) => {
            tpl = template::rebuild(&spec, &tpl, &format!("{e:#}"), on_boot)?;
            // The failed restore may have connected to them.
            shares.restart()?;
            restore(&tpl.dir).context("cannot restore the rebuilt template")?
        }
        Err(e) => return Err(e.context("cannot restore the microVM")),
    };
    Ok((
        vm,
        Boot::Warm {
            template: tpl.key,
            built: tpl.built,
        },
    ))
}

/// Whether a restore failed because of the template itself (stale,
/// corrupt, from another host) rather than this container's inputs.
fn is_template_fault(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StartError>()
        .is_some_and(StartError::is_template_fault)
}

impl Booted {
    /// Explains a VM that died or an agent that never answered, with the
    /// end of the guest console (where the kernel says why; a kernel panic
    /// becomes the message itself); or, if a
    /// virtiofsd died, with what it said (the guest only saw its files go
    /// away). Ends the VM.
    pub fn explain(mut self, e: anyhow::Error) -> anyhow::Error {
        let ended = self.vm.finish(Duration::from_millis(500));
        if let Some(failed) = self.shares.failure_within(SHARE_GRACE) {
            return failed.into();
        }
        let tail = super::agent::console_tail(&self.console_log, 15);
        let mut msg = match super::console_log::kernel_panic(&self.console_log) {
            Some(reason) => format!("the guest kernel panicked: {reason}"),
            None => format!("{e:#}"),
        };
        if let Err(vm_err) = ended {
            msg.push_str(&format!(": {vm_err}"));
        }
        if !tail.trim().is_empty() {
            msg.push_str("\nguest console (last lines):\n");
            msg.push_str(&tail);
        }
        anyhow::anyhow!(msg)
    }
}
