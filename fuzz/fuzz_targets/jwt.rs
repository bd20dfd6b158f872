//! Access tokens before and after the signature check: arbitrary text, arbitrary headers and
//! arbitrary claims (both properly signed by the real key, so what follows the signature check
//! is reached). A forged token is never accepted; a signed one only with the EdDSA header of the
//! key and claims the platform issues (issuer, audience, lifetime, a UUID subject, a kind).
#![no_main]
#![allow(clippy::unwrap_used, clippy::expect_used)] // a fuzz target fails loudly

use std::sync::OnceLock;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer;
use libfuzzer_sys::fuzz_target;
use sipmba_auth::{JwksSource, Kind, Revocations, Verifier, VerifierConfig, signing::unix_now};
use sipmba_testkit::TestIssuer;
use uuid::Uuid;

struct State {
    runtime: tokio::runtime::Runtime,
    issuer: TestIssuer,
    signer: ed25519_dalek::SigningKey,
    verifier: Verifier,
    header: String,
    claims: String,
}

const LEEWAY: i64 = 30;

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| {
        let issuer = TestIssuer::with_kid("fuzz-key");
        let mut config = VerifierConfig::new(
            JwksSource::Static(issuer.key.jwks()),
            &issuer.issuer,
            &issuer.audience,
        );
        config.leeway = std::time::Duration::from_secs(LEEWAY as u64);
        let verifier = Verifier::new(config, Revocations::default()).unwrap();
        let claims =
            serde_json::to_string(&issuer.claims(Kind::Thing, Uuid::new_v4(), &[])).unwrap();
        State {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            signer: ed25519_dalek::SigningKey::from_bytes(&issuer.key.secret_bytes()),
            header: r#"{"typ":"JWT","alg":"EdDSA","kid":"fuzz-key"}"#.into(),
            claims,
            issuer,
            verifier,
        }
    })
}

/// `header.claims.signature`, signed by the real key.
fn signed(state: &State, header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = state.signer.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let state = state();
    let token = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        },
        1 => signed(state, rest, state.claims.as_bytes()),
        _ => signed(state, state.header.as_bytes(), rest),
    };
    let verified = state.runtime.block_on(state.verifier.verify(&token));
    let Ok(principal) = verified else {
        return;
    };
    assert_ne!(mode % 3, 0, "unsigned text accepted: {token}");
    if mode % 3 == 1 {
        let header: serde_json::Value = serde_json::from_slice(rest).expect("a JSON header");
        assert_eq!(header["alg"], "EdDSA", "{header}");
        assert_eq!(header["kid"], "fuzz-key", "{header}");
    } else {
        let claims: serde_json::Value = serde_json::from_slice(rest).expect("JSON claims");
        let now = unix_now();
        assert_eq!(claims["iss"], state.issuer.issuer.as_str(), "{claims}");
        assert!(principal.expires_at >= now - LEEWAY, "{claims}");
        if let Some(nbf) = claims["nbf"].as_i64() {
            assert!(nbf <= now + LEEWAY, "{claims}");
        }
        let sub = claims["sub"].as_str().and_then(|s| Uuid::parse_str(s).ok());
        assert_eq!(sub, Some(principal.subject), "{claims}");
        assert!(["user", "thing", "service"].contains(&principal.kind.as_str()));
    }
});
