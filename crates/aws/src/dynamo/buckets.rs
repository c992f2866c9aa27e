//! Stats buckets: the hour buckets a run's aggregates are added to, and reading them back.

use super::*;

/// A transaction holds at most this many items.
pub(super) const TRANSACT_MAX: usize = 100;
/// Tries of a run's end transaction that DynamoDB cancels because another transaction was
/// busy with one of its (shared) stats items (`TransactionConflict`).
pub(super) const STATS_CONFLICT_ATTEMPTS: u32 = 5;
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

pub(super) fn stats_transact_item(
    table: &str,
    b: &Bucket,
) -> Result<TransactWriteItem, StoreError> {
    let (key, update, names, vals) = stats_update(b);
    Ok(TransactWriteItem::builder()
        .update(built(
            Update::builder()
                .table_name(table)
                .set_key(Some(key))
                .update_expression(update)
                .set_expression_attribute_names((!names.is_empty()).then_some(names))
                .set_expression_attribute_values(some(vals))
                .build(),
        )?)
        .build())
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
    /// Sends `items` as one transaction, again (after a short, growing pause) while DynamoDB
    /// cancels it for a `TransactionConflict` on a stats item other runs' ends also add to:
    /// the conditions still hold, so sending it again is what the caller would do anyway.
    pub(super) async fn transact_with_stats(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Written, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            match outcome("TransactWriteItems", res) {
                Err(StoreError::Conflict(m)) if attempt < STATS_CONFLICT_ATTEMPTS => {
                    let pause = 10 * u64::from(attempt)
                        + u64::from(uuid::Uuid::new_v4().as_bytes()[0] % 20);
                    tracing::debug!(attempt, reason = %m, "stats transaction conflict; again");
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                other => return other,
            }
        }
    }

    /// Adds buckets one `UpdateItem` each (atomic each, not together): the step buckets of a
    /// run that did not fit its end transaction.
    pub(super) async fn add_buckets(&self, buckets: &[Bucket]) -> Result<(), StoreError> {
        for b in buckets {
            let (key, update, names, vals) = stats_update(b);
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key))
                .update_expression(update)
                .set_expression_attribute_names((!names.is_empty()).then_some(names))
                .set_expression_attribute_values(some(vals))
                .send()
                .await
                .map_err(|e| dynamo_error("UpdateItem", e))?;
        }
        Ok(())
    }
}
