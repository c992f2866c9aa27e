//! Items: how a run header, a step record and a batch of history events are laid out
//! as DynamoDB items, and read back.

use super::packing::{pack, unpack, BODY_PACK_FROM, EVENTS_PACK_FROM};
use super::*;
use serde_json::Value;

/// A fresh history position: UUIDv7s of one process sort in creation order.
pub(super) fn new_seq() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// One write's events as stored: `<seq> <JSON array>`, as text while it is small and packed
/// (`packing`: deflated against the preset dictionary) from [`EVENTS_PACK_FROM`] bytes on,
/// when that is smaller. A header or step item carries every batch of its history in its `ev`
/// list, and each later write of the item is billed on the whole item's size, so a batch's
/// bytes are paid again by every write after it.
pub(super) fn event_batch(
    seq: &str,
    run_id: &str,
    events: &[HistoryEvent],
) -> Result<AttributeValue, StoreError> {
    let json = to_json(events, &format!("events of run {run_id}"))?;
    Ok(pack(format!("{seq} {json}"), EVENTS_PACK_FROM))
}

/// The most bytes one `end_run` adds to the header item for its held-back records: the
/// journal entry as stored (packed) and their history (as JSON, an upper bound of what is
/// stored) — beside the run's own history, well under DynamoDB's 400 KB item. An end whose
/// records weigh more is refused, never split.
pub(super) const JOURNAL_MAX_BYTES: usize = 64 * 1024;

/// The records `end_run` keeps in the header item (its `J` list, one entry per end): the
/// string `<seq> <JSON array of whole step records>`, packed like an event batch. Each
/// record's creation order (`cseq`) is `<seq>.<index, 3 digits>`: after every step item
/// written before it, in the order the records were held.
pub(super) fn journal_entry(
    seq: &str,
    run_id: &str,
    records: &[StepRecord],
) -> Result<AttributeValue, StoreError> {
    let json = to_json(records, &format!("held records of run {run_id}"))?;
    Ok(pack(format!("{seq} {json}"), EVENTS_PACK_FROM))
}

/// The bytes an entry of [`journal_entry`] stores.
pub(super) fn stored_len(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        AttributeValue::B(bytes) => bytes.as_ref().len(),
        _ => 0,
    }
}

/// The records in a header item's journal (`J`), each with its creation order.
pub(super) fn read_journal(
    item: &DynamoItem,
    run_id: &str,
) -> Result<Vec<(String, StepRecord)>, StoreError> {
    let Some(AttributeValue::L(entries)) = item.get("J") else {
        return Ok(Vec::new());
    };
    let what = format!("held records of run {run_id}");
    let mut out = Vec::new();
    for entry in entries {
        let text = read_text(entry, &what)?;
        let (seq, json) = text
            .split_once(' ')
            .ok_or_else(|| StoreError::Corrupt(format!("{what}: an entry has no sequence")))?;
        let records: Vec<StepRecord> = from_json(json, &what)?;
        for (i, rec) in records.into_iter().enumerate() {
            out.push((format!("{seq}.{i:03}"), rec));
        }
    }
    Ok(out)
}

/// A list entry that is text or packed text (`ev` batches, `J` entries), as text.
fn read_text<'a>(
    entry: &'a AttributeValue,
    what: &str,
) -> Result<std::borrow::Cow<'a, str>, StoreError> {
    match entry {
        AttributeValue::S(text) => Ok(text.as_str().into()),
        AttributeValue::B(packed) => {
            let bytes = unpack(packed.as_ref(), MAX_BODY).map_err(|e| {
                StoreError::Corrupt(format!("{what}: an entry does not inflate: {e}"))
            })?;
            String::from_utf8(bytes)
                .map(Into::into)
                .map_err(|_| StoreError::Corrupt(format!("{what}: an entry is not UTF-8")))
        }
        _ => Err(StoreError::Corrupt(format!(
            "{what}: an entry is neither text nor deflated text"
        ))),
    }
}

/// An `E#<seq>` item holding the events of a header write or an `append_events` call.
pub(super) fn events_item(run_id: &str, events: &[HistoryEvent]) -> Result<DynamoItem, StoreError> {
    let seq = new_seq();
    let mut item = item_key(run_pk(run_id), format!("E#{seq}"));
    item.insert(
        "ev".into(),
        AttributeValue::L(vec![event_batch(&seq, run_id, events)?]),
    );
    Ok(item)
}

/// A record's JSON as its `body` attribute: text while it is small, packed (binary) from
/// [`BODY_PACK_FROM`] bytes on, when that is smaller.
pub(super) fn body_value(json: String) -> AttributeValue {
    pack(json, BODY_PACK_FROM)
}

/// The JSON of a record without the fields its item's keys and `ver` already hold (a
/// header's `run_id` and `version`, and `cancel_requested` while false; a step's `step` and
/// `version`): each write of the item would pay for them again. [`read_body`] puts them back.
fn slim_json<T: Serialize>(
    record: &T,
    drop: &[&str],
    drop_if_false: &[&str],
    what: &str,
) -> Result<String, StoreError> {
    let mut value =
        serde_json::to_value(record).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))?;
    if let Value::Object(map) = &mut value {
        for key in drop {
            map.remove(*key);
        }
        for key in drop_if_false {
            if map.get(*key) == Some(&Value::Bool(false)) {
                map.remove(*key);
            }
        }
    }
    to_json(&value, what)
}

