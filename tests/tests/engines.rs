//! bulkhead as the OCI runtime of real container engines: podman (through
//! conmon), containerd 1.6 (`ctr`, through containerd-shim-runc-v2) and
//! Docker (dockerd with a containerd of its own). Each test keeps every
//! engine's state and bulkhead's in its own temporary directory, starts the
//! daemons it needs and stops them, and checks that nothing is left: no
//! process mentions the directory, no container state is left in
//! bulkhead's roots, no container in the engine.
//!
//! Engines scrub the environment of the runtime they call (podman hands
//! conmon and the runtime only PATH, HOME, XDG_RUNTIME_DIR and a few
//! more), so the runtime each engine is given is a two-line script that sets
//! the test's BULKHEAD_* variables and execs bulkhead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_tests::oci::{busybox_layer, tar_layer, write_layout};
use bulkhead_tests::{bulkhead_bin, kernel, shared_templates, tempdir, Run};

/// An engine program, or a failure that says how to get it.
fn require(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed: run scripts/deps.sh (CI installs it)")
        })
}

/// One test's private world: the directory everything lives in and the
/// runtime script the engines call.
struct World {
    dir: tempfile::TempDir,
    runtime: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = tempdir();
        let runtime = dir.path().join("bulkhead-runtime");
        let mut env = vec![
            ("BULKHEAD_ROOT", dir.path().join("bulkhead")),
            ("BULKHEAD_KERNEL", kernel()),
            ("BULKHEAD_TEMPLATES", shared_templates()),
        ];
        if let Some(agent) = std::env::var_os("BULKHEAD_AGENT") {
            env.push(("BULKHEAD_AGENT", agent.into()));
        }
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in env {
            script += &format!("export {k}='{}'\n", v.display());
        }
        script += &format!("exec '{}' \"$@\"\n", bulkhead_bin().display());
        std::fs::write(&runtime, script).unwrap();
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
        World { dir, runtime }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A root file system tarball: busybox, /etc/passwd with nobody.
    fn rootfs_tar(&self) -> PathBuf {
        let tar = self.path().join("rootfs.tar");
        std::fs::write(&tar, tar_layer(&busybox_layer())).unwrap();
        tar
    }

    /// Processes (other than us) whose command line mentions this world.
    fn processes(&self) -> Vec<String> {
        let me = std::process::id().to_string();
        let needle = self.path().display().to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == me || !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
        found
    }

    /// Nothing of the test's containers is left: no monitor, virtiofsd or
    /// daemon mentions the world (within a few seconds), and no container
    /// directory is left in bulkhead's state `roots`.
    fn assert_clean(&self, roots: &[PathBuf], context: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.processes();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes left behind: {left:#?}\n{context}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut roots = roots.to_vec();
        roots.push(self.path().join("bulkhead/containers"));
        for root in roots {
            let entries: Vec<_> = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(
                entries.is_empty(),
                "container state left in {}: {entries:?}\n{context}",
                root.display()
            );
        }
    }
}

/// Runs `cmd` with stdin from /dev/null and a time limit.
fn output(cmd: &mut Command) -> Run {
    let mut timed = Command::new("timeout");
    timed
        .arg("-k")
        .arg("10")
        .arg(bulkhead_tests::VM_TIMEOUT.as_secs().to_string())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let started = Instant::now();
    let out = timed
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    eprintln!(
        "{:?} {:?}: {:.1?}",
        cmd.get_program(),
        cmd.get_args().next(),
        started.elapsed()
    );
    Run::from_output(out)
}

fn podman(world: &World) -> Command {
    let p = world.path();
    let mut cmd = Command::new(require("podman"));
    cmd.arg("--root")
        .arg(p.join("podman/root"))
        .arg("--runroot")
        .arg(p.join("podman/runroot"))
        .arg("--tmpdir")
        .arg(p.join("podman/tmp"))
        .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "file", "--runtime"])
        .arg(&world.runtime)
        // Its own containers.conf and registries: none of the host's.
        .env("CONTAINERS_CONF", p.join("containers.conf"))
        .env("XDG_CONFIG_HOME", p.join("config"))
        .env("TMPDIR", p);
    cmd
}

