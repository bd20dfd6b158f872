//! The three paths a reading takes in the comparison: through Collect (gRPC, acknowledged once
//! the log committed it), straight to the log, and through an MQTT broker (Mosquitto).

use super::*;

/// (a): readings through a Collect session; the session goes through a counting proxy when
/// `proxy` is set.
pub(super) async fn through_collect(
    p: &Platform,
    args: &Args,
    n: u64,
    rate: Option<u64>,
    proxy: bool,
) -> Run {
    let channel = if proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = CountingProxy::start(listener, p.collect_addr.clone()).await;
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", proxy.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (channel, Some(proxy))
    } else {
        (p.channel.clone(), None)
    };
    let (channel, proxy) = channel;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = session_request::Frame::Hello(session_request::Hello::default());
    tx.send(pb::SessionRequest { frame: Some(hello) })
        .await
        .unwrap();
    let mut inbound = CollectServiceClient::new(channel)
        .session(with_token(&p.token, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let welcome = inbound.message().await.unwrap().unwrap();
    let base = match welcome.frame {
        Some(session_response::Frame::Welcome(w)) => w.acked_seq,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert_eq!(base, 0, "each run uses a fresh thing");
    // The clock starts when the device starts sending, as for the other rows.
    let start = Instant::now();
    let schedule = rate.map(|r| (start, r));
    let wait = if rate.is_some() {
        Duration::from_millis(5)
    } else {
        Duration::from_millis(50)
    };
    let consumer = tokio::spawn(consume(
        p.queue.clone(),
        TELEMETRY_TOPIC,
        Tally::new(n, schedule),
        wait,
        Duration::from_secs(30),
    ));
    let mut source = batches(n, args.batch, rate, start);
    let sender = tokio::spawn(async move {
        while let Some(indexes) = source.recv().await {
            let readings = indexes.into_iter().map(reading).collect();
            let frame =
                session_request::Frame::Telemetry(session_request::TelemetryBatch { readings });
            tx.send(pb::SessionRequest { frame: Some(frame) })
                .await
                .unwrap();
        }
        tx
    });
    let committed = loop {
        match inbound.message().await.unwrap().unwrap().frame {
            Some(session_response::Frame::Ack(a)) if a.acked_seq >= n => break start.elapsed(),
            Some(session_response::Frame::Ack(_)) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    };
    let tx = sender.await.unwrap();
    let goodbye = session_request::Frame::Goodbye(session_request::Goodbye {});
    let _ = tx
        .send(pb::SessionRequest {
            frame: Some(goodbye),
        })
        .await;
    drop(tx);
    while let Ok(Some(_)) = inbound.message().await {}
    let tally = consumer.await.unwrap();
    let consumed = tally.done_at.map_or(start.elapsed(), |t| t - start);
    Run {
        committed: Some(committed),
        consumed,
        tally,
        wire_bytes: proxy.map_or(0, |p| p.bytes()),
    }
}

/// (b): the same records produced and fetched with rskafka, no service in between, on `broker`
/// (topics of the run's own) — or, to count the bytes, on a broker of `log`'s kind of its own that
/// advertises a counting proxy.
pub(super) async fn through_log(
    broker: &TestBroker,
    log: Log,
    nodelay: bool,
    args: &Args,
    n: u64,
    rate: Option<u64>,
    proxy: bool,
) -> Run {
    // With a proxy, the broker advertises it, so every connection of the producer goes through.
    let (own, counter) = if proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = listener.local_addr().unwrap().to_string();
        let own = log.start(Some(proxy_addr)).await.unwrap();
        let counter = CountingProxy::start(listener, own.addr.clone()).await;
        (Some(own), Some(counter))
    } else {
        (None, None)
    };
    let broker = own.as_ref().unwrap_or(broker);
    let bootstrap = counter
        .as_ref()
        .map_or_else(|| broker.addr.clone(), |c| c.addr.clone());
    let prefix = format!("{}{}.", broker.prefix, Uuid::new_v4().simple());
    let queue = Queue::connect_with(&[bootstrap], &prefix, nodelay, Default::default())
        .await
        .unwrap();
    const RAW: &str = "raw";
    queue.ensure_topic(RAW, 1).await.unwrap();
    let partition = queue.partition(RAW, 0).await.unwrap();
    let start = Instant::now();
    let schedule = rate.map(|r| (start, r));
    // The reader of the log-alone row talks to the broker directly when the producer's bytes
    // are being counted.
    let consumer = if proxy {
        None
    } else {
        let wait = if rate.is_some() {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(50)
        };
        Some(tokio::spawn(consume(
            queue.clone(),
            RAW,
            Tally::new(n, schedule),
            wait,
            Duration::from_secs(30),
        )))
    };
    let thing = Uuid::new_v4().to_string();
    let mut source = batches(n, args.batch, rate, start);
    while let Some(indexes) = source.recv().await {
        let records = indexes
            .into_iter()
            .map(|i| {
                let value = pb::TelemetryRecord {
                    thing: Some(pb::ThingId {
                        value: thing.clone(),
                    }),
                    reading: Some(reading(i)),
                    received_time: Some(sipmba_runtime::ids::timestamp_from_ms(
                        sipmba_runtime::ids::now_ms(),
                    )),
                    collect_instance: "table2".into(),
                }
                .encode_to_vec();
                rskafka::record::Record {
                    key: Some(thing.as_bytes().to_vec()),
                    value: Some(value),
                    headers: Default::default(),
                    timestamp: rskafka::chrono::Utc::now(),
                }
            })
            .collect();
        partition
            .produce(
                records,
                rskafka::client::partition::Compression::NoCompression,
            )
            .await
            .unwrap();
    }
    let committed = start.elapsed();
    let wire_bytes = counter.as_ref().map_or(0, CountingProxy::bytes);
    let (tally, consumed) = match consumer {
        Some(c) => {
            let tally = c.await.unwrap();
            let consumed = tally.done_at.map_or(start.elapsed(), |t| t - start);
            (tally, consumed)
        }
        None => (Tally::new(0, None), committed),
    };
    drop(own);
    Run {
        committed: Some(committed),
        consumed,
        tally,
        wire_bytes,
    }
}

/// (c): MQTT through Mosquitto, publisher to subscriber.
pub(super) async fn through_mosquitto(
    qos: rumqttc::QoS,
    args: &Args,
    n: u64,
    rate: Option<u64>,
    proxy: bool,
) -> Run {
    let topic = format!("sipmba-table2/{}", Uuid::new_v4().simple());
    let options = |name: &str, port: u16| {
        let mut o = rumqttc::MqttOptions::new(
            format!("table2-{name}-{}", Uuid::new_v4().simple()),
            "127.0.0.1",
            port,
        );
        o.set_keep_alive(Duration::from_secs(60));
        o.set_inflight(if qos == rumqttc::QoS::ExactlyOnce {
            args.mqtt_inflight_qos2
        } else {
            args.mqtt_inflight
        });
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    };
    // Subscriber first, subscribed before the first publish.
    // The subscriber speaks MQTT 5 and announces the largest receive maximum, so that Mosquitto
    // may keep as many messages in flight towards it as the protocol allows (with 3.1.1 it keeps
    // 20, and drops what overflows its queue of 1,000).
    use rumqttc::v5::{self, mqttbytes::v5::Packet as Packet5};
    let mut sub_options = v5::MqttOptions::new(
        format!("table2-sub-{}", Uuid::new_v4().simple()),
        "127.0.0.1",
        args.mqtt_port,
    );
    sub_options.set_keep_alive(Duration::from_secs(60));
    sub_options.set_receive_maximum(Some(u16::MAX));
    sub_options.set_max_packet_size(Some(1 << 20));
    let (sub, mut sub_events) = v5::AsyncClient::new(sub_options, 10_000);
    let qos5 = match qos {
        rumqttc::QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    };
    sub.subscribe(&topic, qos5).await.unwrap();
    loop {
        if let v5::Event::Incoming(Packet5::SubAck(_)) = sub_events.poll().await.unwrap() {
            break;
        }
    }
    let counter = if proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Some(CountingProxy::start(listener, format!("127.0.0.1:{}", args.mqtt_port)).await)
    } else {
        None
    };
    let port = counter.as_ref().map_or(args.mqtt_port, |c| {
        c.addr.rsplit_once(':').unwrap().1.parse().unwrap()
    });
    let (publisher, mut pub_events) = rumqttc::AsyncClient::new(options("pub", port), 10_000);
    let start = Instant::now();
    let schedule = rate.map(|r| (start, r));
    let receiver = tokio::spawn(async move {
        let mut tally = Tally::new(n, schedule);
        while !tally.complete() {
            match tokio::time::timeout(Duration::from_secs(5), sub_events.poll()).await {
                Ok(Ok(v5::Event::Incoming(Packet5::Publish(p)))) => {
                    let text = std::str::from_utf8(&p.payload).unwrap();
                    let i = text.trim_start_matches("hello ").parse().unwrap();
                    tally.saw(i, Instant::now());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber: {e}"),
                Err(_) => break, // nothing more is coming
            }
        }
        let _ = sub.disconnect().await;
        tally
    });
    // The publisher's event loop must run for anything to go out.
    let acks = tokio::spawn(async move {
        loop {
            match pub_events.poll().await {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut source = batches(n, args.batch, rate, start);
    while let Some(indexes) = source.recv().await {
        for i in indexes {
            publisher
                .publish(&topic, qos, false, payload(i))
                .await
                .unwrap();
        }
    }
    let tally = receiver.await.unwrap();
    let consumed = tally.done_at.map_or(start.elapsed(), |t| t - start);
    let _ = publisher.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    acks.abort();
    Run {
        committed: None,
        consumed,
        tally,
        wire_bytes: counter.as_ref().map_or(0, CountingProxy::bytes),
    }
}
