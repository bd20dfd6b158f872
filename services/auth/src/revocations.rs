use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use uuid::Uuid;

/// Revoked tokens known to this process: single tokens by `jti`, and whole subjects from a
/// not-before time. sso publishes revocations on `sipmba.revocations`; each service feeds them in
/// here, and the [`crate::Verifier`] refuses matching tokens without a round trip.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// jti -> the token's `exp` (after which the entry can be forgotten).
    tokens: HashMap<String, i64>,
    /// subject -> tokens issued before this time (seconds) are revoked.
    subjects: HashMap<Uuid, i64>,
}

impl Revocations {
    /// Revokes one token until its expiry `exp` (seconds since the epoch).
    pub fn revoke_token(&self, jti: impl Into<String>, exp: i64, now: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.tokens.retain(|_, e| *e >= now);
        inner.tokens.insert(jti.into(), exp);
    }

    /// Revokes every token of `subject` issued before `not_before` (seconds since the epoch).
    pub fn revoke_subject(&self, subject: Uuid, not_before: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let entry = inner.subjects.entry(subject).or_insert(not_before);
        *entry = (*entry).max(not_before);
    }

    /// True when a token with this id, subject and issue time is revoked.
    pub fn is_revoked(&self, jti: &str, subject: Uuid, issued_at: i64) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.tokens.contains_key(jti)
            || inner
                .subjects
                .get(&subject)
                .is_some_and(|nbf| issued_at < *nbf)
    }
}
