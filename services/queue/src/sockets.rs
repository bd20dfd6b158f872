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

/// Calls `f` with a duplicate of every socket of this process connected to one of `peers`;
/// returns for how many `f` returned true. Does nothing where the kernel does not allow it.
#[cfg(target_os = "linux")]
fn each_socket_to(peers: &[SocketAddr], mut f: impl FnMut(&rustix::fd::OwnedFd) -> bool) -> usize {
    use rustix::{
        net::getpeername,
        process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open},
    };
    let Ok(pidfd) = pidfd_open(getpid(), PidfdFlags::empty()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut count = 0;
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
        let peer = getpeername(&dup)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if peer.is_some_and(|p| peers.contains(&p)) && f(&dup) {
            count += 1;
        }
    }
    count
}

/// Sets `TCP_NODELAY` on every socket of this process connected to one of `peers`; returns how
/// many it changed.
#[cfg(target_os = "linux")]
pub fn force(peers: &[SocketAddr]) -> usize {
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
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn force(_peers: &[SocketAddr]) -> usize {
    0
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
        assert_eq!(super::force(&[broker.local_addr().unwrap()]), 1);
        assert!(to_broker.nodelay().unwrap());
        assert!(!to_other.nodelay().unwrap());
        assert_eq!(
            super::force(&[broker.local_addr().unwrap()]),
            0,
            "already set"
        );
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
