//! `bulkhead pull`, `login`/`logout`, `run --pull` and `image ls`/`rm` of
//! pulled images, against a real registry (CNCF distribution 2.8, see
//! tests/src/registry.rs) listening on 127.0.0.1 inside the test's own
//! network namespace, where bulkhead runs too. Every failure must exit 125
//! with one `bulkhead: cannot pull REF: …` line and leave the store as it
//! was. Tests that run a container boot (restore) a VM like the other e2e
//! tests; the rest only pull.

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulkhead_tests::oci::{dir, file};
use bulkhead_tests::registry::{
    app_image, big_image, hex, multi_arch_layout, sha256_digest, Auth, Blackhole, Options, Proxy,
    Registry, PASSWORD, USER,
};
use bulkhead_tests::{tempdir, Root, Run};
use sha2::{Digest, Sha256};

/// A test's bulkhead root plus a work directory and an empty home (so no
/// credentials of the host's user are found).
struct World {
    root: Root,
    work: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let work = tempdir();
        std::fs::create_dir_all(work.path().join("home")).unwrap();
        World {
            root: Root::new(),
            work,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// `HOME` and `DOCKER_CONFIG` pointing at nothing, plus `env`.
    fn env(&self, env: &[(&str, &str)]) -> Vec<(String, String)> {
        let home = self.path("home");
        let mut all = vec![
            ("HOME".to_string(), home.display().to_string()),
            (
                "DOCKER_CONFIG".to_string(),
                home.join(".docker").display().to_string(),
            ),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k.to_string(), v.to_string()));
        }
        all
    }

    fn bh_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let env = self.env(env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let run = self.root.bulkhead_with_env(args, &env);
        assert!(!run.stderr.contains("panicked"), "{run:?}");
        run
    }

    fn bh(&self, args: &[&str]) -> Run {
        self.bh_env(args, &[])
    }

    /// A Docker config.json with the registry's credentials (and for the
    /// `extra` registry names).
    fn authfile(&self, reg: &Registry, extra: &[&str]) -> String {
        let path = self.path("auth.json");
        std::fs::write(&path, reg.docker_config(extra)).unwrap();
        path.display().to_string()
    }

    /// `bulkhead pull --tls-ca CA --authfile F REF` (no --tls-ca for a
    /// plain registry, no --authfile for an anonymous one).
    fn pull(&self, reg: &Registry, reference: &str) -> Run {
        let mut args = vec!["pull".to_string()];
        if reg.options().tls {
            args.extend(["--tls-ca".into(), reg.ca_path().display().to_string()]);
        }
        if reg.options().auth != Auth::Anonymous {
            args.extend(["--authfile".into(), self.authfile(reg, &[])]);
        }
        args.push(reference.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.bh(&args)
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.path().join("blobs/sha256")
    }

    fn has_blob(&self, digest: &str) -> bool {
        self.blobs_dir().join(hex(digest)).exists()
    }

    /// What a failed command must not change.
    fn store(&self) -> Store {
        let ls = self.bh(&["image", "ls"]);
        assert_eq!(ls.code, Some(0), "{ls:?}");
        Store {
            ls: ls.stdout,
            images: names(&self.root.path().join("images")),
            blobs: names(&self.blobs_dir()),
        }
    }

    /// Every blob in the store has the digest it is named by, and no
    /// download is left half done.
    fn assert_store_consistent(&self) {
        for name in names(&self.blobs_dir()) {
            let data = std::fs::read(self.blobs_dir().join(&name)).unwrap();
            assert_eq!(
                format!("{:x}", Sha256::digest(&data)),
                name,
                "blob {name} in the store does not match its name"
            );
        }
        let partial = names(&self.root.path().join("blobs/partial"));
        assert!(partial.is_empty(), "partial downloads left: {partial:?}");
    }

    /// The `image ls` line of `name`.
    fn ls_line(&self, name: &str) -> Option<String> {
        let ls = self.bh(&["image", "ls"]);
        assert_eq!(ls.code, Some(0), "{ls:?}");
        ls.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_string)
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Store {
    ls: String,
    images: BTreeSet<String>,
    blobs: BTreeSet<String>,
}

fn names(dir: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// A failed pull of `reference`: exit 125, its last stderr line (the only
/// `bulkhead:` line) `bulkhead: cannot pull REF: …` naming one of `causes`
/// (case-insensitive), nothing on stdout.
fn assert_pull_failed(run: &Run, reference: &str, causes: &[&str]) -> String {
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stdout.trim().is_empty(),
        "an image ID was printed: {run:?}"
    );
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("bulkhead:"))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line: {run:?}");
    let last = run.stderr.lines().last().unwrap_or("");
    assert_eq!(last, errors[0], "the error is not the last line: {run:?}");
    let prefix = format!("bulkhead: cannot pull {reference}: ");
    assert!(last.starts_with(&prefix), "expected {prefix:?}: {run:?}");
    let lower = last.to_lowercase();
    assert!(
        causes.iter().any(|c| lower.contains(&c.to_lowercase())),
        "expected one of {causes:?} in the error: {run:?}"
    );
    last.to_string()
}

