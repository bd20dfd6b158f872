//! The shared verifier against a JWKS served over loopback HTTP, with minted keys.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks fail loudly

use std::time::Duration;

use sipmba_auth::{
    AuthError, JwksSource, Kind, Revocations, Verifier, VerifierConfig, signing::unix_now,
};
use sipmba_testkit::{TestIssuer, serve_jwks};
use uuid::Uuid;

async fn setup(issuer: &TestIssuer) -> (Verifier, sipmba_testkit::JwksServer) {
    let (url, server) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
        .await
        .unwrap();
    let mut config = VerifierConfig::new(JwksSource::Url(url), &issuer.issuer, &issuer.audience);
    config.leeway = Duration::from_secs(5);
    config.min_refresh_interval = Duration::ZERO;
    (
        Verifier::new(config, Revocations::default()).unwrap(),
        server,
    )
}

#[tokio::test]
async fn a_valid_token_yields_a_typed_principal() {
    let issuer = TestIssuer::new();
    let (verifier, _jwks) = setup(&issuer).await;
    let thing = Uuid::new_v4();
    let owner = Uuid::new_v4();
    let token = issuer.sign(
        &issuer
            .claims(Kind::Thing, thing, &["telemetry:write", "commands:read"])
            .with_owner(owner),
    );
    let p = verifier.verify(&token).await.unwrap();
    assert_eq!(p.kind, Kind::Thing);
    assert_eq!(p.subject, thing);
    assert_eq!(p.owner, Some(owner));
    assert!(p.has_scope("telemetry:write") && p.has_scope("commands:read"));
    assert!(!p.has_scope("users:read"));
}

#[tokio::test]
async fn bad_tokens_are_refused_for_the_right_reason() {
    let issuer = TestIssuer::new();
    let (verifier, _jwks) = setup(&issuer).await;
    let user = Uuid::new_v4();
    let now = unix_now();

    let mut expired = issuer.claims(Kind::User, user, &["users:read"]);
    expired.exp = now - 60; // beyond the 5 s leeway
    expired.iat = now - 120;
    let mut within_leeway = issuer.claims(Kind::User, user, &[]);
    within_leeway.exp = now - 2;
    let mut early = issuer.claims(Kind::User, user, &[]);
    early.nbf = Some(now + 600);
    let mut audience = issuer.claims(Kind::User, user, &[]);
    audience.aud = "someone-else".into();
    let mut iss = issuer.claims(Kind::User, user, &[]);
    iss.iss = "https://evil.example".into();
    let mut kind = issuer.claims(Kind::User, user, &[]);
    kind.kind = "admin".into();
    let mut sub = issuer.claims(Kind::User, user, &[]);
    sub.sub = "root".into();
    let ownerless = issuer.claims(Kind::Thing, user, &["telemetry:write"]);

    type Expect = fn(&AuthError) -> bool;
    let cases: Vec<(String, Expect)> = vec![
        (issuer.sign(&expired), |e| matches!(e, AuthError::Expired)),
        (issuer.sign(&early), |e| matches!(e, AuthError::NotYetValid)),
        (issuer.sign(&audience), |e| {
            matches!(e, AuthError::WrongAudience)
        }),
        (issuer.sign(&iss), |e| matches!(e, AuthError::WrongIssuer)),
        (issuer.sign(&kind), |e| {
            matches!(e, AuthError::InvalidClaims(_))
        }),
        (issuer.sign(&sub), |e| {
            matches!(e, AuthError::InvalidClaims(_))
        }),
        (issuer.sign(&ownerless), |e| {
            matches!(e, AuthError::InvalidClaims(_))
        }),
        ("a.b.c".into(), |e| matches!(e, AuthError::Malformed(_))),
        ("".into(), |e| matches!(e, AuthError::Malformed(_))),
    ];
    for (token, expected) in cases {
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(expected(&err), "unexpected refusal {err:?}");
        assert_eq!(err.to_status().code(), tonic::Code::Unauthenticated);
        // Messages never echo the token.
        assert!(token.is_empty() || !err.to_string().contains(&token));
    }
    assert!(
        verifier.verify(&issuer.sign(&within_leeway)).await.is_ok(),
        "leeway applies"
    );
}

