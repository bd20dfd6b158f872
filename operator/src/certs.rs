//! The platform's CA and its service certificates (rcgen; ECDSA P-256).

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use sha2::{Digest, Sha256};

/// Annotation: when the certificate stops being valid (Unix seconds).
pub const NOT_AFTER: &str = "sipmba.io/not-after";
/// Annotation: the certificate's lifetime in days.
pub const LIFETIME_DAYS: &str = "sipmba.io/lifetime-days";
/// Annotation: digest of the CA that signed it.
pub const CA_DIGEST: &str = "sipmba.io/ca-digest";
/// Annotation: the names the certificate carries, comma-separated.
pub const NAMES: &str = "sipmba.io/names";
/// Annotation on the CA Secret: the CA's common name.
pub const CA_NAME: &str = "sipmba.io/ca-name";

/// Why a certificate could not be made or the CA read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or could not generate a key.
    #[error("{0}")]
    Generate(#[from] rcgen::Error),
    /// The CA's Secret lacks something it must hold.
    #[error("the Secret {secret} has no {missing}")]
    Incomplete {
        /// The Secret.
        secret: String,
        /// The key or annotation missing.
        missing: String,
    },
    /// The CA's key in its Secret is not a key.
    #[error("the Secret {secret}: ca.key: {source}")]
    Key {
        /// The Secret.
        secret: String,
        /// What rcgen said of it.
        source: rcgen::Error,
    },
}

/// A certificate with its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// When it expires (Unix seconds).
    pub not_after: i64,
}

fn ca_params(name: &str) -> Result<rcgen::CertificateParams, CertError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

/// A new CA named `name`, valid for ten years.
pub fn new_ca(name: &str) -> Result<Issued, CertError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = ca_params(name)?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: params.not_after.unix_timestamp(),
    })
}

/// The platform CA, loaded from its Secret.
pub struct Ca {
    /// The CA certificate.
    pub cert_pem: String,
    name: String,
    key: rcgen::KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The text under `key` of a Secret, as read back (`data`) or as written (`stringData`).
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(value.0.clone()).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

impl Ca {
    /// The CA of a Secret holding `ca.crt`, `ca.key` and the name annotation.
    pub fn from_secret(secret: &Secret) -> Result<Self, CertError> {
        let name = secret.name_or_default();
        let incomplete = |missing: &str| CertError::Incomplete {
            secret: name.clone(),
            missing: missing.to_owned(),
        };
        let cert_pem = secret_value(secret, "ca.crt").ok_or_else(|| incomplete("ca.crt"))?;
        let key_pem = secret_value(secret, "ca.key").ok_or_else(|| incomplete("ca.key"))?;
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(|source| CertError::Key {
            secret: name.clone(),
            source,
        })?;
        let ca_name = secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CA_NAME))
            .cloned()
            .ok_or_else(|| incomplete(&format!("{CA_NAME} annotation")))?;
        Ok(Self {
            cert_pem,
            name: ca_name,
            key,
        })
    }

    /// Digest of the CA certificate.
    pub fn digest(&self) -> String {
        Sha256::digest(self.cert_pem.as_bytes())
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A server certificate for `names`, valid for `days`.
    pub fn issue(&self, names: &[String], days: i64) -> Result<Issued, CertError> {
        let params = ca_params(&self.name)?;
        let issuer = rcgen::Issuer::new(params, &self.key);
        let key = rcgen::KeyPair::generate()?;
        let mut leaf = rcgen::CertificateParams::new(names.to_vec())?;
        if let Some(first) = names.first() {
            leaf.distinguished_name
                .push(rcgen::DnType::CommonName, first.as_str());
        }
        let now = time::OffsetDateTime::now_utc();
        leaf.not_before = now - time::Duration::hours(1);
        leaf.not_after = now + time::Duration::days(days);
        leaf.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: leaf.not_after.unix_timestamp(),
        })
    }
}

trait NameOrDefault {
    fn name_or_default(&self) -> String;
}

impl NameOrDefault for Secret {
    fn name_or_default(&self) -> String {
        self.metadata.name.clone().unwrap_or_default()
    }
}

/// The annotations of a service certificate's Secret.
pub fn annotations(
    ca: &Ca,
    not_after: i64,
    days: i64,
    names: &[String],
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NOT_AFTER.to_owned(), not_after.to_string()),
        (LIFETIME_DAYS.to_owned(), days.to_string()),
        (CA_DIGEST.to_owned(), ca.digest()),
        (NAMES.to_owned(), names.join(",")),
    ])
}

/// A service certificate is renewed when a third of its lifetime is left, when another CA
/// signed it, when it does not carry exactly `names`, or when its Secret says nothing of
/// these.
pub fn renewal_due(secret: &Secret, ca: &Ca, names: &[String], now: Timestamp) -> bool {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let number = |key: &str| annotations.get(key).and_then(|v| v.parse::<i64>().ok());
    let (Some(not_after), Some(days)) = (number(NOT_AFTER), number(LIFETIME_DAYS)) else {
        return true;
    };
    if annotations.get(CA_DIGEST) != Some(&ca.digest())
        || annotations.get(NAMES) != Some(&names.join(","))
    {
        return true;
    }
    now.as_second() > not_after - days * 86_400 / 3
}