/// A failure before any blob is fetched: besides the error, stderr says
/// only what was being pulled.
fn assert_pull_refused(run: &Run, reference: &str, causes: &[&str]) {
    assert_pull_failed(run, reference, causes);
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.starts_with("bulkhead:"))
        .collect();
    assert!(
        progress.iter().all(|l| l.starts_with("Pulling ")),
        "a blob was fetched: {run:?}"
    );
}

fn assert_pulled(run: &Run, config: &str) {
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        config,
        "stdout is not the image ID: {run:?}"
    );
}

fn ca(reg: &Registry) -> String {
    reg.ca_path().display().to_string()
}

/// The contents of `path` in the root `bulkhead image export NAME` writes.
fn exported_file(w: &World, name: &str, path: &str) -> Option<Vec<u8>> {
    let out = w.path("export.tar");
    let run = w.bh(&["image", "export", name, "-o", out.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let mut archive = tar::Archive::new(std::fs::File::open(&out).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let p = entry.path().unwrap().to_string_lossy().into_owned();
        if p.trim_start_matches("./").trim_start_matches('/') == path {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            return Some(data);
        }
    }
    None
}

// ---------------------------------------------------------------------
// The fixture itself, checked with other clients.

#[test]
fn fixture_serves_tls_basic_and_token_auth_to_skopeo_and_podman() {
    let w = World::new();
    let netns = w.root.netns();
    let img = app_image(&w.path("app"), "fixture", vec![]);
    for options in [
        Options::secure(),
        Options {
            tls: true,
            auth: Auth::Token,
        },
    ] {
        let reg = Registry::with_options(netns, options);
        let pushed = reg.push_layout(&img.layout, "test/app:1");
        assert_eq!(pushed.config(), img.config);
        // What the registry stores is what a client reads back.
        for digest in pushed.layers() {
            let data = std::fs::read(reg.blob_path(&digest)).unwrap();
            assert_eq!(sha256_digest(&data), digest);
        }
        if options.auth == Auth::Token {
            assert!(reg.tokens_issued() > 0, "no token was asked for");
        }
        // podman pulls it too (TLS with our CA, the credentials).
        let store = tempdir();
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.path()))
            .arg("podman")
            .arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "pull",
                "--tls-verify",
                "--cert-dir",
            ])
            .arg(reg.cert_dir())
            .arg("--creds")
            .arg(format!("{USER}:{PASSWORD}"))
            .arg(reg.reference("test/app:1"))
            .output()
            .expect("run podman");
        assert!(
            out.status.success(),
            "podman pull ({options:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            hex(&img.config),
            "podman's image ID"
        );
        // Without credentials: refused.
        assert_eq!(reg.status_of("/v2/test/app/manifests/1"), 401);
        let mut reg = reg;
        reg.stop();
        assert_eq!(reg.status_of("/v2/"), 0, "still answering once stopped");
        reg.start();
        assert!(
            reg.raw_manifest("test/app:1") == pushed.raw,
            "storage lost across a restart"
        );
    }
}

// ---------------------------------------------------------------------
// Pulls that work.

