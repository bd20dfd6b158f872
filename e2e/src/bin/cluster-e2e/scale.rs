//! The Thing controller at fleet scale: `cluster-e2e --bench-things N` installs the chart and a
//! platform as the suite does, then applies N Things whose agents are one stand-in EdgeService
//! on this host (it checks each delivery's enrollment proof and accepts it, so the figures are
//! the operator's and the platform's, not a thousand agents'), and prints, beside the same
//! figures for a first round of 10 Things (the baseline):
//!
//! - the time from the first apply until every Thing is Delivered, and Things per second;
//! - the operator's Kubernetes API requests per Thing (its `sipmba_operator_api_requests_total`);
//! - the operator container's memory (the kubelet's working set) per Thing;
//! - the leader's pod deleted with every Thing delivered: how long until its successor (the
//!   standby, or a new pod) has looked at all of them, its API requests per Thing, how many
//!   deliveries that caused (none should: tokens stay valid), and its memory then;
//! - token renewals (the Things ask for `tokenSeconds: 300`): how they spread over time, as
//!   the most renewals in any one second.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use sipmba_proto::enrollment;

use super::*;

/// Every delivery the stand-in agent accepted: the thing and when.
#[derive(Default)]
struct Deliveries {
    seen: Mutex<Vec<(String, Instant)>>,
}

struct StandIn {
    secret: Vec<u8>,
    deliveries: Arc<Deliveries>,
}

#[tonic::async_trait]
impl pb::edge_service_server::EdgeService for StandIn {
    async fn provision(
        &self,
        request: tonic::Request<pb::ProvisionRequest>,
    ) -> Result<tonic::Response<pb::ProvisionResponse>, tonic::Status> {
        let request = request.into_inner();
        let proof = enrollment::hmac_proof(&self.secret, &enrollment::provision_message(&request));
        if proof != request.enrollment_proof {
            return Err(tonic::Status::unauthenticated("wrong enrollment proof"));
        }
        let thing = request.thing.map(|t| t.value).unwrap_or_default();
        if let Ok(mut seen) = self.deliveries.seen.lock() {
            seen.push((thing, Instant::now()));
        }
        Ok(tonic::Response::new(pb::ProvisionResponse {
            accepted: true,
            agent_version: "stand-in".into(),
            outbox_depth: 0,
        }))
    }

    async fn get_status(
        &self,
        _request: tonic::Request<pb::GetStatusRequest>,
    ) -> Result<tonic::Response<pb::AgentStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("a stand-in agent"))
    }
}

/// One round's figures.
struct Round {
    things: usize,
    delivered_s: f64,
    api_requests: f64,
    memory_mib: f64,
}

impl Suite {
    /// The pod of the operator's leader: the replica that reconciles.
    async fn operator_pod(&self) -> anyhow::Result<Pod> {
        let leader = self
            .leader()
            .await?
            .context("no operator holds the lease")?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        pods.get(&leader).await.context("the leader's pod")
    }

