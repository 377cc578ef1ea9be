//! `bulkhead pull|login|logout`, and the image lookup `run` does: the store first, then the
//! registry (`--pull missing|always|never`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use bulkhead_registry::{Credentials, ProgressMode, PullOptions, RemoteRef, TransportOptions};
use bulkhead_rootfs::{Image, ImageRef, Store, StoreError};
use clap::{Args, ValueEnum};

use crate::paths;

/// How a registry is reached: shared by `pull`, `login` and `run`.
#[derive(Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// A CA certificate (PEM) to trust for registries, on top of the system's
    /// (also $BULKHEAD_TLS_CA, `:`-separated).
    #[arg(long = "tls-ca", value_name = "FILE")]
    pub tls_ca: Vec<PathBuf>,
    /// A registry (HOST[:PORT]) to talk to in plain HTTP (also
    /// $BULKHEAD_INSECURE_REGISTRIES, `,`-separated). Loopback registries
    /// may answer in HTTP without being listed.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Registry credentials (default: $REGISTRY_AUTH_FILE,
    /// $DOCKER_CONFIG/config.json, ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

impl RegistryArgs {
    fn options(&self, progress: ProgressMode) -> PullOptions {
        PullOptions {
            transport: self.transport(),
            authfile: self.authfile.clone(),
            progress,
        }
    }

    fn transport(&self) -> TransportOptions {
        TransportOptions {
            ca_files: self.tls_ca.clone(),
            insecure: self.insecure_registry.clone(),
            timeout: None,
        }
        .with_env()
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only an image the store lacks.
    #[default]
    Missing,
    /// Pull before every run (the store keeps what is unchanged).
    Always,
    /// Never pull: a missing image is an error.
    Never,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// NAME[:TAG] or NAME@DIGEST, as Docker spells it (`nginx`,
    /// `registry:5000/team/app:1.0`).
    pub reference: String,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The registry: HOST[:PORT] (default docker.io).
    pub registry: Option<String>,
    #[arg(short, long)]
    pub username: Option<String>,
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry: HOST[:PORT] (default docker.io).
    pub registry: Option<String>,
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// Registry failures exit 125, as Docker's do.
fn exit_125(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bulkhead: {e:#}");
            ExitCode::from(125)
        }
    }
}

pub fn pull(args: PullArgs) -> ExitCode {
    exit_125((|| {
        let store = Store::open(paths::root()).context("cannot open the image store")?;
        let mode = if args.quiet {
            ProgressMode::Quiet
        } else {
            ProgressMode::Auto
        };
        let image = pull_into(&store, &args.reference, &args.registry, mode)?;
        println!("{}", image.digest);
        Ok(())
    })())
}

fn pull_into(
    store: &Store,
    reference: &str,
    registry: &RegistryArgs,
    mode: ProgressMode,
) -> anyhow::Result<Image> {
    bulkhead_registry::pull(store, reference, &registry.options(mode))
        .with_context(|| format!("cannot pull {reference}"))
}

pub fn login(args: LoginArgs) -> ExitCode {
    exit_125((|| {
        let registry = args.registry.as_deref().unwrap_or("docker.io");
        let creds = login_credentials(&args)?;
        bulkhead_registry::login(
            registry,
            &creds,
            &args.registry_args.transport(),
            args.registry_args.authfile.as_deref(),
        )
        .with_context(|| format!("cannot log in to {registry}"))?;
        println!("Login Succeeded");
        Ok(())
    })())
}

fn login_credentials(args: &LoginArgs) -> anyhow::Result<Credentials> {
    let Some(username) = args.username.clone() else {
        bail!("give the username with -u");
    };
    let password = match (&args.password, args.password_stdin) {
        (Some(_), true) => bail!("give the password with -p or --password-stdin, not both"),
        (Some(p), false) => p.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the password from stdin")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("give the password with -p or --password-stdin"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(Credentials { username, password })
}

pub fn logout(args: LogoutArgs) -> ExitCode {
    exit_125((|| {
        let registry = args.registry.as_deref().unwrap_or("docker.io");
        if bulkhead_registry::logout(registry, args.authfile.as_deref())
            .with_context(|| format!("cannot log out of {registry}"))?
        {
            println!("Removed login credentials for {registry}");
        } else {
            println!("Not logged in to {registry}");
        }
        Ok(())
    })())
}

/// The image `run` means by `image`: a file reference as it is; a name from the store, pulled
/// first as `policy` says. The built-in image is never pulled.
pub fn image_for(
    store: &Store,
    image: &str,
    policy: PullPolicy,
    registry: &RegistryArgs,
) -> anyhow::Result<Image> {
    let reference =
        ImageRef::parse(image).with_context(|| format!("invalid image reference {image:?}"))?;
    let ImageRef::Name(name) = &reference else {
        return store
            .resolve(&reference)
            .with_context(|| format!("cannot use image {image}"));
    };
    if bulkhead_rootfs::is_default_name(name) {
        return store
            .resolve(&reference)
            .with_context(|| format!("cannot use image {image}"));
    }
    if policy != PullPolicy::Always {
        if let Some(found) = stored(store, name)? {
            return Ok(found);
        }
    }
    if policy == PullPolicy::Never {
        return Err(StoreError::NoSuchImage(name.clone()))
            .with_context(|| format!("cannot use image {image} (--pull never)"));
    }
    pull_into(store, name, registry, ProgressMode::Auto)
}

/// A stored image by the name given or by its normalised registry name (`nginx` is stored
/// as `docker.io/library/nginx:latest`), with the name it is stored under.
fn find_stored(store: &Store, name: &str) -> anyhow::Result<Option<(String, Image)>> {
    let normalised = RemoteRef::parse(name).ok().map(|r| r.store_name());
    for candidate in std::iter::once(name.to_string()).chain(normalised) {
        if let Some(image) = store.lookup(&candidate)? {
            return Ok(Some((candidate, image)));
        }
    }
    Ok(None)
}

pub fn stored(store: &Store, name: &str) -> anyhow::Result<Option<Image>> {
    Ok(find_stored(store, name)?.map(|(_, image)| image))
}

/// The stored name `name` means: itself, or its normalised registry form.
pub fn stored_name(store: &Store, name: &str) -> anyhow::Result<String> {
    Ok(find_stored(store, name)?.map_or_else(|| name.to_string(), |(n, _)| n))
}