#[test]
fn login_pull_by_tag_ls_and_run() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(&w.path("app"), "tagged-app", vec![]);
    let pushed = reg.push_layout(&img.layout, "test/app:1");
    let reference = reg.reference("test/app:1");
    let authfile = w.path("login.json");
    let authfile_s = authfile.display().to_string();

    // A wrong password: refused, nothing written.
    let run = w.bh(&[
        "login",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile_s,
        "-u",
        USER,
        "-p",
        "wrong",
        &reg.addr(),
    ]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stderr
            .starts_with(&format!("bulkhead: cannot log in to {}: ", reg.addr())),
        "{run:?}"
    );
    assert!(
        run.stderr.to_lowercase().contains("unauthorized"),
        "{run:?}"
    );
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        !authfile.exists(),
        "login with a wrong password wrote the auth file"
    );

    let run = w.root.bulkhead_with_stdin(
        &[
            "login",
            "--tls-ca",
            &ca(&reg),
            "--authfile",
            &authfile_s,
            "-u",
            USER,
            "--password-stdin",
            &reg.addr(),
        ],
        format!("{PASSWORD}\n").as_bytes(),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("Login Succeeded"), "{run:?}");
    let mode = std::fs::metadata(&authfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the auth file is readable by others");
    let auth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(
        auth["auths"][reg.addr()]["auth"].is_string(),
        "no credentials for {} in {auth}",
        reg.addr()
    );

    let before = w.store();
    let run = w.bh(&[
        "pull",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile_s,
        &reference,
    ]);
    assert_pulled(&run, &img.config);
    assert!(run.stderr.contains("Copying blob sha256:"), "{run:?}");
    let line = w
        .ls_line(&reference)
        .expect("the pulled image is not listed");
    let source = format!("{}/test/app@{}", reg.addr(), pushed.digest);
    assert!(line.contains(&source), "SOURCE is not {source}: {line}");
    for blob in pushed
        .layers()
        .iter()
        .chain([&pushed.config(), &pushed.digest])
    {
        assert!(w.has_blob(blob), "blob {blob} not in the store");
    }
    assert!(!before.ls.contains(&reference));
    w.assert_store_consistent();

    // Pulling again fetches nothing.
    let run = w.bh(&[
        "pull",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile_s,
        &reference,
    ]);
    assert_pulled(&run, &img.config);
    assert!(!run.stderr.contains("Copying blob"), "{run:?}");

    // The pulled image runs.
    let run = w.bh(&["run", "--network", "none", &reference, "echo", "hi"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "hi\n", "{run:?}");
    w.root.assert_clean(&run);

    // logout forgets the credentials.
    let run = w.bh(&["logout", "--authfile", &authfile_s, &reg.addr()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let auth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&authfile).unwrap()).unwrap();
    assert!(auth["auths"].get(reg.addr()).is_none(), "{auth}");
}

#[test]
fn credentials_from_registry_auth_file_and_docker_config() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(&w.path("app"), "env-app", vec![]);
    reg.push_layout(&img.layout, "test/app:1");
    reg.push_layout(&img.layout, "test/app:2");

    // $REGISTRY_AUTH_FILE, and the CA from $BULKHEAD_TLS_CA.
    let authfile = w.authfile(&reg, &[]);
    let reference = reg.reference("test/app:1");
    let run = w.bh_env(
        &["pull", &reference],
        &[
            ("REGISTRY_AUTH_FILE", &authfile),
            ("BULKHEAD_TLS_CA", &ca(&reg)),
        ],
    );
    assert_pulled(&run, &img.config);
    assert!(w.ls_line(&reference).is_some());

    // $DOCKER_CONFIG/config.json.
    let docker = w.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), reg.docker_config(&[])).unwrap();
    let reference = reg.reference("test/app:2");
    let run = w.bh_env(
        &["pull", "--tls-ca", &ca(&reg), &reference],
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    );
    assert_pulled(&run, &img.config);
    assert!(w.ls_line(&reference).is_some());
    w.assert_store_consistent();
}

