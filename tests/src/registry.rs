//! A real OCI registry for the pull tests: Debian's `docker-registry`
//! (CNCF distribution 2.8) on 127.0.0.1, usually inside the test's network
//! namespace (where bulkhead runs), with a CA and server certificate the
//! test makes with `openssl`, htpasswd basic auth or bearer tokens from a
//! token server thread of the test, and filesystem storage in a temporary
//! directory so a test can tamper with blobs. Images are pushed with
//! `skopeo copy` from OCI layouts built by [`crate::oci`].
//!
//! Everything a fixture starts (the registry process, server threads) ends
//! when it is dropped, even when the test fails.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::netns::{enter_path, NetNs};
use crate::oci::{busybox_layer, dir, file, tar_layer, Entry};

/// The user the registry knows.
pub const USER: &str = "bulkhead-test";
/// Their password.
pub const PASSWORD: &str = "correct horse battery";

/// How long a registry may take to answer its first `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How clients authenticate to the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No authentication: anyone may pull and push.
    Anonymous,
    /// htpasswd basic auth ([`USER`], [`PASSWORD`]).
    Basic,
    /// Bearer tokens (Docker's token auth) from a token server of the test,
    /// which takes [`USER`], [`PASSWORD`] as basic credentials.
    Token,
}

/// How a [`Registry`] is served.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// HTTPS with the test's CA (else plain HTTP).
    pub tls: bool,
    pub auth: Auth,
}

impl Options {
    /// HTTPS and basic auth: what most tests use.
    pub fn secure() -> Options {
        Options {
            tls: true,
            auth: Auth::Basic,
        }
    }

    /// Plain HTTP, anonymous.
    pub fn plain() -> Options {
        Options {
            tls: false,
            auth: Auth::Anonymous,
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::secure()
    }
}

/// A running `docker-registry` and everything it was given.
pub struct Registry {
    dir: tempfile::TempDir,
    /// The network namespace it listens in (`None`: the host's).
    netns: Option<String>,
    port: u16,
    options: Options,
    child: Option<Child>,
    token: Option<TokenServer>,
}

/// A command run in `netns` (or on the host for `None`): `nsenter --net`
/// changes only the network namespace and execs the program, so the child's
/// pid is the program's.
pub fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={ns}")).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a thread that joined `netns` (or on a plain thread).
pub fn in_netns<T: Send + 'static>(
    netns: Option<&str>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    spawn_in(netns, f)
        .join()
        .expect("the thread in the test's netns panicked")
}

fn spawn_in<T: Send + 'static>(
    netns: Option<&str>,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let netns = netns.map(str::to_string);
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            enter_path(&ns);
        }
        f()
    })
}

/// A TCP port on 127.0.0.1 that nothing in `netns` listens on now.
pub fn free_port(netns: Option<&str>) -> u16 {
    in_netns(netns, || {
        TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port()
    })
}

