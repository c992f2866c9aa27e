//! Stats buckets: the hour buckets a run's aggregates are added to, and reading them back.
//!
//! Two item shapes share a tenant's `STATS#` partition:
//! - a **bucket item** per bucket key (`<hour>#<workflow>#<step>#<model>#<prompt version>`):
//!   what every figure went to before issue 25, and what `create_run` added `started` to
//!   until its fourth session (now nothing: the stats count the runs in flight from the
//!   `active` index, which saves a write per run). Still read;
//! - an **ends item** per workflow and hour (`<hour>#<workflow>#*`, `L = ends`): what a run's
//!   end adds all its buckets to in one `UpdateItem` — the run bucket and one per step. Each
//!   bucket's counters are named `<id>.<counter>` (`r` for the run bucket; for a step, 8
//!   base64url characters of SHA-256 of step, model and prompt version) and described by
//!   `D.<id>` = the JSON array `[kind, order, step, model, prompt version]`. DynamoDB bills
//!   a write by the whole item's size: an end write costs what the item weighs, 1 WRU for
//!   the examples in `make bench-aws`; 2.74 WRU per run over 300 runs of one hour in `make
//!   bench-stats` when it still counted `started` (one of those units); in a busy hour whose latency histograms spread over many bins the
//!   item, and each end write, grows (each counter carries its 9-byte bucket id).
//!
//! A read explodes both shapes into buckets and sums those of one key (`stats::merge`).

use super::*;

/// The `L` attribute of an ends item.
const ENDS_LAYOUT: &str = "ends";
/// The most counters (`ADD` actions) one ends update carries. Each is `#c<n> :c<n>, ` and,
/// for a bucket's first counter, `#d<n> = :d<n>, ` (`n` in base 36, at most two characters
/// here): at most ~3.7 KB, within the 4 KB DynamoDB takes per expression. DynamoDB would take
/// ~300 counters, but moto — the emulator every test and `make bench-aws` run on — answers
/// HTTP 500 past ~155 `ADD` actions in one expression, so the path the tests check is the one
/// deployed. A run with more (a chain of 40 model steps has ~280) is added in several updates
/// of the same item, each billed on the whole item.
pub(super) const MAX_ADDS: usize = 150;

/// The bucket attributes that are not counters (counters are lowercase names).
pub(super) const STATS_META: [&str; 10] = ["PK", "SK", "T", "W", "HR", "ST", "M", "PV", "K", "O"];

pub(super) fn stats_pk(tenant: &str) -> String {
    format!("STATS#{}", escape(tenant))
}

/// A counter's value as a DynamoDB number (`None` for one that is not finite).
pub(super) fn number(v: f64) -> Option<AttributeValue> {
    v.is_finite().then(|| AttributeValue::N(format!("{v}")))
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
/// values)`, one per [`MAX_ADDS`] counters (usually one). Every
/// update `SET`s the item's description and the descriptions of the buckets whose counters
/// it adds.
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
        let key = item_key(stats_pk(&k.tenant), ends_sk(k.hour, &k.workflow));
        let mut update = EndsUpdate::new(k);
        for b in list {
            let id = bucket_id(&b.key);
            for (name, v) in &b.counters.0 {
                let Some(v) = number(*v) else { continue };
                if !update.add(b, &id, name, &v) {
                    out.push(update.finish(key.clone()));
                    update = EndsUpdate::new(k);
                    update.add(b, &id, name, &v);
                }
            }
        }
        if !update.adds.is_empty() {
            out.push(update.finish(key));
        }
    }
    out
}

/// One update of an ends item being built: its `SET` and `ADD` clauses, placeholders and the
/// buckets it already describes.
struct EndsUpdate {
    sets: Vec<String>,
    adds: Vec<String>,
    names: HashMap<String, String>,
    vals: Values,
    described: Vec<String>,
}

impl EndsUpdate {
    fn new(k: &BucketKey) -> EndsUpdate {
        let vals = values([
            (":T", s(&k.tenant)),
            (":W", s(&k.workflow)),
            (":HR", n(k.hour)),
            (":L", s(ENDS_LAYOUT)),
        ]);
        let sets: Vec<String> = ["T = :T", "W = :W", "HR = :HR", "L = :L"]
            .map(String::from)
            .to_vec();
        EndsUpdate {
            sets,
            adds: Vec::new(),
            names: HashMap::new(),
            vals,
            described: Vec::new(),
        }
    }

    /// Adds one counter (and its bucket's description, if this update has none yet) unless
    /// the update holds [`MAX_ADDS`] already: then `false` and nothing added.
    fn add(&mut self, b: &Bucket, id: &str, name: &str, v: &AttributeValue) -> bool {
        if self.adds.len() >= MAX_ADDS {
            return false;
        }
        let describe = !self.described.iter().any(|d| d == id);
        let d = base36(self.described.len());
        let c = base36(self.adds.len());
        if describe {
            self.names.insert(format!("#d{d}"), format!("D.{id}"));
            let description =
                serde_json::json!([b.kind, b.ord, b.key.step, b.key.model, b.key.prompt_version]);
            self.vals
                .insert(format!(":d{d}"), s(description.to_string()));
            self.sets.push(format!("#d{d} = :d{d}"));
            self.described.push(id.to_string());
        }
        self.names.insert(format!("#c{c}"), format!("{id}.{name}"));
        self.vals.insert(format!(":c{c}"), v.clone());
        self.adds.push(format!("#c{c} :c{c}"));
        true
    }

    fn finish(self, key: DynamoItem) -> (DynamoItem, String, HashMap<String, String>, Values) {
        let update = format!("SET {} ADD {}", self.sets.join(", "), self.adds.join(", "));
        (key, update, self.names, self.vals)
    }
}

/// `n` in base 36 (placeholders stay two characters up to 1,295).
fn base36(mut n: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
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
    pub(super) async fn add_figures(&self, run_id: &str, buckets: &[Bucket]) {
        for (key, update, names, vals) in ends_updates(buckets) {
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
