//! The queue contract: SQS semantics, which the engine's "nothing lost, nothing done twice"
//! rests on. A delayed message stays hidden until its delay passes; a received one is hidden
//! for its visibility timeout and then comes back with its receive count raised unless it was
//! acked; past the queue's maximum receive count it moves to that queue's own dead-letter
//! place, from which a redrive puts it back. Work and notify are separate queues.
//!
//! Times are multiples of a second (SQS counts delays and visibility in whole seconds), and a
//! rule only asserts what every adapter can promise: not the order of a standard queue, and
//! not what acking with a stale receipt answers (SQS does not say).

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use switchyard_core::ports::{Delivery, Inbox, Message, Queue, QueueName};
use switchyard_core::state::{Notification, NotifyEvent, WakeReason, WakeUp};

/// Moves the queue's time on by `ms`: a manual clock locally, a real wait on an emulator.
pub type Elapse = Box<dyn Fn(u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The queues of one fresh, empty deployment, and how to let time pass for them.
pub struct QueueFixture {
    pub sender: Arc<dyn Queue>,
    pub work: Arc<dyn Inbox>,
    pub notify: Arc<dyn Inbox>,
    /// Deliveries a message gets before it is dead-lettered (the same on both queues).
    pub max_receive_count: u32,
    pub elapse: Elapse,
}

pub fn wake(run: &str) -> Message {
    Message::Wake(WakeUp {
        run_id: run.into(),
        reason: WakeReason::Start,
        due_at: None,
    })
}

pub fn note(run: &str) -> Message {
    Message::Notify(Notification {
        run_id: run.into(),
        event: NotifyEvent::RunSucceeded,
        webhook_id: format!("msg_{run}"),
        attempt: 0,
    })
}

fn runs(d: &[Delivery]) -> BTreeSet<String> {
    d.iter().map(|d| d.message.run_id().to_string()).collect()
}

fn set(runs: &[&str]) -> BTreeSet<String> {
    runs.iter().map(|r| r.to_string()).collect()
}

/// What is sent is what is received, on the queue the message belongs to.
pub async fn messages_round_trip_on_their_own_queue(f: &QueueFixture) {
    let (w, n) = (wake("r1"), note("r1"));
    f.sender.send(&w, 0).await.unwrap();
    f.sender.send(&n, 0).await.unwrap();
    assert_eq!(f.work.queue(), QueueName::Work);
    assert_eq!(f.notify.queue(), QueueName::Notify);
    let got = f.work.receive(10, 30_000).await.unwrap();
    assert_eq!(got.iter().map(|d| &d.message).collect::<Vec<_>>(), [&w]);
    assert_eq!(got[0].receive_count, 1);
    let got = f.notify.receive(10, 30_000).await.unwrap();
    assert_eq!(got.iter().map(|d| &d.message).collect::<Vec<_>>(), [&n]);
}

/// A delayed message is hidden until its delay has passed, and only it.
pub async fn delays_are_honoured(f: &QueueFixture) {
    f.sender.send(&wake("late"), 2_000).await.unwrap();
    f.sender.send(&wake("now"), 0).await.unwrap();
    assert_eq!(
        runs(&f.work.receive(10, 30_000).await.unwrap()),
        set(&["now"])
    );
    (f.elapse)(1_000).await;
    assert!(f.work.receive(10, 30_000).await.unwrap().is_empty());
    (f.elapse)(1_500).await;
    assert_eq!(
        runs(&f.work.receive(10, 30_000).await.unwrap()),
        set(&["late"])
    );
}

/// A receive takes at most `max` messages; the rest stay for the next.
pub async fn receive_takes_at_most_max(f: &QueueFixture) {
    for r in ["a", "b", "c"] {
        f.sender.send(&wake(r), 0).await.unwrap();
    }
    let first = f.work.receive(2, 30_000).await.unwrap();
    assert_eq!(first.len(), 2);
    let second = f.work.receive(2, 30_000).await.unwrap();
    assert_eq!(second.len(), 1);
    let all: BTreeSet<String> = runs(&first).union(&runs(&second)).cloned().collect();
    assert_eq!(all, set(&["a", "b", "c"]));
    assert!(f.work.receive(2, 30_000).await.unwrap().is_empty());
}

/// A received message is hidden for its visibility timeout, then comes back as the same
/// message with a new receipt and a higher receive count; acking the current receipt removes
/// it, and handing it back early makes it visible at once.
pub async fn visibility_timeout_receive_count_and_ack(f: &QueueFixture) {
    f.sender.send(&wake("r"), 0).await.unwrap();
    let first = f.work.receive(1, 1_000).await.unwrap().remove(0);
    assert_eq!(first.receive_count, 1);
    assert!(f.work.receive(1, 1_000).await.unwrap().is_empty());
    (f.elapse)(1_500).await;
    let second = f.work.receive(1, 30_000).await.unwrap().remove(0);
    assert_eq!(
        (second.id.as_str(), second.receive_count),
        (first.id.as_str(), 2)
    );
    assert_ne!(second.receipt, first.receipt);
    assert!(f.work.change_visibility(&second.receipt, 0).await.unwrap());
    let third = f.work.receive(1, 30_000).await.unwrap().remove(0);
    assert_eq!(
        (third.id.as_str(), third.receive_count),
        (first.id.as_str(), 3)
    );
    assert!(f.work.ack(&third.receipt).await.unwrap());
    (f.elapse)(1_000).await;
    assert!(f.work.receive(1, 30_000).await.unwrap().is_empty());
    assert!(f.work.dead_letters().await.unwrap().is_empty());
}

/// Sends a wake-up per name and receives them all, hidden for 1 s, in batches of up to ten.
async fn send_and_receive_all(f: &QueueFixture, names: &[String]) -> Vec<Delivery> {
    for r in names {
        f.sender.send(&wake(r), 0).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < names.len() {
        let batch = f.work.receive(10, 1_000).await.unwrap();
        assert!(
            !batch.is_empty(),
            "received {} of {}",
            got.len(),
            names.len()
        );
        got.extend(batch);
    }
    got
}

/// `ack_all` deletes every message of a batch (more than SQS's ten per request), and
/// counts what it deleted; none of them comes back.
pub async fn a_batch_of_receipts_is_acked_at_once(f: &QueueFixture) {
    let names: Vec<String> = (0..12).map(|i| format!("b{i}")).collect();
    let got = send_and_receive_all(f, &names).await;
    let receipts: Vec<&str> = got.iter().map(|d| d.receipt.as_str()).collect();
    assert_eq!(f.work.ack_all(&receipts).await.unwrap(), names.len());
    (f.elapse)(1_500).await;
    assert!(f.work.receive(10, 30_000).await.unwrap().is_empty());
    assert!(f.work.dead_letters().await.unwrap().is_empty());
}

/// `change_visibility_all` (a worker's heartbeat) hides every message of a batch (more than
/// SQS's ten per request) for the new timeout, and hands them all back at once with 0.
pub async fn a_batch_of_receipts_changes_visibility_at_once(f: &QueueFixture) {
    let names: Vec<String> = (0..12).map(|i| format!("v{i}")).collect();
    let got = send_and_receive_all(f, &names).await;
    let receipts: Vec<&str> = got.iter().map(|d| d.receipt.as_str()).collect();
    assert_eq!(
        f.work
            .change_visibility_all(&receipts, 30_000)
            .await
            .unwrap(),
        names.len()
    );
    // Past the first timeout, still hidden: the change held them.
    (f.elapse)(1_500).await;
    assert!(f.work.receive(10, 30_000).await.unwrap().is_empty());
    assert_eq!(
        f.work.change_visibility_all(&receipts, 0).await.unwrap(),
        names.len()
    );
    let mut again = BTreeSet::new();
    for _ in 0..4 {
        for d in f.work.receive(10, 30_000).await.unwrap() {
            assert_eq!(d.receive_count, 2, "{}", d.id);
            again.insert(d.id);
        }
        if again.len() == names.len() {
            break;
        }
    }
    let ids: BTreeSet<String> = got.iter().map(|d| d.id.clone()).collect();
    assert_eq!(again, ids);
}

/// A message received `max_receive_count` times without an ack moves to its queue's
/// dead-letter place (and no other queue's); a redrive puts it back as a fresh delivery.
pub async fn dead_letters_after_max_receives_and_redrive(f: &QueueFixture) {
    f.sender.send(&note("poison"), 0).await.unwrap();
    f.sender.send(&wake("healthy"), 0).await.unwrap();
    for n in 1..=f.max_receive_count {
        let d = f.notify.receive(1, 1_000).await.unwrap();
        assert_eq!(d.len(), 1, "delivery {n}");
        assert_eq!(d[0].receive_count, n);
        (f.elapse)(1_500).await;
    }
    assert!(f.notify.receive(1, 1_000).await.unwrap().is_empty());
    let dead = f.notify.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].receive_count, f.max_receive_count);
    assert!(dead[0].body.contains("poison"), "{}", dead[0].body);
    // The other queue's dead letters are its own, and its messages were untouched.
    assert!(f.work.dead_letters().await.unwrap().is_empty());
    assert_eq!(
        runs(&f.work.receive(10, 30_000).await.unwrap()),
        set(&["healthy"])
    );

    assert_eq!(f.notify.redrive(None).await.unwrap(), 1);
    assert!(f.notify.dead_letters().await.unwrap().is_empty());
    let again = f.notify.receive(1, 30_000).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].message.run_id(), again[0].receive_count),
        ("poison", 1)
    );
}

/// A redrive of listed ids moves those and leaves the others dead.
pub async fn redrive_moves_only_the_listed_ids(f: &QueueFixture) {
    for r in ["x", "y"] {
        f.sender.send(&wake(r), 0).await.unwrap();
    }
    for _ in 0..f.max_receive_count {
        assert_eq!(f.work.receive(10, 1_000).await.unwrap().len(), 2);
        (f.elapse)(1_500).await;
    }
    assert!(f.work.receive(10, 1_000).await.unwrap().is_empty());
    let dead = f.work.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2);
    let pick = dead
        .iter()
        .find(|d| d.body.contains("\"x\""))
        .map(|d| d.id.clone())
        .unwrap();
    assert_eq!(f.work.redrive(Some(&[pick])).await.unwrap(), 1);
    assert_eq!(f.work.dead_letters().await.unwrap().len(), 1);
    assert_eq!(
        runs(&f.work.receive(10, 30_000).await.unwrap()),
        set(&["x"])
    );
}