/// Runs `cmd`, failing the test with its output unless it succeeds;
/// returns stdout.
fn check(cmd: &mut Command, what: &str) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// The hex part of `sha256:<hex>`.
pub fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Standard base64 (with padding).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// URL-safe base64 without padding (JWT's).
pub fn base64url(data: &[u8]) -> String {
    base64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// A Docker `config.json` holding `user:password` for each of `registries`.
pub fn docker_config(registries: &[&str], user: &str, password: &str) -> String {
    let auth = base64(format!("{user}:{password}").as_bytes());
    let auths: serde_json::Map<String, Value> = registries
        .iter()
        .map(|r| (r.to_string(), json!({ "auth": auth })))
        .collect();
    json!({ "auths": auths }).to_string()
}

impl Registry {
    /// A registry with `options`, listening in `netns` (`None`: on the
    /// host's 127.0.0.1), answering once this returns.
    pub fn start_in(netns: Option<&NetNs>, options: Options) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("bulkhead-registry-")
            .tempdir()
            .unwrap();
        let netns = netns.map(NetNs::path);
        let port = free_port(netns.as_deref());
        let mut reg = Registry {
            dir,
            netns,
            port,
            options,
            child: None,
            token: None,
        };
        std::fs::create_dir_all(reg.storage()).unwrap();
        std::fs::create_dir_all(reg.cert_dir()).unwrap();
        if options.tls {
            reg.make_certificates();
        }
        match options.auth {
            Auth::Anonymous => {}
            Auth::Basic => {
                let line = check(
                    Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]),
                    "htpasswd",
                );
                std::fs::write(reg.path("htpasswd"), line).unwrap();
            }
            Auth::Token => {
                reg.token = Some(TokenServer::start(reg.netns.as_deref(), reg.dir.path()));
            }
        }
        reg.write_config();
        reg.start();
        reg
    }

    /// A TLS + basic-auth registry in `netns`.
    pub fn new(netns: &NetNs) -> Registry {
        Registry::start_in(Some(netns), Options::secure())
    }

    /// A registry with `options` in `netns`.
    pub fn with_options(netns: &NetNs, options: Options) -> Registry {
        Registry::start_in(Some(netns), options)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `127.0.0.1:PORT`, the registry part of a reference.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn options(&self) -> Options {
        self.options
    }

    /// `127.0.0.1:PORT/<repo_tag>`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr())
    }

    pub fn user(&self) -> &'static str {
        USER
    }

    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// The CA certificate (PEM) the server certificate is signed by.
    pub fn ca_path(&self) -> PathBuf {
        assert!(self.options.tls, "a plain-HTTP registry has no CA");
        self.cert_dir().join("ca.crt")
    }

    /// A directory holding just `ca.crt` (for skopeo/podman `--cert-dir`).
    pub fn cert_dir(&self) -> PathBuf {
        self.path("certs")
    }

    /// The storage driver's root directory.
    pub fn storage(&self) -> PathBuf {
        self.path("storage")
    }

    /// The file the registry serves blob `digest` from.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let h = hex(digest);
        self.storage()
            .join("docker/registry/v2/blobs/sha256")
            .join(&h[..2])
            .join(h)
            .join("data")
    }

    /// A Docker `config.json` with this registry's credentials (for
    /// `addr()` and any `extra` registry names, e.g. a proxy's).
    pub fn docker_config(&self, extra: &[&str]) -> String {
        let addr = self.addr();
        let mut names = vec![addr.as_str()];
        names.extend_from_slice(extra);
        docker_config(&names, USER, PASSWORD)
    }

    /// Everything the registry printed (its log and access log), across
    /// restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("registry.log")).unwrap_or_default()
    }

    /// How many `GET`s of blob `digest` of `repo` the access log shows.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }

    /// How many tokens the token server handed out (0 without token auth).
    pub fn tokens_issued(&self) -> usize {
        self.token
            .as_ref()
            .map_or(0, |t| t.issued.load(Ordering::SeqCst))
    }

    fn make_certificates(&self) {
        let d = self.dir.path();
        let ca_key = d.join("ca.key");
        let ca_crt = self.cert_dir().join("ca.crt");
        check(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=bulkhead test registry CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca_crt),
            "openssl req (CA)",
        );
        let csr = d.join("server.csr");
        check(
            Command::new("openssl")
                .args([
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                ])
                .arg("-keyout")
                .arg(d.join("server.key"))
                .arg("-out")
                .arg(&csr),
            "openssl req (server)",
        );
        let ext = d.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
             basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        check(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial", "2"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca_crt)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(d.join("server.crt")),
            "openssl x509 (sign server certificate)",
        );
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {d}/storage\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: bulkhead-test-secret\n",
            port = self.port
        );
        if self.options.tls {
            config +=
                &format!("  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n");
        }
        match self.options.auth {
            Auth::Anonymous => {}
            Auth::Basic => {
                config += &format!(
                    "auth:\n  htpasswd:\n    realm: bulkhead-test\n    path: {d}/htpasswd\n"
                )
            }
            Auth::Token => {
                let t = self.token.as_ref().unwrap();
                config += &format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    t.realm(),
                    TOKEN_SERVICE,
                    TOKEN_ISSUER,
                    t.cert.display()
                );
            }
        }
        std::fs::write(self.path("config.yml"), config).unwrap();
    }

    /// The URL of `path` on this registry.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr())
    }

    /// The HTTP status of an unauthenticated `GET path` (0: no answer).
    pub fn status_of(&self, path: &str) -> u16 {
        let mut cmd = command_in(self.netns.as_deref(), "curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"]);
        if self.options.tls {
            cmd.arg("--cacert").arg(self.ca_path());
        }
        let out = cmd
            .arg(self.url(path))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Starts the registry (again: same port, same storage) and waits until
    /// `GET /v2/` answers as it should (401 with auth, 200 without).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the registry is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("registry.log"))
            .unwrap();
        let child = command_in(self.netns.as_deref(), "docker-registry")
            .arg("serve")
            .arg(self.path("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("run docker-registry (apt-get install docker-registry)");
        self.child = Some(child);
        let want = if self.options.auth == Auth::Anonymous {
            200
        } else {
            401
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            let got = self.status_of("/v2/");
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer GET /v2/ with {want} (last {got}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// skopeo's options to reach this registry as a destination or source.
    fn skopeo_access(&self, cmd: &mut Command, prefix: &str) {
        if self.options.tls {
            cmd.arg(format!("--{prefix}cert-dir")).arg(self.cert_dir());
        } else {
            cmd.arg(format!("--{prefix}tls-verify=false"));
        }
        if self.options.auth != Auth::Anonymous {
            cmd.arg(format!("--{prefix}creds"))
                .arg(format!("{USER}:{PASSWORD}"));
        }
    }

    fn skopeo(&self) -> Command {
        let mut cmd = command_in(self.netns.as_deref(), "skopeo");
        // The host's policy.json and registries.conf have no say here.
        cmd.arg("--insecure-policy");
        cmd
    }

    /// Pushes the single image of the OCI layout at `layout` as
    /// `repo_tag` (`repo:tag`), layers gzip-compressed by skopeo.
    pub fn push_layout(&self, layout: &Path, repo_tag: &str) -> Pushed {
        self.push(layout, repo_tag, &[])
    }

    /// Pushes as [`Registry::push_layout`] with zstd-compressed layers.
    pub fn push_layout_zstd(&self, layout: &Path, repo_tag: &str) -> Pushed {
        let pushed = self.push(
            layout,
            repo_tag,
            &["--dest-compress", "--dest-compress-format", "zstd"],
        );
        for l in pushed.manifest["layers"].as_array().unwrap() {
            assert!(
                l["mediaType"].as_str().unwrap().ends_with("+zstd"),
                "skopeo did not push zstd layers: {}",
                pushed.manifest
            );
        }
        pushed
    }

    /// Pushes the image index of the OCI layout at `layout` (see
    /// [`multi_arch_layout`]) with every image it lists.
    pub fn push_index(&self, layout: &Path, repo_tag: &str) -> Pushed {
        let pushed = self.push(layout, repo_tag, &["--all"]);
        assert!(
            pushed.manifest["manifests"].is_array(),
            "not an index: {}",
            pushed.manifest
        );
        pushed
    }

    fn push(&self, layout: &Path, repo_tag: &str, extra: &[&str]) -> Pushed {
        let digest_file = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = self.skopeo();
        cmd.args(["copy", "-q"]).args(extra);
        self.skopeo_access(&mut cmd, "dest-");
        cmd.arg("--digestfile").arg(digest_file.path());
        cmd.arg(format!("oci:{}:{}", layout.display(), layout_tag(layout)))
            .arg(format!("docker://{}", self.reference(repo_tag)));
        check(&mut cmd, &format!("skopeo copy to {repo_tag}"));
        let digest = std::fs::read_to_string(digest_file.path())
            .unwrap()
            .trim()
            .to_string();
        let raw = self.raw_manifest(repo_tag);
        assert_eq!(
            sha256_digest(&raw),
            digest,
            "skopeo's digest is not that of the manifest the registry serves"
        );
        Pushed {
            reference: self.reference(repo_tag),
            digest,
            manifest: serde_json::from_slice(&raw).unwrap(),
            raw,
        }
    }

    /// The manifest bytes the registry serves for `repo_ref` (`repo:tag`
    /// or `repo@digest`), as skopeo fetches them.
    pub fn raw_manifest(&self, repo_ref: &str) -> Vec<u8> {
        let mut cmd = self.skopeo();
        cmd.args(["inspect", "--raw"]);
        self.skopeo_access(&mut cmd, "");
        cmd.arg(format!("docker://{}", self.reference(repo_ref)));
        check(&mut cmd, &format!("skopeo inspect {repo_ref}"))
    }

    /// The manifest of `repo_ref`, parsed.
    pub fn manifest(&self, repo_ref: &str) -> Value {
        serde_json::from_slice(&self.raw_manifest(repo_ref)).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // The token server (if any) is dropped with its field.
    }
}

/// The tag the (single) top-level entry of the layout's index.json has.
fn layout_tag(layout: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("the layout's index.json names no tag")
        .to_string()
}

/// What a push left in the registry.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// The digest of the manifest (or index) pushed.
    pub digest: String,
    /// That manifest, parsed.
    pub manifest: Value,
    /// Its bytes, as the registry serves them.
    pub raw: Vec<u8>,
}

impl Pushed {
    /// The config digest (the image ID a pull prints).
    pub fn config(&self) -> String {
        self.manifest["config"]["digest"]
            .as_str()
            .expect("an index has no config")
            .to_string()
    }

    /// The layer digests as pushed (compressed), bottom first.
    pub fn layers(&self) -> Vec<String> {
        self.manifest["layers"]
            .as_array()
            .expect("an index has no layers")
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    }

    /// `<registry>/<repo>@<digest>`: the reference by digest.
    pub fn by_digest(&self) -> String {
        let repo = match self.reference.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => &self.reference,
        };
        format!("{repo}@{}", self.digest)
    }

    /// The manifests an index lists: (architecture, digest).
    pub fn platforms(&self) -> Vec<(String, String)> {
        self.manifest["manifests"]
            .as_array()
            .expect("not an index")
            .iter()
            .map(|m| {
                (
                    format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap_or(""),
                        m["platform"]["architecture"].as_str().unwrap_or("")
                    ),
                    m["digest"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------
// Test images.

/// An OCI layout on disk holding one image.
#[derive(Clone, Debug)]
pub struct Image {
    pub layout: PathBuf,
    pub tag: String,
    /// The config digest: the image ID bulkhead prints for it.
    pub config: String,
    /// The uncompressed layer digests (diff IDs), bottom first.
    pub diff_ids: Vec<String>,
}

struct LayoutWriter {
    blobs: PathBuf,
}

impl LayoutWriter {
    fn new(dir: &Path) -> LayoutWriter {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        LayoutWriter { blobs }
    }

    /// Stores `data`; returns its descriptor with `media_type`.
    fn put(&self, media_type: &str, data: &[u8]) -> Value {
        let digest = sha256_digest(data);
        std::fs::write(self.blobs.join(hex(&digest)), data).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": data.len()})
    }

    /// An image manifest for `arch` with `layers` and `config`; returns
    /// (manifest descriptor, config digest, diff IDs).
    fn image(
        &self,
        arch: &str,
        layers: &[Vec<Entry>],
        config: Value,
    ) -> (Value, String, Vec<String>) {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for l in layers {
            let d = self.put("application/vnd.oci.image.layer.v1.tar", &tar_layer(l));
            diff_ids.push(d["digest"].as_str().unwrap().to_string());
            descs.push(d);
        }
        let cfg = json!({
            "architecture": arch, "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let cfg = self.put(
            "application/vnd.oci.image.config.v1+json",
            cfg.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg, "layers": descs
        });
        let desc = self.put(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        (desc, cfg["digest"].as_str().unwrap().to_string(), diff_ids)
    }

    /// index.json with `desc` tagged `tag`.
    fn tag(&self, desc: &Value, tag: &str) {
        let mut desc = desc.clone();
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "manifests": [desc]});
        let dir = self.blobs.parent().unwrap().parent().unwrap();
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// A runnable linux/amd64 image at `dir`: the busybox base layer (the same
/// bytes for every image built here, so images share it) and a top layer
/// with `/etc/app-name` holding `name` and whatever `top` adds. Its
/// default command prints `/etc/app-name`.
pub fn app_image(dir: &Path, name: &str, top: Vec<Entry>) -> Image {
    let mut layer = vec![
        dir_entry("etc"),
        file("etc/app-name", format!("{name}\n").as_bytes(), 0o644),
    ];
    layer.extend(top);
    build_image(dir, &[busybox_layer(), layer], name)
}

fn dir_entry(path: &str) -> Entry {
    dir(path)
}

fn build_image(dir: &Path, layers: &[Vec<Entry>], tag: &str) -> Image {
    let w = LayoutWriter::new(dir);
    let config = json!({"Cmd": ["/bin/cat", "/etc/app-name"], "Env": ["PATH=/bin"]});
    let (desc, config, diff_ids) = w.image("amd64", layers, config);
    w.tag(&desc, tag);
    Image {
        layout: dir.to_path_buf(),
        tag: tag.to_string(),
        config,
        diff_ids,
    }
}

/// `n` bytes from /dev/urandom (incompressible).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    data
}

/// A runnable image whose top layer holds `srv/random.bin`, `mib` MiB of
/// random bytes (a layer that stays that big compressed).
pub fn big_image(dir: &Path, name: &str, mib: usize) -> Image {
    app_image(
        dir,
        name,
        vec![
            dir_entry("srv"),
            file("srv/random.bin", &random_bytes(mib << 20), 0o644),
        ],
    )
}

/// A multi-platform OCI layout: an image index tagged `tag`.
#[derive(Clone, Debug)]
pub struct MultiArch {
    pub layout: PathBuf,
    pub tag: String,
    /// `os/arch` -> the config digest of that platform's image.
    pub configs: BTreeMap<String, String>,
}

/// An OCI layout at `dir` whose index.json tags (`tag`) an image index
/// listing one image per architecture in `arches` (linux only): `amd64` is
/// a runnable busybox image printing `amd64`; any other is a one-file
/// layer (nothing that runs here).
pub fn multi_arch_layout(dir: &Path, tag: &str, arches: &[&str]) -> MultiArch {
    let w = LayoutWriter::new(dir);
    let mut manifests = Vec::new();
    let mut configs = BTreeMap::new();
    for arch in arches {
        let marker = vec![
            dir_entry("etc"),
            file("etc/app-name", format!("{arch}\n").as_bytes(), 0o644),
        ];
        let layers = if *arch == "amd64" {
            vec![busybox_layer(), marker]
        } else {
            vec![marker]
        };
        let config = json!({"Cmd": ["/bin/cat", "/etc/app-name"], "Env": ["PATH=/bin"]});
        let (mut desc, config, _) = w.image(arch, &layers, config);
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        manifests.push(desc);
        configs.insert(format!("linux/{arch}"), config);
    }
    let index = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests
    });
    let desc = w.put(
        "application/vnd.oci.image.index.v1+json",
        index.to_string().as_bytes(),
    );
    w.tag(&desc, tag);
    MultiArch {
        layout: dir.to_path_buf(),
        tag: tag.to_string(),
        configs,
    }
}

// ---------------------------------------------------------------------
// Bearer tokens.

const TOKEN_SERVICE: &str = "bulkhead-test-registry";
const TOKEN_ISSUER: &str = "bulkhead-test-token-issuer";

/// Docker's token server, as far as distribution needs one: `GET /token`
/// with basic credentials gets a JWT (RS256, signed by `openssl dgst`, the
/// signing certificate in its `x5c` header) granting the scopes asked for.
/// No credentials get a token granting nothing; wrong ones get 401.
struct TokenServer {
    port: u16,
    cert: PathBuf,
    issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    netns: Option<String>,
}

impl TokenServer {
    fn start(netns: Option<&str>, dir: &Path) -> TokenServer {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        check(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=bulkhead test token signer"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            "openssl req (token signer)",
        );
        let der = check(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert),
            "openssl x509 -outform DER",
        );
        let x5c = base64(&der);
        let (listener, port) = in_netns(netns, || {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
            let port = l.local_addr().unwrap().port();
            (l, port)
        });
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (issued, stop) = (issued.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        let _ = serve_token(conn, &key, &x5c, &issued);
                    }
                }
            })
        };
        TokenServer {
            port,
            cert,
            issued,
            stop,
            thread: Some(thread),
            netns: netns.map(str::to_string),
        }
    }

    fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        stop_accept_loop(
            &self.stop,
            self.netns.as_deref(),
            self.port,
            self.thread.take(),
        );
    }
}

