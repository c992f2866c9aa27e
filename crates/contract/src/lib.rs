//! The port contract suite.
//!
//! Every adapter of a port must behave the same way, or the engine's guarantees (nothing lost,
//! nothing done twice) hold on one backend and not on another. So the behaviour is written once
//! here, against the traits of `switchyard_core::ports`, and each adapter crate runs it on its
//! own implementation: [`state_store_contract!`] expands to one `#[tokio::test]` per rule.
//!
//! - [`state`]: conditional writes and conflicts, events written with their state change,
//!   leases, idempotency claims, webhook-id dedupe, listing with filters and a cursor,
//!   several step records written as one, the sweep's listing of runs that have not ended,
//!   stats buckets added once by a run's creation and end, and read by tenant, workflow and hour.
//! - [`faults`]: a store that fails chosen writes before or after they land, for fault tests.
//! - [`blobs`]: content-addressed round trips, and refusing keys that do not match.
//! - [`queues`]: SQS semantics on both queues (work, notify): delays, visibility timeouts,
//!   receive counts, dead-lettering into each queue's own place, redrive.
//!
//! The functions take a fresh, empty store each. They panic on a broken rule: this crate is a
//! test library, and only test targets depend on it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test library

pub mod blobs;
pub mod faults;
pub mod queues;
pub mod state;

/// The AWS emulator's URL for adapter tests, from `SWITCHYARD_TEST_AWS_ENDPOINT`. Unset, the
/// test fails saying how to start it: a missing emulator is not a pass.
pub fn emulator_endpoint() -> String {
    match std::env::var("SWITCHYARD_TEST_AWS_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e,
        _ => panic!(
            "SWITCHYARD_TEST_AWS_ENDPOINT is not set: these tests need the AWS emulator. \
             Run `infra/moto.sh start` and set SWITCHYARD_TEST_AWS_ENDPOINT to the URL it prints \
             (`make test` and `make test-aws` do both)."
        ),
    }
}

/// Expands to one `#[tokio::test]` per rule of the state store contract. `$make` is an
/// expression that evaluates to `(guard, store)`: a fresh, empty store behind
/// `Arc<dyn StateStore>`, and whatever must live as long as it (a temp dir).
#[macro_export]
macro_rules! state_store_contract {
    ($make:expr) => {
        $crate::state_store_contract!(@tests $make;
            create_load_round_trip,
            put_header_is_conditional_and_owns_the_version,
            put_step_is_conditional_and_owns_the_version,
            a_write_and_its_events_are_one,
            lease_rules,
            idempotency_claims_and_webhook_ids,
            events_keep_append_order_per_run,
            listing_filters_and_pages_by_cursor,
            several_steps_are_one_write,
            held_records_ride_on_the_end,
            active_runs_are_the_unended_oldest_first,
            stats_buckets_count_each_run_once,
            held_figures_are_added_once_at_the_flush,
            stats_of_a_run_with_many_steps_are_all_added
        );
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, store) = $make;
                $crate::state::$name(&*store).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per rule of the blob store contract (see
/// [`state_store_contract!`] for `$make`).
#[macro_export]
macro_rules! blob_store_contract {
    ($make:expr) => {
        $crate::blob_store_contract!(@tests $make;
            put_get_round_trip_is_content_addressed,
            bad_and_missing_keys_are_refused,
            uploads_are_adopted_per_tenant
        );
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, blobs) = $make;
                $crate::blobs::$name(&*blobs).await;
            }
        )*
    };
}

/// Expands to one `#[tokio::test]` per rule of the queue contract. `$make` evaluates to
/// `(guard, fixture)` with a fresh [`queues::QueueFixture`].
#[macro_export]
macro_rules! queue_contract {
    ($make:expr) => {
        $crate::queue_contract!(@tests $make;
            messages_round_trip_on_their_own_queue,
            delays_are_honoured,
            receive_takes_at_most_max,
            visibility_timeout_receive_count_and_ack,
            a_batch_of_receipts_is_acked_at_once,
            a_batch_of_receipts_changes_visibility_at_once,
            dead_letters_after_max_receives_and_redrive,
            redrive_moves_only_the_listed_ids
        );
    };
    (@tests $make:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_guard, fixture) = $make;
                $crate::queues::$name(&fixture).await;
            }
        )*
    };
}
