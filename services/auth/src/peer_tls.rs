//! Calls to other services of the platform over `https://`: they present certificates of the
//! platform's own CA (issued by the operator), which this process trusts once it is told
//! (`server.peer_ca_file`). One process serves one platform, so the trust is process-wide and
//! every client built here — gRPC channels to Objects, Control and sso, the HTTP clients for
//! sso's token endpoint and JWKS — uses it.

use std::{sync::OnceLock, time::Duration};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

static PEER_CA: OnceLock<Vec<u8>> = OnceLock::new();

/// Trusts the CA certificate(s) in `pem` for calls to other services; false when a CA was
/// trusted already (the first one stays).
pub fn trust(pem: Vec<u8>) -> bool {
    PEER_CA.set(pem).is_ok()
}

/// A lazily connecting channel to `url`: TLS verified against the platform CA for `https://`.
pub fn channel(url: &str, timeout: Duration) -> Result<Channel, String> {
    channel_trusting(url, timeout, PEER_CA.get().map(Vec::as_slice))
}

/// As [`channel`], trusting `ca` (a process serving several platforms, as the operator does).
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

/// An HTTP client that trusts the platform CA (when one is configured).
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    http_client_trusting(timeout, PEER_CA.get().map(Vec::as_slice))
}

/// As [`http_client`], trusting `ca`.
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
