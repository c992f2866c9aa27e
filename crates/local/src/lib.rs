//! Switchyard's embedded backend: everything `switchyard run` / `switchyard serve` need on one
//! machine, with the same semantics the AWS adapters get from DynamoDB, SQS and S3, so a workflow
//! that behaves locally behaves the same in the cloud.
//!
//! Layout (one file per concern, each small enough to read in one sitting):
//! - [`db`]: [`Backend`], the entry point. Opens `data_dir/switchyard.sqlite` (WAL, busy
//!   timeout, foreign keys), refuses files that are not ours or are newer than this build
//!   without touching them, runs schema migrations keyed on `PRAGMA user_version`, and hands out
//!   cheap cloneable handles that share one connection. Also the rusqlite → `StoreError` mapping.
//! - [`store`]: [`SqliteStore`], the `StateStore` port. One table per DynamoDB item kind (runs,
//!   steps, events, idempotency keys, webhook ids); every conditional write is a
//!   `WHERE version = ?` so `Conflict` means exactly what a failed DynamoDB condition means.
//! - [`queue`]: [`SqliteQueue`], the `Queue` port plus the receive side SQS gives Lambda for
//!   free: visibility timeouts, receipts, receive counts, a dead-letter table and redrive.
//! - [`blobs`]: [`FsBlobStore`], the `BlobStore` port as content-addressed files under
//!   `data_dir/blobs/ab/cdef…`, written atomically and verified on read.
//! - [`clock`]: [`SystemClock`] and [`ManualClock`]; the queue takes its `now` from a clock so
//!   tests move time by hand and never sleep.

pub mod blobs;
pub mod clock;
pub mod db;
pub mod queue;
pub mod store;

pub use blobs::FsBlobStore;
pub use clock::{ManualClock, SystemClock};
pub use db::{Backend, DbStats, Durability, Threading, MAX_GROUP_COMMIT};
pub use queue::{SqliteQueue, DEFAULT_MAX_RECEIVE_COUNT};
pub use store::SqliteStore;
pub use switchyard_core::ports::{DeadLetter, Delivery, QueueName};
