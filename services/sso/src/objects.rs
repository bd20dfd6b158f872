//! sso's own token for Objects: sso signs it with its current key (it cannot ask itself for
//! one), caches it and signs a new one a minute before it expires. Every call to Objects goes
//! through the one client, [`sipmba_runtime::objects::ObjectsClient`].

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use sipmba_auth::{
    Kind,
    signing::{AccessClaims, unix_now},
};
use sipmba_runtime::{ServiceError, objects::ServiceToken};
use uuid::Uuid;

use crate::keys::KeyRing;

/// sso's own principal id when it calls Objects.
pub const SSO_SERVICE_ID: Uuid = Uuid::from_u128(0x5350_5353_4f00_4000_8000_0000_0000_0001);

/// How long a token sso signs for itself lives.
const LIFETIME: Duration = Duration::from_secs(600);

/// sso's token for Objects, signed by `keys` for `issuer` and `audience`.
pub fn own_token(keys: Arc<KeyRing>, issuer: &str, audience: &str) -> ServiceToken {
    let (issuer, audience) = (issuer.to_owned(), audience.to_owned());
    let cached: Mutex<Option<(String, i64)>> = Mutex::new(None);
    ServiceToken::Minted(Arc::new(move || {
        let mut cached = cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, exp)) = cached.as_ref()
            && *exp > unix_now() + 60
        {
            return Ok(token.clone());
        }
        use sipmba_auth::scopes::*;
        let claims = AccessClaims::new(
            &issuer,
            &audience,
            Kind::Service,
            SSO_SERVICE_ID,
            &[
                USERS_READ,
                USERS_WRITE,
                THINGS_READ,
                OBJECTS_ADMIN,
                OBJECTS_AUTHORIZE,
                OBJECTS_EVENTS,
            ],
            LIFETIME,
        );
        let token = keys
            .current()
            .sign(&claims)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        *cached = Some((token.clone(), claims.exp));
        Ok(token)
    }))
}
