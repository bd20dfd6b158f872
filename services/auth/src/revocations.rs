use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use uuid::Uuid;

/// Seconds an entry is kept past its expiry: a verifier accepts a token until its `exp` plus its
/// leeway, and no leeway is larger than [`crate::MAX_LEEWAY`], so a revoked token is refused for as
/// long as any verifier could still accept it.
pub const GRACE_SECS: i64 = crate::MAX_LEEWAY.as_secs() as i64;

/// Revoked tokens known to this process: single tokens by `jti`, and whole subjects from a
/// not-before time. sso publishes revocations on `sipmba.revocations`; each service feeds them in
/// here, and the [`crate::Verifier`] refuses matching tokens without a round trip.
///
/// Both kinds carry an expiry — a token's `exp`; for a subject, its cut-off plus the longest
/// access-token lifetime — and are forgotten [`GRACE_SECS`] after it, when no token they match can
/// still be valid anywhere; every revocation added prunes the list, so it stays as long as the
/// revocations of one token lifetime.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// jti -> the token's `exp` (seconds).
    tokens: HashMap<String, i64>,
    /// subject -> the cut-off and the entry's expiry (seconds).
    subjects: HashMap<Uuid, SubjectCut>,
}

#[derive(Debug, Clone, Copy)]
struct SubjectCut {
    /// Tokens issued before this time are revoked.
    not_before: i64,
    /// No token issued before `not_before` is valid after this time.
    expires: i64,
}

/// True while an entry expiring at `expires` must still be kept at `now`.
fn kept(expires: i64, now: i64) -> bool {
    expires.saturating_add(GRACE_SECS) >= now
}

impl Revocations {
    /// Revokes one token until its expiry `exp` (seconds since the epoch), and forgets the entries
    /// that can no longer match a valid token at `now`.
    pub fn revoke_token(&self, jti: impl Into<String>, exp: i64, now: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.tokens.retain(|_, e| kept(*e, now));
        if kept(exp, now) {
            inner.tokens.insert(jti.into(), exp);
        }
    }

    /// Revokes every token of `subject` issued before `not_before`, an entry that can be forgotten
    /// after `expires` (seconds since the epoch; `not_before` plus the longest access-token
    /// lifetime). Forgets the subject entries that can no longer match a valid token at `now`; a
    /// revocation already past its expiry (a replay of an old record) is not added.
    pub fn revoke_subject(&self, subject: Uuid, not_before: i64, expires: i64, now: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.subjects.retain(|_, cut| kept(cut.expires, now));
        if !kept(expires, now) {
            return;
        }
        let cut = inner.subjects.entry(subject).or_insert(SubjectCut {
            not_before,
            expires,
        });
        cut.not_before = cut.not_before.max(not_before);
        cut.expires = cut.expires.max(expires);
    }

    /// True when a token with this id, subject and issue time is revoked.
    pub fn is_revoked(&self, jti: &str, subject: Uuid, issued_at: i64) -> bool {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.tokens.contains_key(jti)
            || inner
                .subjects
                .get(&subject)
                .is_some_and(|cut| issued_at < cut.not_before)
    }

    /// How many entries (tokens and subjects) the list holds.
    pub fn len(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.tokens.len() + inner.subjects.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    #[test]
    fn a_subject_entry_lasts_until_no_token_it_matches_can_be_valid() {
        let list = Revocations::default();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        // Cut at t=1000; the longest lifetime is an hour.
        list.revoke_subject(alice, 1000, 1000 + HOUR, 1000);
        assert!(list.is_revoked("a", alice, 999));
        assert!(!list.is_revoked("a", alice, 1000));
        // A token issued at 999 lives until 999 + HOUR, and is accepted a leeway beyond: kept.
        let last_valid = 999 + HOUR + GRACE_SECS;
        list.revoke_subject(bob, last_valid, last_valid + HOUR, last_valid);
        assert_eq!(list.len(), 2);
        assert!(list.is_revoked("a", alice, 999));
        // One second after the grace, nothing alice's entry matches can be valid: pruned.
        let after = 1000 + HOUR + GRACE_SECS + 1;
        list.revoke_subject(bob, after, after + HOUR, after);
        assert_eq!(list.len(), 1);
        assert!(!list.is_revoked("a", alice, 999));
        assert!(list.is_revoked("a", bob, after - 1));
    }

    #[test]
    fn a_replayed_expired_revocation_is_not_added() {
        let list = Revocations::default();
        let subject = Uuid::new_v4();
        let now = 10 * HOUR;
        list.revoke_subject(subject, 1000, 1000 + HOUR, now);
        assert!(list.is_empty());
        list.revoke_token("old", 1000, now);
        assert!(list.is_empty());
    }

    #[test]
    fn later_cuts_of_one_subject_merge() {
        let list = Revocations::default();
        let subject = Uuid::new_v4();
        list.revoke_subject(subject, 2000, 2000 + HOUR, 2000);
        list.revoke_subject(subject, 1000, 1000 + HOUR, 2000);
        assert!(list.is_revoked("a", subject, 1999), "the later cut stays");
        assert_eq!(list.len(), 1);
        // Kept until the later expiry.
        list.revoke_token("x", 5000, 1000 + HOUR + GRACE_SECS + 1);
        list.revoke_subject(Uuid::new_v4(), 9000, 9000, 1000 + HOUR + GRACE_SECS + 1);
        assert!(list.is_revoked("a", subject, 1999));
    }

    #[test]
    fn a_revoked_token_stays_refused_through_the_leeway_after_its_expiry() {
        let list = Revocations::default();
        list.revoke_token("t", 1000, 900);
        // Past exp, within any verifier's leeway: still listed after a prune.
        list.revoke_token("u", 5000, 1000 + GRACE_SECS);
        assert!(list.is_revoked("t", Uuid::new_v4(), 0));
        list.revoke_token("u", 5000, 1000 + GRACE_SECS + 1);
        assert!(!list.is_revoked("t", Uuid::new_v4(), 0));
    }
}
