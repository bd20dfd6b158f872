//! The enrollment proofs of `sipmba.v1.EdgeService` (see `edge.proto`): an HMAC-SHA256, under
//! the enrollment secret the operator and the agent share, of netstrings of the request's fields.
//! The operator computes them; the agent checks them.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::v1 as pb;

/// `<len>:<value>,` — a netstring.
pub fn netstring(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
    out.push(b',');
}

/// The message a Provision proof covers.
pub fn provision_message(r: &pb::ProvisionRequest) -> Vec<u8> {
    let mut m = b"sipmba.v1.EdgeService/Provision".to_vec();
    let expires = r
        .token_expires
        .as_ref()
        .map(|t| t.seconds.to_string())
        .unwrap_or_default();
    for v in [
        r.thing.as_ref().map_or("", |t| t.value.as_str()),
        r.access_token.as_str(),
        expires.as_str(),
        r.collect_endpoint.as_str(),
        r.ca_certificate_pem.as_deref().unwrap_or_default(),
        r.client_id.as_str(),
        r.client_secret.as_deref().unwrap_or_default(),
        r.token_endpoint.as_deref().unwrap_or_default(),
    ] {
        netstring(&mut m, v);
    }
    m
}

/// The message a GetStatus proof covers.
pub fn status_message(r: &pb::GetStatusRequest) -> Vec<u8> {
    let mut m = b"sipmba.v1.EdgeService/GetStatus".to_vec();
    netstring(
        &mut m,
        &r.request_time
            .as_ref()
            .map(|t| t.seconds.to_string())
            .unwrap_or_default(),
    );
    m
}

/// `hmac-sha256:<mac>` for `message` under `secret`.
pub fn hmac_proof(secret: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length: the error case cannot happen.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(message);
    format!(
        "hmac-sha256:{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}