#[test]
fn run_pulls_a_missing_image_and_pull_never_refuses() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(&w.path("app"), "pulled-by-run", vec![]);
    reg.push_layout(&img.layout, "test/app:1");
    let reference = reg.reference("test/app:1");
    let authfile = w.authfile(&reg, &[]);

    let before = w.store();
    let run = w.bh(&[
        "run",
        "--pull",
        "never",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile,
        "--network",
        "none",
        &reference,
    ]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(run.stderr.contains("no such image"), "{run:?}");
    assert!(run.stderr.contains(&reference), "{run:?}");
    assert_eq!(w.store(), before, "--pull never changed the store");
    w.root.assert_clean(&run);

    // The done criterion: run with the image not pulled.
    let run = w.bh(&[
        "run",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile,
        "--network",
        "none",
        &reference,
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "pulled-by-run\n", "{run:?}");
    w.root.assert_clean(&run);
    assert!(
        w.ls_line(&reference).is_some(),
        "run did not keep the image"
    );

    // Now present: --pull never uses it, and missing does not pull again.
    let run = w.bh(&[
        "run",
        "--pull",
        "never",
        "--network",
        "none",
        &reference,
        "cat",
        "/etc/app-name",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "pulled-by-run\n", "{run:?}");
    assert!(!run.stderr.contains("Copying blob"), "{run:?}");
}

#[test]
fn pull_by_digest() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(&w.path("app"), "digest-app", vec![]);
    let pushed = reg.push_layout(&img.layout, "test/app:1");
    // Move the tag away: the digest still names the first image.
    let other = app_image(&w.path("other"), "other-app", vec![]);
    reg.push_layout(&other.layout, "test/app:1");

    let reference = pushed.by_digest();
    assert_eq!(
        reference,
        format!("{}/test/app@{}", reg.addr(), pushed.digest)
    );
    let run = w.pull(&reg, &reference);
    assert_pulled(&run, &img.config);
    let line = w
        .ls_line(&reference)
        .expect("not listed by its digest name");
    assert!(line.contains(&reference), "SOURCE: {line}");
    assert_eq!(
        exported_file(&w, &reference, "etc/app-name").as_deref(),
        Some(&b"digest-app\n"[..])
    );

    // A digest the repository does not have.
    let missing = format!("{}/test/app@{}", reg.addr(), sha256_digest(b"nothing"));
    let before = w.store();
    let run = w.pull(&reg, &missing);
    assert_pull_refused(
        &run,
        &missing,
        &["manifest unknown", "not found", "unknown"],
    );
    assert_eq!(w.store(), before);
}

#[test]
fn multi_arch_index_resolves_to_linux_amd64() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    // arm64 listed first: the choice must be by platform, not position.
    let multi = multi_arch_layout(&w.path("multi"), "multi", &["arm64", "amd64"]);
    let pushed = reg.push_index(&multi.layout, "test/multi:1");
    let amd64 = &multi.configs["linux/amd64"];
    let arm64 = &multi.configs["linux/arm64"];
    let platforms = pushed.platforms();
    assert_eq!(platforms.len(), 2, "{}", pushed.manifest);
    let amd64_manifest = reg.manifest(&format!(
        "test/multi@{}",
        platforms
            .iter()
            .find(|(p, _)| p == "linux/amd64")
            .unwrap()
            .1
    ));
    assert_eq!(amd64_manifest["config"]["digest"], amd64.as_str());

    let reference = reg.reference("test/multi:1");
    let run = w.pull(&reg, &reference);
    assert_pulled(&run, amd64);
    assert_ne!(run.stdout.trim(), arm64.as_str());
    assert_eq!(
        exported_file(&w, &reference, "etc/app-name").as_deref(),
        Some(&b"amd64\n"[..])
    );
    w.assert_store_consistent();

    // An index with nothing for linux/amd64.
    let arm = multi_arch_layout(&w.path("arm"), "arm", &["arm64"]);
    reg.push_index(&arm.layout, "test/arm:1");
    let reference = reg.reference("test/arm:1");
    let before = w.store();
    let run = w.pull(&reg, &reference);
    assert_pull_refused(&run, &reference, &["platform"]);
    assert!(
        run.stderr.contains("linux/amd64"),
        "the platform is not named: {run:?}"
    );
    assert_eq!(w.store(), before);
}

