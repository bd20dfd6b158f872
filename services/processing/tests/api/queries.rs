//! Telemetry queries over stored readings, refused beyond the caller's reach.

use super::*;

sipmba_testkit::on_both_databases!(
    queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours,
);

async fn stored(h: &Harness, n: u64) {
    use sea_orm::{EntityTrait, PaginatorTrait};
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sipmba_processing::entity::readings::Entity::find()
        .count(&h.conn)
        .await
        .unwrap()
        < n
    {
        assert!(std::time::Instant::now() < deadline, "readings not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn queries_answer_from_stored_telemetry_and_refuse_what_is_not_yours(backend: Backend) {
    let h = Harness::start(backend).await;
    let (_alice, alice) = h.root("alice").await;
    let (_bob, bob) = h.root("bob").await;
    let pump = h.thing(&alice, "pump").await;
    let idle = h.thing(&alice, "idle").await;
    // 300 readings, and 20 of them again (resent after a lost Ack).
    h.produce(pump, (1..=300).chain(281..=300)).await;
    stored(&h, 300).await;

    // Latest values, ordered by metric name, with the highest seq's values.
    let latest = h
        .telemetry()
        .get_latest(req(
            &alice,
            pb::GetLatestRequest {
                things: vec![thing_id(pump), thing_id(idle)],
                metrics: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .values;
    let names: Vec<_> = latest
        .iter()
        .map(|l| l.metric.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["door", "on", "temperature"]);
    assert!(latest.iter().all(|l| l.seq == 300));
    assert_eq!(
        latest[2].metric.as_ref().unwrap().value,
        Some(pb::metric::Value::Number(30.0))
    );
    assert_eq!(
        latest[1].metric.as_ref().unwrap().value,
        Some(pb::metric::Value::Flag(true))
    );

    // Raw history, paged by 64: every point once, in order.
    let mut seqs = Vec::new();
    let mut token = String::new();
    loop {
        let page = h
            .history(
                &alice,
                pb::QueryHistoryRequest {
                    thing: Some(thing_id(pump)),
                    metric: "temperature".into(),
                    start: at(T0 + 100),
                    end: at(T0 + 200),
                    bucket: None,
                    aggregations: vec![],
                    page: Some(pb::PageRequest {
                        page_size: 64,
                        page_token: token.clone(),
                    }),
                },
            )
            .await
            .unwrap();
        seqs.extend(page.points.iter().map(|p| p.seq));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seqs, (101..=200).collect::<Vec<_>>());

    // Buckets of a minute over the first five minutes.
    let buckets = h
        .history(
            &alice,
            pb::QueryHistoryRequest {
                thing: Some(thing_id(pump)),
                metric: "temperature".into(),
                start: at(T0 - 40),
                end: at(T0 + 260),
                bucket: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                aggregations: vec![],
                page: None,
            },
        )
        .await
        .unwrap()
        .buckets;
    // T0 is 40 s past a minute: buckets start at T0-40, T0+20, ...
    assert_eq!(buckets.len(), 5);
    assert_eq!(buckets[0].start, at(T0 - 40));
    assert_eq!(buckets[0].count, Some(20)); // seqs 1..=20
    assert_eq!(buckets[1].count, Some(60)); // seqs 21..=80
    assert_eq!(buckets[1].min, Some(2.1));
    assert_eq!(buckets[1].max, Some(8.0));
    assert!((buckets[1].avg.unwrap() - 5.05).abs() < 1e-9);
    // Text counts only.
    let door = h
        .history(
            &alice,
            pb::QueryHistoryRequest {
                thing: Some(thing_id(pump)),
                metric: "door".into(),
                start: at(T0 - 40),
                end: at(T0 + 260),
                bucket: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                aggregations: vec![pb::Aggregation::Count as i32],
                page: None,
            },
        )
        .await
        .unwrap()
        .buckets;
    assert_eq!(door[1].count, Some(60));
    assert_eq!(door[1].avg, None);

    // Bad queries.
    let bad = |start: i64, end: i64, bucket: i64, metric: &str, aggregation: pb::Aggregation| {
        pb::QueryHistoryRequest {
            thing: Some(thing_id(pump)),
            metric: metric.into(),
            start: at(start),
            end: at(end),
            bucket: Some(prost_types::Duration {
                seconds: bucket,
                nanos: 0,
            }),
            aggregations: vec![aggregation as i32],
            page: None,
        }
    };
    use pb::Aggregation::{Avg, Count};
    assert_status(
        h.history(&alice, bad(T0 + 10, T0, 60, "temperature", Count))
            .await,
        Code::InvalidArgument,
        "must be before",
    );
    assert_status(
        h.history(&alice, bad(0, T0, 1, "temperature", Count)).await,
        Code::InvalidArgument,
        "buckets",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, -5, "temperature", Count))
            .await,
        Code::InvalidArgument,
        "negative",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, 60, "pressure", Count))
            .await,
        Code::InvalidArgument,
        "never reported",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, 60, "door", Avg)).await,
        Code::InvalidArgument,
        "only AGGREGATION_COUNT",
    );
    assert_status(
        h.history(&alice, bad(T0, T0 + 60, 60, "bad name!", Count))
            .await,
        Code::InvalidArgument,
        "`metric`",
    );
    // Someone else's thing does not exist for bob.
    assert_status(
        h.history(&bob, bad(T0, T0 + 60, 60, "temperature", Count))
            .await,
        Code::NotFound,
        "not found",
    );
    assert_status(
        h.telemetry()
            .get_latest(req(
                &bob,
                pb::GetLatestRequest {
                    things: vec![thing_id(pump)],
                    metrics: vec![],
                },
            ))
            .await,
        Code::NotFound,
        "not found",
    );

    // Presence: the pump was just heard from; the idle thing never.
    let presence = PresenceServiceClient::new(h.processing.clone())
        .get_presence(req(
            &alice,
            pb::GetPresenceRequest {
                things: vec![thing_id(pump), thing_id(idle)],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(presence.presences[0].online);
    assert_eq!(presence.presences[0].last_seq, 300);
    assert!(presence.presences[1].last_seen.is_none());
    assert!(!presence.presences[1].online);
    assert_eq!(presence.online_window.unwrap().seconds, 300);

    // A live subscription gets new readings once each, in order, with the metrics asked for.
    let mut events = h
        .telemetry()
        .subscribe(req(
            &alice,
            pb::SubscribeRequest {
                things: vec![thing_id(pump)],
                channel: None,
                metrics: vec!["temperature".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.produce(pump, (301..=310).chain(305..=310)).await;
    let mut got = Vec::new();
    while got.len() < 10 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("a live event")
            .unwrap()
            .unwrap();
        let reading = event.reading.unwrap();
        assert_eq!(reading.metrics.len(), 1);
        got.push(reading.seq);
    }
    assert_eq!(got, (301..=310).collect::<Vec<_>>());
}
