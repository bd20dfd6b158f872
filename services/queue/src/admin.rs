//! The Kafka admin requests rskafka 0.6 does not offer: CreateTopics *with topic configs*
//! (retention) and the broker's default replication factor, DescribeConfigs, CreatePartitions,
//! and Metadata with partition leaders, in non-flexible versions (CreateTopics v4,
//! DescribeConfigs v1, CreatePartitions v1, Metadata v4) that Kafka 4, Redpanda and tansu accept;
//! over TLS and SASL (SaslHandshake v1, SaslAuthenticate v1) as [`Security`] says.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{
    QueueError,
    security::{Sasl, Security},
};

/// No TLS, no SASL.
static PLAINTEXT: Security = Security {
    tls: None,
    sasl: None,
};

/// A broker (`host:port`) and how to reach it; a bare address means PLAINTEXT.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// `host:port`.
    pub addr: &'a str,
    /// TLS and SASL.
    pub security: &'a Security,
}

impl<'a> From<&'a str> for Target<'a> {
    fn from(addr: &'a str) -> Self {
        Self {
            addr,
            security: &PLAINTEXT,
        }
    }
}

impl<'a> From<&'a String> for Target<'a> {
    fn from(addr: &'a String) -> Self {
        addr.as_str().into()
    }
}

const CREATE_TOPICS: i16 = 19;
const DESCRIBE_CONFIGS: i16 = 32;
/// CreatePartitions: grows a topic.
pub const CREATE_PARTITIONS: i16 = 37;
const API_VERSIONS: i16 = 18;
const METADATA: i16 = 3;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;
/// Kafka's TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;
/// Largest response accepted.
const MAX_RESPONSE: usize = 16 << 20;

fn admin_error(reason: impl Into<String>) -> QueueError {
    QueueError::Admin(reason.into())
}

struct Writer(Vec<u8>);

