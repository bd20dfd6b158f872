//! Access-token verification shared by every SIP-MBA service.
//!
//! Tokens are EdDSA (Ed25519) JWTs issued by sso. A [`Verifier`] checks them locally against a
//! cached JWKS (fetched on start, refreshed when an unknown `kid` shows up and periodically), checks
//! `iss`, `aud`, `exp` and `nbf` with a bounded leeway, consults the [`Revocations`] it is fed,
//! and yields a typed [`Principal`]. [`AuthLayer`] applies it to a tonic server: no or bad token
//! answers UNAUTHENTICATED, a missing scope PERMISSION_DENIED.

pub mod client;
mod layer;
pub mod peer_tls;
mod principal;
mod revocations;
pub mod signing;
mod verifier;

pub use layer::{Access, AccessPolicy, AuthLayer, AuthService};
pub use principal::{Kind, NoPrincipal, Principal, scopes};
pub use revocations::{GRACE_SECS, Revocations};
pub use verifier::{AuthError, JwksSource, Lapsed, Verifier, VerifierConfig};

/// Largest leeway accepted for `exp`/`nbf` checks; a larger clock skew is a broken clock.
pub const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(300);
