//! Calls to other services of the platform over `https://`: they present certificates of the
//! platform's own CA (issued by the operator). A [`PeerCa`] holds that CA (`server.peer_ca_file`)
//! and is handed to every client a service builds to call another — gRPC channels to Objects,
//! Control and sso, the HTTP clients for sso's token endpoint and JWKS. Without one, an
//! `https://` peer is refused when the client is built, naming the setting.

use std::{sync::Arc, time::Duration};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The CA certificate(s), PEM, the other services' certificates are checked against; none when
/// the platform's services talk plaintext.
#[derive(Clone, Default)]
pub struct PeerCa(Option<Arc<[u8]>>);

impl std::fmt::Debug for PeerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "PeerCa(configured)"
        } else {
            "PeerCa(none)"
        })
    }
}

impl PeerCa {
    /// Trusts the CA certificate(s) in `pem`.
    pub fn new(pem: Vec<u8>) -> Self {
        Self(Some(pem.into()))
    }

    /// No CA: plaintext peers only.
    pub fn none() -> Self {
        Self(None)
    }

    /// The CA's PEM, when there is one.
    pub fn pem(&self) -> Option<&[u8]> {
        self.0.as_deref()
    }

    /// A lazily connecting channel to `url`: TLS verified against this CA for `https://`.
    pub fn channel(&self, url: &str, timeout: Duration) -> Result<Channel, String> {
        channel_trusting(url, timeout, self.pem())
    }

    /// An HTTP client that trusts this CA (as well as the public ones).
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, String> {
        http_client_trusting(timeout, self.pem())
    }
}

/// A lazily connecting channel to `url`, TLS verified against `ca` for `https://` (the operator
/// calls several platforms and devices, each with a CA of its own).
pub fn channel_trusting(
    url: &str,
    timeout: Duration,
    ca: Option<&[u8]>,
) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    if url.starts_with("https://") {
        let ca = ca.ok_or_else(|| {
            format!("{url} is https:// but no platform CA is configured (server.peer_ca_file)")
        })?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
            .map_err(|e| format!("TLS for {url}: {e}"))?;
    }
    Ok(endpoint.connect_lazy())
}

/// An HTTP client that trusts `ca` (when given) as well as the public CAs.
pub fn http_client_trusting(
    timeout: Duration,
    ca: Option<&[u8]>,
) -> Result<reqwest::Client, String> {
    // reqwest is built without a bundled crypto provider; use ring process-wide.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(pem) = ca {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the platform CA is not PEM: {e}"))?
        {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}
