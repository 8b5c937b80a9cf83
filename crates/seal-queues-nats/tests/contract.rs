//! The queue contract against a real NATS server with JetStream
//! (`SEAL_TEST_NATS`, default `nats://127.0.0.1:4222`), each test in a
//! namespace of its own, removed afterwards. Skipped, saying why, when
//! no NATS answers there, unless `SEAL_REQUIRE_NATS` is set (`.ci/run`).

#![allow(clippy::unwrap_used)]

use seal_queues_nats::{NatsLocation, NatsQueues};
use seal_state::Queues;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The state store's directory and the namespace to remove.
struct Guard {
    _dir: tempfile::TempDir,
    at: NatsLocation,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = seal_queues_nats::remove_namespace_now(&self.at);
    }
}

fn nats_url() -> Option<String> {
    let url =
        std::env::var("SEAL_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let at = NatsLocation::parse(&url).unwrap();
    let addr = at.server.trim_start_matches("nats://").to_owned();
    if std::net::TcpStream::connect(&addr).is_ok() {
        return Some(url);
    }
    if std::env::var_os("SEAL_REQUIRE_NATS").is_some() {
        panic!("SEAL_REQUIRE_NATS is set but no NATS server answers at {url}");
    }
    eprintln!(
        "skipped: no NATS server at {url} (set SEAL_TEST_NATS, or SEAL_REQUIRE_NATS to fail)"
    );
    None
}

async fn fresh() -> Option<(
    Guard,
    Arc<dyn seal_state::StateStore>,
    Arc<dyn seal_state::Queues>,
)> {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = nats_url()?;
    let dir = tempfile::tempdir().unwrap();
    let state: Arc<dyn seal_state::StateStore> = Arc::new(
        seal_state_sqlite::SqliteStore::open(&dir.path().join("state.db"))
            .await
            .unwrap(),
    );
    let mut at = NatsLocation::parse(&url).unwrap();
    at.namespace = format!(
        "t{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        seal_state::now_ms() % 1_000_000
    );
    let queues = Arc::new(
        NatsQueues::connect(at.clone(), None, state.clone())
            .await
            .unwrap(),
    );
    queues.check().await.unwrap();
    Some((Guard { _dir: dir, at }, state, queues))
}

seal_state::queue_contract_tests!(fresh);

/// A delivery whose node never answers (its attempt outlives the ack
/// wait on the last delivery) is dead-lettered from JetStream's
/// max-deliveries advisory, with the reason and attempts.
#[tokio::test]
async fn a_delivery_abandoned_on_its_last_attempt_is_dead_lettered_from_the_advisory() {
    use seal_state::{Enqueue, NewEvent, QueueRecord, TriggerRecord, TriggerSpec};
    let Some((guard, state, queues)) = fresh().await else {
        return;
    };
    state
        .create_queue(&QueueRecord {
            environment: "production".into(),
            name: "orders".into(),
            dedup_window_ms: 60_000,
            created_at: 1,
            created_by: "test".into(),
        })
        .await
        .unwrap();
    let mut sub = seal_state::QueueSubscription::new("orders");
    sub.max_attempts = 2;
    let t = TriggerRecord {
        name: "billing-orders".into(),
        environment: "production".into(),
        function: "billing".into(),
        spec: TriggerSpec::Queue(sub),
        created_at: 1,
        created_by: "test".into(),
    };
    state.create_trigger(&t).await.unwrap();
    let now = seal_state::now_ms();
    let events = [NewEvent {
        ce_id: "lost",
        source: "/shop",
        ty: "order.created",
        event: r#"{"id":"lost","source":"/shop","type":"order.created"}"#,
    }];
    let id = queues
        .enqueue_batch(&[Enqueue {
            environment: "production",
            queue: "orders",
            events: &events,
            now,
            dedup_since: now - 60_000,
        }])
        .await
        .unwrap()[0][0]
        .id;
    // Claimed with a one-second lease, each time by a node that
    // dies before it answers (a client of its own, dropped).
    let mut deliveries = 0;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let node = NatsQueues::connect(guard.at.clone(), None, state.clone())
            .await
            .unwrap();
        let now = seal_state::now_ms();
        deliveries += node
            .claim_due(&t, now, now + 1_000, 10)
            .await
            .unwrap()
            .len();
        drop(node);
        let dead = queues.dead_letters(None, None).await.unwrap();
        if let Some(d) = dead.first() {
            assert_eq!(
                deliveries, 3,
                "delivered max-deliver (attempts + 1) times, then given up"
            );
            assert_eq!(d.event_id, id);
            assert_eq!(d.reason, seal_state::DeadReason::AttemptsExhausted);
            assert!(
                d.last_error.as_deref().unwrap().contains("never ended"),
                "{d:?}"
            );
            let shown = queues.event(id).await.unwrap().unwrap();
            assert_eq!(shown.deliveries[0].state, seal_state::DeliveryState::Dead);
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "no dead letter after {deliveries} deliveries"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A queue whose deduplication window is longer than the stream's
/// widens the stream's, and its duplicates are still recognised.
#[tokio::test]
async fn a_longer_deduplication_window_widens_the_streams() {
    use seal_state::{Enqueue, NewEvent};
    let Some((_guard, _state, queues)) = fresh().await else {
        return;
    };
    let events = [NewEvent {
        ce_id: "w1",
        source: "/shop",
        ty: "order.created",
        event: r#"{"id":"w1","source":"/shop","type":"order.created"}"#,
    }];
    let send = || async {
        let now = seal_state::now_ms();
        queues
            .enqueue_batch(&[Enqueue {
                environment: "production",
                queue: "orders",
                events: &events,
                now,
                dedup_since: now - 3 * 3_600_000,
            }])
            .await
            .unwrap()
            .remove(0)
            .remove(0)
    };
    let first = send().await;
    let again = send().await;
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.id, first.id);
}
