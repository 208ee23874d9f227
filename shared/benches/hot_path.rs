//! Micro-benchmarks of the hot path, without Redis or network (issue 9). One group per
//! step a callback takes on its way to the browser:
//!
//! - `callback`: [`parse_callback`] on Daraja's documented success and 1032 (cancelled)
//!   bodies (the `ok_doc_*` fixtures of `tests/fixtures/callbacks/`), and
//!   [`StkCallback::to_outcome`].
//! - `state`: a final success STATE encoded with serde_json, framed for the browser with
//!   [`encode_message`], and read back with [`StateHead::parse`].
//! - `store`: the transition in the in-memory store ([`PaymentStore`] over
//!   [`Storage::Memory`]): `record_pending` then `apply_callback` for a fresh payment, and
//!   a duplicate `apply_callback` on a final one.
//! - `fanout`: [`MemoryBroker`]: one publish received by 1 and by 100 subscriptions to
//!   one channel, and a subscribe + drop (release) cycle.
//!
//! Run: `cargo bench -p stk-relay-shared --bench hot_path` (BENCHMARKS.md has figures).
//! `cargo test --workspace --bench hot_path` runs each benchmark once, untimed, and so
//! checks that every step still gives the reply it is measured for.

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;

use stk_relay_shared::api::{encode_message, MessageType};
use stk_relay_shared::broker::memory::MemoryBroker;
use stk_relay_shared::broker::{Broker, BrokerEvent};
use stk_relay_shared::daraja::callback::{parse_callback, StkCallback};
use stk_relay_shared::ids::CheckoutRequestId;
use stk_relay_shared::keyspace::Keyspace;
use stk_relay_shared::payment::{PaymentOutcome, PaymentState, PaymentStatus, StateHead};
use stk_relay_shared::store::{
    ApplyOutcome, CallbackBinding, MemoryStorage, PaymentStore, RecordOutcome, Storage,
};

/// Daraja's documented success callback (pretty-printed, as the doc prints it).
const SUCCESS_BODY: &[u8] = include_bytes!("../tests/fixtures/callbacks/ok_doc_success.json");
/// Daraja's documented failure callback: 1032, cancelled by the user.
const CANCELLED_BODY: &[u8] =
    include_bytes!("../tests/fixtures/callbacks/ok_doc_failure_1032.json");

/// The callback token nonce and phone digest the pending record is bound to; the
/// callback presents the same, so every apply passes the checks.
const NONCE: &str = "bench-nonce";
const PHD: &str = "bench-phone-digest";

/// The history's `pushed` entry of a bench payment.
fn pushed() -> stk_relay_shared::history::Pushed {
    stk_relay_shared::history::Pushed {
        amount: 1,
        phone_number: "2547******92".into(),
        account_reference: "BENCH".into(),
        description: None,
        webhook: false,
    }
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_721_555_490, 0).expect("a valid time")
}

fn parsed(body: &[u8]) -> StkCallback {
    parse_callback(body).expect("the fixture parses")
}

/// The pending state a push for `cb` would have recorded under `id`.
fn pending_for(cb: &StkCallback, id: CheckoutRequestId) -> PaymentState {
    let phone = cb
        .metadata
        .phone
        .as_ref()
        .map(|p| p.masked())
        .expect("the success fixture has a phone");
    PaymentState::pending(
        id,
        cb.merchant_request_id.clone(),
        cb.metadata
            .amount
            .expect("the success fixture has an amount"),
        phone,
        now(),
    )
}

fn binding(cb: &StkCallback) -> CallbackBinding {
    CallbackBinding {
        mrid: cb.merchant_request_id.as_str().to_owned(),
        phd: PHD.to_owned(),
    }
}

