//! [`StepState`]: the typed reading of a stored step record.
//!
//! The record keeps the format it has always had (flat, DynamoDB-friendly, every field
//! optional so older records read back); which of its fields mean something depends on its
//! `status`. `StepState` is that dependency written down: each state carries exactly the data
//! it needs, so code that matches on it cannot read a lease off a finished step or a job off
//! an approval. [`StepState::read`] is the one reading — records written by every earlier
//! version read through it (the tests hold records as those versions wrote them) — and the
//! interpreter reads every record it is about to write, so a record that is no legal state is
//! refused before it reaches the store.

use crate::error::StepError;
use crate::state::{AssetDownload, JobRef, StepRecord, StepStatus, ValueRef};
use crate::time::Millis;

/// One step's state, with the data that state carries.
#[derive(Debug, Clone, PartialEq)]
pub enum StepState<'r> {
    /// No attempt in flight; the next one starts when its needs are done (also a step a
    /// repair sent back, with the problems it found in `error`).
    Pending {
        repairs: u32,
    },
    /// An attempt is in flight under a claim. An asynchronous attempt holds its callback
    /// token from the claim on (`job`, with no job id until the submit call answers).
    Claimed {
        owner: &'r str,
        lease_until: Millis,
        attempt: u32,
        job: Option<&'r JobRef>,
    },
    /// The next attempt starts at `at` (after a backoff, a fallback, an escalation or a
    /// repair request).
    Retrying {
        at: Millis,
        attempt: u32,
        error: Option<&'r StepError>,
    },
    /// A finished asset job's file is downloaded at `at`; the job is not run again.
    Downloading {
        at: Millis,
        download: &'r AssetDownload,
    },
    /// An asynchronous job runs; it ends by callback or poll (`poll_at`), or at `deadline_at`.
    WaitingJob {
        job: &'r JobRef,
        poll_at: Option<Millis>,
        deadline_at: Millis,
    },
    /// An approval gate is open until `deadline_at`.
    WaitingApproval {
        deadline_at: Millis,
    },
    Succeeded {
        output: &'r ValueRef,
        at: Millis,
    },
    Failed {
        error: &'r StepError,
        at: Millis,
    },
    Skipped {
        at: Millis,
    },
}

/// A record that reads as no legal state: which status, and what it lacks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {status} record without {lacks}")]
pub struct Illegal {
    pub status: &'static str,
    pub lacks: &'static str,
}

