//! No secret or token in any log line.

use super::*;

/// Captured log output.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_reaches_the_logs() {
    // Everything at debug, our own crates at trace: far more than production logs.
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "debug,sipmba_sso=trace,sipmba_auth=trace,sipmba_runtime=trace,sipmba_objects=trace",
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let p = start(Backend::Sqlite).await;
    let password = "a very secret password";
    p.sso.register("logged-user", password).await.unwrap();
    let _ = p.login("logged-user", "a wrong password attempt").await;
    let login = p.login("logged-user", password).await.unwrap();
    let refreshed = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(login.refresh_token().unwrap())
        .request_async(&http)
        .await
        .unwrap();
    // Reuse of the rotated token (logged as a warning) and revocation of the new one.
    let _ = p
        .client("sipmba-cli", None)
        .exchange_refresh_token(login.refresh_token().unwrap())
        .request_async(&http)
        .await;
    let access = refreshed.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &access,
            pb::CreateThingRequest {
                name: "logged-thing".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await;
    // The family was revoked by the reuse: this call fails, and says so in the logs.
    assert!(thing.is_err());
    let fresh = p.login("logged-user", password).await.unwrap();
    let fresh_access = fresh.access_token().secret().clone();
    let thing = pb::thing_service_client::ThingServiceClient::new(p.channel.clone())
        .create_thing(with_token(
            &fresh_access,
            pb::CreateThingRequest {
                name: "logged-thing".into(),
                owner: None,
                labels: Default::default(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let principal = p.sso.verifier().verify(&fresh_access).await.unwrap();
    let thing_id = Uuid::parse_str(&thing.id.unwrap().value).unwrap();
    let (client_id, client_secret) = p
        .sso
        .issue_thing_secret(&principal, thing_id)
        .await
        .unwrap();
    let thing_token = p
        .client(&client_id, Some(&client_secret))
        .exchange_client_credentials()
        .request_async(&http)
        .await
        .unwrap();
    reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", p.base))
        .form(&[("token", fresh.refresh_token().unwrap().secret().as_str())])
        .send()
        .await
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("password login") && logs.contains("refresh token reused"),
        "the run was logged:\n{logs}"
    );
    let secrets = [
        password.to_string(),
        "a wrong password attempt".to_string(),
        login.access_token().secret().clone(),
        login.refresh_token().unwrap().secret().clone(),
        access,
        refreshed.refresh_token().unwrap().secret().clone(),
        fresh_access,
        fresh.refresh_token().unwrap().secret().clone(),
        client_secret,
        thing_token.access_token().secret().clone(),
    ];
    for secret in &secrets {
        // Any sizeable piece of a token would be a leak, not only the whole of it.
        let head = &secret[..secret.len().min(24)];
        let tail = &secret[secret.len().saturating_sub(24)..];
        for probe in [head, tail] {
            assert!(!logs.contains(probe), "a secret reached the logs: {probe}");
        }
    }
}
