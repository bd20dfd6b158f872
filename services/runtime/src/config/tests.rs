use super::*;
use serde::Deserialize;

/// A file of the shared sections only, as the tests write them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    auth: AuthSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    queue: QueueSection,
}

fn from_toml(text: &str, args: &ConfigArgs, defaults: &Defaults) -> Result<Config, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError::new("<file>", e.to_string()))?;
    Config::resolve(
        Sections {
            server: file.server,
            database: file.database,
            auth: file.auth,
            log: file.log,
            queue: file.queue,
        },
        args,
        defaults,
    )
}

fn prod() -> Defaults {
    Defaults::default()
}

const MINIMAL: &str = r#"
    [server]
    plaintext = true
    [database]
    url = "sqlite::memory:"
    [auth]
    jwks_url = "http://127.0.0.1:7400/.well-known/jwks.json"
"#;

#[test]
fn flags_override_the_file() {
    let args = ConfigArgs {
        listen: Some("127.0.0.1:9999".into()),
        ..Default::default()
    };
    let config = from_toml(MINIMAL, &args, &prod()).unwrap();
    assert_eq!(config.listen.port(), 9999);
    assert_eq!(config.tls, None);
    assert_eq!(config.auth.audience, "sipmba");
}

#[test]
fn tls_is_required_unless_plaintext_is_asked_for() {
    let text = MINIMAL.replace("plaintext = true", "");
    let err = from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
    assert_eq!(err.setting, "server.tls_cert");
    assert!(err.to_string().contains("plaintext = true"), "{err}");
    let dev = Defaults {
        plaintext: true,
        ..Default::default()
    };
    assert!(from_toml(&text, &ConfigArgs::default(), &dev).is_ok());
}

#[test]
fn errors_name_the_setting_and_the_way_to_set_it() {
    let args = ConfigArgs {
        listen: Some("localhost".into()),
        ..Default::default()
    };
    let err = from_toml(MINIMAL, &args, &prod()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("server.listen") && text.contains("SIPMBA_LISTEN"),
        "{text}"
    );

    let args = ConfigArgs {
        leeway_secs: Some(3600),
        ..Default::default()
    };
    let err = from_toml(MINIMAL, &args, &prod()).unwrap_err();
    assert_eq!(err.setting, "auth.leeway_secs");

    let err = from_toml("[server]\nlisten_on = 1", &ConfigArgs::default(), &prod()).unwrap_err();
    assert!(err.to_string().contains("listen_on"), "{err}");

    let text = MINIMAL.replace("sqlite::memory:", "mysql://x");
    let err = from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
    assert_eq!(err.setting, "database.url");

    let args = ConfigArgs {
        tls_cert: Some("/nonexistent.pem".into()),
        ..Default::default()
    };
    let err = from_toml(MINIMAL, &args, &prod()).unwrap_err();
    assert_eq!(err.setting, "server.tls_key");
}

#[test]
fn an_external_log_takes_tls_and_sasl_and_refuses_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, "x").unwrap();
        path.display().to_string()
    };
    let (ca, cert, key, password) = (
        file("ca.crt"),
        file("tls.crt"),
        file("tls.key"),
        file("password"),
    );
    let text = format!(
        "{MINIMAL}\n[queue]\nbrokers = [\"kafka-0:9093\"]\nreplication_factor = 3\n\
         [queue.tls]\nca_file = \"{ca}\"\ncert_file = \"{cert}\"\nkey_file = \"{key}\"\n\
         [queue.sasl]\nmechanism = \"scram-sha-512\"\nusername = \"sipmba\"\n\
         password_file = \"{password}\"\n"
    );
    let config = from_toml(&text, &ConfigArgs::default(), &prod()).unwrap();
    let queue = &config.queue;
    assert_eq!(queue.replication_factor, Some(3));
    assert_eq!(
        queue.tls,
        Some(QueueTls {
            ca_file: ca.clone().into(),
            client: Some((cert.into(), key.into())),
        })
    );
    let sasl = queue.sasl.as_ref().unwrap();
    assert_eq!(sasl.mechanism, "SCRAM-SHA-512");

    let refused = |text: String| from_toml(&text, &ConfigArgs::default(), &prod()).unwrap_err();
    let sasl = |mechanism: &str| {
        format!(
            "[queue.sasl]\nmechanism = \"{mechanism}\"\nusername = \"sipmba\"\n\
             password_file = \"{password}\"\n"
        )
    };
    let err = refused(format!("{MINIMAL}\n[queue]\n{}", sasl("PLAIN")));
    assert_eq!(err.setting, "queue.sasl.mechanism");
    assert!(err.to_string().contains("in the clear"), "{err}");
    let err = refused(format!("{MINIMAL}\n[queue]\n{}", sasl("GSSAPI")));
    assert_eq!(err.setting, "queue.sasl.mechanism");
    assert!(err.to_string().contains("SCRAM-SHA-512"), "{err}");
    let err = refused(format!(
        "{MINIMAL}\n[queue.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"sipmba\"\n\
         password_file = \"/nonexistent\"\n"
    ));
    assert_eq!(err.setting, "queue.sasl.password_file");
    let err = refused(format!("{MINIMAL}\n[queue.tls]\ncert_file = \"{ca}\"\n"));
    assert_eq!(err.setting, "queue.tls.ca_file");
    let err = refused(format!(
        "{MINIMAL}\n[queue.tls]\nca_file = \"{ca}\"\ncert_file = \"{ca}\"\n"
    ));
    assert_eq!(err.setting, "queue.tls.key_file");
    let err = refused(format!("{MINIMAL}\n[queue]\nreplication_factor = 0\n"));
    assert_eq!(err.setting, "queue.replication_factor");
    let err = refused(format!("{MINIMAL}\n[queue.tls]\nca = \"{ca}\"\n"));
    assert!(err.to_string().contains("ca"), "{err}");
}
