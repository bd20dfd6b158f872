//! The clients a service builds to call the others: Objects with a service token of its own.

use std::sync::Arc;

use anyhow::Context;
use sipmba_auth::peer_tls::PeerCa;
use sipmba_runtime::{
    Config, ServiceIdentity,
    objects::{ObjectsClient, ServiceToken},
};

use super::Failure;

/// The Objects access client of a service, with its own client_credentials token carrying
/// `objects:authorize` and `extra` scopes (a client created in sso at start when sso is this
/// process); the token source is returned too, for the service's other calls.
pub(super) async fn objects_access(
    identity: &ServiceIdentity,
    config: &Config,
    peer_ca: &PeerCa,
    sso: Option<&sipmba_sso::Sso>,
    extra: &[&str],
) -> Result<(ObjectsClient, ServiceToken), Failure> {
    let mut scopes = vec![sipmba_auth::scopes::OBJECTS_AUTHORIZE];
    scopes.extend_from_slice(extra);
    let section = identity.section;
    let own = format!("http://{}", loopback(config.listen));
    let secret = match (&identity.client_secret_file, sso) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("reading {} ({section}.client_secret_file)", file.display()))?
            .trim()
            .to_owned(),
        // sso is this process: the service gets a client of its own, with a fresh secret each start.
        (None, Some(sso)) => {
            let secret = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            sso.ensure_service_client(&identity.client_id, &secret, uuid::Uuid::new_v4(), &scopes)
                .await
                .map_err(|e| {
                    Failure::Runtime(anyhow::anyhow!("{section}'s service client: {e}"))
                })?;
            secret
        }
        (None, None) => {
            return Err(Failure::Usage(format!(
                "invalid setting `{section}.client_secret_file`: is not set"
            )));
        }
    };
    let token_url = identity
        .token_url
        .clone()
        .unwrap_or_else(|| format!("{own}/oauth2/token"));
    let credentials = sipmba_auth::client::ServiceCredentials::trusting(
        &token_url,
        &identity.client_id,
        &secret,
        &scopes.join(" "),
        peer_ca.pem(),
    )
    .map_err(|e| Failure::Runtime(anyhow::anyhow!("{section}'s credentials: {e}")))?;
    let objects_url = identity.objects_url.clone().unwrap_or(own);
    let token = ServiceToken::Credentials(Arc::new(credentials));
    let objects = ObjectsClient::new(&objects_url, token.clone(), peer_ca)
        .map_err(|e| Failure::Usage(format!("invalid setting `{section}.objects_url`: {e}")))?;
    Ok((objects, token))
}

/// The address this process answers on, for calls to itself.
pub(super) fn loopback(listen: std::net::SocketAddr) -> std::net::SocketAddr {
    if listen.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], listen.port()))
    } else {
        listen
    }
}
