//! Items: how a run header, a step record and a batch of history events are laid out
//! as DynamoDB items, and read back.

use super::*;

/// A fresh history position: UUIDv7s of one process sort in creation order.
pub(super) fn new_seq() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// One write's events as stored: `<seq> <JSON array>`, as text while it is small and deflated
/// (binary) from [`EVENTS_COMPRESS_FROM`] bytes on, when that is smaller. A header or step
/// item carries every batch of its history in its `ev` list, and each later write of the
/// item is billed on the whole item's size, so a batch's bytes are paid again by every write
/// after it (issue 25: on the examples' items, 9% fewer write units than text).
pub(super) fn event_batch(
    seq: &str,
    run_id: &str,
    events: &[HistoryEvent],
) -> Result<AttributeValue, StoreError> {
    let json = to_json(events, &format!("events of run {run_id}"))?;
    Ok(packed_from(format!("{seq} {json}"), EVENTS_COMPRESS_FROM))
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

/// A record's JSON as its `body` attribute: text while it is small, deflated (binary) from
/// [`COMPRESS_FROM`] bytes on, when that is smaller.
pub(super) fn body_value(json: String) -> AttributeValue {
    packed_from(json, COMPRESS_FROM)
}

/// `text` as a string attribute while shorter than `from` bytes, else deflated (binary) when
/// that is smaller.
fn packed_from(text: String, from: usize) -> AttributeValue {
    if text.len() >= from {
        let packed = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6);
        if packed.len() < text.len() {
            return AttributeValue::B(Blob::new(packed));
        }
    }
    AttributeValue::S(text)
}

/// The bytes of a deflated attribute (at most [`MAX_BODY`]); the error says why not.
fn inflate(packed: &Blob) -> Result<Vec<u8>, String> {
    miniz_oxide::inflate::decompress_to_vec_with_limit(packed.as_ref(), MAX_BODY)
        .map_err(|e| e.to_string())
}

/// The record in an item's `body`, text or deflated.
pub(super) fn read_body<T: DeserializeOwned>(
    item: &DynamoItem,
    what: &str,
) -> Result<T, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt(format!("{what}: {why}"));
    match item.get("body") {
        Some(AttributeValue::S(text)) => from_json(text, what),
        Some(AttributeValue::B(packed)) => {
            let json =
                inflate(packed).map_err(|e| corrupt(format!("body does not inflate: {e}")))?;
            serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))
        }
        _ => Err(corrupt("no `body`".into())),
    }
}

/// The header's JSON at the version it will have once written.
pub(super) fn header_body(h: &RunHeader, version: u64) -> Result<AttributeValue, StoreError> {
    let mut h = h.clone();
    h.version = version;
    Ok(body_value(to_json(
        &h,
        &format!("header of run {}", h.run_id),
    )?))
}

/// The whole header item, as `create_run` puts it: the index keys are written once, here.
pub(super) fn header_item(h: &RunHeader) -> Result<DynamoItem, StoreError> {
    let sk = index_sk(h.created_at, &h.run_id);
    let mut item = item_key(run_pk(&h.run_id), HEADER_SK);
    item.extend([
        ("ver".to_string(), n(1)),
        ("body".to_string(), header_body(h, 1)?),
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

/// A stored header, with `ver` (what conditions compare) as its version.
pub(super) fn read_header(item: &DynamoItem, run_id: &str) -> Result<RunHeader, StoreError> {
    let what = format!("header of run {run_id}");
    let mut h: RunHeader = read_body(item, &what)?;
    h.version = attr_n(item, "ver", &what)?;
    Ok(h)
}

pub(super) fn read_step(
    item: &DynamoItem,
    run_id: &str,
) -> Result<(String, StepRecord), StoreError> {
    let sk = attr_s(item, "SK", &format!("an item of run {run_id}"))?;
    let what = format!("step {} of run {run_id}", sk.trim_start_matches("S#"));
    let mut rec: StepRecord = read_body(item, &what)?;
    rec.version = attr_n(item, "ver", &what)?;
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
        let inflated;
        let text = match entry {
            AttributeValue::S(text) => text.as_str(),
            AttributeValue::B(packed) => {
                let bytes = inflate(packed).map_err(|e| {
                    StoreError::Corrupt(format!("{what}: a batch does not inflate: {e}"))
                })?;
                inflated = String::from_utf8(bytes)
                    .map_err(|_| StoreError::Corrupt(format!("{what}: a batch is not UTF-8")))?;
                inflated.as_str()
            }
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "{what}: a batch is neither text nor deflated text"
                )))
            }
        };
        let (seq, json) = text
            .split_once(' ')
            .ok_or_else(|| StoreError::Corrupt(format!("{what}: a batch has no sequence")))?;
        out.push((seq.to_string(), from_json(json, &what)?));
    }
    Ok(())
}
