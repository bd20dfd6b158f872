//! Ed25519 signing keys and token minting: what sso issues with, and what tests and `--dev` mint
//! their own tokens with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
        OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse,
    },
};
use serde::Serialize;
use uuid::Uuid;

use crate::Kind;

/// JSON Web Key types, re-exported for the services that publish keys.
pub use jsonwebtoken::jwk::{AlgorithmParameters as PublicJwkParams, Jwk as PublicJwk, JwkSet};

/// An Ed25519 signing key with its key id.
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Errors creating or using a signing key.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key could not be encoded.
    #[error("cannot encode signing key: {0}")]
    Encoding(String),
    /// The token could not be signed.
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

impl SigningKey {
    /// A fresh random key.
    pub fn generate(kid: impl Into<String>) -> Result<Self, SigningError> {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        Self::from_dalek(kid.into(), key)
    }

    /// A key from its 32 secret bytes.
    pub fn from_bytes(kid: impl Into<String>, secret: &[u8; 32]) -> Result<Self, SigningError> {
        Self::from_dalek(kid.into(), ed25519_dalek::SigningKey::from_bytes(secret))
    }

    fn from_dalek(kid: String, key: ed25519_dalek::SigningKey) -> Result<Self, SigningError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| SigningError::Encoding(e.to_string()))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        Ok(Self { kid, key, encoding })
    }

    /// The secret bytes (to persist the key; never log them).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                key_id: Some(self.kid.clone()),
                ..Default::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            }),
        }
    }

    /// A key set holding this key alone.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.jwk()],
        }
    }

    /// Signs `claims` as an EdDSA JWT with this key's `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, SigningError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// The claims of a SIP-MBA access token.
#[derive(Debug, Clone, Serialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject UUID.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Not before, seconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// `user`, `thing` or `service`.
    pub kind: String,
    /// Space-separated scopes.
    pub scope: String,
    /// Owner of a thing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl AccessClaims {
    /// Claims for `subject` of `kind`, valid for `lifetime` from now, with a fresh `jti`.
    pub fn new(
        issuer: &str,
        audience: &str,
        kind: Kind,
        subject: Uuid,
        scopes: &[&str],
        lifetime: Duration,
    ) -> Self {
        let now = unix_now();
        Self {
            iss: issuer.to_owned(),
            sub: subject.to_string(),
            aud: audience.to_owned(),
            exp: now + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
            nbf: None,
            iat: now,
            jti: Uuid::new_v4().to_string(),
            kind: kind.as_str().to_owned(),
            scope: scopes.join(" "),
            owner: None,
        }
    }

    /// Sets the owner (thing tokens).
    pub fn with_owner(mut self, owner: Uuid) -> Self {
        self.owner = Some(owner.to_string());
        self
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
