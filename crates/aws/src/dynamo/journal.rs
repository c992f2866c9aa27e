//! The header's journal: step records a worker held back until its run's end, stored in
//! the header item by the write that ends the run (`end_run`), instead of one step item
//! each (docs/architecture.md, "The write layout on DynamoDB").
//!
//! Why it is safe without a transaction: the records ride on the header write, whose
//! version condition lets one end happen; they are new records of steps that are free to
//! repeat; and nothing rewrites a run's records after it ended. Should something still
//! write a record whose stored version is in the journal, the write moves it out: a step
//! item at the next version that must not exist yet (`put_step`, `put_steps`), so two
//! writers that read the same version still conflict. What one end carries is bounded
//! ([`JOURNAL_MAX_BYTES`]): heavier held records are refused, not split.

use super::*;

/// The run's step records: its step items and the records of the header's journal, in
/// creation order. Where a step is in both, the higher version is the record; on a tie the
/// journal's (both are results of one attempt of a step free to repeat, and the run's end
/// was computed from the journal's).
pub(super) fn merge_journal(
    items: Vec<(String, StepRecord)>,
    journal: Vec<(String, StepRecord)>,
) -> Vec<StepRecord> {
    let mut by_step: HashMap<String, (String, StepRecord)> = HashMap::new();
    for (cseq, rec) in items.into_iter().chain(journal) {
        match by_step.get(&rec.step) {
            Some((_, kept)) if kept.version > rec.version => {}
            _ => {
                by_step.insert(rec.step.clone(), (cseq, rec));
            }
        }
    }
    let mut steps: Vec<(String, StepRecord)> = by_step.into_values().collect();
    steps.sort_by(|a, b| a.0.cmp(&b.0));
    steps.into_iter().map(|(_, rec)| rec).collect()
}

impl DynamoStore {
    /// What the end write stores of `steps`: the journal entry, and the history of the
    /// write (the records' events, then the end's). Records that would weigh more than
    /// [`JOURNAL_MAX_BYTES`] in the header item (the entry and their history) are refused
    /// (`Invalid`), never split: the end stores all of them or none. (The engine holds at
    /// most 48 KiB of JSON, `engine::held::MAX_HELD_BYTES`, which stays under it.)
    pub(super) fn journal(
        h: &RunHeader,
        events: &[HistoryEvent],
        steps: &[(&StepRecord, &[HistoryEvent])],
    ) -> Result<(Option<AttributeValue>, Vec<HistoryEvent>), StoreError> {
        if steps.is_empty() {
            return Ok((None, events.to_vec()));
        }
        let stored: Vec<StepRecord> = steps
            .iter()
            .map(|(rec, _)| {
                let mut r = (*rec).clone();
                r.version += 1;
                r
            })
            .collect();
        let entry = journal_entry(&new_seq(), &h.run_id, &stored)?;
        let held_history: Vec<HistoryEvent> = steps
            .iter()
            .flat_map(|(_, evs)| evs.iter().cloned())
            .collect();
        let history_bytes = serde_json::to_vec(&held_history).map_or(usize::MAX, |v| v.len());
        let weight = stored_len(&entry).saturating_add(history_bytes);
        if weight > JOURNAL_MAX_BYTES {
            return Err(StoreError::Invalid(format!(
                "run {}: the {} held records and their history weigh {weight} bytes, more than \
                 the {JOURNAL_MAX_BYTES} one end write carries; write them apart first",
                h.run_id,
                steps.len()
            )));
        }
        let history = held_history
            .into_iter()
            .chain(events.iter().cloned())
            .collect();
        Ok((Some(entry), history))
    }

    /// The records of the run's journal that no step item has replaced, by `(step,
    /// version)`, with their creation order: what a write that found no step item checks
    /// its version against. One `Query` of the run's header and step items.
    pub(super) async fn journal_only(
        &self,
        run_id: &str,
    ) -> Result<HashMap<(String, u64), String>, StoreError> {
        let items = self
            .partition(run_id, Some(HEADER_SK), "SK, ver, cseq, J")
            .await?;
        let mut stepped: HashMap<String, u64> = HashMap::new();
        let mut journal = Vec::new();
        for item in &items {
            let sk = attr_s(item, "SK", &format!("an item of run {run_id}"))?;
            if sk == HEADER_SK {
                journal = read_journal(item, run_id)?;
            } else {
                let step = sk.trim_start_matches("S#").to_string();
                stepped.insert(step, attr_n(item, "ver", sk)?);
            }
        }
        Ok(journal
            .into_iter()
            .filter(|(_, rec)| stepped.get(&rec.step).is_none_or(|v| *v < rec.version))
            .map(|(cseq, rec)| ((rec.step, rec.version), cseq))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(creation order, step, version)` of stored records.
    type Rows = Vec<(&'static str, &'static str, u64)>;
    /// Step items, the journal, and the `(step, version)` a load gives, in order.
    type Case = (Rows, Rows, Vec<(&'static str, u64)>);

    fn rec(step: &str, version: u64) -> StepRecord {
        let mut r = StepRecord::pending(step);
        r.version = version;
        r
    }

    #[test]
    fn the_journal_merges_with_the_step_items_by_version_then_creation_order() {
        // (step items, journal, expected (step, version) in order)
        let table: Vec<Case> = vec![
            (vec![], vec![], vec![]),
            (
                vec![("a1", "a", 2)],
                vec![("z1.000", "b", 1), ("z1.001", "c", 1)],
                vec![("a", 2), ("b", 1), ("c", 1)],
            ),
            // Moved out of the journal at a later version: the step item.
            (
                vec![("z1.000", "b", 2)],
                vec![("z1.000", "b", 1)],
                vec![("b", 2)],
            ),
            // The same version in both: the journal's.
            (
                vec![("a1", "b", 1)],
                vec![("z1.000", "b", 1)],
                vec![("b", 1)],
            ),
            // Creation order, whatever the input order.
            (
                vec![("c3", "c", 1), ("a1", "a", 1)],
                vec![("b2.000", "b", 1)],
                vec![("a", 1), ("b", 1), ("c", 1)],
            ),
        ];
        for (items, journal, want) in table {
            let to = |v: &[(&str, &str, u64)]| {
                v.iter()
                    .map(|(c, s, n)| (c.to_string(), rec(s, *n)))
                    .collect::<Vec<_>>()
            };
            let got: Vec<(String, u64)> = merge_journal(to(&items), to(&journal))
                .into_iter()
                .map(|r| (r.step, r.version))
                .collect();
            let want: Vec<(String, u64)> = want.iter().map(|(s, v)| (s.to_string(), *v)).collect();
            assert_eq!(got, want, "items {items:?}, journal {journal:?}");
        }
    }
}
