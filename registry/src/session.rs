//! One authenticated conversation with one registry for one repository.

use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;

use crate::auth_file::Credentials;
use crate::error::{Ctx, PullError};
use crate::reference::RemoteRef;
use crate::transport::Transport;

pub(crate) struct Session<'a> {
    pub client: oci_client::Client,
    pub auth: RegistryAuth,
    pub remote: &'a RemoteRef,
    user: Option<String>,
    timeout: std::time::Duration,
}

impl<'a> Session<'a> {
    /// Chooses the scheme, then answers the registry's `WWW-Authenticate` challenge (basic, or
    /// a bearer token from its realm) so every later request carries the credentials.
    pub(crate) async fn open(
        transport: &Transport,
        remote: &'a RemoteRef,
        creds: Option<Credentials>,
    ) -> Result<Session<'a>, PullError> {
        let registry = remote.registry();
        let scheme = transport.scheme_for(registry).await?;
        let client = transport.oci_client(registry, scheme);
        let user = creds.as_ref().map(|c| c.username.clone());
        let auth = match creds {
            Some(c) => RegistryAuth::Basic(c.username, c.password),
            None => RegistryAuth::Anonymous,
        };
        let session = Session {
            client,
            auth,
            remote,
            user,
            timeout: transport.timeout,
        };
        session
            .client
            .auth(remote.oci(), &session.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| session.ctx(&remote.to_string()).classify(e))?;
        Ok(session)
    }

    /// How errors about `what` are told.
    pub(crate) fn ctx<'b>(&'b self, what: &'b str) -> Ctx<'b> {
        Ctx {
            registry: self.remote.registry(),
            user: self.user.as_deref(),
            timeout: self.timeout,
            what,
        }
    }
}
