//! Logging in (OAuth 2.0 password grant, with the `oauth2` crate), the login cache with refresh,
//! and the gRPC channel every command uses.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use oauth2::{
    ClientId, RefreshToken, RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername,
    TokenResponse, TokenUrl, basic::BasicClient,
};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use uuid::Uuid;

use super::{CliError, Exit};

/// The OAuth client id the CLI presents (a public client: no secret).
const CLIENT_ID: &str = "sipmba-cli";
/// Refresh an access token this long before it expires.
const REFRESH_MARGIN: u64 = 30;
/// What a password grant is doing, in its error messages.
const LOGGING_IN: &str = "logging in";

/// Where the platform is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL: gRPC and HTTP (`/oauth2/token`) share it.
    pub server: String,
    /// A CA certificate (PEM) for an https:// server with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Where logins are cached.
    pub config_dir: PathBuf,
}

/// One cached login, per server.
#[derive(Clone, Serialize, Deserialize)]
struct Login {
    username: String,
    user: Uuid,
    access_token: String,
    /// Unix seconds.
    expires_at: u64,
    refresh_token: Option<String>,
}

/// A logged-in user talking to the platform.
#[derive(Clone)]
pub struct Session {
    /// The channel to the platform.
    pub channel: Channel,
    /// The user.
    pub user: Uuid,
    /// The user's login name.
    pub username: String,
    token: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Session")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// `msg` with the user's bearer token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        bearer(&self.token, msg)
    }

    /// The user's id as the API wants it.
    pub fn user_id(&self) -> sipmba_proto::v1::UserId {
        sipmba_proto::v1::UserId {
            value: self.user.to_string(),
        }
    }
}

impl Target {
    fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.server.trim_end_matches('/'))
    }

    fn cache_path(&self) -> PathBuf {
        self.config_dir.join("logins.json")
    }

    /// A gRPC channel to the server (connects at the first call).
    pub fn channel(&self) -> Result<Channel, CliError> {
        let mut endpoint = Channel::from_shared(self.server.clone())
            .map_err(|e| CliError::usage(format!("--server {:?} is not a URL: {e}", self.server)))?
            .connect_timeout(Duration::from_secs(5));
        if self.server.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(file) = &self.ca_file {
                let pem = std::fs::read(file).map_err(|e| {
                    CliError::usage(format!("cannot read --ca-file {}: {e}", file.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| CliError::usage(format!("TLS settings: {e}")))?;
        }
        Ok(endpoint.connect_lazy())
    }

    fn http(&self) -> Result<reqwest::Client, CliError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(file) = &self.ca_file {
            let pem = std::fs::read(file).map_err(|e| {
                CliError::usage(format!("cannot read --ca-file {}: {e}", file.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| CliError::usage(format!("--ca-file {}: {e}", file.display())))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build()
            .map_err(|e| CliError::new(Exit::Failure, format!("HTTP client: {e}")))
    }

    fn oauth(&self) -> Result<OAuthClient, CliError> {
        let url = TokenUrl::new(self.token_url())
            .map_err(|e| CliError::usage(format!("--server {:?}: {e}", self.server)))?;
        Ok(BasicClient::new(ClientId::new(CLIENT_ID.into())).set_token_uri(url))
    }

    /// Logs in with a password and caches the login; returns it.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session, CliError> {
        let http = self.http()?;
        let answer = self
            .oauth()?
            .exchange_password(
                &ResourceOwnerUsername::new(username.into()),
                &ResourceOwnerPassword::new(password.into()),
            )
            .request_async(&|r| send(&http, r))
            .await
            .map_err(|e| self.token_error(e, LOGGING_IN))?;
        let login = Login::from_answer(username, &answer)?;
        let _lock = self.lock()?;
        let mut logins = self.read_cache();
        logins.insert(self.server.clone(), login.clone());
        self.write_cache(&logins)?;
        self.session(login)
    }

    /// The cached login, refreshed when its access token is (nearly) expired.
    pub async fn session_from_cache(&self) -> Result<Session, CliError> {
        // One process refreshes at a time: a refresh token is good once.
        let _lock = self.lock()?;
        let mut logins = self.read_cache();
        let Some(login) = logins.get(&self.server).cloned() else {
            return Err(CliError::new(
                Exit::Auth,
                format!("you are not logged in to {}", self.server),
            )
            .hint("run `sipmba login` first"));
        };
        if login.expires_at > now() + REFRESH_MARGIN {
            return self.session(login);
        }
        let Some(refresh) = login.refresh_token.clone() else {
            return Err(expired());
        };
        let http = self.http()?;
        let answer = self
            .oauth()?
            .exchange_refresh_token(&RefreshToken::new(refresh))
            .request_async(&|r| send(&http, r))
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(RequestTokenError::ServerResponse(_)) => {
                logins.remove(&self.server);
                self.write_cache(&logins)?;
                return Err(expired());
            }
            Err(e) => return Err(self.token_error(e, "refreshing your login")),
        };
        let mut renewed = Login::from_answer(&login.username, &answer)?;
        if renewed.refresh_token.is_none() {
            renewed.refresh_token = login.refresh_token;
        }
        logins.insert(self.server.clone(), renewed.clone());
        self.write_cache(&logins)?;
        self.session(renewed)
    }

    /// Forgets the login (and revokes its refresh token at the server); whether there was one.
    pub async fn logout(&self) -> Result<bool, CliError> {
        let _lock = self.lock()?;
        let mut logins = self.read_cache();
        let Some(login) = logins.remove(&self.server) else {
            return Ok(false);
        };
        self.write_cache(&logins)?;
        if let Some(refresh) = login.refresh_token {
            let url = format!("{}/oauth2/revoke", self.server.trim_end_matches('/'));
            let revoked = self
                .http()?
                .post(url)
                .form(&[
                    ("token", refresh.as_str()),
                    ("token_type_hint", "refresh_token"),
                    ("client_id", CLIENT_ID),
                ])
                .send()
                .await
                .and_then(reqwest::Response::error_for_status);
            if let Err(e) = revoked {
                eprintln!(
                    "warning: could not revoke the login at the server ({e}); it was forgotten here"
                );
            }
        }
        Ok(true)
    }

    fn session(&self, login: Login) -> Result<Session, CliError> {
        Ok(Session {
            channel: self.channel()?,
            user: login.user,
            username: login.username,
            token: login.access_token,
        })
    }

    fn token_error<RE: std::error::Error + 'static>(
        &self,
        e: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
        what: &str,
    ) -> CliError {
        match e {
            RequestTokenError::ServerResponse(r) => {
                let error = r.error().to_string();
                // The server's own words when it gave any; the code otherwise.
                let detail = r.error_description().cloned().unwrap_or(error);
                match r.error() {
                    oauth2::basic::BasicErrorResponseType::InvalidGrant
                        if what == LOGGING_IN =>
                    {
                        CliError::new(Exit::Auth, format!("{what}: {detail}")).hint(
                            "check the username and the password (both are case-sensitive); a user \
                             above you can set a new one with `sipmba users set-password <username>`",
                        )
                    }
                    oauth2::basic::BasicErrorResponseType::InvalidGrant => {
                        CliError::new(Exit::Auth, format!("{what}: {detail}"))
                            .hint("log in again with `sipmba login`")
                    }
                    _ => CliError::new(Exit::Auth, format!("{what}: {detail}")),
                }
            }
            RequestTokenError::Request(e) => CliError::new(
                Exit::Unreachable,
                format!("{what}: cannot reach {}: {e}", self.token_url()),
            )
            .hint("is the platform running? start it with `sipmba server --dev`, or pass --server"),
            other => CliError::new(Exit::Failure, format!("{what}: {other}")),
        }
    }

    fn read_cache(&self) -> BTreeMap<String, Login> {
        std::fs::read(self.cache_path())
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_cache(&self, logins: &BTreeMap<String, Login>) -> Result<(), CliError> {
        let json = serde_json::to_vec_pretty(logins)
            .map_err(|e| CliError::new(Exit::Failure, format!("encoding the login cache: {e}")))?;
        let path = self.cache_path();
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &json)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                CliError::new(
                    Exit::Failure,
                    format!("cannot write the login cache {}: {e}", path.display()),
                )
            })
    }

    /// An exclusive lock on the cache, held while it is read and rewritten.
    fn lock(&self) -> Result<std::fs::File, CliError> {
        let fail = |e: std::io::Error| {
            CliError::new(
                Exit::Failure,
                format!("cannot use {}: {e}", self.config_dir.display()),
            )
            .hint("set SIPMBA_CONFIG_DIR to a writable directory")
        };
        create_private_dir(&self.config_dir).map_err(fail)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.config_dir.join("logins.lock"))
            .map_err(fail)?;
        file.lock().map_err(fail)?;
        Ok(file)
    }
}

