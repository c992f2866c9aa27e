//! The `switchyard` command, as a library so benchmarks and end-to-end tests drive the same
//! code paths.
//!
//! - [`local`]: builds an engine on the embedded backend (SQLite + files) with the built-in
//!   models, and the in-process driver that runs a run until it ends or waits on the outside.
//! - [`commands`]: one function per subcommand, returning the process exit status.
//! - [`render`]: the human table and the one-document JSON output.
//! - [`dev`]: `switchyard dev` on the embedded backend; `dev_aws` (cargo feature `aws`) is
//!   `--backend aws`, over DynamoDB, SQS and S3. [`serve`] holds what both share (arguments,
//!   loading `--workflows`, keys, the banner, shutdown, `/metrics`); neither imports the other.
//!   Both serve `switchyard_api::app`, the API assembly intake serves too.
//! - [`rerun`], [`replay`], [`compare`], [`dlq`]: `runs rerun`, `runs replay`, `compare`,
//!   `dlq`; [`prometheus`]: the metric sink behind `dev`'s `/metrics`; [`exit`]: the exit
//!   statuses every command returns.

pub mod commands;
pub mod compare;
pub mod dev;
#[cfg(feature = "aws")]
pub mod dev_aws;
pub mod dlq;
pub mod local;
pub mod prometheus;
pub mod render;
pub mod replay;
pub mod rerun;
pub mod serve;

/// Exit statuses (README.md#the-cli).
pub mod exit {
    pub const SUCCEEDED: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const WAITING: i32 = 3;
    pub const CANCELLED: i32 = 4;

    /// An error that is the user's to fix (a data dir that cannot be opened, a bad flag value)
    /// rather than a failed run: the process exits with [`USAGE`]. Carried inside `anyhow`
    /// errors and found again by type, never by the wording of a message.
    #[derive(Debug)]
    pub struct UsageError(pub String);

    impl std::fmt::Display for UsageError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for UsageError {}

    /// The exit status of a command that ended with an error.
    pub fn status_of(e: &anyhow::Error) -> i32 {
        if e.chain().any(|c| c.is::<UsageError>()) {
            USAGE
        } else {
            FAILED
        }
    }
}