    /// The sum of the leader's samples whose line starts with `prefix`.
    async fn operator_metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let pod = self.operator_pod().await?.name_any();
        self.pod_metric(&pod, prefix).await
    }

    /// The operator's Kubernetes API requests so far.
    async fn operator_api_requests(&self) -> anyhow::Result<f64> {
        self.operator_metric("sipmba_operator_api_requests_total")
            .await
    }

    /// The operator container's working set, from the kubelet's summary.
    async fn operator_memory(&self) -> anyhow::Result<f64> {
        let pod = self.operator_pod().await?;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .context("the operator pod has no node")?;
        let text = self
            .client
            .request_text(
                http::Request::get(format!("/api/v1/nodes/{node}/proxy/stats/summary"))
                    .body(Vec::new())?,
            )
            .await?;
        let summary: serde_json::Value = serde_json::from_str(&text)?;
        summary["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["podRef"]["name"] == pod.name_any().as_str())
            .and_then(|p| p["containers"][0]["memory"]["workingSetBytes"].as_f64())
            .map(|b| b / 1_048_576.0)
            .context("the kubelet reports no memory for the operator")
    }

    async fn delivered_count(&self, prefix: &str) -> anyhow::Result<usize> {
        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        Ok(things
            .list(&ListParams::default().labels("suite=scale"))
            .await?
            .items
            .iter()
            .filter(|t| t.name_any().starts_with(prefix))
            .filter(|t| condition(t, "Delivered").is_some_and(|(ok, _)| ok))
            .count())
    }

    async fn scale_round(
        &self,
        round: &str,
        count: usize,
        owner: &str,
        endpoint: &str,
    ) -> anyhow::Result<Round> {
        let requests_before = self.operator_api_requests().await?;
        let memory_before = self.operator_memory().await?;
        let started = Instant::now();
        let prefix = format!("scale-{round}-");
        let applies = futures::stream::iter(0..count)
            .map(|n| {
                let name = format!("{prefix}{n:05}");
                // `network: Cluster`: the stand-in does not use the URLs it is given, and the
                // platform needs no exposure for it.
                async move {
                    apply(&self.client, NS, json!({
                        "apiVersion": "sipmba.io/v1alpha1", "kind": "Thing",
                        "metadata": {"name": name, "namespace": NS, "labels": {"suite": "scale"}},
                        "spec": {
                            "platformRef": "demo", "owner": owner,
                            "labels": {"suite": "scale"},
                            "tokenSeconds": 300,
                            "agent": {"endpoint": endpoint, "network": "Cluster",
                                      "enrollmentSecretRef": {"name": "scale-enrollment", "key": "secret"}}
                        }
                    }))
                    .await
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        for outcome in applies {
            outcome?;
        }
        let applied_s = started.elapsed().as_secs_f64();
        let last = std::cell::Cell::new(0);
        wait_for(
            "every Thing Delivered",
            Duration::from_secs(1800),
            || async {
                let delivered = self.delivered_count(&prefix).await?;
                if delivered / 100 != last.get() / 100 {
                    println!(
                        "    {delivered}/{count} delivered after {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                last.set(delivered);
                Ok(if delivered == count {
                    Ok(())
                } else {
                    Err(format!("{delivered}/{count}"))
                })
            },
        )
        .await?;
        let delivered_s = started.elapsed().as_secs_f64();
        let requests = self.operator_api_requests().await? - requests_before;
        let memory = self.operator_memory().await?;
        println!(
            "  {count} Things: applied in {applied_s:.1} s, all Delivered after {delivered_s:.1} s; \
             operator memory {memory_before:.1} -> {memory:.1} MiB"
        );
        Ok(Round {
            things: count,
            delivered_s,
            api_requests: requests / count as f64,
            memory_mib: memory,
        })
    }

    /// The benchmark (see the module's documentation).
    pub(super) async fn thing_scale(&self, count: usize) -> anyhow::Result<()> {
        let owner = self.owner().await?;
        let secret = uuid::Uuid::new_v4().simple().to_string();
        apply(
            &self.client,
            NS,
            json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "scale-enrollment", "namespace": NS},
                "stringData": {"secret": secret}
            }),
        )
        .await?;
        let host = self.host_address().await?;
        let address: IpAddr = host.parse().context("this host's address")?;
        let listener = tokio::net::TcpListener::bind((address, 0)).await?;
        let endpoint = format!("http://{host}:{}", listener.local_addr()?.port());
        let deliveries = Arc::new(Deliveries::default());
        let stand_in = StandIn {
            secret: secret.into_bytes(),
            deliveries: deliveries.clone(),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::edge_service_server::EdgeServiceServer::new(stand_in))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        println!("  the stand-in agent at {endpoint}");
        let idle = self.operator_memory().await?;
        let baseline = self.scale_round("base", 10, &owner.id, &endpoint).await?;
        let fleet = self
            .scale_round("fleet", count, &owner.id, &endpoint)
            .await?;
        let all = baseline.things + fleet.things;

        // The leader deleted with every Thing delivered: its successor looks at each again and
        // delivers nothing.
        let delivered_before = deliveries.seen.lock().map(|s| s.len()).unwrap_or(0);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.operator_ns);
        let old = self.operator_pod().await?.name_any();
        let restarted = Instant::now();
        pods.delete(&old, &DeleteParams::default()).await?;
        wait_for("the next leader", Duration::from_secs(180), || async {
            Ok(match self.operator_pod().await {
                Ok(pod) if pod.name_any() != old => Ok(()),
                _ => Err("waiting".to_owned()),
            })
        })
        .await?;
        let looked = wait_for(
            "the next leader looking at every Thing",
            Duration::from_secs(600),
            || async {
                let reconciled = self
                    .operator_metric("sipmba_operator_reconciles_total{controller=\"thing\"")
                    .await?;
                Ok(if reconciled >= all as f64 {
                    Ok(restarted.elapsed().as_secs_f64())
                } else {
                    Err(format!("{reconciled} of {all} reconciled"))
                })
            },
        )
        .await?;
        let restart_requests = self.operator_api_requests().await?;
        // What it holds for the fleet, without a burst of deliveries behind it.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let restarted_memory = self.operator_memory().await?;
        let redelivered = deliveries.seen.lock().map(|s| s.len()).unwrap_or(0) - delivered_before;

        // Renewals: each Thing's token is replaced when 60 s (a fifth of 300) and up to 30 s
        // more are left; watch them come.
        println!("  waiting for the renewals (tokenSeconds 300)");
        let renewals = wait_for(
            "a renewal of every Thing",
            Duration::from_secs(420),
            || async {
                let seen = deliveries
                    .seen
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default();
                let mut per_thing: BTreeMap<&str, Vec<Instant>> = BTreeMap::new();
                for (thing, at) in &seen {
                    per_thing.entry(thing).or_default().push(*at);
                }
                let renewed: Vec<Instant> = per_thing
                    .values()
                    .filter_map(|at| at.get(1).copied())
                    .collect();
                Ok(if renewed.len() >= all {
                    Ok(renewed)
                } else {
                    Err(format!("{} of {all} renewed", renewed.len()))
                })
            },
        )
        .await?;
        let first = renewals.iter().min().copied().unwrap_or(restarted);
        let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
        for at in &renewals {
            *per_second
                .entry(at.duration_since(first).as_secs())
                .or_default() += 1;
        }
        let busiest = per_second.values().max().copied().unwrap_or(0);
        let span = per_second.keys().max().copied().unwrap_or(0);

        println!();
        println!(
            "| Things | all Delivered | Things/s | API requests per Thing | operator memory | per Thing |"
        );
        println!("|---|---|---|---|---|---|");
        // Memory per Thing: over the idle operator, for every Thing it holds by then.
        for (round, held) in [(&baseline, baseline.things), (&fleet, all)] {
            println!(
                "| {} | {:.1} s | {:.1} | {:.1} | {:.1} MiB | {:.1} KiB |",
                round.things,
                round.delivered_s,
                round.things as f64 / round.delivered_s,
                round.api_requests,
                round.memory_mib,
                (round.memory_mib - idle) * 1024.0 / held as f64,
            );
        }
        println!();
        println!(
            "operator idle: {idle:.1} MiB; the leader deleted with {all} Things: its successor looked at all in \
             {looked:.1} s, {:.1} API requests per Thing, {redelivered} deliveries, memory \
             {restarted_memory:.1} MiB ({:.1} KiB per Thing over idle)",
            restart_requests / all as f64,
            (restarted_memory - idle) * 1024.0 / all as f64
        );
        println!(
            "renewals: {} over {span} s, at most {busiest} in one second",
            renewals.len()
        );

        let things = dynamic(&self.client, NS, "sipmba.io", "v1alpha1", "Thing").await?;
        things
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("suite=scale"),
            )
            .await?;
        wait_for("the Things deleted", Duration::from_secs(900), || async {
            let left = things
                .list(&ListParams::default().labels("suite=scale"))
                .await?
                .items
                .len();
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} left"))
            })
        })
        .await?;
        Ok(())
    }
}
