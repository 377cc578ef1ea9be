//! Making a template: boot the guest with empty disk and virtio-fs slots,
//! wait for the agent's ready line, snapshot, and move the result into
//! place.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bulkhead_vmm::config::{ConsoleOutput, FsConfig, NetConfig, VmConfig, VsockConfig};
use bulkhead_vmm::vmm::{SnapshotHandle, VmExit};

use super::ready::ReadyWatcher;
use super::{OnBoot, TemplateMeta, TemplateSpec, DISK_SLOTS, META_FILE, NET_SLOT_MAC, SHARE_SLOTS};
use crate::share;

/// Boots on PVM hosts take tens of seconds; on real hosts well under one.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How a build's work directory is named: `<prefix><key>-<random>`.
pub const WORK_PREFIX: &str = ".build-";

/// Builds the template `key` for `spec` into `dir`, which must not exist.
pub fn build(
    spec: &TemplateSpec,
    key: &str,
    dir: &Path,
    on_boot: OnBoot<'_>,
) -> anyhow::Result<()> {
    let base = dir.parent().context("template directory has no parent")?;
    let work = tempfile::Builder::new()
        .prefix(&format!("{WORK_PREFIX}{key}-"))
        .tempdir_in(base)
        .with_context(|| format!("cannot make a build directory in {}", base.display()))?;
    let snapshot_dir = work.path().join("snapshot");
    let console_log = work.path().join("console.log");
    let started = Instant::now();
    let ended = boot_and_snapshot(spec, work.path(), &snapshot_dir, &console_log, on_boot);
    match ended {
        Ok(VmExit::Snapshotted) => {}
        Ok(VmExit::Stopped) => bail!("making template {key} was interrupted"),
        Ok(other) => bail!(
            "the template guest ended ({other:?}) before its agent was ready{}",
            console_tail(&console_log)
        ),
        Err(e) => bail!(
            "cannot make template {key}: {e:#}{}",
            console_tail(&console_log)
        ),
    }
    let meta = TemplateMeta {
        key: key.to_string(),
        kernel: spec.kernel.clone(),
        initramfs: spec.initramfs.clone(),
        vcpus: spec.vcpus,
        mem_mib: spec.mem_mib,
        vmm_build: super::vmm_build(),
        created_unix: super::unix_now(),
        boot_ms: started.elapsed().as_millis() as u64,
    };
    let meta_json = serde_json::to_vec_pretty(&meta)?;
    std::fs::write(snapshot_dir.join(META_FILE), meta_json)
        .context("cannot write template metadata")?;
    std::fs::rename(&snapshot_dir, dir)
        .with_context(|| format!("cannot install template in {}", dir.display()))?;
    super::notice(format_args!(
        "template {key} ready ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs the template guest until the snapshot is written (or it fails).
fn boot_and_snapshot(
    spec: &TemplateSpec,
    work: &Path,
    snapshot_dir: &Path,
    console_log: &Path,
    on_boot: OnBoot<'_>,
) -> anyhow::Result<VmExit> {
    let handle: Arc<OnceLock<SnapshotHandle>> = Arc::new(OnceLock::new());
    let on_ready = {
        let handle = handle.clone();
        let target = snapshot_dir.to_path_buf();
        move || {
            if let Some(h) = handle.get() {
                h.snapshot_to(target);
            }
        }
    };
    let log = std::fs::File::create(console_log)
        .with_context(|| format!("cannot create {}", console_log.display()))?;
    let mut config = VmConfig::new(&spec.kernel);
    config.seccomp = crate::confine::vmm_filters()?;
    config.initrd = Some(spec.initramfs.clone());
    config.mem_mib = spec.mem_mib;
    config.vcpus = spec.vcpus;
    config.empty_disk_slots = DISK_SLOTS;
    // The guest probes them at boot, with their tags; a run gives them
    // backends at restore.
    config.shares = (0..SHARE_SLOTS)
        .map(|i| FsConfig {
            tag: share::tag(i),
            socket: None,
        })
        .collect();
    // A NIC without a cable: the guest probes it (its rings and buffers
    // are in the snapshot); a run with a network plugs its TAP in at
    // restore, and the agent gives eth0 the run's MAC.
    config.net = Some(NetConfig {
        tap: None,
        mac: NET_SLOT_MAC,
    });
    config.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: work.join("vsock.sock"),
    });
    config.console = ConsoleOutput::Writer(Box::new(ReadyWatcher::new(
        log,
        bulkhead_protocol::READY_MARKER,
        on_ready,
    )));
    let vmm = bulkhead_vmm::builder::build(config).context("cannot build the template VM")?;
    let _ = handle.set(vmm.snapshot_handle());
    let stop = vmm.stop_handle();
    on_boot(stop.clone());
    let thread = std::thread::Builder::new()
        .name("template-vmm".into())
        .spawn(move || vmm.run())?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while !thread.is_finished() {
        if Instant::now() > deadline {
            stop.stop();
            let _ = thread.join();
            bail!(
                "the template guest's agent was not ready within {}s",
                BOOT_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match thread.join() {
        Ok(result) => Ok(result?),
        Err(_) => bail!("the template VMM thread panicked"),
    }
}

fn console_tail(log: &Path) -> String {
    let tail = crate::lifecycle::agent::console_tail(log, 15);
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nguest console (last lines):\n{tail}")
    }
}
