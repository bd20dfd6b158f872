//! The SSO service: an OAuth 2.0 authorization server (RFC 6749) for users, things and services,
//! with introspection (RFC 7662), revocation (RFC 7009), rotating Ed25519 signing keys and the
//! JWKS every service verifies with.
//!
//! Users log in with the `password` grant (argon2id hashes; only effectively ACTIVE users) and
//! keep their session with rotating refresh tokens: presenting a refresh token twice revokes its
//! whole family (RFC 9700 §4.14). Things and services use `client_credentials`.

mod accounts;
pub mod authorize;
pub mod entity;
mod events;
mod grants;
mod grpc;
mod http;
pub mod keys;
pub mod migration;
mod oauth_error;
mod objects;
mod publish;
mod revocation;
pub mod secrets;
pub mod settings;
pub mod throttle;

use std::{sync::Arc, time::Duration};

pub use grants::Issued;
pub use grpc::access_policy;
pub use http::router;
pub use oauth_error::{OAuthError, OAuthErrorCode};
pub use objects::SSO_SERVICE_ID;
pub use revocation::{Introspection, OUTBOX_LOCK};
use sea_orm::DatabaseConnection;
use sipmba_auth::{JwksSource, Revocations, Verifier, VerifierConfig};
use sipmba_runtime::{Clock, ServiceError, ServiceResult, objects::ObjectsClient};

/// Settings of the SSO service.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// `iss` of issued tokens (the public URL of sso).
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Access-token lifetime for users.
    pub user_token_lifetime: Duration,
    /// Access-token lifetime for things.
    pub thing_token_lifetime: Duration,
    /// Access-token lifetime for services.
    pub service_token_lifetime: Duration,
    /// Refresh-token lifetime (each rotation starts a new one).
    pub refresh_token_lifetime: Duration,
    /// Whether anyone may register a root user.
    pub open_registration: bool,
    /// argon2id cost of new password hashes.
    pub password_cost: secrets::PasswordCost,
    /// Failed-login limits.
    pub throttle: throttle::ThrottleLimits,
    /// Where Objects answers (http://host:port).
    pub objects_url: String,
    /// A signing key signs for this long, then a new one takes over.
    pub key_rotation: Duration,
    /// What an `https://` Objects' certificate is checked against.
    pub peer_ca: sipmba_auth::peer_tls::PeerCa,
    /// Where the web console may be sent back after a sign-in (none: the issuer's origin, `/`).
    pub console_redirect_uris: Vec<String>,
}

impl SsoConfig {
    /// Defaults: 15 minutes for users, an hour for things and services, 30-day refresh tokens,
    /// closed registration.
    pub fn new(issuer: &str, audience: &str, objects_url: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            user_token_lifetime: Duration::from_secs(15 * 60),
            thing_token_lifetime: Duration::from_secs(3600),
            service_token_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: Duration::from_secs(30 * 24 * 3600),
            open_registration: false,
            password_cost: secrets::PasswordCost::default(),
            throttle: throttle::ThrottleLimits::default(),
            objects_url: objects_url.to_owned(),
            key_rotation: Duration::from_secs(30 * 24 * 3600),
            peer_ca: sipmba_auth::peer_tls::PeerCa::none(),
            console_redirect_uris: Vec::new(),
        }
    }

    /// The console's redirect URIs: those set, or the issuer's origin.
    pub fn console_redirect_uris(&self) -> Vec<String> {
        if !self.console_redirect_uris.is_empty() {
            return self.console_redirect_uris.clone();
        }
        match url::Url::parse(&self.issuer) {
            Ok(issuer) => vec![format!("{}/", issuer.origin().ascii_serialization())],
            Err(_) => Vec::new(),
        }
    }

    fn longest_access_lifetime(&self) -> Duration {
        self.user_token_lifetime
            .max(self.thing_token_lifetime)
            .max(self.service_token_lifetime)
    }
}