#[test]
fn zstd_layers_pull_and_unpack() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(
        &w.path("app"),
        "zstd-app",
        vec![
            dir("srv"),
            file("srv/zstd.txt", b"unpacked from zstd\n", 0o644),
        ],
    );
    let pushed = reg.push_layout_zstd(&img.layout, "test/zstd:1");
    let reference = reg.reference("test/zstd:1");
    let run = w.pull(&reg, &reference);
    assert_pulled(&run, &img.config);
    for l in pushed.layers() {
        assert!(w.has_blob(&l), "zstd layer {l} not stored");
    }
    assert_eq!(
        exported_file(&w, &reference, "srv/zstd.txt").as_deref(),
        Some(&b"unpacked from zstd\n"[..])
    );
    assert!(exported_file(&w, &reference, "bin/busybox").is_some());
    w.assert_store_consistent();
}

/// Two images sharing the busybox layer, on a plain-HTTP anonymous
/// registry on loopback (no --insecure-registry needed there).
#[test]
fn plain_http_on_loopback_shared_layer_fetched_once_and_rm_frees_blobs() {
    let w = World::new();
    let reg = Registry::with_options(w.root.netns(), Options::plain());
    let one = reg.push_layout(
        &app_image(&w.path("one"), "one", vec![]).layout,
        "test/one:1",
    );
    let two = reg.push_layout(
        &app_image(&w.path("two"), "two", vec![]).layout,
        "test/two:1",
    );
    let base = one.layers()[0].clone();
    assert_eq!(two.layers()[0], base, "the fixture's images share no layer");
    assert_ne!(one.layers()[1], two.layers()[1]);

    let ref_one = reg.reference("test/one:1");
    let ref_two = reg.reference("test/two:1");
    let run = w.bh(&["pull", &ref_one]);
    assert_pulled(&run, &one.config());
    let run = w.bh(&["pull", &ref_two]);
    assert_pulled(&run, &two.config());
    let present = format!("Blob sha256:{} already present", &hex(&base)[..12]);
    assert!(
        run.stderr.contains(&present),
        "expected {present:?}: {run:?}"
    );
    let copied = format!("Copying blob sha256:{}", &hex(&base)[..12]);
    assert!(!run.stderr.contains(&copied), "{run:?}");
    assert_eq!(reg.blob_gets("test/one", &base), 1, "{}", reg.log());
    assert_eq!(reg.blob_gets("test/two", &base), 0, "fetched twice");
    w.assert_store_consistent();

    let own = |p: &bulkhead_tests::registry::Pushed| {
        vec![p.digest.clone(), p.config(), p.layers()[1].clone()]
    };
    let rm = w.bh(&["image", "rm", &ref_one]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    assert!(w.ls_line(&ref_one).is_none());
    assert!(
        w.has_blob(&base),
        "the shared layer went with the first image"
    );
    for b in own(&two) {
        assert!(w.has_blob(&b), "{b} of the remaining image was removed");
    }
    for b in own(&one) {
        assert!(!w.has_blob(&b), "{b} of the removed image is still stored");
    }
    let rm = w.bh(&["image", "rm", &ref_two]);
    assert_eq!(rm.code, Some(0), "{rm:?}");
    for b in own(&one).into_iter().chain(own(&two)).chain([base]) {
        assert!(
            !w.has_blob(&b),
            "{b} is still stored with no image using it"
        );
    }
    // With nothing left, a pull fetches everything again.
    let run = w.bh(&["pull", &ref_two]);
    assert_pulled(&run, &two.config());
    assert!(!run.stderr.contains("already present"), "{run:?}");
}

// ---------------------------------------------------------------------
// Pulls that must fail and leave the store alone.

#[test]
fn wrong_or_missing_credentials_are_refused() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(&w.path("app"), "secret-app", vec![]);
    reg.push_layout(&img.layout, "test/app:1");
    let reference = reg.reference("test/app:1");
    let before = w.store();

    let bad = w.path("bad.json");
    std::fs::write(
        &bad,
        bulkhead_tests::registry::docker_config(&[&reg.addr()], USER, "not-the-password"),
    )
    .unwrap();
    let run = w.bh(&[
        "pull",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        bad.to_str().unwrap(),
        &reference,
    ]);
    assert_pull_refused(&run, &reference, &["unauthorized"]);
    assert_eq!(w.store(), before);

    // No credentials at all (an empty HOME, no auth file).
    let run = w.bh(&["pull", "--tls-ca", &ca(&reg), &reference]);
    assert_pull_refused(
        &run,
        &reference,
        &["unauthorized", "authentication required"],
    );
    assert_eq!(w.store(), before);

    // Without our CA the certificate is not trusted.
    let run = w.bh(&["pull", "--authfile", &w.authfile(&reg, &[]), &reference]);
    assert_pull_refused(&run, &reference, &["certificate", "tls", "unknown issuer"]);
    assert_eq!(w.store(), before);
}

