//! What rskafka 0.6 offers no hook for, done from outside on this process's own sockets to the
//! brokers, through safe duplicates of their descriptors (`pidfd_getfd`):
//!
//! - `TCP_NODELAY` ([`force`]). rskafka writes each request as two writes (the 4-byte length,
//!   then the body) on sockets without it; with Nagle's algorithm on, a mid-sized body then
//!   waits for the broker's delayed ACK — about 40 ms per request (measured: 100,000 records in
//!   batches of 1,000 took 4.4 s against 0.044 s with `TCP_NODELAY`); see the `produce`
//!   benchmark.
//! - Cutting the connections to a hung broker ([`cut`]). rskafka has no request timeout: a
//!   broker that stops answering (a stopped process, a stuck disk) while its connections stay
//!   open holds every request sent to it, and the metadata that names it leader, for as long as
//!   it hangs. Shut down, those connections fail, and rskafka refreshes its metadata and finds
//!   the partitions' new leaders.

use std::net::SocketAddr;

/// What a pass over this process's sockets found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Sockets to one of the peers for which the action did something.
    pub done: usize,
    /// Whether a TCP socket was still connecting (no peer yet): it may be one to the peers, and
    /// only a later pass can tell.
    pub connecting: bool,
}

/// Calls `f` with a duplicate of every socket of this process connected to one of `peers`.
/// Does nothing where the kernel does not allow it.
#[cfg(target_os = "linux")]
fn each_socket_to(peers: &[SocketAddr], mut f: impl FnMut(&rustix::fd::OwnedFd) -> bool) -> Pass {
    use rustix::{
        io::Errno,
        net::{AddressFamily, SocketType, getpeername, sockopt},
        process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open},
    };
    let mut pass = Pass::default();
    let Ok(pidfd) = pidfd_open(getpid(), PidfdFlags::empty()) else {
        return pass;
    };
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return pass;
    };
    for entry in entries.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        let Ok(dup) = pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) else {
            continue;
        };
        match getpeername(&dup) {
            Ok(Some(addr)) => {
                let peer = SocketAddr::try_from(addr).ok();
                if peer.is_some_and(|p| peers.contains(&p)) && f(&dup) {
                    pass.done += 1;
                }
            }
            // No peer: a listener, a socket not yet connected, or one connecting now.
            Ok(None) | Err(Errno::NOTCONN) => {
                let tcp = sockopt::socket_type(&dup).is_ok_and(|t| t == SocketType::STREAM)
                    && sockopt::socket_domain(&dup)
                        .is_ok_and(|d| d == AddressFamily::INET || d == AddressFamily::INET6);
                if tcp && !sockopt::socket_acceptconn(&dup).unwrap_or(true) {
                    pass.connecting = true;
                }
            }
            Err(_) => {}
        }
    }
    pass
}

/// Sets `TCP_NODELAY` on every socket of this process connected to one of `peers`; `done` is
/// how many it changed.
#[cfg(target_os = "linux")]
pub fn force(peers: &[SocketAddr]) -> Pass {
    use rustix::net::sockopt;
    each_socket_to(peers, |dup| {
        sockopt::tcp_nodelay(dup).is_ok_and(|on| !on) && sockopt::set_tcp_nodelay(dup, true).is_ok()
    })
}

/// Shuts down (both directions) every socket of this process connected to one of `peers`:
/// whoever reads or writes it next gets an error. Returns how many.
#[cfg(target_os = "linux")]
pub fn cut(peers: &[SocketAddr]) -> usize {
    each_socket_to(peers, |dup| {
        rustix::net::shutdown(dup, rustix::net::Shutdown::Both).is_ok()
    })
    .done
}

/// TCP connections opened so far from this process's network namespace (`ActiveOpens` of
/// `/proc/self/net/snmp`, IPv4 and IPv6 alike), if the kernel tells.
pub fn active_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/self/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let column = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(column)?.parse().ok()
}

/// Keeps `TCP_NODELAY` on the connections to a set of brokers at a cost that does not grow with
/// the process's other sockets while nothing connects. A pass over the sockets reads every
/// descriptor of the process (a Collect holding 10,000 device sessions spent 7 % of a core doing
/// it each second), so [`Nodelay::apply`] makes one only when a connection to them may have been
/// opened since the last: the namespace's count of opened TCP connections moved, the brokers
/// changed, or the last pass met a socket still connecting. The brokers' names are resolved only
/// for a pass (a broker that moved to another address is reached over a new connection, which
/// moves the count), not each time it is asked.
#[derive(Debug)]
pub struct Nodelay {
    state: std::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The brokers (`host:port`), sorted.
    brokers: Vec<String>,
    /// What the last pass saw, if it can tell what changed since.
    last: Option<Seen>,
}

/// What the last pass saw.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    opens: u64,
    brokers: Vec<String>,
    connecting: bool,
}

impl Nodelay {
    /// For the connections to `brokers` (`host:port`).
    pub fn new(brokers: Vec<String>) -> Self {
        Self {
            state: std::sync::Mutex::new(State {
                brokers: sorted(brokers),
                last: None,
            }),
        }
    }

    /// The brokers are now `brokers` (as the cluster told); the next [`Nodelay::apply`] makes a
    /// pass if they changed.
    pub fn learn(&self, brokers: Vec<String>) {
        self.state().brokers = sorted(brokers);
    }