pub(crate) struct Inner {
    pub(crate) db: DatabaseConnection,
    pub(crate) keys: Arc<keys::KeyRing>,
    pub(crate) objects: ObjectsClient,
    pub(crate) config: SsoConfig,
    pub(crate) revocations: Revocations,
    pub(crate) verifier: Verifier,
    pub(crate) throttle: throttle::Throttle,
    /// A hash to check unknown usernames against, so that they take as long as known ones.
    pub(crate) dummy_hash: String,
    /// Notified when a revocation is recorded (the publisher wakes up).
    pub(crate) revoked: tokio::sync::Notify,
    pub(crate) metrics: SsoMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct GrantLabels {
    grant: &'static str,
    outcome: &'static str,
}

/// sso's own metrics: token requests by grant and outcome (bounded labels).
#[derive(Clone, Default)]
pub(crate) struct SsoMetrics {
    pub(crate) requests: prometheus_client::metrics::family::Family<
        GrantLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl SsoMetrics {
    pub(crate) fn count(&self, grant: &'static str, result: &Result<Issued, OAuthError>) {
        let outcome = match result {
            Ok(_) => "issued",
            Err(e) => e.code.as_str(),
        };
        self.requests
            .get_or_create(&GrantLabels { grant, outcome })
            .inc();
    }
}

/// The SSO service. Cheap to clone.
#[derive(Clone)]
pub struct Sso {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("issuer", &self.inner.config.issuer)
            .finish_non_exhaustive()
    }
}

impl Sso {
    /// Starts sso on a migrated database: loads (or creates) the signing keys.
    pub async fn start(
        db: DatabaseConnection,
        config: SsoConfig,
        revocations: Revocations,
    ) -> ServiceResult<Self> {
        let keep_retired =
            i64::try_from(config.longest_access_lifetime().as_millis()).unwrap_or(i64::MAX / 2);
        let timing = keys::KeyTiming {
            keep_retired_ms: keep_retired,
            publish_ahead_ms: keys::KeyTiming::PUBLISH_AHEAD_MS,
        };
        let keys = Arc::new(keys::KeyRing::load(db.clone(), timing, Clock::system()).await?);
        let objects = ObjectsClient::new(
            &config.objects_url,
            objects::own_token(keys.clone(), &config.issuer, &config.audience),
            &config.peer_ca,
        )?;
        let cost = config.password_cost;
        let dummy_hash = tokio::task::spawn_blocking(move || cost.hash(&secrets::random_secret()))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(ServiceError::Internal)?;
        let ring = keys.clone();
        let source = JwksSource::Local(Arc::new(move || ring.jwks()));
        let verifier = Verifier::new(
            VerifierConfig::new(source, &config.issuer, &config.audience),
            revocations.clone(),
        )
        .map_err(|e| ServiceError::Internal(format!("sso verifier: {e}")))?;
        let inner = Arc::new(Inner {
            db,
            keys,
            objects,
            throttle: throttle::Throttle::new(config.throttle),
            config,
            revocations,
            verifier,
            dummy_hash,
            revoked: tokio::sync::Notify::new(),
            metrics: SsoMetrics::default(),
        });
        let sso = Self { inner };
        sso.load_revocations().await?;
        Ok(sso)
    }

    /// Verifies tokens issued by this sso (its own key ring, its revocations).
    pub fn verifier(&self) -> Verifier {
        self.inner.verifier.clone()
    }

    /// The published keys.
    pub fn jwks(&self) -> sipmba_auth::signing::JwkSet {
        self.inner.keys.jwks()
    }

    /// Publishes a new key that takes over signing two minutes later (by then every replica
    /// publishes it); the old one stays published until its tokens expire. Returns the new `kid`.
    pub async fn rotate_keys(&self) -> ServiceResult<String> {
        self.inner.keys.rotate().await
    }

    /// Re-reads the keys and rotates when the signing key is older than the rotation period;
    /// returns the new `kid` after a rotation.
    pub async fn refresh_keys(&self) -> ServiceResult<Option<String>> {
        let period = i64::try_from(self.inner.config.key_rotation.as_millis()).unwrap_or(i64::MAX);
        self.inner.keys.reload().await?;
        self.inner.keys.rotate_when_older(period).await
    }

    /// Keeps the keys fresh until `shutdown`: re-reads them every minute (other replicas may have
    /// rotated) and rotates when the signing key is older than the rotation period.
    pub fn maintain_keys(&self, shutdown: sipmba_runtime::Shutdown) -> tokio::task::JoinHandle<()> {
        let sso = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                    () = shutdown.clone().wait() => return,
                }
                let result = sso.refresh_keys().await;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "cannot refresh the signing keys");
                }
            }
        })
    }
}

/// The rows sso prunes, each once it can no longer matter: authorization codes past their expiry;
/// issued-token records, revocations and refresh tokens past theirs and any verifier's leeway (a
/// revocation must outlive the token it names).
pub fn prune_rules() -> Vec<sipmba_runtime::prune::Rule> {
    use sipmba_runtime::prune::Rule;
    let grace = Duration::from_secs(sipmba_auth::GRACE_SECS.unsigned_abs());
    vec![
        Rule::older_than(
            "sso_authorization_codes",
            "code_hash",
            "expires_ms",
            Duration::ZERO,
        ),
        Rule::older_than("sso_issued", "jti", "expires_ms", grace),
        Rule::older_than("sso_revocations", "seq", "expires_ms", grace),
        Rule::older_than("sso_refresh_tokens", "id", "expires_ms", grace),
    ]
}

/// Applies the SSO migrations (one transaction under an advisory lock on PostgreSQL).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    sipmba_runtime::db::migrate::<migration::Migrator>(db, 74000003).await
}
