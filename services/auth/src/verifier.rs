use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation, decode, decode_header, errors::ErrorKind, jwk::JwkSet,
};
use serde::Deserialize;
use uuid::Uuid;

use crate::{Kind, MAX_LEEWAY, Principal, Revocations};

/// Why a token was refused. Messages name the problem, never the token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing bearer token: send `authorization: Bearer <access token>`")]
    Missing,
    /// Not a JWT, or an unexpected header.
    #[error("malformed access token: {0}")]
    Malformed(String),
    /// The `kid` is not in the JWKS, even after a refresh.
    #[error("access token signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("access token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("access token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("access token is not valid yet")]
    NotYetValid,
    /// `aud` does not name this platform.
    #[error("access token is for another audience")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("access token is from another issuer")]
    WrongIssuer,
    /// Claims present but unusable.
    #[error("access token claims are invalid: {0}")]
    InvalidClaims(String),
    /// Revoked by sso.
    #[error("access token has been revoked")]
    Revoked,
    /// The JWKS could not be fetched or parsed.
    #[error("cannot load signing keys: {0}")]
    Jwks(String),
}

impl AuthError {
    /// The gRPC status for this refusal.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AuthError::Jwks(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::unauthenticated(self.to_string()),
        }
    }
}

/// Where the verification keys come from.
#[derive(Clone)]
pub enum JwksSource {
    /// Fetched over HTTP(S), e.g. `https://sso:7400/.well-known/jwks.json`.
    Url(String),
    /// A fixed key set (embedded use, tests).
    Static(JwkSet),
    /// Read from the process itself whenever an unknown `kid` shows up (sso verifying the tokens
    /// it issues, across its own key rotations).
    Local(std::sync::Arc<dyn Fn() -> JwkSet + Send + Sync>),
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
            JwksSource::Static(set) => f.debug_tuple("Static").field(&set.keys.len()).finish(),
            JwksSource::Local(_) => f.write_str("Local"),
        }
    }
}

/// Settings of a [`Verifier`].
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Where the keys are.
    pub jwks: JwksSource,
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud` (one of the token's audiences).
    pub audience: String,
    /// Allowed clock skew for `exp` and `nbf`; at most [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Minimum time between two fetches triggered by unknown `kid`s (a forged `kid` must not turn
    /// into a fetch per request).
    pub min_refresh_interval: Duration,
    /// Age after which the key set is refetched on the next verification.
    pub max_key_age: Duration,
    /// What an `https://` JWKS URL's certificate is checked against besides the public CAs.
    pub peer_ca: crate::peer_tls::PeerCa,
}

