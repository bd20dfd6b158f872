//! Retrying what depends on something that may not be up yet (a database, the brokers).

use std::{fmt::Display, future::Future, time::Duration};

use crate::Shutdown;

/// Runs `attempt` until it succeeds, pausing 250 ms after the first failure and twice as long
/// after each next one (at most 10 s), logging each failure as `what`. `None` when the shutdown
/// starts first.
pub async fn until_ok<T, E, F, Fut>(what: &str, shutdown: &Shutdown, attempt: F) -> Option<T>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    until_ok_unless(what, shutdown, attempt, |_| false)
        .await
        .ok()
        .flatten()
}

/// As [`until_ok`], but an error `fatal` says retrying cannot cure (refused credentials, say)
/// ends the retries and is returned.
pub async fn until_ok_unless<T, E, F, Fut>(
    what: &str,
    shutdown: &Shutdown,
    mut attempt: F,
    fatal: impl Fn(&E) -> bool,
) -> Result<Option<T>, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = Duration::from_millis(250);
    loop {
        match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "{what}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.clone().wait() => return Ok(None),
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}