/// Stops a test server's accept loop: sets `stop`, wakes the loop with a
/// connection (its listener lives in `netns`) and joins its thread.
fn stop_accept_loop(
    stop: &AtomicBool,
    netns: Option<&str>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
) {
    stop.store(true, Ordering::SeqCst);
    in_netns(netns, move || {
        let _ = TcpStream::connect(("127.0.0.1", port));
    });
    if let Some(t) = thread {
        let _ = t.join();
    }
}

/// `%XX` decoding of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(v);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve_token(
    conn: TcpStream,
    key: &Path,
    x5c: &str,
    issued: &AtomicUsize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut scopes = Vec::new();
    for pair in query.split('&') {
        if let Some(("scope", v)) = pair.split_once('=') {
            scopes.extend(percent_decode(v).split(' ').map(str::to_string));
        }
    }
    let good = format!("Basic {}", base64(format!("{USER}:{PASSWORD}").as_bytes()));
    let (status, body) = match authorization.as_deref() {
        Some(a) if a == good => (200, token_body(key, x5c, USER, &scopes)),
        None => (200, token_body(key, x5c, "", &[])),
        Some(_) => (
            401,
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}).to_string(),
        ),
    };
    if status == 200 {
        issued.fetch_add(1, Ordering::SeqCst);
    }
    let reason = if status == 200 { "OK" } else { "Unauthorized" };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

