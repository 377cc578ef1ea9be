//! A `bulkhead run` request made into a container plan: the image's root
//! disk (cached by digest), a scratch disk, named volumes, host
//! directories, and the container spec from the image config and flags.

use std::path::Path;

use anyhow::{bail, Context};
use bulkhead_network::{Networks, PortMapping};
use bulkhead_protocol::{
    ContainerSpec, ProcessSpec, Resources, Source, Storage, TtySize, User, Volume,
};
use bulkhead_rootfs::{RunOverrides, Store};

use super::mounts::{self, MountArg, MountSource};
use super::options::{parse_cpus, parse_size, scratch_mib, CPU_PERIOD_US};
use super::record;
use super::timings::Timings;
use super::RunArgs;
use crate::lifecycle::network::{BridgeRequest, NetworkPlan};
use crate::lifecycle::plan::guest_disk;
use crate::lifecycle::{tty, Disk, Plan};
use crate::paths;
use crate::share::{self, HostDir};

const SCRATCH_MIB: u64 = 1024;

/// What `run`'s flags ask for, checked before any disk is made.
pub struct Request {
    memory: Option<i64>,
    scratch_mib: u64,
    cpu_quota: Option<i64>,
    mounts: Vec<MountArg>,
    /// The network to join (`None`: `--network none`) and the ports to
    /// publish on it.
    network: Option<(String, Vec<PortMapping>)>,
}

impl Request {
    pub fn check(args: &RunArgs) -> anyhow::Result<Request> {
        let memory = args
            .memory
            .as_deref()
            .map(parse_size)
            .transpose()
            .context("invalid --memory")?;
        let cpu_quota = args.cpus.as_deref().map(parse_cpus).transpose()?;
        let scratch_mib = scratch_mib(&args.storage_opt, SCRATCH_MIB)?;
        let mounts = mounts::parse_all(&args.volumes, &args.mounts)?;
        if !host_dirs(&mounts).is_empty() {
            share::locate()?;
        }
        if let Some(h) = &args.hostname {
            if h.is_empty() || h.len() > 64 {
                bail!("invalid --hostname {h:?}");
            }
        }
        let network = network_request(args)?;
        paths::kernel()?;
        paths::agent()?;
        Ok(Request {
            memory,
            scratch_mib,
            cpu_quota,
            mounts,
            network,
        })
    }
}

/// `--network`, `-p`: the network must exist and every port spec parse.
fn network_request(args: &RunArgs) -> anyhow::Result<Option<(String, Vec<PortMapping>)>> {
    let ports = args
        .publish
        .iter()
        .map(|p| p.parse::<PortMapping>())
        .collect::<Result<Vec<_>, _>>()?;
    match args.network.as_str() {
        "none" if !ports.is_empty() || args.publish_all => {
            bail!("-p and -P need a network: not with --network none")
        }
        "none" => Ok(None),
        "host" => bail!("--network host is not possible: a microVM has its own network stack"),
        name => {
            Networks::open(&paths::root())?.get(name)?;
            Ok(Some((name.to_string(), ports)))
        }
    }
}

/// `-P`: each port the image exposes, on a random host port.
fn exposed_ports(exposed: &[String]) -> anyhow::Result<Vec<PortMapping>> {
    exposed
        .iter()
        .map(|p| {
            // An image says `80/tcp` (or `80`): `-p` syntax for a random port.
            p.parse::<PortMapping>()
                .with_context(|| format!("the image exposes {p:?}, which cannot be published"))
        })
        .collect()
}