/// A CheckoutRequestID in Daraja's shape, unique per `n`.
fn checkout_id(n: u64) -> CheckoutRequestId {
    CheckoutRequestId::parse(&format!("ws_CO_210720241251{n:014}")).expect("a valid id")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn callback(c: &mut Criterion) {
    let mut g = c.benchmark_group("callback");
    g.bench_function("parse_success", |b| {
        b.iter(|| parse_callback(black_box(SUCCESS_BODY)).expect("parses"))
    });
    g.bench_function("parse_cancelled", |b| {
        b.iter(|| parse_callback(black_box(CANCELLED_BODY)).expect("parses"))
    });
    let success = parsed(SUCCESS_BODY);
    let cancelled = parsed(CANCELLED_BODY);
    let at = now();
    g.bench_function("to_outcome_success", |b| {
        b.iter(|| black_box(&success).to_outcome(at))
    });
    g.bench_function("to_outcome_cancelled", |b| {
        b.iter(|| black_box(&cancelled).to_outcome(at))
    });
    g.finish();
}

fn state(c: &mut Criterion) {
    let cb = parsed(SUCCESS_BODY);
    let mut state = pending_for(&cb, cb.checkout_request_id.clone());
    state.apply(&cb.to_outcome(now()));
    assert_eq!(state.status, PaymentStatus::Success);
    let json = serde_json::to_string(&state).expect("a STATE encodes");

    let mut g = c.benchmark_group("state");
    g.bench_function("to_json_final_success", |b| {
        b.iter(|| serde_json::to_string(black_box(&state)).expect("encodes"))
    });
    g.bench_function("encode_message_completed", |b| {
        b.iter(|| encode_message(MessageType::PaymentCompleted, black_box(&json)))
    });
    g.bench_function("state_head_parse", |b| {
        b.iter(|| StateHead::parse(black_box(&json)).expect("parses"))
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let rt = runtime();
    let cb = parsed(SUCCESS_BODY);
    let outcome: PaymentOutcome = cb.to_outcome(now());
    let binding = binding(&cb);
    let keys = Keyspace::new("bench");
    let mut g = c.benchmark_group("store");

    // A TTL of one second keeps the table at about a second's worth of payments: the
    // memory backend sweeps expired records as it grows, as it does in production.
    let fresh = PaymentStore::new(
        Storage::Memory(MemoryStorage::new(MemoryBroker::new())),
        keys.clone(),
        Duration::from_secs(1),
    );
    let mut next = 0u64;
    g.bench_function("record_pending_then_apply_callback", |b| {
        b.to_async(&rt).iter_batched(
            || {
                next += 1;
                let id = checkout_id(next);
                (pending_for(&cb, id.clone()), id)
            },
            |(pending, id)| {
                let (fresh, outcome, binding) = (&fresh, &outcome, &binding);
                async move {
                    let r = fresh
                        .record_pending(&pending, NONCE, PHD, "", &pushed())
                        .await;
                    assert!(matches!(r, Ok(RecordOutcome::Pending(_))), "{r:?}");
                    let a = fresh
                        .apply_callback(&id, NONCE, outcome, binding, false)
                        .await;
                    assert!(matches!(a, Ok(ApplyOutcome::Applied { .. })), "{a:?}");
                }
            },
            BatchSize::SmallInput,
        )
    });

    let final_store = PaymentStore::new(
        Storage::Memory(MemoryStorage::new(MemoryBroker::new())),
        keys,
        Duration::from_secs(3600),
    );
    let id = cb.checkout_request_id.clone();
    rt.block_on(async {
        let r = final_store
            .record_pending(&pending_for(&cb, id.clone()), NONCE, PHD, "", &pushed())
            .await;
        assert!(matches!(r, Ok(RecordOutcome::Pending(_))), "{r:?}");
        let a = final_store
            .apply_callback(&id, NONCE, &outcome, &binding, false)
            .await;
        assert!(matches!(a, Ok(ApplyOutcome::Applied { .. })), "{a:?}");
    });
    g.bench_function("apply_callback_duplicate", |b| {
        b.to_async(&rt).iter(|| async {
            let a = final_store
                .apply_callback(&id, NONCE, &outcome, &binding, false)
                .await;
            assert!(matches!(a, Ok(ApplyOutcome::Duplicate)), "{a:?}");
        })
    });
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let rt = runtime();
    let keys = Keyspace::new("bench");
    let channel = keys.payment_channel(&checkout_id(0));
    let cb = parsed(SUCCESS_BODY);
    let mut state = pending_for(&cb, checkout_id(0));
    state.apply(&cb.to_outcome(now()));
    let payload = serde_json::to_string(&state).expect("a STATE encodes");
    let mut g = c.benchmark_group("fanout");

    for n in [1usize, 100] {
        let broker = MemoryBroker::new();
        let mut subs = rt.block_on(async {
            let mut subs = Vec::with_capacity(n);
            for _ in 0..n {
                subs.push(broker.subscribe(&channel).await.expect("subscribes"));
            }
            subs
        });
        g.throughput(Throughput::Elements(n as u64));
        // One block_on around all iterations, as criterion's `to_async` does; written out
        // because every iteration borrows the subscriptions mutably.
        g.bench_with_input(BenchmarkId::new("publish_recv", n), &n, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        broker.publish(&channel, &payload).await.expect("publishes");
                        for s in subs.iter_mut() {
                            match s.recv().await {
                                BrokerEvent::Message(m) => {
                                    black_box(m);
                                }
                                other => panic!("expected the message, got {other:?}"),
                            }
                        }
                    }
                    start.elapsed()
                })
            })
        });
    }

    // Subscribing creates the channel's entry (the first holder) or joins it; dropping
    // the subscription releases the reference (and removes the entry with the last one).
    g.throughput(Throughput::Elements(1));
    let broker = MemoryBroker::new();
    g.bench_function("subscribe_release_first", |b| {
        b.to_async(&rt).iter(|| async {
            let s = broker.subscribe(&channel).await.expect("subscribes");
            drop(black_box(s));
        })
    });
    let held = rt.block_on(broker.subscribe(&channel)).expect("subscribes");
    g.bench_function("subscribe_release_joining", |b| {
        b.to_async(&rt).iter(|| async {
            let s = broker.subscribe(&channel).await.expect("subscribes");
            drop(black_box(s));
        })
    });
    drop(held);
    assert_eq!(broker.channel_count(), 0);
    g.finish();
}

criterion_group!(hot_path, callback, state, store, fanout);
criterion_main!(hot_path);
