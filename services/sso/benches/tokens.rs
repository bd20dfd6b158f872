//! Token throughput: access tokens verified per second per core by the shared verifier (next to
//! the RFC 7662 introspection round trip a service would otherwise make per request), and tokens
//! issued per second by the password grant (argon2id, parameters printed) and by
//! client_credentials.
//!
//! Run: `cargo bench -p sipmba-sso --bench tokens` (SQLite; nothing else needed).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::time::{Duration, Instant};

use sipmba_auth::{JwksSource, Kind, Revocations, Verifier, VerifierConfig, scopes};
use sipmba_runtime::{Server, Shutdown};
use sipmba_sso::{Sso, SsoConfig};
use sipmba_testkit::{TestDb, TestIssuer};
use uuid::Uuid;

fn rate(n: usize, elapsed: Duration) -> String {
    format!("{:.0}/s", n as f64 / elapsed.as_secs_f64())
}

fn main() {
    // Local verification on one core: a current-thread runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let issuer = TestIssuer::new();
        let verifier = Verifier::new(
            VerifierConfig::new(JwksSource::Static(issuer.key.jwks()), &issuer.issuer, &issuer.audience),
            Revocations::default(),
        )
        .unwrap();
        // Many distinct tokens, and a revocation list with 10,000 entries to consult.
        let tokens: Vec<String> = (0..1000)
            .map(|_| issuer.sign(&issuer.claims(Kind::User, Uuid::new_v4(), scopes::USER_SCOPES)))
            .collect();
        for _ in 0..10_000 {
            verifier.revocations().revoke_token(Uuid::new_v4().to_string(), i64::MAX / 2, 0);
        }
        for t in &tokens {
            verifier.verify(t).await.unwrap();
        }
        let n = 100_000;
        let started = Instant::now();
        for i in 0..n {
            verifier.verify(&tokens[i % tokens.len()]).await.unwrap();
        }
        println!(
            "shared verifier, one core: {n} EdDSA access tokens verified in {:.2} s = {} ({:.1} µs each)",
            started.elapsed().as_secs_f64(),
            rate(n, started.elapsed()),
            started.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(platform());
}

async fn platform() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = TestDb::sqlite().unwrap();
    let conn = sipmba_runtime::db::connect(&db.url, 5).await.unwrap();
    sipmba_objects::migrate(&conn).await.unwrap();
    sipmba_sso::migrate(&conn).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = SsoConfig::new(&base, "sipmba", &base);
    let cost = config.password_cost;
    let sso = Sso::start(conn.clone(), config, Revocations::default())
        .await
        .unwrap();
    let (_trigger, shutdown) = Shutdown::new();
    let mut server = Server::new();
    sipmba_objects::ObjectsService::new(sipmba_objects::Store::new(conn), shutdown.clone())
        .register(&mut server);
    server.http(sipmba_sso::router(sso.clone()));
    sso.register_grpc(&mut server);
    tokio::spawn(server.run(
        listener,
        None,
        sso.verifier(),
        shutdown,
        Duration::from_secs(1),
    ));
    let http = reqwest::Client::new();
    let token_url = format!("{base}/oauth2/token");

    // Baseline for verification: one RFC 7662 introspection round trip per request.
    let secret = sipmba_sso::secrets::random_secret();
    sso.ensure_service_client(
        "bench",
        &secret,
        Uuid::new_v4(),
        &[scopes::TOKENS_INTROSPECT],
    )
    .await
    .unwrap();
    let service_token = sso
        .issue_service_token(Uuid::new_v4(), &[scopes::TOKENS_INTROSPECT])
        .await
        .unwrap()
        .access_token;
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        let answer: serde_json::Value = http
            .post(format!("{base}/oauth2/introspect"))
            .bearer_auth(&service_token)
            .form(&[("token", service_token.as_str())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["active"], true);
    }
    println!(
        "baseline, introspection over HTTP (loopback, one client): {n} in {:.2} s = {}",
        started.elapsed().as_secs_f64(),
        rate(n, started.elapsed())
    );

    // Issuance: the password grant is argon2id-bound by design.
    sso.register("bench-user", "bench password 123")
        .await
        .unwrap();
    let n = 100;
    let started = Instant::now();
    for _ in 0..n {
        let response = http
            .post(&token_url)
            .form(&[
                ("grant_type", "password"),
                ("username", "bench-user"),
                ("password", "bench password 123"),
            ])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    println!(
        "password grant over HTTP, argon2id m={} KiB t={} p={}: {n} tokens in {:.2} s = {}",
        cost.memory_kib,
        cost.iterations,
        cost.parallelism,
        started.elapsed().as_secs_f64(),
        rate(n, started.elapsed())
    );
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        let response = http
            .post(&token_url)
            .basic_auth("bench", Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }
    println!(
        "client_credentials grant over HTTP (SHA-256 secrets): {n} tokens in {:.2} s = {}",
        started.elapsed().as_secs_f64(),
        rate(n, started.elapsed())
    );
}
