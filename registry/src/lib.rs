//! Images from registries: `bulkhead pull` over the OCI distribution API, and the credentials
//! `bulkhead login` keeps.
//!
//! A pull resolves a Docker-style reference ([`reference`]), talks TLS (or, where allowed,
//! plain HTTP) to the registry ([`transport`]) with credentials from Docker's `config.json`
//! ([`auth_file`]), finds the manifest for this host's platform ([`manifest`]), downloads
//! and verifies every blob into the store's blob area, resuming what an interrupted pull
//! left ([`download`]), and only then makes and names the image (rootfs's
//! `Store::install_pulled`). The distribution protocol itself, auth challenges included, is
//! the `oci-client` crate's.

pub mod auth_file;
mod download;
mod error;
mod login;
mod manifest;
mod progress;
mod pull;
pub mod reference;
mod session;
pub mod transport;

pub use auth_file::{AuthFile, AuthFileError, Credentials};
pub use error::PullError;
pub use login::{login, logout};
pub use progress::ProgressMode;
pub use pull::{pull, PullOptions};
pub use reference::RemoteRef;
pub use transport::TransportOptions;
