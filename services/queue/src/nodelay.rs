//! rskafka 0.6 writes each request as two writes (the 4-byte length, then the body) on sockets
//! without `TCP_NODELAY`. With Nagle's algorithm on, a mid-sized body then waits for the
//! broker's delayed ACK — about 40 ms per request (measured: 100,000 records in batches of
//! 1,000 took 4.4 s against 0.044 s with `TCP_NODELAY`). rskafka offers no hook to set the
//! option, so this sets it from outside on this process's own sockets connected to the brokers,
//! through safe duplicates of their descriptors (`pidfd_getfd`); see the `produce` benchmark.

use std::net::SocketAddr;

/// Sets `TCP_NODELAY` on every socket of this process connected to one of `peers`; returns how
/// many it changed. Does nothing where the kernel does not allow it.
#[cfg(target_os = "linux")]
pub fn force(peers: &[SocketAddr]) -> usize {
    use rustix::{
        net::{getpeername, sockopt},
        process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open},
    };
    let Ok(pidfd) = pidfd_open(getpid(), PidfdFlags::empty()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut changed = 0;
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
        if peer.is_some_and(|p| peers.contains(&p))
            && sockopt::tcp_nodelay(&dup).is_ok_and(|on| !on)
            && sockopt::set_tcp_nodelay(&dup, true).is_ok()
        {
            changed += 1;
        }
    }
    changed
}

/// Not available off Linux.
#[cfg(not(target_os = "linux"))]
pub fn force(_peers: &[SocketAddr]) -> usize {
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
}