/// `{"token": JWT}` granting `scopes` (`type:name:actions`) to `subject`.
fn token_body(key: &Path, x5c: &str, subject: &str, scopes: &[String]) -> String {
    static JTI: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = json!({
        "iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE,
        "exp": now + 600, "nbf": now - 60, "iat": now - 60,
        "jti": format!("bulkhead-test-{}", JTI.fetch_add(1, Ordering::SeqCst)),
        "access": access
    });
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign failed");
    let jwt = format!("{input}.{}", base64url(&out.stdout));
    json!({"token": jwt, "access_token": jwt, "expires_in": 600}).to_string()
}

// ---------------------------------------------------------------------
// Network misbehaviour.

/// A TCP proxy on 127.0.0.1 in a netns, in front of `target`, that
/// forwards everything clients send and the first `budget` bytes the
/// target answers (over all connections), then stalls: it holds the
/// connections open and forwards nothing more, until [`Proxy::cut`].
pub struct Proxy {
    port: u16,
    netns: Option<String>,
    shared: Arc<ProxyShared>,
    thread: Option<JoinHandle<()>>,
}

struct ProxyShared {
    budget: AtomicU64,
    forwarded: AtomicU64,
    cut: Mutex<bool>,
    cut_signal: Condvar,
    conns: Mutex<Vec<TcpStream>>,
}

