//! The other side of `client_credentials`: a service (control, processing, the operator) holding a
//! client id and secret keeps a current access token from sso, fetched when first needed and
//! renewed a minute before it expires.

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

/// `msg` as a gRPC request carrying `authorization: Bearer <token>` (a token that is not a valid
/// header value is left out, and the call is refused as unauthenticated).
pub fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// sso could not be reached.
    #[error("cannot reach the token endpoint: {0}")]
    Unreachable(String),
    /// sso refused the credentials; `error` is the RFC 6749 code.
    #[error("the token endpoint refused the client: {error}: {description}")]
    Refused {
        /// RFC 6749 error code.
        error: String,
        /// What sso said.
        description: String,
    },
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// A service's client credentials and its current token.
pub struct ServiceCredentials {
    token_url: String,
    client_id: String,
    secret: String,
    scope: String,
    http: reqwest::Client,
    current: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        f.debug_struct("ServiceCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// Renew this long before expiry.
const MARGIN: Duration = Duration::from_secs(60);

impl ServiceCredentials {
    /// Credentials for `token_url` (sso's `/oauth2/token`: plaintext, or certified by a public
    /// CA); `scope` may be empty (all the client's scopes).
    pub fn new(
        token_url: &str,
        client_id: &str,
        secret: &str,
        scope: &str,
    ) -> Result<Self, CredentialsError> {
        Self::trusting(token_url, client_id, secret, scope, None)
    }

    /// As [`ServiceCredentials::new`], trusting `ca` as well for an `https://` token endpoint.
    pub fn trusting(
        token_url: &str,
        client_id: &str,
        secret: &str,
        scope: &str,
        ca: Option<&[u8]>,
    ) -> Result<Self, CredentialsError> {
        let http = crate::peer_tls::http_client_trusting(Duration::from_secs(10), ca)
            .map_err(CredentialsError::Unreachable)?;
        Ok(Self {
            token_url: token_url.to_owned(),
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            scope: scope.to_owned(),
            http,
            current: Mutex::new(None),
        })
    }

    /// A token valid for at least another minute.
    pub async fn token(&self) -> Result<String, CredentialsError> {
        let mut current = self.current.lock().await;
        if let Some((token, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let mut form = vec![("grant_type", "client_credentials")];
        if !self.scope.is_empty() {
            form.push(("scope", self.scope.as_str()));
        }
        let response = self
            .http
            .post(&self.token_url)
            .basic_auth(
                form_urlencode(&self.client_id),
                Some(form_urlencode(&self.secret)),
            )
            .form(&form)
            .send()
            .await
            .map_err(|e| CredentialsError::Unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| CredentialsError::Unreachable(e.to_string()))?;
        if !status.is_success() {
            let refused: ErrorResponse = serde_json::from_slice(&body).unwrap_or(ErrorResponse {
                error: format!("http_{}", status.as_u16()),
                error_description: String::new(),
            });
            return Err(CredentialsError::Refused {
                error: refused.error,
                description: refused.error_description,
            });
        }
        let issued: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| CredentialsError::Unreachable(format!("unexpected answer: {e}")))?;
        let lifetime = Duration::from_secs(issued.expires_in);
        let renew_at = Instant::now() + lifetime.saturating_sub(MARGIN).max(lifetime / 2);
        *current = Some((issued.access_token.clone(), renew_at));
        Ok(issued.access_token)
    }
}

/// RFC 6749 §2.3.1: client id and secret are form-encoded before Basic authentication.
fn form_urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
