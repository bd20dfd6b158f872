//! Waiting in tests: for a condition, and for a process to stop.

use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// What a check gives: `true` or `Some(value)` once the wait is over.
pub trait Outcome {
    /// What the wait returns.
    type Value;
    /// The value, once there is one.
    fn found(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn found(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn found(self) -> Option<T> {
        self
    }
}

/// The pause after the `n`th failed check: 50 ms, doubling to 1 s.
fn pause(n: u32) -> Duration {
    Duration::from_millis(50u64 << n.min(4)).min(Duration::from_secs(1))
}

/// Runs `check` until it gives `true` or a value (pausing 50 ms, doubling to 1 s); panics
/// naming `what` when `within` has passed.
pub async fn eventually<O: Outcome>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + within;
    for n in 0.. {
        if let Some(found) = check().await.found() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(pause(n)).await;
    }
    unreachable!("the loop only ends by returning or panicking")
}

/// [`eventually`] for a test without a runtime.
pub fn eventually_blocking<O: Outcome>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> O,
) -> O::Value {
    let deadline = Instant::now() + within;
    for n in 0.. {
        if let Some(found) = check().found() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(pause(n));
    }
    unreachable!("the loop only ends by returning or panicking")
}

/// Sends `signal` to process `pid`; panics when it cannot (the process is gone).
pub fn signal(pid: u32, signal: Signal) {
    let target = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .unwrap_or_else(|| panic!("{pid} is not a process id"));
    if let Err(e) = rustix::process::kill_process(target, signal) {
        panic!("sending {signal:?} to {pid}: {e}");
    }
}

/// Sends SIGTERM to `child` and waits for it to exit, for at most `within`: its exit status,
/// or an error saying it did not stop.
pub async fn sigterm(
    child: &mut tokio::process::Child,
    within: Duration,
) -> Result<std::process::ExitStatus, String> {
    let pid = child.id().ok_or("the process has already exited")?;
    signal(pid, Signal::TERM);
    match tokio::time::timeout(within, child.wait()).await {
        Ok(status) => status.map_err(|e| e.to_string()),
        Err(_) => Err(format!("still running {within:?} after SIGTERM")),
    }
}