#[test]
fn token_auth_registry() {
    let w = World::new();
    let reg = Registry::with_options(
        w.root.netns(),
        Options {
            tls: true,
            auth: Auth::Token,
        },
    );
    let img = app_image(&w.path("app"), "token-app", vec![]);
    reg.push_layout(&img.layout, "test/app:1");
    let reference = reg.reference("test/app:1");
    let issued = reg.tokens_issued();
    let run = w.pull(&reg, &reference);
    assert_pulled(&run, &img.config);
    assert!(reg.tokens_issued() > issued, "bulkhead asked for no token");

    let bad = w.path("bad.json");
    std::fs::write(
        &bad,
        bulkhead_tests::registry::docker_config(&[&reg.addr()], USER, "nope"),
    )
    .unwrap();
    let reference = reg.reference("test/app:2");
    let before = w.store();
    let run = w.bh(&[
        "pull",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        bad.to_str().unwrap(),
        &reference,
    ]);
    assert_pull_refused(&run, &reference, &["unauthorized"]);
    assert_eq!(w.store(), before);
}

#[test]
fn unknown_tag_and_unknown_repository() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(&w.path("app"), "known", vec![]);
    reg.push_layout(&img.layout, "test/app:1");
    let before = w.store();
    for reference in [
        reg.reference("test/app:nope"),
        reg.reference("nothere/at-all:1"),
    ] {
        let run = w.pull(&reg, &reference);
        assert_pull_refused(
            &run,
            &reference,
            &["manifest unknown", "not found", "unknown"],
        );
        assert_eq!(w.store(), before);
    }
}

#[test]
fn tampered_blob_fails_naming_its_digest() {
    let w = World::new();
    let reg = Registry::new(w.root.netns());
    let img = app_image(
        &w.path("app"),
        "tampered",
        vec![file("etc/filler", &[7u8; 200_000], 0o644)],
    );
    let pushed = reg.push_layout(&img.layout, "test/app:1");
    let top = pushed.layers()[1].clone();
    let path = reg.blob_path(&top);
    let original = std::fs::read(&path).unwrap();
    // Flip the gzip header's MTIME: the same size, still a valid gzip
    // stream of the same tar, so only the digest check can catch it.
    assert_eq!(&original[..2], b"\x1f\x8b", "the layer is not gzip");
    let mut bad = original.clone();
    for b in &mut bad[4..8] {
        *b ^= 0xa5;
    }
    std::fs::write(&path, &bad).unwrap();

    let reference = reg.reference("test/app:1");
    let before = w.store();
    let run = w.pull(&reg, &reference);
    let error = assert_pull_failed(&run, &reference, &["digest"]);
    assert!(
        error.contains(&hex(&top)[..12]),
        "the tampered blob {top} is not named: {run:?}"
    );
    let after = w.store();
    assert_eq!(after.ls, before.ls);
    assert_eq!(after.images, before.images, "an image appeared");
    assert!(!w.has_blob(&top), "the corrupt blob was stored");
    // Only verified blobs may have been kept (the manifest, the config, the
    // intact base layer).
    let verified = [
        pushed.digest.clone(),
        pushed.config(),
        pushed.layers()[0].clone(),
    ];
    for b in &after.blobs {
        assert!(
            before.blobs.contains(b) || verified.iter().any(|v| hex(v) == b),
            "blob {b} appeared though the pull failed"
        );
    }

    // Once the registry serves the right bytes again, the pull works (a
    // corrupt download was not kept to be resumed).
    std::fs::write(&path, &original).unwrap();
    let run = w.pull(&reg, &reference);
    assert_pulled(&run, &img.config);
    w.assert_store_consistent();
}

/// A child process killed when dropped.
struct Bg(Option<std::process::Child>);

