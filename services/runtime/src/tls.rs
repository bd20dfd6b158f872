//! The listener's TLS: the certificate and key read from their files, and read again when the
//! files change, so that a certificate the operator renews (or re-issues with new names) is
//! served without a restart; handshakes completed off the accept loop.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

use crate::{TlsFiles, shutdown::Shutdown};

/// Why a certificate, its key or its CA cannot be used (which file, and what is wrong).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// How often the certificate's files are looked at. The kubelet updates a mounted Secret within
/// about a minute of its change; this adds at most as much again.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// The server's certificate, as last read from its files.
pub struct ReloadingCert {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    /// The files' bytes as last loaded, and what they make.
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// The certificate of `files`, read now: an error names the file and what is wrong.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (bytes, key) = read(files, &provider)?;
        Ok(Self {
            files: files.clone(),
            provider,
            current: RwLock::new((bytes, key)),
        })
    }

    /// Reads the files again; true when they changed and the new certificate is now served.
    /// Files that no longer make a certificate leave the current one served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (bytes, key) = read(&self.files, &self.provider)?;
        let mut current = self
            .current
            .write()
            .map_err(|_| TlsError("the certificate lock is poisoned".into()))?;
        if current.0 == bytes {
            return Ok(false);
        }
        *current = (bytes, key);
        Ok(true)
    }

    /// Reloads every [`RELOAD_EVERY`] until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_EVERY) => {}
                () = shutdown.clone().wait() => return,
            }
            let cert = self.clone();
            match tokio::task::spawn_blocking(move || cert.reload()).await {
                Ok(Ok(true)) => tracing::info!(
                    cert = %self.files.cert.display(),
                    "serving the renewed TLS certificate"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(
                    error = %e,
                    "the TLS certificate's files cannot be used now; serving the last good one"
                ),
                Err(e) => tracing::warn!(error = %e, "reading the TLS certificate failed"),
            }
        }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

fn read(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<(Vec<u8>, Arc<CertifiedKey>), TlsError> {
    let cert_bytes = std::fs::read(&files.cert)
        .map_err(|e| TlsError(format!("{}: {e}", files.cert.display())))?;
    let key_bytes =
        std::fs::read(&files.key).map_err(|e| TlsError(format!("{}: {e}", files.key.display())))?;
    let certs = certificates(&cert_bytes, &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        TlsError(format!(
            "{}: no usable private key: {e}",
            files.key.display()
        ))
    })?;
    let certified = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| TlsError(format!("certificate and key do not form an identity: {e}")))?;
    let mut bytes = cert_bytes;
    bytes.extend_from_slice(&key_bytes);
    Ok((bytes, Arc::new(certified)))
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// The acceptor serving `cert` (h2 first, HTTP/1.1 for probes and `/metrics`).
pub fn acceptor(cert: Arc<ReloadingCert>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(cert.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // gRPC needs h2; HTTP/1.1 serves /metrics and probes for clients without HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TCP connections and completes TLS handshakes off the accept loop, so that a slow or
/// silent client cannot hold up others.
pub fn incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = stream.set_nodelay(true);
            if let Err(e) = crate::server::keep_alive(&stream) {
                tracing::debug!(%peer, error = %e, "cannot set TCP keep-alive");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

    use super::*;

    struct Issued {
        ca: rcgen::Certificate,
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    }

    fn ca() -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        Issued {
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    fn write_leaf(issued: &Issued, names: &[&str], files: &TlsFiles) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &issued.issuer).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
    }

    /// Completes a handshake with `name` as the server name; Err when verification fails.
    async fn handshake(addr: SocketAddr, issued: &Issued, name: &str) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(issued.ca.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        connector
            .connect(server_name, tcp)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let issued = ca();
        write_leaf(&issued, &["demo-collect.iot.svc"], &files);
        let cert = Arc::new(ReloadingCert::load(&files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = incoming(listener, acceptor(cert.clone()).unwrap());
        tokio::spawn(async move {
            use tokio_stream::StreamExt;
            let mut held = Vec::new();
            while let Some(stream) = accepted.next().await {
                held.push(stream);
            }
        });

        handshake(addr, &issued, "demo-collect.iot.svc")
            .await
            .unwrap();
        let refused = handshake(addr, &issued, "10.255.0.1").await;
        assert!(refused.is_err(), "the address is not named yet");
        assert!(!cert.reload().unwrap(), "unchanged files are not a renewal");

        // Re-issued with the address outside the cluster (the platform exposed).
        write_leaf(&issued, &["demo-collect.iot.svc", "10.255.0.1"], &files);
        assert!(cert.reload().unwrap());
        handshake(addr, &issued, "10.255.0.1").await.unwrap();
        handshake(addr, &issued, "demo-collect.iot.svc")
            .await
            .unwrap();

        // A half-written key: an error, and the last good certificate stays.
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let error = cert.reload().unwrap_err().to_string();
        assert!(error.contains("tls.key"), "{error}");
        handshake(addr, &issued, "10.255.0.1").await.unwrap();
    }
}
