//! Stats buckets: the hour buckets a run's aggregates are added to, and reading them back.
//!
//! Two item shapes share a tenant's `STATS#` partition:
//! - a **bucket item** per bucket key (`<hour>#<workflow>#<step>#<model>#<prompt version>`):
//!   what `create_run` adds `started` to (the run bucket, a small item: one write unit), and
//!   what every figure went to before issue 25;
//! - an **ends item** per workflow and hour (`<hour>#<workflow>#*`, `L = ends`): what a run's
//!   end adds all its buckets to in one `UpdateItem` — the run bucket and one per step. Each
//!   bucket's counters are named `<id>.<counter>` (`r` for the run bucket; for a step, 8
//!   base64url characters of SHA-256 of step, model and prompt version) and described by
//!   `D.<id>` = the JSON array `[kind, order, step, model, prompt version]`. DynamoDB bills
//!   a write by the whole item's size: an end write costs what the item weighs, 1 WRU for
//!   the examples in `make bench-aws`, 2.74 WRU per run with `started` over 300 runs in
//!   `make bench-stats`; in a busy hour whose latency histograms spread over many bins the
//!   item, and each end write, grows (each counter carries its 9-byte bucket id).
//!
//! A read explodes both shapes into buckets and sums those of one key (`stats::merge`).

use super::*;

/// The `L` attribute of an ends item.
const ENDS_LAYOUT: &str = "ends";
/// Counters per `UpdateItem` of an ends item: each `ADD #cN :cN, ` is ~15 bytes of the 4 KB
/// an update expression may hold. A run with more (a long chain of model steps) is added in
/// several updates of the same item.
pub(super) const MAX_ADDS: usize = 150;

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

/// The sort key of the ends item of `workflow`'s runs created in `hour`.
pub(super) fn ends_sk(hour: Millis, workflow: &str) -> String {
    format!("{hour:013}#{}#*", escape(workflow))
}

/// A bucket's id in an ends item: `r` for the run bucket, else 8 base64url characters (48
/// bits) of SHA-256 of step, model and prompt version — stable across processes, and two
/// keys of one workflow-hour colliding is a 1-in-10^9 event at a thousand step keys.
pub(super) fn bucket_id(k: &BucketKey) -> String {
    use sha2::Digest;
    if k.step.is_empty() && k.model.is_empty() && k.prompt_version.is_empty() {
        return "r".into();
    }
    let parts = serde_json::json!([k.step, k.model, k.prompt_version]);
    let digest = sha2::Sha256::digest(parts.to_string().as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..6])
}

/// The updates that add a run's end buckets to its ends item: `(key, update, names,
/// values)`, one per [`MAX_ADDS`] counters (usually one). Every update `SET`s the item's
/// description and the descriptions of the buckets whose counters it adds.
pub(super) fn ends_updates(
    buckets: &[Bucket],
) -> Vec<(DynamoItem, String, HashMap<String, String>, Values)> {
    // One item per tenant, workflow and hour (a run's buckets share them).
    let mut groups: Vec<(&BucketKey, Vec<&Bucket>)> = Vec::new();
    for b in buckets {
        let k = &b.key;
        match groups
            .iter_mut()
            .find(|(g, _)| g.tenant == k.tenant && g.workflow == k.workflow && g.hour == k.hour)
        {
            Some((_, list)) => list.push(b),
            None => groups.push((k, vec![b])),
        }
    }
    let mut out = Vec::new();
    for (k, list) in groups {
        // (bucket, its id, counter name, value) in order, then cut into chunks; each bucket's
        // id hashed once.
        let counters: Vec<(&Bucket, std::rc::Rc<str>, &String, AttributeValue)> = list
            .iter()
            .flat_map(|b| {
                let id: std::rc::Rc<str> = bucket_id(&b.key).into();
                b.counters
                    .0
                    .iter()
                    .filter_map(move |(name, v)| number(*v).map(|v| (*b, id.clone(), name, v)))
            })
            .collect();
        for chunk in counters.chunks(MAX_ADDS) {
            let mut vals = values([
                (":T", s(&k.tenant)),
                (":W", s(&k.workflow)),
                (":HR", n(k.hour)),
                (":L", s(ENDS_LAYOUT)),
            ]);
            let mut names = HashMap::new();
            let mut sets = vec![
                "T = :T".to_string(),
                "W = :W".into(),
                "HR = :HR".into(),
                "L = :L".into(),
            ];
            let mut adds = Vec::new();
            let mut described: Vec<&str> = Vec::new();
            for (i, (b, id, name, v)) in chunk.iter().enumerate() {
                let id: &str = id;
                if !described.contains(&id) {
                    let d = described.len();
                    names.insert(format!("#d{d}"), format!("D.{id}"));
                    let description = serde_json::json!([
                        b.kind,
                        b.ord,
                        b.key.step,
                        b.key.model,
                        b.key.prompt_version
                    ]);
                    vals.insert(format!(":d{d}"), s(description.to_string()));
                    sets.push(format!("#d{d} = :d{d}"));
                    described.push(id);
                }
                names.insert(format!("#c{i}"), format!("{id}.{name}"));
                vals.insert(format!(":c{i}"), v.clone());
                adds.push(format!("#c{i} :c{i}"));
            }
            let update = format!("SET {} ADD {}", sets.join(", "), adds.join(", "));
            let key = item_key(stats_pk(&k.tenant), ends_sk(k.hour, &k.workflow));
            out.push((key, update, names, vals));
        }
    }
    out
}