impl Writer {
    fn i8(&mut self, v: i8) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i16(&mut self, v: i16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn string(&mut self, s: &str) -> Result<(), QueueError> {
        let len = i16::try_from(s.len()).map_err(|_| admin_error("a string is too long"))?;
        self.i16(len);
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn len(&mut self, n: usize) -> Result<(), QueueError> {
        self.i32(i32::try_from(n).map_err(|_| admin_error("an array is too long"))?);
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], QueueError> {
        if self.0.len() < n {
            return Err(admin_error("truncated admin response"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i8(&mut self) -> Result<i8, QueueError> {
        Ok(i8::from_be_bytes([self.take(1)?[0]]))
    }
    fn i16(&mut self) -> Result<i16, QueueError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, QueueError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn nullable_string(&mut self) -> Result<Option<String>, QueueError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let bytes = self.take(usize::try_from(len).unwrap_or(0))?;
        Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
    }
    fn string(&mut self) -> Result<String, QueueError> {
        Ok(self.nullable_string()?.unwrap_or_default())
    }
    fn count(&mut self) -> Result<usize, QueueError> {
        Ok(usize::try_from(self.i32()?.max(0)).unwrap_or(0))
    }
}

/// How long an admin request may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request (`api_key`, `version`, `body`) to `broker` and returns the response body.
async fn call(
    broker: Target<'_>,
    api_key: i16,
    version: i16,
    body: &[u8],
) -> Result<Vec<u8>, QueueError> {
    call_within(broker, api_key, version, body, ADMIN_TIMEOUT).await
}

/// As [`call`], giving up after `timeout` (connecting, TLS and SASL included).
async fn call_within(
    broker: Target<'_>,
    api_key: i16,
    version: i16,
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, QueueError> {
    let addr = broker.addr;
    let exchange = async {
        let mut stream = connect(broker.security, addr).await?;
        exchange(&mut stream, addr, api_key, version, body, 100).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        admin_error(format!(
            "{addr} did not answer an admin request in {} s",
            timeout.as_secs()
        ))
    })?
}

/// Connects to `broker` (`host:port`): TCP, then TLS and SASL as `security` says.
async fn connect(security: &Security, broker: &str) -> Result<Box<dyn Stream>, QueueError> {
    let fail = |what: String| QueueError::Admin(format!("{broker}: {what}"));
    let tcp = tokio::net::TcpStream::connect(broker)
        .await
        .map_err(|e| QueueError::Admin(format!("cannot reach {broker}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut stream: Box<dyn Stream> = match &security.tls {
        None => Box::new(tcp),
        Some(config) => {
            let host = broker.rsplit_once(':').map_or(broker, |(host, _)| host);
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| fail(format!("not a TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    QueueError::Refused(format!(
                        "{broker}: TLS handshake failed: {e} (is queue.tls.ca_file the CA \
                         that signed the brokers' certificates?)"
                    ))
                })?;
            Box::new(tls)
        }
    };
    if let Some(sasl) = &security.sasl {
        authenticate(&mut stream, broker, sasl).await?;
    }
    Ok(stream)
}

/// A connection to a broker, plain or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One request and its response on `stream`; returns the response body.
async fn exchange(
    stream: &mut Box<dyn Stream>,
    broker: &str,
    api_key: i16,
    version: i16,
    body: &[u8],
    correlation: i32,
) -> Result<Vec<u8>, QueueError> {
    let mut header = Writer(Vec::with_capacity(body.len() + 32));
    header.i16(api_key);
    header.i16(version);
    header.i32(correlation);
    header.string("sipmba")?;
    header.0.extend_from_slice(body);
    let mut frame = Writer(Vec::with_capacity(header.0.len() + 4));
    frame.len(header.0.len())?;
    frame.0.extend_from_slice(&header.0);
    stream
        .write_all(&frame.0)
        .await
        .map_err(|e| admin_error(format!("{broker}: {e}")))?;
    stream
        .flush()
        .await
        .map_err(|e| admin_error(format!("{broker}: {e}")))?;
    let size = stream
        .read_i32()
        .await
        .map_err(|e| admin_error(format!("{broker} closed the connection: {e}")))?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| (4..=MAX_RESPONSE).contains(s))
        .ok_or_else(|| admin_error(format!("{broker} sent a response of {size} bytes")))?;
    let mut response = vec![0; size];
    stream
        .read_exact(&mut response)
        .await
        .map_err(|e| admin_error(format!("{broker}: {e}")))?;
    // The correlation id, then the body.
    Ok(response.split_off(4))
}

/// SASL on a fresh connection: SaslHandshake v1 for the mechanism, then SaslAuthenticate v1
/// rounds stepped by rsasl until the mechanism is done.
async fn authenticate(
    stream: &mut Box<dyn Stream>,
    broker: &str,
    sasl: &Sasl,
) -> Result<(), QueueError> {
    use rsasl::prelude::{Mechname, SASLClient, SASLConfig};
    let mechanism = sasl.mechanism.name();
    let mut w = Writer(Vec::new());
    w.string(mechanism)?;
    let response = exchange(stream, broker, SASL_HANDSHAKE, 1, &w.0, 1).await?;
    let mut r = Reader(&response);
    let code = r.i16()?;
    let offered = (0..r.count()?)
        .map(|_| r.string())
        .collect::<Result<Vec<_>, _>>()?;
    if code != 0 {
        return Err(QueueError::Refused(format!(
            "{broker} does not accept SASL {mechanism} (error {code}); it offers: {}",
            offered.join(", ")
        )));
    }
    let config = SASLConfig::with_credentials(None, sasl.username.clone(), sasl.password.clone())
        .map_err(|e| admin_error(format!("SASL: {e}")))?;
    let name = Mechname::parse(mechanism.as_bytes()).map_err(|e| admin_error(e.to_string()))?;
    let mut session = SASLClient::new(config)
        .start_suggested(&[name])
        .map_err(|e| admin_error(format!("SASL {mechanism}: {e}")))?;
    let mut received: Option<Vec<u8>> = None;
    let mut correlation = 2;
    loop {
        let mut out = Vec::new();
        let state = session.step(received.as_deref(), &mut out).map_err(|e| {
            admin_error(format!(
                "SASL {mechanism} with {broker} as {}: {e}",
                sasl.username
            ))
        })?;
        if state.has_sent_message() {
            let mut w = Writer(Vec::new());
            w.len(out.len())?;
            w.0.extend_from_slice(&out);
            let response =
                exchange(stream, broker, SASL_AUTHENTICATE, 1, &w.0, correlation).await?;
            correlation += 1;
            let mut r = Reader(&response);
            let code = r.i16()?;
            let message = r.nullable_string()?;
            let len = usize::try_from(r.i32()?.max(0)).unwrap_or(0);
            let bytes = r.take(len)?.to_vec();
            if code != 0 {
                return Err(QueueError::Refused(format!(
                    "{broker} refused SASL {mechanism} authentication as {}: {}",
                    sasl.username,
                    message.unwrap_or_else(|| format!("error {code}"))
                )));
            }
            received = Some(bytes);
        }
        if state.is_finished() {
            return Ok(());
        }
    }
}

/// Creates `topic` with `partitions` partitions, `replicas` copies of each (`None`: the broker's
/// `default.replication.factor`) and the given topic configs (e.g. `retention.ms`), unless it
/// exists. An existing topic keeps its settings.
pub async fn create_topic<'a>(
    broker: impl Into<Target<'a>>,
    topic: &str,
    partitions: i32,
    replicas: Option<i16>,
    configs: &[(&str, String)],
) -> Result<(), QueueError> {
    let mut w = Writer(Vec::new());
    w.len(1)?;
    w.string(topic)?;
    w.i32(partitions);
    w.i16(replicas.unwrap_or(-1)); // -1: the broker's default (v4 and later)
    w.len(0)?; // no manual assignment
    w.len(configs.len())?;
    for (name, value) in configs {
        w.string(name)?;
        w.string(value)?;
    }
    w.i32(5_000); // timeout ms
    w.i8(0); // validate only: no
    let response = call(broker.into(), CREATE_TOPICS, 4, &w.0).await?;
    topic_results(&response, "creating topic", &[TOPIC_ALREADY_EXISTS])
}

/// Reads the per-topic results of CreateTopics v4 or CreatePartitions v1 (throttle, then
/// `[name, error code, error message]`): the first error not in `fine`.
fn topic_results(response: &[u8], what: &str, fine: &[i16]) -> Result<(), QueueError> {
    let mut r = Reader(response);
    let _throttle = r.i32()?;
    for _ in 0..r.count()? {
        let name = r.string()?;
        let code = r.i16()?;
        let message = r.nullable_string()?;
        if code != 0 && !fine.contains(&code) {
            return Err(admin_error(format!(
                "{what} {name}: error {code}{}",
                message.map(|m| format!(" ({m})")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The configs of `topic` as the broker reports them (name, value).
pub async fn describe_topic<'a>(
    broker: impl Into<Target<'a>>,
    topic: &str,
) -> Result<Vec<(String, String)>, QueueError> {
    let mut w = Writer(Vec::new());
    w.len(1)?;
    w.i8(2); // resource type: topic
    w.string(topic)?;
    w.i32(-1); // every config
    w.i8(0); // no synonyms
    let response = call(broker.into(), DESCRIBE_CONFIGS, 1, &w.0).await?;
    let mut r = Reader(&response);
    let _throttle = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..r.count()? {
        let code = r.i16()?;
        let message = r.nullable_string()?;
        let _kind = r.i8()?;
        let name = r.string()?;
        if code != 0 {
            return Err(admin_error(format!(
                "describing topic {name}: error {code}{}",
                message.map(|m| format!(" ({m})")).unwrap_or_default()
            )));
        }
        for _ in 0..r.count()? {
            let key = r.string()?;
            let value = r.nullable_string()?;
            let _read_only = r.i8()?;
            let _source = r.i8()?;
            let _sensitive = r.i8()?;
            for _ in 0..r.count()? {
                let (_name, _value, _source) = (r.string()?, r.nullable_string()?, r.i8()?);
            }
            out.push((key, value.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// Grows `topic` to `count` partitions (CreatePartitions v1). Kafka refuses a count that is not
/// larger than the current one (INVALID_PARTITIONS), which this reports as an error.
pub async fn create_partitions<'a>(
    broker: impl Into<Target<'a>>,
    topic: &str,
    count: i32,
) -> Result<(), QueueError> {
    let mut w = Writer(Vec::new());
    w.len(1)?;
    w.string(topic)?;
    w.i32(count);
    w.i32(-1); // assignments: null, the broker places them
    w.i32(5_000); // timeout ms
    w.i8(0); // validate only: no
    let response = call(broker.into(), CREATE_PARTITIONS, 1, &w.0).await?;
    topic_results(
        &response,
        &format!("growing to {count} partitions topic"),
        &[],
    )
}

/// Whether `broker` answers an ApiVersions request within `timeout`.
pub async fn probe<'a>(broker: impl Into<Target<'a>>, timeout: Duration) -> bool {
    call_within(broker.into(), API_VERSIONS, 0, &[], timeout)
        .await
        .is_ok()
}

/// A connection to one broker kept open for repeated requests — the log watcher's probes, every
/// second — so that they cost one TCP connect, TLS handshake and SASL exchange for as long as the
/// broker answers, not one each, and open no connection while it does ([`crate::sockets`] looks
/// for the brokers' sockets only after a new one was opened). A request that fails or times out
/// drops the connection; the next one connects again.
pub struct Kept {
    addr: String,
    stream: Option<Box<dyn Stream>>,
    correlation: i32,
}

impl Kept {
    /// No connection yet to `addr` (`host:port`): the first request opens it.
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            stream: None,
            correlation: 0,
        }
    }

    /// The broker, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the broker answers (ApiVersions) within `timeout`, connecting first if needed.
    pub async fn probe(&mut self, security: &Security, timeout: Duration) -> bool {
        self.call_within(security, API_VERSIONS, 0, &[], timeout)
            .await
            .is_ok()
    }

    /// As [`metadata_within`], on this connection.
    pub async fn metadata_within(
        &mut self,
        security: &Security,
        topics: &[&str],
        timeout: Duration,
    ) -> Result<ClusterMetadata, QueueError> {
        let body = metadata_body(topics)?;
        let response = self
            .call_within(security, METADATA, 4, &body.0, timeout)
            .await?;
        parse_metadata(&response)
    }

    async fn call_within(
        &mut self,
        security: &Security,
        api_key: i16,
        version: i16,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, QueueError> {
        let addr = self.addr.clone();
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let stream = &mut self.stream;
        let exchange = async {
            if stream.is_none() {
                *stream = Some(connect(security, &addr).await?);
            }
            match stream.as_mut() {
                Some(open) => exchange(open, &addr, api_key, version, body, correlation).await,
                None => Err(admin_error(format!("{addr}: not connected"))),
            }
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(admin_error(format!(
                    "{addr} did not answer an admin request in {} s",
                    timeout.as_secs()
                )))
            });
        if answer.is_err() {
            // Half a request may be on the wire, or the broker hangs: never reuse it.
            self.stream = None;
        }
        answer
    }
}

/// Connects to `broker` as configured (TLS, SASL) and asks for its API versions: what went
/// wrong, if anything (a refused password, an untrusted certificate, no answer).
pub async fn probe_error<'a>(broker: impl Into<Target<'a>>) -> Result<(), QueueError> {
    call(broker.into(), API_VERSIONS, 0, &[]).await.map(|_| ())
}

/// Whether `broker` offers the request `api_key` (ApiVersions v0).
pub async fn supports<'a>(broker: impl Into<Target<'a>>, api_key: i16) -> Result<bool, QueueError> {
    let response = call(broker.into(), API_VERSIONS, 0, &[]).await?;
    let mut r = Reader(&response);
    let code = r.i16()?;
    if code != 0 {
        return Err(admin_error(format!("ApiVersions: error {code}")));
    }
    for _ in 0..r.count()? {
        let (key, _min, _max) = (r.i16()?, r.i16()?, r.i16()?);
        if key == api_key {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A cluster as one broker sees it (Metadata v4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// The brokers: node id and `host:port`.
    pub brokers: Vec<(i32, String)>,
    /// The active controller's node id (-1: none known).
    pub controller: i32,
    /// The topics asked for.
    pub topics: Vec<TopicMetadata>,
}

/// One topic's partitions (Metadata v4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Full name.
    pub name: String,
    /// Kafka error code (0: none; 3: unknown topic).
    pub error: i16,
    /// Partitions, in the broker's order.
    pub partitions: Vec<PartitionMetadata>,
}

/// Where one partition lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Partition index.
    pub partition: i32,
    /// Kafka error code (0: none; 5: leader not available).
    pub error: i16,
    /// The leader's node id (-1: none).
    pub leader: i32,
    /// Node ids of the replicas.
    pub replicas: Vec<i32>,
    /// Node ids of the in-sync replicas.
    pub in_sync: Vec<i32>,
}

/// The brokers, the controller and the partitions of `topics` as `broker` sees them now.
pub async fn metadata<'a>(
    broker: impl Into<Target<'a>>,
    topics: &[&str],
) -> Result<ClusterMetadata, QueueError> {
    metadata_within(broker, topics, ADMIN_TIMEOUT).await
}

/// As [`metadata`], giving up after `timeout`.
pub async fn metadata_within<'a>(
    broker: impl Into<Target<'a>>,
    topics: &[&str],
    timeout: Duration,
) -> Result<ClusterMetadata, QueueError> {
    metadata_request(broker, metadata_body(topics)?, timeout).await
}

/// The body of a Metadata v4 request for `topics`.
fn metadata_body(topics: &[&str]) -> Result<Writer, QueueError> {
    let mut w = Writer(Vec::new());
    w.len(topics.len())?;
    for topic in topics {
        w.string(topic)?;
    }
    w.i8(0); // allow auto topic creation: no
    Ok(w)
}

/// The brokers, the controller and every topic's partitions as `broker` sees them now.
pub async fn metadata_of_all<'a>(
    broker: impl Into<Target<'a>>,
) -> Result<ClusterMetadata, QueueError> {
    let mut w = Writer(Vec::new());
    w.i32(-1); // a null array: every topic
    w.i8(0); // allow auto topic creation: no
    metadata_request(broker, w, ADMIN_TIMEOUT).await
}

async fn metadata_request<'a>(
    broker: impl Into<Target<'a>>,
    w: Writer,
    timeout: Duration,
) -> Result<ClusterMetadata, QueueError> {
    let response = call_within(broker.into(), METADATA, 4, &w.0, timeout).await?;
    parse_metadata(&response)
}

/// A Metadata v4 response.
fn parse_metadata(response: &[u8]) -> Result<ClusterMetadata, QueueError> {
    let mut r = Reader(response);
    let _throttle = r.i32()?;
    let mut brokers = Vec::new();
    for _ in 0..r.count()? {
        let (id, host, port, _rack) = (r.i32()?, r.string()?, r.i32()?, r.nullable_string()?);
        brokers.push((id, format!("{host}:{port}")));
    }
    let _cluster = r.nullable_string()?;
    let controller = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..r.count()? {
        let error = r.i16()?;
        let name = r.string()?;
        let _internal = r.i8()?;
        let mut partitions = Vec::new();
        for _ in 0..r.count()? {
            let (error, partition, leader) = (r.i16()?, r.i32()?, r.i32()?);
            let replicas = (0..r.count()?).map(|_| r.i32()).collect::<Result<_, _>>()?;
            let in_sync = (0..r.count()?).map(|_| r.i32()).collect::<Result<_, _>>()?;
            partitions.push(PartitionMetadata {
                partition,
                error,
                leader,
                replicas,
                in_sync,
            });
        }
        out.push(TopicMetadata {
            name,
            error,
            partitions,
        });
    }
    Ok(ClusterMetadata {
        brokers,
        controller,
        topics: out,
    })
}