impl<'r> StepState<'r> {
    /// Reads a record as its state, or says what makes it none.
    pub fn read(r: &'r StepRecord) -> Result<StepState<'r>, Illegal> {
        let status = r.status.as_str();
        let need = |lacks: &'static str| Illegal { status, lacks };
        Ok(match r.status {
            StepStatus::Pending => StepState::Pending { repairs: r.repairs },
            StepStatus::Running => StepState::Claimed {
                owner: r.lease_owner.as_deref().ok_or(need("a lease owner"))?,
                lease_until: r.lease_until.ok_or(need("a lease"))?,
                attempt: r.attempt,
                job: r.job.as_ref(),
            },
            StepStatus::Retrying => {
                let at = r.next_at.ok_or(need("a time for its next attempt"))?;
                match &r.download {
                    Some(download) => StepState::Downloading { at, download },
                    None => StepState::Retrying {
                        at,
                        attempt: r.attempt,
                        error: r.error.as_ref(),
                    },
                }
            }
            StepStatus::Waiting => {
                let deadline_at = r.deadline_at.ok_or(need("a wait deadline"))?;
                match &r.job {
                    Some(job) => StepState::WaitingJob {
                        job,
                        poll_at: r.next_at,
                        deadline_at,
                    },
                    None => StepState::WaitingApproval { deadline_at },
                }
            }
            StepStatus::Succeeded => StepState::Succeeded {
                output: r.output.as_ref().ok_or(need("an output"))?,
                at: r.finished_at.ok_or(need("an end time"))?,
            },
            StepStatus::Failed => StepState::Failed {
                error: r.error.as_ref().ok_or(need("an error"))?,
                at: r.finished_at.ok_or(need("an end time"))?,
            },
            StepStatus::Skipped => StepState::Skipped {
                at: r.finished_at.ok_or(need("an end time"))?,
            },
        })
    }

    pub fn is_ended(&self) -> bool {
        matches!(
            self,
            StepState::Succeeded { .. } | StepState::Failed { .. } | StepState::Skipped { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StepStatus;

    /// Records written by the version before this module existed (`0ea6d67`): every distinct
    /// shape the examples left in a data dir (`switchyard run` of each example, an approval
    /// left open and one rejected) — copied from its SQLite `steps` table — read as a legal
    /// state.
    #[test]
    fn records_written_by_the_previous_version_read_as_legal_states() {
        let records: Vec<StepRecord> =
            serde_json::from_str(include_str!("testdata/records-2026-12-06.json")).unwrap();
        assert!(records.len() >= 8, "{}", records.len());
        let mut seen = std::collections::BTreeSet::new();
        for r in &records {
            match StepState::read(r) {
                Ok(s) => {
                    seen.insert(
                        format!("{s:?}")
                            .split([' ', '{'])
                            .next()
                            .unwrap_or("")
                            .to_string(),
                    );
                }
                Err(e) => panic!("{}: {e}", r.step),
            }
        }
        let want = ["Failed", "Skipped", "Succeeded", "WaitingApproval"];
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), want);
    }

    /// The states that exist only mid-run (a claim, a retry, a download, a job), in the shape
    /// the previous version's transitions write them, each read as the state it means.
    #[test]
    fn mid_run_records_read_as_their_states() {
        let rows: &[(&str, &str)] = &[
            (
                r#"{"step":"a","status":"pending","attempt":0,"version":0}"#,
                "pending",
            ),
            (
                r#"{"step":"draft","status":"running","attempt":1,"model_attempt":1,"model_index":0,
                   "started_at":1000,"lease_until":91000,"lease_owner":"w-1:9","deadline_at":null,
                   "provider":"anthropic","model":"anthropic/claude-haiku-4-5","latency_ms":0,
                   "cost_usd":0.0,"fallback_used":false,"repairs":0,"version":1}"#,
                "claimed",
            ),
            (
                r#"{"step":"img","status":"running","attempt":1,"model_attempt":1,"model_index":0,
                   "lease_until":5000,"lease_owner":"w","job":{"provider":"replicate",
                   "model":"replicate/a/b","job_id":"","callback_token":"t0"},"version":1}"#,
                "claimed",
            ),
            (
                r#"{"step":"draft","status":"retrying","attempt":1,"model_attempt":1,"next_at":1200,
                   "error":{"class":"transient","message":"503"},"version":2}"#,
                "retrying",
            ),
            (
                r#"{"step":"img","status":"retrying","attempt":1,"next_at":2000,
                   "download":{"output":{"url":"https://replicate.delivery/x.png"},"model":"replicate/a/b"},
                   "cost_usd":0.003,"version":3}"#,
                "downloading",
            ),
            (
                r#"{"step":"img","status":"waiting","attempt":1,"deadline_at":600000,"next_at":5000,
                   "job":{"provider":"replicate","model":"replicate/a/b","job_id":"j1","callback_token":"t0"},
                   "version":2}"#,
                "waiting_job",
            ),
            (
                r#"{"step":"review","status":"waiting","attempt":1,"started_at":10,"deadline_at":86400010,"version":1}"#,
                "waiting_approval",
            ),
            (
                r#"{"step":"draft","status":"succeeded","attempt":1,"finished_at":1500,
                   "output":{"kind":"inline","value":{"text":"hi"}},"usage":{"input_tokens":9,"output_tokens":2},
                   "cost_usd":0.00002,"version":3}"#,
                "succeeded",
            ),
            (
                r#"{"step":"big","status":"succeeded","attempt":1,"finished_at":1500,
                   "output":{"kind":"blob","key":"ab12","bytes":900000},"version":3}"#,
                "succeeded",
            ),
            (
                r#"{"step":"review","status":"failed","attempt":1,"finished_at":99,
                   "output":{"kind":"inline","value":{"approved":false}},
                   "error":{"class":"rejected","message":"rejected"},
                   "approval":{"approved":false,"decided_at":99},"version":2}"#,
                "failed",
            ),
            (
                r#"{"step":"b","status":"skipped","attempt":0,"finished_at":7,"version":1}"#,
                "skipped",
            ),
        ];
        for (json, want) in rows {
            let rec: StepRecord = serde_json::from_str(json).unwrap();
            let got = match StepState::read(&rec) {
                Ok(StepState::Pending { .. }) => "pending",
                Ok(StepState::Claimed { .. }) => "claimed",
                Ok(StepState::Retrying { .. }) => "retrying",
                Ok(StepState::Downloading { .. }) => "downloading",
                Ok(StepState::WaitingJob { .. }) => "waiting_job",
                Ok(StepState::WaitingApproval { .. }) => "waiting_approval",
                Ok(StepState::Succeeded { .. }) => "succeeded",
                Ok(StepState::Failed { .. }) => "failed",
                Ok(StepState::Skipped { .. }) => "skipped",
                Err(e) => panic!("{json}: {e}"),
            };
            assert_eq!(got, *want, "{json}");
        }
    }

    /// Each status without the data its state carries is refused, naming what it lacks.
    #[test]
    fn records_missing_their_states_data_are_refused() {
        let with = |status: StepStatus| {
            let mut r = StepRecord::pending("s");
            r.status = status;
            r
        };
        let table: Vec<(StepStatus, &str)> = vec![
            (StepStatus::Running, "a lease owner"),
            (StepStatus::Retrying, "a time for its next attempt"),
            (StepStatus::Waiting, "a wait deadline"),
            (StepStatus::Succeeded, "an output"),
            (StepStatus::Failed, "an error"),
            (StepStatus::Skipped, "an end time"),
        ];
        for (status, lacks) in table {
            let r = with(status);
            assert_eq!(
                StepState::read(&r),
                Err(Illegal {
                    status: status.as_str(),
                    lacks
                }),
                "{status:?}"
            );
        }
        let mut leased = with(StepStatus::Running);
        leased.lease_owner = Some("w".into());
        assert_eq!(
            StepState::read(&leased).unwrap_err().lacks,
            "a lease",
            "an owner without a lease"
        );
    }
}