/// `localhost/NAME` in the world's podman, with entrypoint `sh -c`, user
/// nobody and workdir /tmp.
fn podman_image(world: &World, name: &str) -> String {
    std::fs::write(world.path().join("containers.conf"), "").unwrap();
    let image = format!("localhost/{name}");
    let tar = world.rootfs_tar();
    let run = output(
        podman(world)
            .args(["import", "--change", r#"ENTRYPOINT ["/bin/sh","-c"]"#])
            .args(["--change", "USER nobody", "--change", "WORKDIR /tmp"])
            .arg(&tar)
            .arg(&image),
    );
    assert_eq!(run.code, Some(0), "podman import: {run:?}");
    image
}

fn podman_containers(world: &World) -> String {
    let run = output(podman(world).args(["ps", "-a", "-q"]));
    assert_eq!(run.code, Some(0), "podman ps: {run:?}");
    run.stdout.trim().to_string()
}

#[test]
fn podman_run_rm_with_entrypoint_user_workdir_and_exit_code() {
    let world = World::new();
    let image = podman_image(&world, "bh-entry");
    let run = output(
        podman(&world)
            .args(["run", "--rm", "--network", "none"])
            .args([
                &image,
                "echo uid=$(id -u) pwd=$(pwd) args=$0,$1; exit 7",
                "first",
                "second",
            ]),
    );
    assert_eq!(run.code, Some(7), "{run:?}");
    assert!(
        run.stdout
            .contains("uid=65534 pwd=/tmp args=first,second\n"),
        "{run:?}"
    );
    assert_eq!(podman_containers(&world), "", "container left in podman");
    world.assert_clean(&[], &format!("{run:?}"));
}

#[test]
fn podman_detached_exec_logs_stop_rm() {
    let world = World::new();
    let image = podman_image(&world, "bh-detached");
    let name = format!("bh-detached-{}", std::process::id());
    let run = output(
        podman(&world)
            .args(["run", "-d", "--name", &name, "--network", "none"])
            .args([
                &image,
                "echo started; trap 'echo got-term; exit 0' TERM; while true; do sleep 1; done",
            ]),
    );
    assert_eq!(run.code, Some(0), "podman run -d: {run:?}");
    let exec = output(podman(&world).args([
        "exec",
        &name,
        "sh",
        "-c",
        "echo exec-uid=$(id -u) pwd=$(pwd); exit 3",
    ]));
    assert_eq!(exec.code, Some(3), "podman exec: {exec:?}");
    assert!(
        exec.stdout.contains("exec-uid=65534 pwd=/tmp\n"),
        "{exec:?}"
    );
    let stop = output(podman(&world).args(["stop", "-t", "30", &name]));
    assert_eq!(stop.code, Some(0), "podman stop: {stop:?}");
    let logs = output(podman(&world).args(["logs", &name]));
    assert_eq!(logs.code, Some(0), "podman logs: {logs:?}");
    assert!(
        logs.stdout.contains("started\n") && logs.stdout.contains("got-term\n"),
        "{logs:?}"
    );
    let inspect = output(podman(&world).args(["inspect", "-f", "{{.State.ExitCode}}", &name]));
    assert_eq!(inspect.stdout.trim(), "0", "{inspect:?}");
    let rm = output(podman(&world).args(["rm", &name]));
    assert_eq!(rm.code, Some(0), "podman rm: {rm:?}");
    assert_eq!(podman_containers(&world), "", "container left in podman");
    world.assert_clean(&[], &format!("{run:?}\n{exec:?}\n{stop:?}\n{logs:?}"));
}

#[test]
fn podman_run_it_gets_a_terminal() {
    let world = World::new();
    let image = podman_image(&world, "bh-tty");
    // podman wants a terminal on its own stdin for -t: script(1) gives it one.
    let mut line = format!("{:?}", podman(&world).get_program());
    for a in podman(&world).get_args() {
        line += &format!(" '{}'", a.to_string_lossy());
    }
    line += &format!(
        " run -it --rm --network none {image} 'test -t 0 && test -t 1 && echo TTY-$(tty | cut -c1-8); exit 2'"
    );
    let mut cmd = Command::new(require("script"));
    cmd.args(["-qec", &line, "/dev/null"]);
    for (k, v) in podman(&world).get_envs() {
        cmd.env(k, v.unwrap());
    }
    let run = output(&mut cmd);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stdout.contains("TTY-/dev/pts"), "{run:?}");
    assert_eq!(podman_containers(&world), "", "container left in podman");
    world.assert_clean(&[], &format!("{run:?}"));
}

/// podman's own network (netavark's bridge, its port forwarding) with
/// bulkhead as the runtime: the VM joins the network namespace podman made
/// and takes over its veth, so `-p` publishes the guest's port. All of it
/// inside a network namespace of the test's.
#[test]
fn podman_publishes_a_port_of_the_microvm() {
    let world = World::new();
    let image = podman_image(&world, "bh-publish");
    let ns = bulkhead_tests::netns::NetNs::new();
    let name = format!("bh-publish-{}", std::process::id());
    // nsenter, not `ip netns exec`: podman's own namespace mounts (under
    // /run/netns) must be made and removed in one mount namespace.
    let in_ns = |args: &[&str]| {
        let base = podman(&world);
        let mut cmd = Command::new(require("nsenter"));
        cmd.arg(format!("--net={}", ns.path()))
            .arg(base.get_program())
            .args(base.get_args())
            .args(args);
        for (k, v) in base.get_envs() {
            cmd.env(k, v.unwrap());
        }
        output(&mut cmd)
    };
    let run = in_ns(&[
        "run",
        "-d",
        "--name",
        &name,
        "--user",
        "0",
        "-p",
        "8080:80",
        &image,
        "mkdir -p /tmp/www && echo via-podman > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www",
    ]);
    assert_eq!(run.code, Some(0), "podman run -d -p: {run:?}");
    let body = ns.http_get("127.0.0.1:8080");
    assert!(body.contains("via-podman"), "{body}");
    let rm = in_ns(&["rm", "-f", &name]);
    assert_eq!(rm.code, Some(0), "podman rm -f: {rm:?}");
    assert_eq!(podman_containers(&world), "", "container left in podman");
    world.assert_clean(&[], &format!("{run:?}\n{rm:?}"));
    let netns: Vec<_> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("netns-"))
        .collect();
    assert!(
        netns.is_empty(),
        "podman's network namespace is left: {netns:?}"
    );
}

