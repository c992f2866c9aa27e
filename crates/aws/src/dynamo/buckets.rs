//! Stats buckets: the hour buckets a run's aggregates are added to, and reading them back.

use super::*;

/// The bucket attributes that are not counters (counters are lowercase names).
pub(super) const STATS_META: [&str; 10] = ["PK", "SK", "T", "W", "HR", "ST", "M", "PV", "K", "O"];

pub(super) fn stats_pk(tenant: &str) -> String {
    format!("STATS#{}", escape(tenant))
}

/// `<hour, 13 digits>#<workflow>#<step>#<model>#<prompt version>`, each part escaped: the
/// hour first, so a window is one key range of the tenant's partition.
pub(super) fn stats_sk(k: &BucketKey) -> String {
    format!(
        "{:013}#{}#{}#{}#{}",
        k.hour,
        escape(&k.workflow),
        escape(&k.step),
        escape(&k.model),
        escape(&k.prompt_version)
    )
}

/// A counter's value as a DynamoDB number (`None` for one that is not finite).
pub(super) fn number(v: f64) -> Option<AttributeValue> {
    v.is_finite().then(|| AttributeValue::N(format!("{v}")))
}

/// `SET` the bucket's description, `ADD` its counters: `(key, update, names, values)`.
pub(super) fn stats_update(b: &Bucket) -> (DynamoItem, String, HashMap<String, String>, Values) {
    let k = &b.key;
    let key = item_key(stats_pk(&k.tenant), stats_sk(k));
    let mut vals = values([
        (":T", s(&k.tenant)),
        (":W", s(&k.workflow)),
        (":HR", n(k.hour)),
        (":ST", s(&k.step)),
        (":M", s(&k.model)),
        (":PV", s(&k.prompt_version)),
        (":K", s(&b.kind)),
        (":O", n(u64::from(b.ord))),
    ]);
    let mut update =
        String::from("SET T = :T, W = :W, HR = :HR, ST = :ST, M = :M, PV = :PV, K = :K, O = :O");
    let mut names = HashMap::new();
    let mut adds = Vec::new();
    for (i, (name, v)) in b.counters.0.iter().enumerate() {
        let Some(v) = number(*v) else { continue };
        names.insert(format!("#c{i}"), name.clone());
        vals.insert(format!(":c{i}"), v);
        adds.push(format!("#c{i} :c{i}"));
    }
    if !adds.is_empty() {
        update.push_str(" ADD ");
        update.push_str(&adds.join(", "));
    }
    (key, update, names, vals)
}

/// A stored bucket item back as a bucket.
pub(super) fn read_bucket(item: &DynamoItem) -> Result<Bucket, StoreError> {
    let what = "a stats bucket";
    let mut counters = Counters::default();
    for (name, v) in item {
        if STATS_META.contains(&name.as_str()) {
            continue;
        }
        if let AttributeValue::N(num) = v {
            let v: f64 = num
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("{what}: `{name}` = {num}")))?;
            counters.add(name, v);
        }
    }
    Ok(Bucket {
        key: BucketKey {
            tenant: attr_s(item, "T", what)?.to_string(),
            workflow: attr_s(item, "W", what)?.to_string(),
            hour: attr_n(item, "HR", what)?,
            step: attr_s(item, "ST", what)?.to_string(),
            model: attr_s(item, "M", what)?.to_string(),
            prompt_version: attr_s(item, "PV", what)?.to_string(),
        },
        kind: attr_s(item, "K", what)?.to_string(),
        ord: u32::try_from(attr_n(item, "O", what)?).unwrap_or(u32::MAX),
        counters,
    })
}

impl DynamoStore {
    /// Adds a run's figures to its buckets, one `UpdateItem ADD` each, after the write that
    /// created or ended the run. Not in one transaction with that write (a transaction bills
    /// every item twice, and a run's end touches one bucket per step): the figures are added
    /// **at most once** — the header write happens once, and a bucket whose add fails (after
    /// the SDK's own retries) is logged and left out rather than failing a run that has
    /// already ended. `switchyard stats` can then miss a run a crash or an outage cut off
    /// between the two writes; the run's own records are exact.
    pub(super) async fn add_figures(&self, run_id: &str, buckets: &[Bucket]) {
        for b in buckets {
            let (key, update, names, vals) = stats_update(b);
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression(update)
                .set_expression_attribute_names((!names.is_empty()).then_some(names))
                .set_expression_attribute_values(some(vals))
                .send()
                .await;
            if let Err(e) = res {
                let e = dynamo_error("UpdateItem", e);
                tracing::warn!(run_id, bucket = %stats_sk(&b.key), error = %e, "stats bucket not added: the run's figures are missing from it");
            }
        }
    }
}
