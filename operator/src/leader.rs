//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager): of the operator's
//! replicas only the holder reconciles; the others wait as standbys, serving `/healthz` and
//! `/metrics`.
//!
//! The holder renews the Lease a third of its duration before it expires. A holder that stops
//! (SIGTERM) releases it; a holder whose node stops, or that is frozen, stops renewing. Either
//! way a standby takes the Lease when its current term ends, so a standby reconciles at most
//! `lease` seconds (plus up to 1 s of jitter and one API call) after the last renewal. A holder
//! that finds the Lease taken (it was cut off for longer than its term) exits at once, so that two
//! replicas never reconcile side by side longer than it takes to notice.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{sync::watch, task::JoinHandle};

/// Where the Lease is and who this replica is.
#[derive(Debug, Clone)]
pub struct Election {
    /// The Lease's namespace; `None`: the client's (in a pod, the operator's own). [`run`]
    /// settles it before the election.
    ///
    /// [`run`]: crate::run
    pub namespace: Option<String>,
    /// The Lease's name.
    pub lease: String,
    /// This replica's identity in the Lease (its pod name).
    pub identity: String,
    /// How long a term lasts without a renewal, in seconds (at least 3).
    pub lease_seconds: u64,
}

impl Election {
    /// The Lease's namespace.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// The grace before a term's end at which the holder renews: a third of the term.
    fn grace(&self) -> u64 {
        (self.lease_seconds / 3).max(1)
    }
}

/// This replica holds the Lease.
#[derive(Debug)]
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

/// Waits until this replica holds the Lease: `Ok(None)` when SIGTERM or Ctrl-C came first.
pub async fn acquire(client: Client, election: &Election) -> anyhow::Result<Option<Leadership>> {
    if election.lease_seconds < 3 {
        anyhow::bail!(
            "a lease of {} s is too short: it takes at least 3 s",
            election.lease_seconds
        );
    }
    let manager = LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(election.namespace())
        .with_identity(&election.identity)
        .with_duration(election.lease_seconds)
        .with_grace(election.grace())
        .build()
        .await?;
    let (mut state, task) = manager.watch().await;
    tracing::info!(
        lease = %format!("{}/{}", election.namespace(), election.lease),
        identity = %election.identity,
        "waiting to hold the lease"
    );
    let held = tokio::select! {
        held = holds(&mut state) => Some(held),
        () = stop_signal() => None,
    };
    match held {
        Some(true) => {}
        Some(false) => {
            let outcome = task.await;
            anyhow::bail!("the lease manager stopped: {outcome:?}");
        }
        None => {
            drop(state);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            return Ok(None);
        }
    }
    tracing::info!(identity = %election.identity, "holding the lease: reconciling");
    Ok(Some(Leadership { state, task }))
}

impl Leadership {
    /// Resolves when this replica no longer holds the Lease.
    pub async fn lost(&mut self) {
        while *self.state.borrow_and_update() {
            if self.state.changed().await.is_err() {
                return;
            }
        }
        tracing::error!("this replica no longer holds the lease");
    }

    /// Gives the Lease up on the way out: a standby takes it when it next looks, at the end of
    /// the term it last saw, without first having to clear an expired holder.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the lease"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "could not release the lease"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the lease manager failed"),
            Err(_) => tracing::warn!("releasing the lease took more than 5 s"),
        }
    }
}

/// Resolves with `true` once `state` says this replica holds the Lease, `false` if the lease
/// manager stopped first.
async fn holds(state: &mut watch::Receiver<bool>) -> bool {
    while !*state.borrow_and_update() {
        if state.changed().await.is_err() {
            return false;
        }
    }
    true
}

/// SIGTERM (a pod being stopped) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
