//! `sipmba server --dev` and its embedded broker, as processes: the broker dies with the server
//! however the server is stopped, a stale broker of the same data directory is replaced, a
//! stranger on the broker's port gets a refusal that names it, and a broker that dies under a
//! running server comes back while health says NOT_SERVING meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use std::time::{Duration, Instant};

use common::{free_port, health, wait_for_health};
use tokio::process::Command;
use tonic_health::pb::health_check_response::ServingStatus;

const COLLECT: &str = "sipmba.v1.CollectService";
const OBJECTS: &str = "sipmba.v1.UserService";

/// The pids of the processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// The broker of a `--dev` server listening on `port`.
fn broker_of(port: u16) -> Vec<i32> {
    processes_with(&format!(
        "tansu broker --listener-url tcp://127.0.0.1:{}",
        port + 1
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dev_server_leaves_no_broker_and_the_next_start_has_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = common::dev(dir.path(), port, &[]);
    let channel = server.channel().await;
    wait_for_health(&channel, COLLECT, ServingStatus::Serving).await;
    let brokers = broker_of(port);
    assert_eq!(brokers.len(), 1, "one broker runs: {brokers:?}");

    server.signal(sipmba_testkit::Signal::KILL);
    server.wait(Duration::from_secs(10)).await.unwrap();
    sipmba_testkit::eventually(
        "the broker dies with the server",
        Duration::from_secs(5),
        async || broker_of(port).is_empty(),
    )
    .await;

    // The next start on the same data directory has a working log.
    let server = common::dev(dir.path(), port, &[]);
    let channel = server.channel().await;
    wait_for_health(&channel, COLLECT, ServingStatus::Serving).await;
    wait_for_health(&channel, "", ServingStatus::Serving).await;
    common::stop_dev(server).await;
    sipmba_testkit::eventually(
        "the broker stops with the server",
        Duration::from_secs(5),
        async || broker_of(port).is_empty(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_broker_of_the_same_data_directory_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A broker as an older `--dev` left it: in <data-dir>/broker, not tied to any server.
    let broker_dir = dir.path().join(".sipmba/broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let url = format!("tcp://127.0.0.1:{}", port + 1);
    let mut stale = Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(&broker_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tansu is installed (.ci/setup tansu)");
    let stale_pid = i32::try_from(stale.id().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port + 1))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the stale broker listens");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let server = common::dev(dir.path(), port, &[]);
    let channel = server.channel().await;
    wait_for_health(&channel, COLLECT, ServingStatus::Serving).await;
    tokio::time::timeout(Duration::from_secs(10), stale.wait())
        .await
        .expect("the stale broker was stopped")
        .unwrap();
    let now = broker_of(port);
    assert_eq!(now.len(), 1, "one broker runs: {now:?}");
    assert_ne!(
        now[0], stale_pid,
        "a broker of the server's own replaced it"
    );
    common::stop_dev(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_on_the_broker_port_is_named_and_dev_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _stranger = std::net::TcpListener::bind(("127.0.0.1", port + 1)).unwrap();
    let out = Command::new(common::BIN)
        .args(["server", "--dev", "--listen", &listen])
        .current_dir(dir.path())
        .env_remove("SIPMBA_CONFIG")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("--dev refuses promptly")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let me = std::process::id();
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", port + 1))
            && stderr.contains(&format!("is taken by process {me} ("))
            && stderr.contains("--listen"),
        "{stderr}"
    );
    assert!(
        broker_of(port).is_empty(),
        "no broker started beside the stranger"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_under_dev_comes_back_and_collect_is_not_serving_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = common::dev(dir.path(), port, &[]);
    let channel = server.channel().await;
    wait_for_health(&channel, COLLECT, ServingStatus::Serving).await;
    wait_for_health(&channel, "", ServingStatus::Serving).await;
    let first = broker_of(port);
    assert_eq!(first.len(), 1, "one broker runs: {first:?}");

    sipmba_testkit::signal(first[0].unsigned_abs(), sipmba_testkit::Signal::KILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen_down = false;
    while Instant::now() < deadline {
        if health(&channel, COLLECT).await == ServingStatus::NotServing {
            seen_down = true;
            // The services that do not write to the log keep serving.
            assert_eq!(health(&channel, OBJECTS).await, ServingStatus::Serving);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen_down,
        "collect reported NOT_SERVING while the broker was down"
    );
    wait_for_health(&channel, COLLECT, ServingStatus::Serving).await;
    let second = broker_of(port);
    assert_eq!(second.len(), 1, "one broker runs again: {second:?}");
    assert_ne!(second, first, "a new broker process");
    common::stop_dev(server).await;
}
