//! The provisioning endpoint (`sipmba.v1.EdgeService`): the operator hands the agent its thing
//! identity, token and Collect address, authenticated by the enrollment secret they share, and
//! reads the agent's status. See `proto/sipmba/v1/edge.proto` for the proof format.

use std::{path::Path, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sipmba_proto::v1::{self as pb, edge_service_server::EdgeService};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::agent::{Agent, VERSION};

/// Largest CA bundle accepted.
pub const MAX_CA_BYTES: usize = 64 * 1024;
/// Largest clock difference a status request may have.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

pub use sipmba_proto::enrollment::{hmac_proof, netstring, provision_message, status_message};

/// EdgeService over an agent.
#[derive(Clone)]
pub struct Provisioning {
    agent: Agent,
    secret: Vec<u8>,
    tls: bool,
}

impl std::fmt::Debug for Provisioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Provisioning")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Provisioning {
    /// The endpoint of `agent`, with the enrollment secret read from `secret_file`; `tls` says
    /// whether it is served over TLS (only then is the `secret:` form accepted).
    pub fn new(agent: Agent, secret_file: &Path, tls: bool) -> Result<Self, String> {
        let secret = std::fs::read_to_string(secret_file)
            .map_err(|e| {
                format!(
                    "cannot read the enrollment secret {}: {e}",
                    secret_file.display()
                )
            })?
            .trim()
            .as_bytes()
            .to_vec();
        if secret.len() < 16 {
            return Err(format!(
                "the enrollment secret in {} is shorter than 16 bytes; use a long random one",
                secret_file.display()
            ));
        }
        Ok(Self { agent, secret, tls })
    }

    fn check_proof(&self, proof: &str, message: &[u8]) -> Result<(), Status> {
        let refused = || Status::unauthenticated("wrong or missing enrollment proof");
        if let Some(mac) = proof.strip_prefix("hmac-sha256:") {
            let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| refused())?;
            let mut expected = Hmac::<Sha256>::new_from_slice(&self.secret)
                .map_err(|_| Status::internal("enrollment secret unusable"))?;
            expected.update(message);
            return expected.verify_slice(&mac).map_err(|_| refused());
        }
        if let Some(secret) = proof.strip_prefix("secret:") {
            if !self.tls {
                return Err(Status::unauthenticated(
                    "the secret: proof form is accepted over TLS only; send an hmac-sha256: proof",
                ));
            }
            if bool::from(secret.as_bytes().ct_eq(&self.secret)) {
                return Ok(());
            }
        }
        Err(refused())
    }

    fn provision(&self, r: pb::ProvisionRequest) -> Result<pb::ProvisionResponse, Status> {
        self.check_proof(&r.enrollment_proof, &provision_message(&r))?;
        let thing = r
            .thing
            .as_ref()
            .map(|t| t.value.as_str())
            .filter(|t| t.len() == 36 && t.chars().all(|c| c.is_ascii_hexdigit() || c == '-'))
            .ok_or_else(|| Status::invalid_argument("`thing` must be a thing id (a UUID)"))?
            .to_owned();
        if r.access_token.is_empty() || !r.access_token.is_ascii() {
            return Err(Status::invalid_argument("`access_token` must be set"));
        }
        if !(r.collect_endpoint.starts_with("https://")
            || r.collect_endpoint.starts_with("http://"))
            || tonic::transport::Endpoint::from_shared(r.collect_endpoint.clone()).is_err()
        {
            return Err(Status::invalid_argument(
                "`collect_endpoint` must be an http:// or https:// URL",
            ));
        }
        if let Some(ca) = &r.ca_certificate_pem
            && (ca.len() > MAX_CA_BYTES || !ca.contains("-----BEGIN CERTIFICATE-----"))
        {
            return Err(Status::invalid_argument(format!(
                "`ca_certificate_pem` must be a PEM bundle of certificates of at most {MAX_CA_BYTES} bytes"
            )));
        }
        if let Some(url) = &r.token_endpoint
            && (!(url.starts_with("https://") || url.starts_with("http://"))
                || tonic::transport::Endpoint::from_shared(url.clone()).is_err())
        {
            return Err(Status::invalid_argument(
                "`token_endpoint` must be an http:// or https:// URL",
            ));
        }
        if r.client_secret.is_some() && r.token_endpoint.is_none() {
            return Err(Status::invalid_argument(
                "`client_secret` needs `token_endpoint`",
            ));
        }
        let expires = |c: &pb::ProvisionRequest| c.token_expires.as_ref().map_or(0, |t| t.seconds);
        if let Some(current) = self.agent.credentials.get() {
            let same = {
                let mut a = r.clone();
                a.enrollment_proof.clear();
                a == *current
            };
            if !same {
                if expires(&r) < expires(&current) {
                    return Err(Status::failed_precondition(
                        "the token expires before the one the agent holds: a stale or replayed request",
                    ));
                }
                if expires(&r) == expires(&current) && r.access_token != current.access_token {
                    return Err(Status::failed_precondition(
                        "another token with the same expiry as the one the agent holds: a stale or replayed request",
                    ));
                }
                let current_thing = current.thing.as_ref().map_or("", |t| t.value.as_str());
                let depth = self.agent.outbox.depth().unwrap_or(0);
                if current_thing != thing && depth > 0 {
                    return Err(Status::failed_precondition(format!(
                        "the agent still holds {depth} unacknowledged readings of thing {current_thing}; let it upload them first"
                    )));
                }
            }
        }
        let accepted = self
            .agent
            .credentials
            .replace(r)
            .map_err(Status::internal)?;
        if accepted {
            tracing::info!(%thing, "provisioned: new credentials take effect now");
        }
        Ok(pb::ProvisionResponse {
            accepted,
            agent_version: VERSION.into(),
            outbox_depth: self.agent.outbox.depth().unwrap_or(0),
        })
    }

    fn get_status(&self, r: &pb::GetStatusRequest) -> Result<pb::AgentStatus, Status> {
        self.check_proof(&r.enrollment_proof, &status_message(r))?;
        let now = prost_types::Timestamp::from(std::time::SystemTime::now()).seconds;
        let asked = r.request_time.as_ref().map_or(0, |t| t.seconds);
        if asked.abs_diff(now) > MAX_SKEW.as_secs() {
            return Err(Status::unauthenticated(
                "`request_time` is more than 5 minutes from the agent's clock",
            ));
        }
        let creds = self.agent.credentials.get();
        let status = self.agent.status();
        let at = |s: i64| prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        };
        Ok(pb::AgentStatus {
            thing: creds.as_ref().and_then(|c| c.thing.clone()),
            agent_version: VERSION.into(),
            token_expires: creds.as_ref().and_then(|c| c.token_expires),
            outbox_depth: self.agent.outbox.depth().unwrap_or(0),
            last_upload: status.last_upload.map(at),
            last_acked_seq: self.agent.outbox.acked_seq().unwrap_or(0),
            next_wake: status.next_wake.map(at),
        })
    }
}