impl VerifierConfig {
    /// Defaults: 30 s leeway, refetch at most every 10 s, keys refreshed every 5 minutes.
    pub fn new(jwks: JwksSource, issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            jwks,
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(10),
            max_key_age: Duration::from_secs(300),
            peer_ca: crate::peer_tls::PeerCa::none(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

struct Inner {
    config: VerifierConfig,
    validation: Validation,
    http: Option<reqwest::Client>,
    cache: RwLock<KeyCache>,
    /// Serialises fetches so that a burst of unknown `kid`s makes one request.
    fetch_lock: tokio::sync::Mutex<()>,
    revocations: Revocations,
}

/// Why a token verified earlier no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapsed {
    /// Its expiry passed.
    Expired,
    /// It was revoked.
    Revoked,
}

impl Lapsed {
    /// UNAUTHENTICATED, saying what happened `during` what (e.g. "during the session").
    pub fn status(self, during: &str) -> tonic::Status {
        tonic::Status::unauthenticated(match self {
            Lapsed::Expired => format!("the access token expired {during}"),
            Lapsed::Revoked => format!("the access token was revoked {during}"),
        })
    }
}

/// Verifies access tokens. Cheap to clone; clones share the key cache.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.inner.config.issuer)
            .field("audience", &self.inner.config.audience)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds a verifier. Keys are fetched lazily, on the first verification.
    pub fn new(config: VerifierConfig, revocations: Revocations) -> Result<Self, AuthError> {
        if config.leeway > MAX_LEEWAY {
            return Err(AuthError::Jwks(format!(
                "leeway of {}s exceeds the maximum of {}s",
                config.leeway.as_secs(),
                MAX_LEEWAY.as_secs()
            )));
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[config.audience.as_str()]);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway.as_secs();

        let (http, keys) = match &config.jwks {
            JwksSource::Url(_) => {
                let client = config
                    .peer_ca
                    .http_client(Duration::from_secs(5))
                    .map_err(AuthError::Jwks)?;
                (Some(client), HashMap::new())
            }
            JwksSource::Static(set) => (None, decoding_keys(set)),
            JwksSource::Local(keys) => (None, decoding_keys(&keys())),
        };
        let fetched = http.is_none().then(Instant::now);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                validation,
                http,
                cache: RwLock::new(KeyCache { keys, fetched }),
                fetch_lock: tokio::sync::Mutex::new(()),
                revocations,
            }),
        })
    }

    /// The revocation list this verifier consults.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    /// Whether the token `principal` was verified from still holds: not expired, not revoked
    /// since. Long-lived streams ask it as they go.
    pub fn still_valid(&self, principal: &Principal) -> Result<(), Lapsed> {
        if principal.expires_at <= crate::signing::unix_now() {
            return Err(Lapsed::Expired);
        }
        if self.inner.revocations.is_revoked(
            &principal.token_id,
            principal.subject,
            principal.issued_at,
        ) {
            return Err(Lapsed::Revoked);
        }
        Ok(())
    }

    /// Verifies a bearer token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Malformed(format!(
                "algorithm {:?} is not accepted; tokens are signed with EdDSA",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| AuthError::Malformed("the header has no `kid`".into()))?;

        let key = match self.cached_key(&kid, false) {
            Some(key) => key,
            None => match self.refresh(false).await {
                Ok(()) => self.cached_key(&kid, true).ok_or(AuthError::UnknownKey)?,
                // sso unreachable: keep verifying with the keys already known.
                Err(e) => match self.cached_key(&kid, true) {
                    Some(key) => {
                        tracing::warn!(error = %e, "cannot refresh signing keys; using the cached ones");
                        key
                    }
                    None => return Err(e),
                },
            },
        };
        let data = decode::<Claims>(token, &key, &self.inner.validation).map_err(map_jwt_error)?;
        let principal = principal_from(data.claims)?;
        if self.inner.revocations.is_revoked(
            &principal.token_id,
            principal.subject,
            principal.issued_at,
        ) {
            return Err(AuthError::Revoked);
        }
        Ok(principal)
    }

    /// Returns the key for `kid` when cached and fresh enough (`allow_stale` ignores age).
    fn cached_key(&self, kid: &str, allow_stale: bool) -> Option<DecodingKey> {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        let fresh = allow_stale
            || self.inner.http.is_none()
            || cache
                .fetched
                .is_some_and(|at| at.elapsed() < self.inner.config.max_key_age);
        if fresh {
            cache.keys.get(kid).cloned()
        } else {
            None
        }
    }

    /// Refetches the JWKS unless another fetch happened within the minimum interval.
    async fn refresh(&self, force: bool) -> Result<(), AuthError> {
        if let JwksSource::Local(keys) = &self.inner.config.jwks {
            let keys = decoding_keys(&keys());
            let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
            cache.keys = keys;
            cache.fetched = Some(Instant::now());
            return Ok(());
        }
        let (Some(http), JwksSource::Url(url)) = (&self.inner.http, &self.inner.config.jwks) else {
            return Ok(());
        };
        let _guard = self.inner.fetch_lock.lock().await;
        {
            let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
            if !force
                && cache
                    .fetched
                    .is_some_and(|at| at.elapsed() < self.inner.config.min_refresh_interval)
            {
                return Ok(());
            }
        }
        let set: JwkSet = async {
            http.get(url)
                .send()
                .await?
                .error_for_status()?
                .json::<JwkSet>()
                .await
        }
        .await
        .map_err(|e| AuthError::Jwks(format!("GET {url}: {e}")))?;
        let keys = decoding_keys(&set);
        tracing::debug!(keys = keys.len(), "loaded signing keys");
        let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.keys = keys;
        cache.fetched = Some(Instant::now());
        Ok(())
    }

    /// Fetches the key set now (a server calls it at start-up to report readiness).
    pub async fn load_keys(&self) -> Result<usize, AuthError> {
        self.refresh(true).await?;
        Ok(self
            .inner
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .len())
    }
}

fn decoding_keys(set: &JwkSet) -> HashMap<String, DecodingKey> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => Some((kid, key)),
                Err(e) => {
                    tracing::warn!(%kid, error = %e, "ignoring unusable key in JWKS");
                    None
                }
            }
        })
        .collect()
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::InvalidClaims(format!("missing `{claim}`"))
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::Malformed("algorithm is not EdDSA".into())
        }
        ErrorKind::Json(_) => AuthError::InvalidClaims("claims are not the expected JSON".into()),
        _ => AuthError::Malformed(e.to_string()),
    }
}

fn principal_from(claims: Claims) -> Result<Principal, AuthError> {
    let subject = Uuid::parse_str(&claims.sub)
        .map_err(|_| AuthError::InvalidClaims("`sub` is not a UUID".into()))?;
    let kind = claims
        .kind
        .as_deref()
        .and_then(Kind::parse)
        .ok_or_else(|| AuthError::InvalidClaims("`kind` must be user, thing or service".into()))?;
    let owner = match (kind, claims.owner.as_deref()) {
        (Kind::Thing, Some(owner)) => Some(
            Uuid::parse_str(owner)
                .map_err(|_| AuthError::InvalidClaims("`owner` is not a UUID".into()))?,
        ),
        (Kind::Thing, None) => {
            return Err(AuthError::InvalidClaims(
                "a thing token must name its `owner`".into(),
            ));
        }
        (_, _) => None,
    };
    let scopes: BTreeSet<String> = claims
        .scope
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Ok(Principal {
        kind,
        subject,
        scopes,
        owner,
        token_id: claims.jti.unwrap_or_default(),
        expires_at: claims.exp,
        // `iat` is optional in RFC 7519; without it a subject-wide revocation must still apply.
        issued_at: claims.iat.unwrap_or(0),
    })
}