/// The plan for `args`, with the scratch disk made in `dir`; `hostname`
/// (the container's id) unless `--hostname` says otherwise.
pub fn plan(
    args: &RunArgs,
    request: &Request,
    dir: &Path,
    hostname: &str,
    timings: &mut Timings,
) -> anyhow::Result<Plan> {
    let store = Store::open(paths::root()).context("cannot open the image store")?;
    let image = crate::pull::image_for(&store, &args.image, args.pull, &args.registry)?;
    let process = bulkhead_rootfs::resolve_process(
        &image.config,
        &RunOverrides {
            entrypoint: args.entrypoint.clone(),
            args: args.command.clone(),
            env: args.env.clone(),
            working_dir: args.workdir.clone(),
            user: args.user.clone(),
        },
    )?;
    let user = bulkhead_rootfs::resolve_user(&image.rootfs, &process.user)
        .with_context(|| format!("unable to find user {}", process.user))?;
    let root_disk = store
        .root_disk(&image)
        .context("cannot make the image's root disk")?;
    timings.mark(record::mark::IMAGE);

    let scratch = dir.join("scratch.ext4");
    bulkhead_rootfs::scratch_disk(&scratch, request.scratch_mib)
        .context("cannot make the scratch disk")?;
    let mut disks = vec![
        Disk {
            path: root_disk,
            read_only: true,
        },
        Disk {
            path: scratch,
            read_only: false,
        },
    ];
    let volumes = attach_mounts(&request.mounts, &store, &mut disks)?;
    timings.mark(record::mark::DISKS);

    let mut process_spec = ProcessSpec::new(process.args);
    process_spec.env = process.env;
    process_spec.cwd = process.cwd;
    process_spec.user = User::Id {
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids,
    };
    process_spec.terminal = args.tty;
    if args.tty {
        process_spec.console_size = tty::size().map(|(rows, cols)| TtySize { rows, cols });
    }
    let spec = ContainerSpec {
        hostname: Some(
            args.hostname
                .clone()
                .unwrap_or_else(|| hostname.to_string()),
        ),
        resources: Resources {
            memory_limit: request.memory,
            pids_limit: args.pids_limit,
            cpu_quota: request.cpu_quota,
            cpu_period: request.cpu_quota.map(|_| CPU_PERIOD_US),
            ..Default::default()
        },
        storage: Storage {
            lower: Source::block_device("/dev/vda"),
            scratch: Some(Source::block_device("/dev/vdb")),
            volumes,
            ..Storage::default()
        },
        ..ContainerSpec::new(process_spec)
    };
    spec.validate().context("invalid container spec")?;
    let network = match &request.network {
        None => NetworkPlan::None,
        Some((network, ports)) => {
            let mut ports = ports.clone();
            if args.publish_all {
                ports.extend(exposed_ports(&image.config.exposed_ports)?);
            }
            NetworkPlan::Bridge(BridgeRequest {
                network: network.clone(),
                container_id: hostname.to_string(),
                name: args.name.clone(),
                hostname: spec
                    .hostname
                    .clone()
                    .unwrap_or_else(|| hostname.to_string()),
                ports,
                dns: args.dns.clone(),
            })
        }
    };
    Ok(Plan {
        spec,
        disks,
        host_dirs: host_dirs(&request.mounts),
        mem_mib: Plan::mem_mib_for(request.memory),
        cold: args.cold,
        network,
        host_cgroup: true,
    })
}

/// The host directories among `mounts`, in order: one virtiofsd each.
fn host_dirs(mounts: &[MountArg]) -> Vec<HostDir> {
    mounts
        .iter()
        .filter_map(|m| match &m.source {
            MountSource::HostDir(path) => Some(HostDir {
                path: path.clone(),
                read_only: m.read_only,
            }),
            MountSource::Volume(_) => None,
        })
        .collect()
}

/// The container's volumes for `mounts`: each named volume's disk is
/// appended to `disks` (vdc, vdd, …), each host directory is the next
/// virtio-fs tag. Outermost first, as the agent mounts them in order.
fn attach_mounts(
    mounts: &[MountArg],
    store: &Store,
    disks: &mut Vec<Disk>,
) -> anyhow::Result<Vec<Volume>> {
    let mut volumes = Vec::new();
    let mut shares_given = 0;
    for m in mounts {
        let source = match &m.source {
            MountSource::Volume(name) => {
                let path = store
                    .ensure_volume(name, None)
                    .with_context(|| format!("cannot create volume {name}"))?;
                // Read-write even for `:ro`: ext4 may have to replay its
                // journal when mounted; the agent mounts it read-only for
                // the container.
                disks.push(Disk {
                    path,
                    read_only: false,
                });
                Source::block_device(guest_disk(disks.len() - 1)?)
            }
            MountSource::HostDir(_) => {
                shares_given += 1;
                Source::virtiofs(share::tag(shares_given - 1))
            }
        };
        volumes.push(Volume::new(source, m.destination.clone(), m.read_only));
    }
    // A volume nested in another (a disk at /srv/cache in a share at /srv)
    // must come after it.
    volumes.sort_by_key(|v| Path::new(&v.destination).components().count());
    Ok(volumes)
}
