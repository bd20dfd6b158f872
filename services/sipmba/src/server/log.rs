//! The log: connecting to the brokers with the TLS and SASL the configuration names.

use std::path::Path;

use sipmba_runtime::{Config, Shutdown};

use super::Failure;

/// Connects to the log, retrying while the brokers are unreachable.
pub(super) async fn connect_queue(
    config: &Config,
    shutdown: &Shutdown,
) -> Result<sipmba_queue::Queue, Failure> {
    let security = queue_security(&config.queue)?;
    let connect = || {
        sipmba_queue::Queue::connect_secure(
            &config.queue.brokers,
            &config.queue.topic_prefix,
            security.clone(),
        )
    };
    // Unreachable brokers are waited for; refused credentials stop the start.
    let refused = |e: &sipmba_queue::QueueError| matches!(e, sipmba_queue::QueueError::Refused(_));
    let queue = sipmba_runtime::retry::until_ok_unless(
        "cannot reach the brokers yet",
        shutdown,
        connect,
        refused,
    )
    .await
    .map_err(|e| Failure::Usage(format!("queue: {e}")))?
    .ok_or_else(|| Failure::Runtime(anyhow::anyhow!("stopped before the brokers answered")))?;
    use sipmba_queue::topics;
    let q = &config.queue;
    Ok(queue.with_replicas(q.replication_factor).with_retention(&[
        (topics::TELEMETRY, q.telemetry_retention),
        (topics::COMMANDS, q.command_retention),
        (topics::COMMAND_EVENTS, q.command_retention),
        (topics::REVOCATIONS, q.revocation_retention),
    ]))
}

/// TLS and SASL towards the brokers, from the files `[queue.tls]` and `[queue.sasl]` name; a
/// file that does not hold what it should stops the start, naming the setting.
fn queue_security(
    q: &sipmba_runtime::config::QueueSettings,
) -> Result<sipmba_queue::Security, Failure> {
    let read = |setting: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("{setting}: cannot read {}: {e}", path.display())))
    };
    let tls = match &q.tls {
        None => None,
        Some(tls) => {
            let ca = read("queue.tls.ca_file", &tls.ca_file)?;
            let client = match &tls.client {
                None => None,
                Some((cert, key)) => Some((
                    read("queue.tls.cert_file", cert)?,
                    read("queue.tls.key_file", key)?,
                )),
            };
            let client = client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
            Some(
                sipmba_queue::Security::tls_config(&ca, client)
                    .map_err(|e| Failure::Usage(format!("queue.tls: {e}")))?,
            )
        }
    };
    let sasl = match &q.sasl {
        None => None,
        Some(sasl) => {
            let password =
                String::from_utf8(read("queue.sasl.password_file", &sasl.password_file)?).map_err(
                    |_| {
                        Failure::Usage("queue.sasl.password_file: the password is not UTF-8".into())
                    },
                )?;
            let password = password.trim_end_matches(['\n', '\r']).to_owned();
            if password.is_empty() {
                return Err(Failure::Usage(format!(
                    "queue.sasl.password_file: {} is empty",
                    sasl.password_file.display()
                )));
            }
            Some(sipmba_queue::Sasl {
                mechanism: sasl
                    .mechanism
                    .parse()
                    .map_err(|e| Failure::Usage(format!("queue.sasl.mechanism: {e}")))?,
                username: sasl.username.clone(),
                password,
            })
        }
    };
    Ok(sipmba_queue::Security { tls, sasl })
}
