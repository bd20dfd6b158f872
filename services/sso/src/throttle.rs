//! Login throttling: failed attempts are counted per username (or client id) and per client
//! address over a window; past the limit, further attempts are refused until the window ends.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Limits of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleLimits {
    /// Failures allowed per username or client id within the window.
    pub per_account: u32,
    /// Failures allowed per client address within the window.
    pub per_address: u32,
    /// The window.
    pub window: Duration,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self {
            per_account: 5,
            per_address: 20,
            window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Default)]
struct Counter {
    failures: u32,
    since: Option<Instant>,
}

/// Failed-login counters.
#[derive(Debug, Default)]
pub struct Throttle {
    limits: ThrottleLimits,
    accounts: Mutex<HashMap<String, Counter>>,
    addresses: Mutex<HashMap<IpAddr, Counter>>,
}

fn blocked(counter: Option<&Counter>, limit: u32, window: Duration) -> Option<Duration> {
    let counter = counter?;
    let since = counter.since?;
    let elapsed = since.elapsed();
    (counter.failures >= limit && elapsed < window).then(|| window - elapsed)
}

fn bump(counter: &mut Counter, window: Duration) {
    match counter.since {
        Some(since) if since.elapsed() < window => counter.failures += 1,
        _ => {
            counter.failures = 1;
            counter.since = Some(Instant::now());
        }
    }
}

impl Throttle {
    /// A throttle with these limits.
    pub fn new(limits: ThrottleLimits) -> Self {
        Self {
            limits,
            ..Default::default()
        }
    }

    /// `Some(retry_after)` when `account` or `address` may not try now.
    pub fn check(&self, account: &str, address: Option<IpAddr>) -> Option<Duration> {
        let window = self.limits.window;
        let by_account = {
            let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            blocked(accounts.get(account), self.limits.per_account, window)
        };
        let by_address = address.and_then(|a| {
            let addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            blocked(addresses.get(&a), self.limits.per_address, window)
        });
        by_account.max(by_address)
    }

    /// Records a failed attempt.
    pub fn failed(&self, account: &str, address: Option<IpAddr>) {
        let window = self.limits.window;
        {
            let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
            if accounts.len() > 100_000 {
                accounts.retain(|_, c| c.since.is_some_and(|s| s.elapsed() < window));
            }
            bump(accounts.entry(account.to_owned()).or_default(), window);
        }
        if let Some(address) = address {
            let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            if addresses.len() > 100_000 {
                addresses.retain(|_, c| c.since.is_some_and(|s| s.elapsed() < window));
            }
            bump(addresses.entry(address).or_default(), window);
        }
    }

    /// Clears an account's failures after a success.
    pub fn succeeded(&self, account: &str) {
        self.accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_blocked_after_its_limit_and_others_are_not() {
        let throttle = Throttle::new(ThrottleLimits {
            per_account: 3,
            per_address: 100,
            window: Duration::from_secs(60),
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(throttle.check("alice", Some(ip)).is_none());
            throttle.failed("alice", Some(ip));
        }
        let wait = throttle.check("alice", Some(ip)).unwrap();
        assert!(wait <= Duration::from_secs(60) && wait > Duration::from_secs(50));
        assert!(throttle.check("bob", Some(ip)).is_none());
        throttle.succeeded("alice");
        assert!(throttle.check("alice", Some(ip)).is_none());
    }
}