#[tokio::test]
async fn forged_and_unsigned_tokens_are_refused() {
    let issuer = TestIssuer::new();
    let (verifier, _jwks) = setup(&issuer).await;
    let user = Uuid::new_v4();
    // Same kid, another private key.
    let forger = TestIssuer::with_kid(issuer.key.kid());
    let err = verifier.verify(&forger.user_token(user)).await.unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
    // An unknown kid.
    let stranger = TestIssuer::new();
    let err = verifier
        .verify(&stranger.user_token(user))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::UnknownKey), "{err:?}");
    // alg=none and HS256 (a classic key-confusion attempt).
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let body = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&issuer.claims(Kind::User, user, &["users:read"])).unwrap());
    for header in [
        format!(r#"{{"alg":"none","kid":"{}"}}"#, issuer.key.kid()),
        format!(r#"{{"alg":"HS256","kid":"{}"}}"#, issuer.key.kid()),
    ] {
        let token = format!("{}.{body}.AAAA", URL_SAFE_NO_PAD.encode(header));
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(matches!(err, AuthError::Malformed(_)), "{err:?}");
    }
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_its_kid_appears() {
    let old = TestIssuer::with_kid("k1");
    let (verifier, jwks) = setup(&old).await;
    let user = Uuid::new_v4();
    assert!(verifier.verify(&old.user_token(user)).await.is_ok());
    // sso publishes a new key next to the old one.
    let new = TestIssuer::with_kid("k2");
    jwks.set_keys(serde_json::json!({ "keys": [old.key.jwk(), new.key.jwk()] }));
    assert_eq!(
        verifier
            .verify(&new.user_token(user))
            .await
            .unwrap()
            .subject,
        user
    );
    // The retired key still verifies its live tokens.
    assert!(verifier.verify(&old.user_token(user)).await.is_ok());
}

#[tokio::test]
async fn unknown_kids_do_not_turn_into_a_fetch_per_request() {
    let issuer = TestIssuer::new();
    let (url, jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
        .await
        .unwrap();
    let config = VerifierConfig::new(JwksSource::Url(url), &issuer.issuer, &issuer.audience);
    let verifier = Verifier::new(config, Revocations::default()).unwrap();
    assert!(
        verifier
            .verify(&issuer.user_token(Uuid::new_v4()))
            .await
            .is_ok()
    );
    // Within the minimum refresh interval a burst of forged kids is answered from the cache.
    for _ in 0..50 {
        let err = verifier
            .verify(&TestIssuer::new().user_token(Uuid::new_v4()))
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::UnknownKey));
    }
    assert_eq!(
        jwks.hits(),
        1,
        "one fetch at start, none for the forged kids"
    );
}

#[tokio::test]
async fn revoked_tokens_and_subjects_are_refused() {
    let issuer = TestIssuer::new();
    let (verifier, _jwks) = setup(&issuer).await;
    let user = Uuid::new_v4();
    let claims = issuer.claims(Kind::User, user, &[]);
    let token = issuer.sign(&claims);
    let other = issuer.user_token(user);
    assert!(verifier.verify(&token).await.is_ok());
    verifier
        .revocations()
        .revoke_token(claims.jti.clone(), claims.exp, unix_now());
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::Revoked)
    ));
    assert!(verifier.verify(&other).await.is_ok(), "only that jti");
    // Subject-wide: everything issued before the cut-off.
    verifier
        .revocations()
        .revoke_subject(user, unix_now() + 1, unix_now() + 3600, unix_now());
    assert!(matches!(
        verifier.verify(&other).await,
        Err(AuthError::Revoked)
    ));
    let mut later = issuer.claims(Kind::User, user, &[]);
    later.iat = unix_now() + 2;
    assert!(verifier.verify(&issuer.sign(&later)).await.is_ok());
}

#[tokio::test]
async fn a_revoked_token_in_its_leeway_stays_refused_after_the_list_is_pruned() {
    let issuer = TestIssuer::new();
    let (verifier, _jwks) = setup(&issuer).await;
    let mut claims = issuer.claims(Kind::User, Uuid::new_v4(), &[]);
    claims.exp = unix_now() - 2; // expired, but within the 5 s leeway: still accepted
    let token = issuer.sign(&claims);
    assert!(verifier.verify(&token).await.is_ok());
    verifier
        .revocations()
        .revoke_token(claims.jti.clone(), claims.exp, unix_now());
    // Another revocation prunes the list; the first must survive it.
    verifier
        .revocations()
        .revoke_token("another", unix_now() + 60, unix_now());
    assert!(matches!(
        verifier.verify(&token).await,
        Err(AuthError::Revoked)
    ));
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_is_unreachable() {
    let issuer = TestIssuer::new();
    let (url, jwks) = serve_jwks(serde_json::to_value(issuer.key.jwks()).unwrap())
        .await
        .unwrap();
    let mut config = VerifierConfig::new(JwksSource::Url(url), &issuer.issuer, &issuer.audience);
    config.max_key_age = Duration::ZERO; // every verification wants fresh keys
    config.min_refresh_interval = Duration::ZERO;
    let verifier = Verifier::new(config, Revocations::default()).unwrap();
    let token = issuer.user_token(Uuid::new_v4());
    assert!(verifier.verify(&token).await.is_ok());
    jwks.go_down(); // sso stops answering
    assert!(
        verifier.verify(&token).await.is_ok(),
        "known keys still verify"
    );
    let err = verifier
        .verify(&TestIssuer::new().user_token(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::Jwks(_)),
        "an unknown key cannot be checked: {err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_jwks_is_unavailable_not_unauthenticated() {
    let issuer = TestIssuer::new();
    let config = VerifierConfig::new(
        JwksSource::Url("http://127.0.0.1:9/.well-known/jwks.json".into()),
        &issuer.issuer,
        &issuer.audience,
    );
    let verifier = Verifier::new(config, Revocations::default()).unwrap();
    let err = verifier
        .verify(&issuer.user_token(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Jwks(_)), "{err:?}");
    assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
}

#[test]
fn leeway_is_bounded() {
    let issuer = TestIssuer::new();
    let mut config = VerifierConfig::new(
        JwksSource::Static(issuer.key.jwks()),
        &issuer.issuer,
        &issuer.audience,
    );
    config.leeway = Duration::from_secs(3600);
    assert!(Verifier::new(config, Revocations::default()).is_err());
}
