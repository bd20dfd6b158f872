//! How the platform reaches brokers that want TLS, SASL or both (an existing Kafka or Redpanda
//! cluster): the same settings serve rskafka's connections and this crate's own admin requests.
//!
//! Offered: TLS (server verified against a CA, optionally a client certificate), and SASL PLAIN,
//! SCRAM-SHA-256 and SCRAM-SHA-512 (SASL_PLAINTEXT or SASL_SSL). Not offered: GSSAPI
//! (Kerberos), OAUTHBEARER and cloud-specific mechanisms such as AWS MSK IAM.

use std::sync::Arc;

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// PLAIN (RFC 4616): the password crosses the wire, so only over TLS.
    Plain,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

impl Mechanism {
    /// Every mechanism, by name.
    pub const ALL: [Self; 3] = [Self::Plain, Self::ScramSha256, Self::ScramSha512];

    /// Its name on the wire, as brokers and their configurations spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::str::FromStr for Mechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a SASL mechanism this platform speaks (PLAIN, SCRAM-SHA-256, \
                     SCRAM-SHA-512)"
                )
            })
    }
}

/// SASL credentials.
#[derive(Clone)]
pub struct Sasl {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// TLS and SASL towards the brokers; the default is neither (PLAINTEXT).
#[derive(Clone, Default)]
pub struct Security {
    /// TLS to the brokers, with the roots (and client certificate) it trusts and shows.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// SASL after connecting (and after the TLS handshake, with TLS).
    pub sasl: Option<Sasl>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl)
            .finish()
    }
}

impl Security {
    /// The Kafka name of this combination (`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`).
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// A TLS client configuration trusting the CA certificates in `ca_pem` (PEM), showing the
    /// client certificate chain and key in `client` (PEM) when given.
    pub fn tls_config(
        ca_pem: &[u8],
        client: Option<(&[u8], &[u8])>,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        if cas.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("the client certificate is not PEM: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("the client key is not a PEM private key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate and key do not match: {e}"))?
            }
        };
        Ok(Arc::new(config))
    }

    /// The SASL settings as rskafka takes them.
    pub(crate) fn rskafka_sasl(&self) -> Option<rskafka::client::SaslConfig> {
        use rskafka::client::{Credentials, SaslConfig};
        let sasl = self.sasl.as_ref()?;
        let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
        Some(match sasl.mechanism {
            Mechanism::Plain => SaslConfig::Plain(credentials),
            Mechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
            Mechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
        })
    }
}
