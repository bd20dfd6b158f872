//! The authorization code grant (RFC 6749 §4.1) with PKCE (RFC 7636, `S256` only), for the
//! platform's first-party public clients: the web console and the CLI. A code is issued once a
//! user signs in on sso's own login page, lives a minute, is stored hashed, and is exchanged once,
//! by the client that asked for it, for the redirect URI it named, with the verifier of its
//! challenge. A second exchange is refused and ends every token the first one gave.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use sha2::{Digest, Sha256};
use sipmba_auth::scopes;
use sipmba_runtime::ids::now_ms;
use url::Url;
use uuid::Uuid;

use crate::{
    OAuthError, OAuthErrorCode, Sso,
    entity::authorization_codes,
    grants::{Issued, resolve_scopes},
    secrets,
};

/// The web console's client id.
pub const CONSOLE_CLIENT: &str = "sipmba-console";
/// The CLI's client id (`sipmba login` in a browser).
pub const CLI_CLIENT: &str = "sipmba-cli";

/// How long a code may wait for its exchange.
const CODE_LIFETIME_MS: i64 = 60_000;

/// A first-party public client (no secret: PKCE proves the exchange comes from the client that
/// asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicClient {
    /// Its id.
    pub id: &'static str,
    /// Redirect URIs, matched exactly.
    pub redirect_uris: Vec<String>,
    /// Also any `http://127.0.0.1:<port>/callback` or `http://[::1]:<port>/callback`: a native
    /// application's loopback redirect, whose port is chosen when it runs (RFC 8252 §7.3).
    pub loopback: bool,
}

impl PublicClient {
    /// Whether `uri` is one of this client's redirect URIs.
    pub fn redirects_to(&self, uri: &str) -> bool {
        if self.redirect_uris.iter().any(|r| r == uri) {
            return true;
        }
        self.loopback
            && Url::parse(uri).is_ok_and(|u| {
                u.scheme() == "http"
                    && matches!(u.host_str(), Some("127.0.0.1" | "[::1]"))
                    && u.port().is_some()
                    && u.path() == "/callback"
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none()
            })
    }
}

/// What a client asks of the authorization endpoint, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    /// The client.
    pub client_id: String,
    /// Where the answer goes.
    pub redirect_uri: String,
    /// The client's `state`, returned as it came.
    pub state: String,
    /// BASE64URL(SHA-256(code_verifier)).
    pub code_challenge: String,
    /// The scopes asked for (empty: every user scope).
    pub scope: String,
}

/// Why an authorization request cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The client or its redirect URI is not known: the answer is shown to the person, never
    /// sent to the URI (RFC 6749 §4.1.2.1).
    Shown(String),
    /// Anything else: sent to the redirect URI as `error` and `error_description`, with `state`.
    Redirected {
        /// The redirect URI (known to belong to the client).
        redirect_uri: String,
        /// The client's state, when it sent one.
        state: Option<String>,
        /// The RFC 6749 §4.1.2.1 code.
        error: &'static str,
        /// What was wrong.
        description: String,
    },
}

impl Refusal {
    /// Where the browser is sent for a redirected refusal.
    pub fn location(&self) -> Option<String> {
        match self {
            Refusal::Shown(_) => None,
            Refusal::Redirected {
                redirect_uri,
                state,
                error,
                description,
            } => {
                let mut params = vec![("error", *error), ("error_description", description)];
                if let Some(state) = state {
                    params.push(("state", state));
                }
                Some(with_query(redirect_uri, &params))
            }
        }
    }
}

/// `uri` with `params` added to its query.
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    match Url::parse(uri) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(params);
            url.into()
        }
        Err(_) => uri.to_owned(),
    }
}

/// BASE64URL(SHA-256(`verifier`)), the `S256` challenge of a verifier.
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A code verifier as RFC 7636 §4.1 defines it: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

