//! Conditional writes: one write (or a transaction of several) with its condition, and
//! what a failed condition means.

use super::*;

/// How a conditional write ended, short of an error.
#[derive(Debug, PartialEq)]
pub(super) enum Written {
    Yes,
    /// The condition failed; the item as stored (`None`: there was none).
    ConditionFailed(Option<DynamoItem>),
}

/// A write's result in the adapter's words: a failed condition is a value (the caller decides
/// between `Conflict`, `NotFound` and an answer), everything else is classified in `error.rs`.
pub(super) fn outcome<T, E>(
    op: &str,
    res: Result<T, SdkError<E, HttpResponse>>,
) -> Result<Written, StoreError>
where
    E: FailedCondition + ProvideErrorMetadata + std::error::Error + 'static,
{
    match res {
        Ok(_) => Ok(Written::Yes),
        Err(e) => match dynamo_failed_condition(&e) {
            Some(old) => Ok(Written::ConditionFailed(old)),
            None => Err(dynamo_error(op, e)),
        },
    }
}

pub(super) fn built<T>(r: Result<T, BuildError>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Unavailable(format!("DynamoDB: could not build the request: {e}")))
}

/// One conditional write: a whole item, or some attributes of one. Every write of the adapter
/// asks for the stored item back when its condition fails (`ALL_OLD`, no extra cost).
pub(super) enum Write {
    Put {
        item: DynamoItem,
        condition: &'static str,
        values: Values,
    },
    Update {
        key: DynamoItem,
        update: String,
        condition: &'static str,
        values: Values,
    },
}

/// `None` for an empty map: DynamoDB refuses empty expression values.
pub(super) fn some(values: Values) -> Option<Values> {
    (!values.is_empty()).then_some(values)
}

impl Write {
    pub(super) fn put_new(item: DynamoItem) -> Write {
        Write::Put {
            item,
            condition: NEW_ITEM,
            values: Values::new(),
        }
    }

    pub(super) fn transact_item(self, table: &str) -> Result<TransactWriteItem, StoreError> {
        let old = ReturnValuesOnConditionCheckFailure::AllOld;
        Ok(match self {
            Write::Put {
                item,
                condition,
                values,
            } => TransactWriteItem::builder()
                .put(built(
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(item))
                        .condition_expression(condition)
                        .set_expression_attribute_values(some(values))
                        .return_values_on_condition_check_failure(old)
                        .build(),
                )?)
                .build(),
            Write::Update {
                key,
                update,
                condition,
                values,
            } => TransactWriteItem::builder()
                .update(built(
                    Update::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .update_expression(update)
                        .condition_expression(condition)
                        .set_expression_attribute_values(some(values))
                        .return_values_on_condition_check_failure(old)
                        .build(),
                )?)
                .build(),
        })
    }
}

impl DynamoStore {
    /// Sends one conditional write. No write of the adapter's hot path is a transaction (a
    /// transaction bills every item twice): a header or step write carries its own history
    /// in the item's `ev` list; only `put_steps` of several records is one.
    pub(super) async fn commit(&self, write: Write) -> Result<Written, StoreError> {
        let old = ReturnValuesOnConditionCheckFailure::AllOld;
        match write {
            Write::Put {
                item,
                condition,
                values,
            } => {
                let res = self
                    .client
                    .put_item()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .set_expression_attribute_values(some(values))
                    .return_values_on_condition_check_failure(old)
                    .send()
                    .await;
                outcome("PutItem", res)
            }
            Write::Update {
                key,
                update,
                condition,
                values,
            } => {
                let res = self
                    .client
                    .update_item()
                    .table_name(&self.table)
                    .set_key(Some(key))
                    .update_expression(update)
                    .condition_expression(condition)
                    .set_expression_attribute_values(some(values))
                    .return_values_on_condition_check_failure(old)
                    .send()
                    .await;
                outcome("UpdateItem", res)
            }
        }
    }