#[tonic::async_trait]
impl EdgeService for Provisioning {
    async fn provision(
        &self,
        req: Request<pb::ProvisionRequest>,
    ) -> Result<Response<pb::ProvisionResponse>, Status> {
        let me = self.clone();
        let r = req.into_inner();
        tokio::task::spawn_blocking(move || me.provision(r))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        self.get_status(req.get_ref()).map(Response::new)
    }
}

/// Serves EdgeService on `listener` (TLS with `tls` = (certificate PEM, key PEM)) until the
/// future is dropped.
pub async fn serve(
    provisioning: Provisioning,
    listener: tokio::net::TcpListener,
    tls: Option<(String, String)>,
) -> Result<(), String> {
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        builder = builder
            .tls_config(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
            .map_err(|e| format!("provisioning TLS: {e}"))?;
    }
    builder
        .add_service(pb::edge_service_server::EdgeServiceServer::new(
            provisioning,
        ))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("provisioning endpoint: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstrings_cannot_be_confused() {
        let mut a = Vec::new();
        netstring(&mut a, "ab");
        netstring(&mut a, "c");
        let mut b = Vec::new();
        netstring(&mut b, "a");
        netstring(&mut b, "bc");
        assert_eq!(a, b"2:ab,1:c,");
        assert_ne!(a, b);
    }
}