/// A stored item of the stats partition back as buckets: one for a bucket item, one per
/// described bucket for an ends item.
pub(super) fn read_buckets(item: &DynamoItem) -> Result<Vec<Bucket>, StoreError> {
    match item.get("L") {
        Some(AttributeValue::S(l)) if l == ENDS_LAYOUT => read_ends(item),
        _ => Ok(vec![read_bucket(item)?]),
    }
}

fn read_ends(item: &DynamoItem) -> Result<Vec<Bucket>, StoreError> {
    let what = "a stats ends item";
    let corrupt = |why: String| StoreError::Corrupt(format!("{what}: {why}"));
    let tenant = attr_s(item, "T", what)?;
    let workflow = attr_s(item, "W", what)?;
    let hour = attr_n(item, "HR", what)?;
    let mut out: BTreeMap<&str, Bucket> = BTreeMap::new();
    for (name, v) in item {
        let Some(id) = name.strip_prefix("D.") else {
            continue;
        };
        let AttributeValue::S(d) = v else {
            return Err(corrupt(format!("`{name}` is not a string")));
        };
        let (kind, ord, step, model, pv): (String, u32, String, String, String) =
            serde_json::from_str(d).map_err(|_| corrupt(format!("`{name}` = {d:?}")))?;
        out.insert(
            id,
            Bucket {
                key: BucketKey {
                    tenant: tenant.to_string(),
                    workflow: workflow.to_string(),
                    hour,
                    step,
                    model,
                    prompt_version: pv,
                },
                kind,
                ord,
                counters: Counters::default(),
            },
        );
    }
    for (name, v) in item {
        let AttributeValue::N(num) = v else { continue };
        let Some((id, counter)) = name.split_once('.') else {
            continue; // `HR`
        };
        let b = out
            .get_mut(id)
            .ok_or_else(|| corrupt(format!("`{name}` has no `D.{id}`")))?;
        let v: f64 = num
            .parse()
            .map_err(|_| corrupt(format!("`{name}` = {num}")))?;
        b.counters.add(counter, v);
    }
    Ok(out.into_values().collect())
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
    /// Adds a run's figures after the write that created or ended the run: at creation its
    /// `started` to its run bucket item, at its end every bucket to the workflow-hour's ends
    /// item in one `UpdateItem ADD` (module docs). Not in one transaction with that write (a
    /// transaction bills every item twice): the figures are added **at most once** — the
    /// header write happens once, and an add that fails (after the SDK's own retries) is
    /// logged and left out rather than failing a run that has already ended. `switchyard
    /// stats` can then miss a run a crash or an outage cut off between the two writes; the
    /// run's own records are exact.
    pub(super) async fn add_figures(&self, run_id: &str, buckets: &[Bucket], ended: bool) {
        let updates = if ended {
            ends_updates(buckets)
        } else {
            buckets.iter().map(stats_update).collect()
        };
        for (key, update, names, vals) in updates {
            let sk = attr_s(&key, "SK", "a stats key")
                .unwrap_or_default()
                .to_string();
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
                tracing::warn!(run_id, bucket = %sk, error = %e, "stats bucket not added: the run's figures are missing from it");
            }
        }
    }
}