    /// The header write of `put_header`, `end_run` and `acquire_lease`: body and version,
    /// and the write's events appended to the header's own `ev` list (as a step write does),
    /// so the index keys and the projected `workflow` are untouched, no index item is
    /// rewritten, and a header change and its history are one item write.
    ///
    /// `journal` (`end_run` only): an entry of held-back step records, appended to the
    /// header's `J` list in the same write ([`journal_entry`]).
    pub(super) fn header_update(
        h: &RunHeader,
        new_version: u64,
        events: &[HistoryEvent],
        journal: Option<AttributeValue>,
    ) -> Result<Write, StoreError> {
        let mut vals = values([
            (":body", header_body(h)?),
            (":new", n(new_version)),
            (":read", n(h.version)),
        ]);
        let mut update = String::from("SET body = :body, ver = :new");
        if !events.is_empty() {
            let batch = event_batch(&new_seq(), &h.run_id, events)?;
            update.push_str(", ev = list_append(if_not_exists(ev, :none), :batch)");
            vals.insert(":none".into(), AttributeValue::L(Vec::new()));
            vals.insert(":batch".into(), AttributeValue::L(vec![batch]));
        }
        if let Some(entry) = journal {
            update.push_str(", J = list_append(if_not_exists(J, :none), :journal)");
            vals.insert(":none".into(), AttributeValue::L(Vec::new()));
            vals.insert(":journal".into(), AttributeValue::L(vec![entry]));
        }
        // An ended run leaves the sparse `active` index (one index delete per run, at its end).
        if h.status.is_terminal() {
            update.push_str(" REMOVE GSI3PK, GSI3SK");
        }
        Ok(Write::Update {
            key: item_key(run_pk(&h.run_id), HEADER_SK),
            update,
            condition: "ver = :read",
            values: vals,
        })
    }

    /// The step write: body and version, and the step's events appended to its `ev` list.
    ///
    /// A new step is one whole-item `PutItem` rather than an `UpdateItem` that creates it: the
    /// result is the same on DynamoDB, but moto creates an updated item keys-first and fills
    /// the attributes after, so a concurrent read there saw a step without its `body`.
    pub(super) fn step_write(
        run_id: &str,
        rec: &StepRecord,
        events: &[HistoryEvent],
    ) -> Result<Write, StoreError> {
        let new_version = rec.version + 1;
        let body = step_body(rec, run_id)?;
        let seq = new_seq();
        let batch = if events.is_empty() {
            None
        } else {
            Some(event_batch(&seq, run_id, events)?)
        };
        let key = item_key(run_pk(run_id), step_sk(&rec.step));
        if rec.version == 0 {
            return Ok(Self::new_step_item(key, body, new_version, seq, batch));
        }
        let mut vals = values([
            (":body", body),
            (":new", n(new_version)),
            (":read", n(rec.version)),
        ]);
        let mut update = String::from("SET body = :body, ver = :new");
        if let Some(batch) = batch {
            update.push_str(", ev = list_append(if_not_exists(ev, :none), :batch)");
            vals.insert(":none".into(), AttributeValue::L(Vec::new()));
            vals.insert(":batch".into(), AttributeValue::L(vec![batch]));
        }
        Ok(Write::Update {
            key,
            update,
            condition: "ver = :read",
            values: vals,
        })
    }

    /// A step item that must not exist yet: a new record, or one moved out of the header's
    /// journal (`cseq` then the journal's, so the run's records keep their order).
    fn new_step_item(
        mut item: DynamoItem,
        body: AttributeValue,
        version: u64,
        cseq: String,
        batch: Option<AttributeValue>,
    ) -> Write {
        item.insert("body".into(), body);
        item.insert("ver".into(), n(version));
        item.insert("cseq".into(), s(cseq));
        if let Some(batch) = batch {
            item.insert("ev".into(), AttributeValue::L(vec![batch]));
        }
        Write::put_new(item)
    }

    /// The write of a record whose stored version lives in the header's journal (held back
    /// until its run's end): a new step item at the next version, on the condition that
    /// there is none yet — a second writer that read the same version then conflicts.
    pub(super) fn step_out_of_journal(
        run_id: &str,
        rec: &StepRecord,
        events: &[HistoryEvent],
        cseq: &str,
    ) -> Result<Write, StoreError> {
        let body = step_body(rec, run_id)?;
        let batch = if events.is_empty() {
            None
        } else {
            Some(event_batch(&new_seq(), run_id, events)?)
        };
        let key = item_key(run_pk(run_id), step_sk(&rec.step));
        Ok(Self::new_step_item(
            key,
            body,
            rec.version + 1,
            cseq.to_string(),
            batch,
        ))
    }

    /// The `E#` item for `events` that belong to no write of the header or a step
    /// (`append_events`), if there are any.
    pub(super) fn history(
        run_id: &str,
        events: &[HistoryEvent],
    ) -> Result<Option<DynamoItem>, StoreError> {
        if events.is_empty() {
            Ok(None)
        } else {
            events_item(run_id, events).map(Some)
        }
    }
}
