//! Logging in (OAuth 2.0, with the `oauth2` crate: the password grant, or the authorization code
//! grant in a browser, [`browser`]), the login cache with refresh,
//! and the gRPC channel every command uses: one address for the whole platform (`sipmba server`
//! runs every service behind one port), or one per service where they run apart (a `SipMba` on
//! Kubernetes: `--endpoint processing=https://...`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use oauth2::{
    ClientId, RefreshToken, RequestTokenError, ResourceOwnerPassword, ResourceOwnerUsername,
    TokenResponse, TokenUrl, basic::BasicClient,
};
use serde::{Deserialize, Serialize};
use sipmba_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tower::ServiceExt;
use uuid::Uuid;

use super::{CliError, Exit};

mod browser;
use crate::local_io::write_private;
use sipmba_auth::client::bearer;

/// The OAuth client id the CLI presents (a public client: no secret).
const CLIENT_ID: &str = "sipmba-cli";
/// Refresh an access token this long before it expires.
const REFRESH_MARGIN: u64 = 30;
/// What a password grant is doing, in its error messages.
const LOGGING_IN: &str = "logging in";

/// The platform's services a CLI user calls, and the gRPC services each one serves.
pub const SERVICES: &[(&str, &[&str])] = &[
    (
        "sso",
        &[
            pb::token_service_server::SERVICE_NAME,
            pb::account_service_server::SERVICE_NAME,
            pb::key_service_server::SERVICE_NAME,
        ],
    ),
    (
        "objects",
        &[
            pb::user_service_server::SERVICE_NAME,
            pb::thing_service_server::SERVICE_NAME,
            pb::channel_service_server::SERVICE_NAME,
            pb::access_service_server::SERVICE_NAME,
            pb::event_service_server::SERVICE_NAME,
        ],
    ),
    ("control", &[pb::control_service_server::SERVICE_NAME]),
    (
        "processing",
        &[
            pb::telemetry_service_server::SERVICE_NAME,
            pb::presence_service_server::SERVICE_NAME,
            pb::rule_service_server::SERVICE_NAME,
        ],
    ),
];

/// `--endpoint SERVICE=URL`, checked: a service of [`SERVICES`] and an http(s) URL.
pub fn parse_endpoint(text: &str) -> Result<(String, String), String> {
    let (service, url) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SERVICE=URL"))?;
    if !SERVICES.iter().any(|(name, _)| *name == service) {
        let names: Vec<&str> = SERVICES.iter().map(|(name, _)| *name).collect();
        return Err(format!(
            "{service:?} is not a service the CLI calls ({})",
            names.join(", ")
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    }
    Ok((service.to_owned(), url.trim_end_matches('/').to_owned()))
}

/// Where the platform is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Base URL: gRPC and HTTP (`/oauth2/token`) share it, unless `endpoints` says otherwise.
    /// Logins are cached under it.
    pub server: String,
    /// Services that answer at their own address (service name → base URL); `sso`'s also takes
    /// the OAuth requests.
    pub endpoints: BTreeMap<String, String>,
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
    /// The channel to the platform (each call goes to its service's address).
    pub channel: Platform,
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

/// The gRPC side of a platform: each call goes to the channel of the service that serves it
/// (by the request's path, `/<gRPC service>/<method>`), the default channel otherwise.
#[derive(Clone, Debug)]
pub struct Platform {
    default: Channel,
    /// gRPC service name → its channel.
    routes: Arc<BTreeMap<&'static str, Channel>>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Platform {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its own channel.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = request.uri().path().split('/').nth(1).unwrap_or_default();
        let channel = self.routes.get(service).unwrap_or(&self.default).clone();
        Box::pin(channel.oneshot(request))
    }
}

impl Target {
    /// The base URL of `service`: its endpoint, or the server.
    fn base(&self, service: &str) -> &str {
        self.endpoints
            .get(service)
            .map_or(self.server.as_str(), String::as_str)
            .trim_end_matches('/')
    }

    fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.base("sso"))
    }

    fn cache_path(&self) -> PathBuf {
        self.config_dir.join("logins.json")
    }

    /// The platform's gRPC channels (each connects at its first call).
    pub fn channel(&self) -> Result<Platform, CliError> {
        let default = self.connect(&self.server, "--server")?;
        let mut routes = BTreeMap::new();
        for (service, url) in &self.endpoints {
            let channel = self.connect(url, &format!("--endpoint {service}"))?;
            let served = SERVICES
                .iter()
                .find(|(name, _)| name == service)
                .map_or(&[][..], |(_, served)| *served);
            for grpc in served {
                routes.insert(*grpc, channel.clone());
            }
        }
        Ok(Platform {
            default,
            routes: Arc::new(routes),
        })
    }

    fn connect(&self, url: &str, what: &str) -> Result<Channel, CliError> {
        let mut endpoint = Channel::from_shared(url.to_owned())
            .map_err(|e| CliError::usage(format!("{what} {url:?} is not a URL: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        if url.starts_with("https://") {
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
        self.remember(Login::from_answer(username, &answer)?)
    }

    /// Caches `login` as this server's; returns its session.
    fn remember(&self, login: Login) -> Result<Session, CliError> {
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
            let url = format!("{}/oauth2/revoke", self.base("sso"));
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