    /// Sets `TCP_NODELAY` on the connections to the brokers opened since the last pass: `None`
    /// when no pass was needed, else what the pass did.
    pub fn apply(&self) -> Option<Pass> {
        let mut state = self.state();
        // Read before the pass: a connection opened during it moves the count again.
        let opens = active_opens();
        if !needs_pass(state.last.as_ref(), opens, &state.brokers) {
            return None;
        }
        let pass = force(&resolve(&state.brokers));
        state.last = opens.map(|opens| Seen {
            opens,
            brokers: state.brokers.clone(),
            connecting: pass.connecting,
        });
        Some(pass)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn sorted(mut brokers: Vec<String>) -> Vec<String> {
    brokers.sort_unstable();
    brokers.dedup();
    brokers
}

/// Whether a pass may find a connection to `brokers` the last one did not set.
fn needs_pass(last: Option<&Seen>, opens: Option<u64>, brokers: &[String]) -> bool {
    match (last, opens) {
        (Some(seen), Some(opens)) => {
            seen.opens != opens || seen.brokers != brokers || seen.connecting
        }
        // Never passed, or the count cannot be read: pass every time.
        _ => true,
    }
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn force(_peers: &[SocketAddr]) -> Pass {
    Pass::default()
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn cut(_peers: &[SocketAddr]) -> usize {
    0
}

/// The socket addresses of `brokers` (`host:port`).
pub fn resolve(brokers: &[String]) -> Vec<SocketAddr> {
    use std::net::ToSocketAddrs;
    brokers
        .iter()
        .filter_map(|b| b.to_socket_addrs().ok())
        .flatten()
        .collect()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn sockets_to_the_named_peers_get_nodelay_and_others_do_not() {
        let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to_broker = std::net::TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        let to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert!(!to_broker.nodelay().unwrap());
        assert_eq!(super::force(&[broker.local_addr().unwrap()]).done, 1);
        assert!(to_broker.nodelay().unwrap());
        assert!(!to_other.nodelay().unwrap());
        assert_eq!(
            super::force(&[broker.local_addr().unwrap()]).done,
            0,
            "already set"
        );
    }

    #[test]
    fn a_connection_opened_after_a_pass_gets_nodelay_at_the_next_apply() {
        let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nodelay = super::Nodelay::new(vec![broker.local_addr().unwrap().to_string()]);
        let first = std::net::TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        assert!(nodelay.apply().is_some(), "the first apply always passes");
        assert!(first.nodelay().unwrap());
        let later = std::net::TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        assert!(!later.nodelay().unwrap());
        let pass = nodelay.apply().expect("a connection was opened: a pass");
        assert!(pass.done >= 1);
        assert!(later.nodelay().unwrap());
    }

    #[test]
    fn a_pass_is_made_only_when_a_connection_may_have_been_opened() {
        let a = "kafka-0.kafka:9092".to_owned();
        let b = "kafka-1.kafka:9092".to_owned();
        let seen = super::Seen {
            opens: 40,
            brokers: vec![a.clone()],
            connecting: false,
        };
        assert!(
            !super::needs_pass(Some(&seen), Some(40), std::slice::from_ref(&a)),
            "nothing opened"
        );
        assert!(
            super::needs_pass(Some(&seen), Some(41), std::slice::from_ref(&a)),
            "a connection opened"
        );
        assert!(
            super::needs_pass(Some(&seen), Some(40), &[a.clone(), b]),
            "a broker learned"
        );
        let connecting = super::Seen {
            connecting: true,
            ..seen.clone()
        };
        assert!(
            super::needs_pass(Some(&connecting), Some(40), std::slice::from_ref(&a)),
            "one still connecting"
        );
        assert!(
            super::needs_pass(None, Some(40), std::slice::from_ref(&a)),
            "never passed"
        );
        assert!(
            super::needs_pass(Some(&seen), None, std::slice::from_ref(&a)),
            "no count to compare"
        );
    }

    #[test]
    fn a_socket_still_connecting_asks_for_another_pass_and_a_listener_does_not() {
        use rustix::net::{AddressFamily, SocketType, socket};
        // nextest runs each test in a process of its own: these are its only sockets.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(!super::force(&[]).connecting);
        let unconnected = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        assert!(super::force(&[]).connecting);
        drop(unconnected);
    }

    #[test]
    fn the_count_of_opened_connections_is_read_and_moves_with_a_connect() {
        let before = super::active_opens().expect("/proc/self/net/snmp has Tcp: ActiveOpens");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(super::active_opens().unwrap() > before);
    }

    #[test]
    fn sockets_to_the_named_peers_are_cut_and_others_are_not() {
        use std::io::{Read, Write};
        let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut to_broker = std::net::TcpStream::connect(broker.local_addr().unwrap()).unwrap();
        let mut to_other = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let (_accepted, _) = broker.accept().unwrap();
        let (mut accepted_other, _) = other.accept().unwrap();
        assert_eq!(super::cut(&[broker.local_addr().unwrap()]), 1);
        // A read that would wait for a broker that never answers ends at once.
        assert_eq!(to_broker.read(&mut [0; 8]).unwrap(), 0);
        assert!(to_broker.write_all(b"x").is_err());
        to_other.write_all(b"x").unwrap();
        assert_eq!(accepted_other.read(&mut [0; 8]).unwrap(), 1);
    }
}