type OAuthClient = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

impl Login {
    fn from_answer(
        username: &str,
        answer: &oauth2::basic::BasicTokenResponse,
    ) -> Result<Self, CliError> {
        let token = answer.access_token().secret().clone();
        let user = subject(&token).ok_or_else(|| {
            CliError::new(
                Exit::Failure,
                "the server answered with an access token that names no user",
            )
        })?;
        let lifetime = answer
            .expires_in()
            .unwrap_or(Duration::from_secs(300))
            .as_secs();
        Ok(Self {
            username: username.to_owned(),
            user,
            access_token: token,
            expires_at: now() + lifetime,
            refresh_token: answer.refresh_token().map(|r| r.secret().clone()),
        })
    }
}

fn expired() -> CliError {
    CliError::new(Exit::Auth, "your login has expired or was revoked")
        .hint("run `sipmba login` again")
}

/// The `sub` claim of a JWT (read, not verified: the server verifies every call).
fn subject(token: &str) -> Option<Uuid> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Uuid::parse_str(claims.get("sub")?.as_str()?).ok()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let (parts, body) = request.into_parts();
    let response = http
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await?;
    let mut answer = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    let body = response.bytes().await?.to_vec();
    // A status and headers copied from a valid response always build.
    Ok(answer
        .body(body)
        .unwrap_or_else(|_| http::Response::new(Vec::new())))
}

/// `msg` with `token` as its bearer token.
pub fn bearer<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(msg);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Where logins are kept: `$SIPMBA_CONFIG_DIR`, else `$XDG_CONFIG_HOME/sipmba`, else
/// `~/.config/sipmba`.
pub fn default_config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("sipmba");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".config").join("sipmba"),
        None => PathBuf::from(".sipmba-cli"),
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` to a new file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