impl ProxyShared {
    fn is_cut(&self) -> bool {
        *self.cut.lock().unwrap()
    }
}

impl Proxy {
    pub fn start(netns: Option<&NetNs>, target: u16, budget: u64) -> Proxy {
        let netns = netns.map(NetNs::path);
        let (listener, port) = in_netns(netns.as_deref(), || {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
            let port = l.local_addr().unwrap().port();
            (l, port)
        });
        let shared = Arc::new(ProxyShared {
            budget: AtomicU64::new(budget),
            forwarded: AtomicU64::new(0),
            cut: Mutex::new(false),
            cut_signal: Condvar::new(),
            conns: Mutex::new(Vec::new()),
        });
        let thread = {
            let shared = shared.clone();
            spawn_in(netns.as_deref(), move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if shared.is_cut() {
                        break;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    {
                        let mut conns = shared.conns.lock().unwrap();
                        conns.push(client.try_clone().unwrap());
                        conns.push(server.try_clone().unwrap());
                    }
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut &c2, &mut &s2);
                        let _ = s2.shutdown(Shutdown::Write);
                    });
                    let shared = shared.clone();
                    std::thread::spawn(move || pump_limited(server, client, &shared));
                }
            })
        };
        Proxy {
            port,
            netns,
            shared,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes of answers forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// Closes every connection and stops accepting new ones.
    pub fn cut(&mut self) {
        *self.shared.cut.lock().unwrap() = true;
        self.shared.cut_signal.notify_all();
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let port = self.port;
        in_netns(self.netns.as_deref(), move || {
            let _ = TcpStream::connect(("127.0.0.1", port));
        });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn pump_limited(server: TcpStream, client: TcpStream, shared: &ProxyShared) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let left = shared.budget.load(Ordering::SeqCst);
        if left == 0 {
            // Stall until cut, forwarding nothing.
            let mut cut = shared.cut.lock().unwrap();
            while !*cut {
                cut = shared.cut_signal.wait(cut).unwrap();
            }
            break;
        }
        let want = buf.len().min(left as usize);
        let n = match (&server).read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Take what this read used from the shared budget (another
        // connection may have taken some meanwhile: forward only what is left).
        let mut allowed = n as u64;
        let _ = shared
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                allowed = allowed.min(b);
                Some(b - allowed)
            });
        if (&client).write_all(&buf[..allowed as usize]).is_err() {
            break;
        }
        shared.forwarded.fetch_add(allowed, Ordering::SeqCst);
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.cut();
        }
    }
}

/// A listener on 127.0.0.1 in a netns that accepts connections and never
/// answers (they stay open until it is dropped).
pub struct Blackhole {
    port: u16,
    netns: Option<String>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Blackhole {
    pub fn start(netns: Option<&NetNs>) -> Blackhole {
        let netns = netns.map(NetNs::path);
        let (listener, port) = in_netns(netns.as_deref(), || {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind the blackhole");
            let port = l.local_addr().unwrap().port();
            (l, port)
        });
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, accepted) = (stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(c) = conn {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        held.push(c);
                    }
                }
            })
        };
        Blackhole {
            port,
            netns,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        stop_accept_loop(
            &self.stop,
            self.netns.as_deref(),
            self.port,
            self.thread.take(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("repository%3Atest%2Fapp%3Apull%2Cpush"),
            "repository:test/app:pull,push"
        );
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }
}