impl Sso {
    /// The public clients: the console (its redirect URIs from the settings) and the CLI.
    pub fn public_clients(&self) -> Vec<PublicClient> {
        vec![
            PublicClient {
                id: CONSOLE_CLIENT,
                redirect_uris: self.inner.config.console_redirect_uris(),
                loopback: false,
            },
            PublicClient {
                id: CLI_CLIENT,
                redirect_uris: Vec::new(),
                loopback: true,
            },
        ]
    }

    /// Checks an authorization request's parameters (`get` reads one by name).
    pub fn authorization_request<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<AuthorizationRequest, Refusal> {
        let client_id = get("client_id").unwrap_or_default();
        let Some(client) = self
            .public_clients()
            .into_iter()
            .find(|c| c.id == client_id)
        else {
            return Err(Refusal::Shown(format!(
                "unknown client {client_id:?}: only the platform's console and CLI sign in here"
            )));
        };
        let redirect_uri = get("redirect_uri").unwrap_or_default();
        if !client.redirects_to(redirect_uri) {
            return Err(Refusal::Shown(format!(
                "{redirect_uri:?} is not a redirect URI of {client_id}"
            )));
        }
        let state = get("state").filter(|s| !s.is_empty());
        let refuse = |error: &'static str, description: String| Refusal::Redirected {
            redirect_uri: redirect_uri.to_owned(),
            state: state.map(str::to_owned),
            error,
            description,
        };
        match get("response_type") {
            Some("code") => {}
            Some(other) => {
                return Err(refuse(
                    "unsupported_response_type",
                    format!("response_type {other:?} is not offered; use code"),
                ));
            }
            None => {
                return Err(refuse(
                    "invalid_request",
                    "response_type is required".into(),
                ));
            }
        }
        let Some(state) = state else {
            return Err(refuse(
                "invalid_request",
                "state is required (an unguessable value the client checks on return)".into(),
            ));
        };
        if state.len() > 512 {
            return Err(refuse("invalid_request", "state is over 512 bytes".into()));
        }
        match get("code_challenge_method") {
            Some("S256") => {}
            Some(other) => {
                return Err(refuse(
                    "invalid_request",
                    format!("code_challenge_method {other:?} is not offered; use S256"),
                ));
            }
            None => {
                return Err(refuse(
                    "invalid_request",
                    "code_challenge_method=S256 is required (PKCE)".into(),
                ));
            }
        }
        let challenge = get("code_challenge").unwrap_or_default();
        if challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(refuse(
                "invalid_request",
                "code_challenge must be BASE64URL(SHA-256(code_verifier)): 43 characters".into(),
            ));
        }
        let scope = get("scope").unwrap_or_default();
        if let Err(e) = resolve_scopes(scope, scopes::USER_SCOPES) {
            return Err(refuse("invalid_scope", e.description));
        }
        Ok(AuthorizationRequest {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            state: state.to_owned(),
            code_challenge: challenge.to_owned(),
            scope: scope.to_owned(),
        })
    }

    /// After `user` signed in for `request`: a new code, and where the browser goes with it.
    pub async fn issue_code(
        &self,
        request: &AuthorizationRequest,
        user: Uuid,
    ) -> Result<String, OAuthError> {
        let scopes = resolve_scopes(&request.scope, scopes::USER_SCOPES)?;
        let code = secrets::random_secret();
        let now = now_ms();
        authorization_codes::Entity::delete_many()
            .filter(authorization_codes::Column::ExpiresMs.lt(now - CODE_LIFETIME_MS))
            .exec(&self.inner.db)
            .await?;
        authorization_codes::Entity::insert(authorization_codes::ActiveModel {
            code_hash: Set(secrets::digest(&code)),
            client_id: Set(request.client_id.clone()),
            redirect_uri: Set(request.redirect_uri.clone()),
            user_id: Set(user),
            scopes: Set(scopes.join(" ")),
            code_challenge: Set(request.code_challenge.clone()),
            family: Set(Uuid::new_v4()),
            created_ms: Set(now),
            expires_ms: Set(now + CODE_LIFETIME_MS),
            used_ms: Set(None),
        })
        .exec_without_returning(&self.inner.db)
        .await?;
        tracing::info!(%user, client = %request.client_id, "signed in on the login page");
        Ok(with_query(
            &request.redirect_uri,
            &[("code", &code), ("state", &request.state)],
        ))
    }

    /// The `authorization_code` grant: `code` for the tokens of a login, once.
    pub async fn code_grant(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Issued, OAuthError> {
        self.counted(
            "authorization_code",
            self.code_grant_inner(code, client_id, redirect_uri, verifier),
        )
        .await
    }

    async fn code_grant_inner(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Issued, OAuthError> {
        if !self.public_clients().iter().any(|c| c.id == client_id) {
            return Err(OAuthError::invalid_client());
        }
        if !valid_verifier(verifier) {
            return Err(OAuthError::invalid_request(
                "`code_verifier` must be 43 to 128 characters of A-Z, a-z, 0-9, -, ., _ and ~",
            ));
        }
        let row = authorization_codes::Entity::find_by_id(secrets::digest(code))
            .one(&self.inner.db)
            .await?
            .ok_or_else(|| OAuthError::invalid_grant("unknown authorization code"))?;
        // Each check names what was wrong, but none lets the code be tried again.
        if row.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "the code was issued to another client",
            ));
        }
        if row.used_ms.is_some() {
            return self.code_reused(&row).await;
        }
        if row.expires_ms <= now_ms() {
            return Err(OAuthError::invalid_grant(
                "the code has expired; sign in again",
            ));
        }
        if row.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the one the code was issued for",
            ));
        }
        let presented = s256(verifier);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            presented.as_bytes(),
            row.code_challenge.as_bytes(),
        )) {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge (PKCE)",
            ));
        }
        let claimed = authorization_codes::Entity::update_many()
            .col_expr(authorization_codes::Column::UsedMs, Expr::value(now_ms()))
            .filter(authorization_codes::Column::CodeHash.eq(row.code_hash.clone()))
            .filter(authorization_codes::Column::UsedMs.is_null())
            .exec(&self.inner.db)
            .await?;
        if claimed.rows_affected != 1 {
            return self.code_reused(&row).await;
        }
        self.require_active_user(row.user_id).await?;
        let scopes: Vec<String> = row.scopes.split_whitespace().map(str::to_owned).collect();
        self.login(row.user_id, &scopes, row.family).await
    }

    async fn code_reused(&self, row: &authorization_codes::Model) -> Result<Issued, OAuthError> {
        tracing::warn!(user = %row.user_id, family = %row.family, "authorization code used twice: revoking its tokens");
        self.revoke_family(row.family).await?;
        Err(OAuthError::new(
            OAuthErrorCode::InvalidGrant,
            "the code was already used; every token it gave is now revoked",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_take_any_port_and_nothing_else() {
        let cli = PublicClient {
            id: CLI_CLIENT,
            redirect_uris: Vec::new(),
            loopback: true,
        };
        assert!(cli.redirects_to("http://127.0.0.1:53121/callback"));
        assert!(cli.redirects_to("http://[::1]:8080/callback"));
        for refused in [
            "http://localhost:53121/callback",
            "http://127.0.0.1/callback",
            "https://127.0.0.1:53121/callback",
            "http://127.0.0.1:53121/other",
            "http://127.0.0.1:53121/callback?x=1",
            "http://evil.example:53121/callback",
            "http://127.0.0.1.evil.example:1/callback",
        ] {
            assert!(!cli.redirects_to(refused), "{refused}");
        }
        let console = PublicClient {
            id: CONSOLE_CLIENT,
            redirect_uris: vec!["https://iot.example/".into()],
            loopback: false,
        };
        assert!(console.redirects_to("https://iot.example/"));
        assert!(!console.redirects_to("https://iot.example/?x"));
        assert!(!console.redirects_to("http://127.0.0.1:1/callback"));
    }

    #[test]
    fn the_s256_challenge_is_rfc_7636s() {
        // RFC 7636 Appendix B.
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_verifier(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
        ));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(50))));
    }
}