impl Drop for World {
    /// Whatever an engine left mounted in the world (podman's shm and
    /// overlay mounts after a failed test) goes, so its directory can.
    fn drop(&mut self) {
        for mount in bulkhead_tests::leftovers::mounts_under(self.path())
            .iter()
            .rev()
        {
            let _ = Command::new("umount").args(["-l", mount]).status();
        }
    }
}

/// A daemon in its own process group, killed with it when dropped.
struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    fn start(cmd: &mut Command, log: PathBuf) -> Daemon {
        use std::os::unix::process::CommandExt;
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready` holds, failing with the daemon's log if it
    /// exits or takes too long.
    fn wait_until(&mut self, what: &str, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{what} exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{what} not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM to the group, then SIGKILL if it lingers; reaps the leader.
    fn stop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) of the group this test started; no memory involved.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn containerd_ctr_run_rm_with_bulkhead_as_runc() {
    let world = World::new();
    let p = world.path();
    let sock = p.join("containerd.sock");
    std::fs::write(
        p.join("config.toml"),
        format!(
            "version = 2\nroot = '{root}'\nstate = '{state}'\n\
             disabled_plugins = ['io.containerd.grpc.v1.cri']\n\
             [grpc]\naddress = '{sock}'\n[ttrpc]\naddress = '{sock}.ttrpc'\n",
            root = p.join("containerd/root").display(),
            state = p.join("containerd/state").display(),
            sock = sock.display(),
        ),
    )
    .unwrap();
    let mut containerd = Daemon::start(
        Command::new(require("containerd"))
            .arg("--config")
            .arg(p.join("config.toml")),
        p.join("containerd.log"),
    );
    let ctr = |ns: &str| {
        let mut cmd = Command::new(require("ctr"));
        cmd.arg("-a").arg(&sock).args(["-n", ns]);
        cmd
    };
    containerd.wait_until("containerd", || {
        sock.exists() && output(ctr("probe").arg("version")).code == Some(0)
    });
    // The shim keeps runc state in /run/containerd/runc/NAMESPACE: a
    // namespace of the test's own.
    let ns = format!("bh-test-{}", std::process::id());
    let layout = write_layout(
        &p.join("layout"),
        &[busybox_layer()],
        serde_json::json!({"Env": ["PATH=/bin"]}),
        "v1",
    );
    let archive = p.join("image.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let import = output(
        ctr(&ns)
            .args(["images", "import", "--base-name", "localhost/bh-ctr"])
            .args(["--snapshotter", "native"])
            .arg(&archive),
    );
    assert_eq!(import.code, Some(0), "ctr import: {import:?}");
    let id = format!("bh-ctr-{}", std::process::id());
    let run = output(
        ctr(&ns)
            .args(["run", "--rm", "--runc-binary"])
            .arg(&world.runtime)
            .args(["--snapshotter", "native", "localhost/bh-ctr:v1", &id])
            .args(["sh", "-c", "echo hi; exit 4"]),
    );
    assert_eq!(run.code, Some(4), "{run:?}\n{}", containerd.log());
    assert_eq!(run.stdout, "hi\n", "{run:?}");
    let left = output(ctr(&ns).args(["containers", "ls", "-q"]));
    assert_eq!(
        left.stdout.trim(),
        "",
        "container left in containerd: {left:?}"
    );
    let log = containerd.log();
    containerd.stop();
    let shim_root = PathBuf::from("/run/containerd/runc").join(&ns);
    world.assert_clean(std::slice::from_ref(&shim_root), &format!("{run:?}\n{log}"));
    let _ = std::fs::remove_dir(&shim_root);
}

#[test]
fn docker_run_rm_with_runtime_bulkhead() {
    let world = World::new();
    let p = world.path();
    let sock = p.join("docker.sock");
    let host = format!("unix://{}", sock.display());
    std::fs::write(p.join("daemon.json"), "{}").unwrap();
    let mut dockerd = Daemon::start(
        Command::new(require("dockerd"))
            .arg("--data-root")
            .arg(p.join("docker/data"))
            .arg("--exec-root")
            .arg(p.join("docker/exec"))
            .arg("--pidfile")
            .arg(p.join("docker/docker.pid"))
            .args(["-H", &host])
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver", "vfs"])
            .args(["--default-ulimit", "nofile=1024:1024"])
            .args(["--default-ulimit", "nproc=1024:1024"])
            .arg(format!(
                "--add-runtime=bulkhead={}",
                world.runtime.display()
            ))
            // Its own config file: none of the host's /etc/docker/daemon.json.
            .arg("--config-file")
            .arg(p.join("daemon.json")),
        p.join("dockerd.log"),
    );
    let docker = || {
        let mut cmd = Command::new(require("docker"));
        cmd.args(["-H", &host])
            .env("DOCKER_CONFIG", p.join("docker-config"));
        cmd
    };
    dockerd.wait_until("dockerd", || {
        sock.exists() && output(docker().arg("version")).code == Some(0)
    });
    let import = output(
        docker()
            .arg("import")
            .arg(world.rootfs_tar())
            .arg("bh-docker"),
    );
    assert_eq!(import.code, Some(0), "docker import: {import:?}");
    let run = output(
        docker()
            .args([
                "run",
                "--rm",
                "--runtime",
                "bulkhead",
                "--network",
                "none",
                "bh-docker",
            ])
            .args(["sh", "-c", "echo hi; exit 6"]),
    );
    assert_eq!(run.code, Some(6), "{run:?}\n{}", dockerd.log());
    assert!(run.stdout.contains("hi\n"), "{run:?}");
    let left = output(docker().args(["ps", "-a", "-q"]));
    assert_eq!(left.stdout.trim(), "", "container left in docker: {left:?}");
    let log = dockerd.log();
    dockerd.stop();
    world.assert_clean(
        &[
            p.join("docker/exec/runtime-runc/moby"),
            p.join("docker/exec/runtime-bulkhead/moby"),
        ],
        &format!("{run:?}\n{log}"),
    );
}