/// The record in an item's `body`, text or packed, whole again: `version` is the item's
/// `ver` (what conditions compare), and `name`'s field (a header's `run_id`, a step's
/// `step`) is put back where the body has none (bodies written before [`slim_json`] still
/// carry it).
fn read_body<T: DeserializeOwned>(
    item: &DynamoItem,
    what: &str,
    name: (&str, &str),
) -> Result<T, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("{what}: {why}"));
    let version = attr_n(item, "ver", what)?;
    let mut value: Value = match item.get("body") {
        Some(AttributeValue::S(text)) => from_json(text, what)?,
        Some(AttributeValue::B(packed)) => {
            let json = unpack(packed.as_ref(), MAX_BODY)
                .map_err(|e| corrupt(format!("body does not inflate: {e}")))?;
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?
        }
        _ => return Err(corrupt("no `body`".into())),
    };
    let Value::Object(map) = &mut value else {
        return Err(corrupt("the body is not a JSON object".into()));
    };
    map.insert("version".into(), Value::from(version));
    map.entry(name.0.to_string())
        .or_insert_with(|| Value::from(name.1));
    serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))
}

/// The header's JSON as its `body` (the version is `ver`'s: the body leaves it out).
pub(super) fn header_body(h: &RunHeader) -> Result<AttributeValue, StoreError> {
    Ok(body_value(slim_json(
        h,
        &["run_id", "version"],
        &["cancel_requested"],
        &format!("header of run {}", h.run_id),
    )?))
}

/// A step record's JSON as its `body` (the step's name is its key's, the version `ver`'s).
pub(super) fn step_body(rec: &StepRecord, run_id: &str) -> Result<AttributeValue, StoreError> {
    Ok(body_value(slim_json(
        rec,
        &["step", "version"],
        &[],
        &format!("step {} of run {run_id}", rec.step),
    )?))
}

/// The whole header item, as `create_run` puts it: the index keys are written once, here.
pub(super) fn header_item(h: &RunHeader) -> Result<DynamoItem, StoreError> {
    let sk = index_sk(h.created_at, &h.run_id);
    let mut item = item_key(run_pk(&h.run_id), HEADER_SK);
    item.extend([
        ("ver".to_string(), n(1)),
        ("body".to_string(), header_body(h)?),
        (INDEX_PROJECTED.to_string(), s(&h.workflow.name)),
        ("GSI1PK".to_string(), s(tenant_pk(&h.tenant))),
        ("GSI1SK".to_string(), s(sk.clone())),
        ("GSI2PK".to_string(), s(ALL_RUNS_PK)),
        ("GSI2SK".to_string(), s(sk.clone())),
    ]);
    if !h.status.is_terminal() {
        item.extend([
            ("GSI3PK".to_string(), s(ACTIVE_PK)),
            ("GSI3SK".to_string(), s(sk)),
        ]);
    }
    Ok(item)
}

/// The `active` index's key of a run (what `ExclusiveStartKey` takes).
pub(super) fn active_key(created_at: Millis, run_id: &str) -> DynamoItem {
    let mut key = item_key(run_pk(run_id), HEADER_SK);
    key.insert("GSI3PK".into(), s(ACTIVE_PK));
    key.insert("GSI3SK".into(), s(index_sk(created_at, run_id)));
    key
}

/// The sweep's cursor: `a1.<created_at>.<run_id>` of the last run of the page.
pub(super) fn encode_active_cursor(created_at: Millis, run_id: &str) -> String {
    switchyard_core::ports::encode_cursor("a1", created_at, run_id)
}

pub(super) fn decode_active_cursor(cursor: &str) -> Result<(Millis, String), StoreError> {
    switchyard_core::ports::decode_cursor("a1", cursor)
}

/// A stored header.
pub(super) fn read_header(item: &DynamoItem, run_id: &str) -> Result<RunHeader, StoreError> {
    read_body(item, &format!("header of run {run_id}"), ("run_id", run_id))
}

/// A stored step record, with its creation order (`cseq`).
pub(super) fn read_step(
    item: &DynamoItem,
    run_id: &str,
) -> Result<(String, StepRecord), StoreError> {
    let sk = attr_s(item, "SK", &format!("an item of run {run_id}"))?;
    let step = sk.trim_start_matches("S#");
    let what = format!("step {step} of run {run_id}");
    let rec = read_body(item, &what, ("step", step))?;
    Ok((attr_s(item, "cseq", &what)?.to_string(), rec))
}

/// The event batches of an item (`ev`), as `(seq, events)`.
pub(super) fn read_batches(
    item: &DynamoItem,
    run_id: &str,
    out: &mut Vec<(String, Vec<HistoryEvent>)>,
) -> Result<(), StoreError> {
    let Some(AttributeValue::L(list)) = item.get("ev") else {
        return Ok(());
    };
    let what = format!("events of run {run_id}");
    for entry in list {
        let text = read_text(entry, &what)?;
        let (seq, json) = text
            .split_once(' ')
            .ok_or_else(|| StoreError::Corrupt(format!("{what}: a batch has no sequence")))?;
        out.push((seq.to_string(), from_json(json, &what)?));
    }
    Ok(())
}
