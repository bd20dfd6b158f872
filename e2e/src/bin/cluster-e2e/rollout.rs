//! Rolls that lose nothing: a rolling restart of collect while the agent pod streams, and the
//! counts both it and the upgrade (`upgrade.rs`) check — every reading Collect acknowledged is
//! stored once.

use std::collections::BTreeMap;

use super::*;
use crate::things::Cli;

/// What the agent pod and Processing say about the thing's readings.
pub(super) struct Counts {
    /// Readings the agent made: acknowledged ones and those still in its outbox.
    pub(super) sent: u64,
    /// The highest seq Collect acknowledged (the agent deletes what is acknowledged).
    pub(super) acked: u64,
    /// How many times Processing stored each seq.
    pub(super) stored: BTreeMap<u64, u32>,
}

impl Counts {
    /// Acknowledged seqs that Processing does not have.
    fn lost(&self) -> Vec<u64> {
        (1..=self.acked)
            .filter(|seq| !self.stored.contains_key(seq))
            .collect()
    }

    /// Seqs that Processing has more than once.
    fn duplicated(&self) -> Vec<u64> {
        self.stored
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(seq, _)| *seq)
            .collect()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, acknowledged {}, stored {}, lost {}, duplicated {}",
            self.sent,
            self.acked,
            self.stored.len(),
            self.lost().len(),
            self.duplicated().len()
        )
    }
}

/// The fewest Ready and the most existing pods of a workload seen while it rolled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Roll {
    pub(super) fewest_ready: usize,
    pub(super) most: usize,
}

impl Roll {
    pub(super) fn new(replicas: usize) -> Self {
        Self {
            fewest_ready: replicas,
            most: replicas,
        }
    }

    pub(super) fn saw(&mut self, ready: usize, existing: usize) {
        self.fewest_ready = self.fewest_ready.min(ready);
        self.most = self.most.max(existing);
    }
}

impl Suite {
    pub(super) async fn rollout_collect(&self, cli: &Cli, thing: &str) -> anyhow::Result<()> {
        let before = self.counts(cli, thing).await?;
        let old = self.component_pods("collect", true).await?;
        let replicas = old.len();
        self.kubectl(&["rollout", "restart", "-n", NS, "deployment/demo-collect"])
            .await?;
        let started = Instant::now();
        let mut roll = Roll::new(replicas);
        let new = loop {
            let ready = self.component_pods("collect", true).await?;
            let all = self.component_pods("collect", false).await?;
            roll.saw(ready.len(), all.len());
            if ready.len() == replicas
                && all.len() == replicas
                && ready.iter().all(|p| !old.contains(p))
            {
                break ready;
            }
            if started.elapsed() > Duration::from_secs(240) {
                bail!("collect did not roll within 240 s: {all:?} ({ready:?} Ready)");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let rolled = started.elapsed();
        // maxUnavailable 0, maxSurge 1: a new pod Ready before an old one goes.
        if roll.fewest_ready < replicas || roll.most > replicas + 1 {
            bail!("while collect rolled: {roll:?} of {replicas} replicas");
        }
        println!(
            "  collect {old:?} -> {new:?} in {:.1} s: {} of {replicas} Ready throughout, at \
             most {} pods",
            rolled.as_secs_f64(),
            roll.fewest_ready,
            roll.most
        );
        let after = self.nothing_lost(cli, thing).await?;
        println!("  readings: before the roll {before}; after it {after}");
        Ok(())
    }

    /// The pods of a platform component (Ready ones only with `ready`), those being deleted
    /// left out.
    pub(super) async fn component_pods(
        &self,
        component: &str,
        ready: bool,
    ) -> anyhow::Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NS);
        let listed = pods
            .list(&ListParams::default().labels(&format!(
                "app.kubernetes.io/instance=demo,app.kubernetes.io/component={component}"
            )))
            .await?;
        Ok(listed
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && (!ready || pod_ready(p)))
            .map(ResourceExt::name_any)
            .collect())
    }

    /// Once a roll is over: the agent reconnects on its own (readings made after now are
    /// acknowledged), every seq Collect acknowledged is stored, and none twice.
    pub(super) async fn nothing_lost(&self, cli: &Cli, thing: &str) -> anyhow::Result<Counts> {
        let sent_by_now = self.counts(cli, thing).await?.sent;
        let after = wait_for(
            "the agent acknowledged anew, every acknowledged reading stored",
            Duration::from_secs(90),
            || async {
                let now = self.counts(cli, thing).await?;
                Ok(if now.acked > sent_by_now && now.lost().is_empty() {
                    Ok(now)
                } else {
                    Err(format!("{now} ({:?} lost)", now.lost()))
                })
            },
        )
        .await?;
        let duplicated = after.duplicated();
        if !duplicated.is_empty() {
            bail!("seqs stored more than once: {duplicated:?}");
        }
        Ok(after)
    }

    /// The agent's counts (its status, through a port-forward to its provisioning endpoint)
    /// and Processing's (the thing's whole history, through the CLI).
    pub(super) async fn counts(&self, cli: &Cli, thing: &str) -> anyhow::Result<Counts> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), NS);
        let enrollment = secret_value(&secrets.get("e2e-agent-enrollment").await?, "secret")
            .context("the enrollment secret")?;
        let port = forward_to(&self.client, "app=e2e-agent", 7443).await?;
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await?;
        let mut request = pb::GetStatusRequest {
            enrollment_proof: String::new(),
            request_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        };
        request.enrollment_proof = sipmba_proto::enrollment::hmac_proof(
            enrollment.as_bytes(),
            &sipmba_proto::enrollment::status_message(&request),
        );
        let status = pb::edge_service_client::EdgeServiceClient::new(channel)
            .get_status(request)
            .await?
            .into_inner();
        let history = cli
            .run(
                &[
                    "telemetry",
                    "history",
                    thing,
                    "temperature",
                    "--since",
                    "6h",
                    "--limit",
                    "1000000",
                    "-o",
                    "json",
                ],
                None,
            )
            .await?;
        let points: Vec<serde_json::Value> = serde_json::from_str(history.trim())
            .with_context(|| format!("the history as JSON: {history}"))?;
        let mut stored = BTreeMap::new();
        for point in &points {
            let seq = point["seq"].as_u64().context("a point without seq")?;
            *stored.entry(seq).or_insert(0) += 1;
        }
        Ok(Counts {
            sent: status.last_acked_seq + status.outbox_depth,
            acked: status.last_acked_seq,
            stored,
        })
    }
}