impl Bg {
    fn wait(mut self, timeout: Duration) -> Run {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Run::from_output(child.wait_with_output().unwrap())
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The size of blob `digest` in the manifest pushed.
fn pushed_size(pushed: &bulkhead_tests::registry::Pushed, digest: &str) -> u64 {
    pushed.manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == digest)
        .and_then(|l| l["size"].as_u64())
        .unwrap()
}

#[test]
fn registry_stopped_mid_pull_then_resumed() {
    let w = World::new();
    let mut reg = Registry::new(w.root.netns());
    let img = big_image(&w.path("big"), "big", 48);
    let pushed = reg.push_layout(&img.layout, "test/big:1");
    let big = pushed.layers()[1].clone();
    // bulkhead talks to the registry through a proxy that passes 8 MiB of
    // answers and then holds everything.
    let mut proxy = Proxy::start(Some(w.root.netns()), reg.port(), 8 << 20);
    let authfile = w.authfile(&reg, &[&proxy.addr()]);
    let via_proxy = format!("{}/test/big:1", proxy.addr());
    let before = w.store();
    let partial_dir = w.root.path().join("blobs/partial");
    let pull = Bg(Some(w.root.spawn(&[
        "pull",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile,
        &via_proxy,
    ])));

    // Wait for the big layer's partial download to have bytes in it.
    let partial = partial_dir.join(hex(&big));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::metadata(&partial).is_ok_and(|m| m.len() > 0) {
        assert!(
            Instant::now() < deadline,
            "no partial download of {big} after 120 s (proxy forwarded {} bytes; partial/: {:?})",
            proxy.forwarded(),
            names(&partial_dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The registry goes away mid-pull.
    reg.stop();
    proxy.cut();
    let run = pull.wait(Duration::from_secs(120));
    assert_pull_failed(
        &run,
        &via_proxy,
        &[
            "connection",
            "reset",
            "closed",
            "eof",
            "broken",
            "refused",
            "stopped",
            "reach",
        ],
    );
    let after = w.store();
    assert_eq!(after.ls, before.ls, "an image appeared");
    assert_eq!(after.images, before.images, "an image appeared");
    assert!(!w.has_blob(&big), "the unfinished layer was stored");
    let kept = std::fs::metadata(&partial).map_or(0, |m| m.len());
    assert!(
        kept > 0,
        "the partial download of {big} was not kept for resuming"
    );
    assert!(
        kept < pushed_size(&pushed, &big),
        "the big layer came whole"
    );

    // Back again: the pull resumes the partial blob and completes.
    reg.start();
    let reference = reg.reference("test/big:1");
    let run = w.bh(&[
        "pull",
        "--tls-ca",
        &ca(&reg),
        "--authfile",
        &authfile,
        &reference,
    ]);
    assert_pulled(&run, &img.config);
    let resuming = format!("Resuming blob sha256:{}", &hex(&big)[..12]);
    assert!(
        run.stderr.contains(&resuming),
        "expected {resuming:?}: {run:?}"
    );
    assert!(w.has_blob(&big));
    w.assert_store_consistent();
    let data = exported_file(&w, &reference, "srv/random.bin").expect("no srv/random.bin");
    assert_eq!(data.len(), 48 << 20);
}

#[test]
fn registry_down_or_not_answering() {
    let w = World::new();
    let before = w.store();

    // Nothing listens on the port.
    let port = bulkhead_tests::registry::free_port(Some(w.root.netns().path().as_str()));
    let reference = format!("127.0.0.1:{port}/test/app:1");
    let run = w.bh(&["pull", &reference]);
    assert_pull_refused(&run, &reference, &["connection refused"]);
    assert_eq!(w.store(), before);

    // A listener that never answers: the read times out after
    // BULKHEAD_REGISTRY_TIMEOUT seconds, not the default 30.
    let hole = Blackhole::start(Some(w.root.netns()));
    let reference = format!("{}/test/app:1", hole.addr());
    let started = Instant::now();
    let run = w.bh_env(&["pull", &reference], &[("BULKHEAD_REGISTRY_TIMEOUT", "2")]);
    let took = started.elapsed();
    assert_pull_refused(&run, &reference, &["timed out", "time out", "timeout"]);
    assert!(hole.accepted() > 0, "bulkhead never connected");
    assert!(
        took < Duration::from_secs(25),
        "BULKHEAD_REGISTRY_TIMEOUT=2 not honoured: {took:?}"
    );
    assert_eq!(w.store(), before);
}
