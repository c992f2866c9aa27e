//! Counting what a deployment asks of AWS: an SDK interceptor ([`Meter`]) that counts requests
//! per service and operation, and estimates the DynamoDB capacity units each request is billed
//! (`make bench-aws`, `crates/lambdas/benches/aws.rs`). Attach it to every client:
//!
//! ```no_run
//! # async fn f(sdk: &aws_config::SdkConfig) {
//! let meter = switchyard_aws::metrics::Meter::for_table();
//! let dynamo = aws_sdk_dynamodb::Client::from_conf(
//!     aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(meter.clone()).build(),
//! );
//! # }
//! ```
//!
//! # Capacity units: ours, from item sizes
//!
//! Emulators report `ConsumedCapacity` as rough constants, so the meter computes units the way
//! DynamoDB documents them, from item sizes ([`item_size`]): it keeps a copy of every item it
//! has seen written or read (a *shadow* of the table) and applies each write to it.
//!
//! - A write (`PutItem`, `UpdateItem`, `DeleteItem`): 1 write request unit per started KB of
//!   the larger of the item before and after. A failed conditional write is billed too (the
//!   size of the stored item, at least 1 unit).
//! - `TransactWriteItems`: twice the units of each of its items.
//! - An index write: when a write creates an item that carries an index's keys (or changes
//!   an indexed or projected attribute), 1 unit per started KB of the index entry (base keys,
//!   index keys, projected attributes).
//! - A read: 1 read request unit per started 4 KB, of the whole stored item even when the
//!   request projects a few attributes; strongly consistent reads 1, eventually consistent ½,
//!   transactional 2. A `Query` sums the sizes of the items it returns and rounds once; a
//!   `BatchGetItem` rounds each item.
//!
//! Update expressions are applied for the forms the store writes (`SET a = :v`,
//! `SET a = list_append(if_not_exists(a, :empty), :new)`, `if_not_exists(a, :v)`); any other
//! form leaves the attribute as it was (and is counted in [`Usage::unparsed_updates`]).
//! Filters are not modelled (a `Query` with a `FilterExpression` is billed what it scanned;
//! the meter sees what it returned).
//!
//! # What the emulator says
//!
//! With [`Meter::ask_consumed_capacity`] the meter sets `ReturnConsumedCapacity = TOTAL` on
//! every DynamoDB request and sums what comes back ([`Usage::reported_write_units`],
//! [`Usage::reported_read_units`]), to print beside its own figure.
//!
//! # SQS and S3
//!
//! Requests are counted per attempt (a retried request is billed again). SQS bills each 64 KB
//! chunk of a request's payload as one request: [`RequestCount::billed`] is the HTTP body's
//! size in 64 KB chunks (at least 1), a slight overestimate (the body carries the request's
//! JSON around the messages). A `ReceiveMessage` that returned no message is counted under
//! the operation name `ReceiveMessage (empty)`.

use crate::dynamo::item_size;
use crate::error::DynamoItem;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::types::{AttributeValue, ConsumedCapacity, ReturnConsumedCapacity};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextMut, BeforeSerializationInterceptorContextRef,
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_types::config_bag::{Storable, StoreReplace};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::operation::{
    batch_get_item::{BatchGetItemInput, BatchGetItemOutput},
    delete_item::{DeleteItemInput, DeleteItemOutput},
    get_item::{GetItemInput, GetItemOutput},
    put_item::{PutItemInput, PutItemOutput},
    query::{QueryInput, QueryOutput},
    transact_write_items::{TransactWriteItemsInput, TransactWriteItemsOutput},
    update_item::{UpdateItemInput, UpdateItemOutput},
};
use aws_sdk_sqs::operation::receive_message::ReceiveMessageOutput;

/// Bytes per write request unit.
const WRITE_UNIT: usize = 1024;
/// Bytes per read request unit.
const READ_UNIT: usize = 4096;
/// Bytes of payload per billed SQS request.
const SQS_CHUNK: usize = 64 * 1024;

/// Requests of one service operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCount {
    /// HTTP requests sent (attempts).
    pub requests: u64,
    /// Billed requests: for SQS, 64 KB chunks of payload; otherwise = `requests`.
    pub billed: u64,
}

/// What the meter counted since it was last taken ([`Meter::take`]).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Per `(service, operation)`, e.g. `("SQS", "SendMessage")`.
    pub requests: BTreeMap<(String, String), RequestCount>,
    /// Write request units per `(operation, item kind)` (kinds: [`item_kind`], and
    /// `index <name>` for index entries).
    pub write_units: BTreeMap<(String, String), f64>,
    /// Read request units per `(operation, item kind)`.
    pub read_units: BTreeMap<(String, String), f64>,
    /// Items written per `(operation, item kind)` (failed ones included).
    pub writes: BTreeMap<(String, String), u64>,
    /// The `ConsumedCapacity` the service answered (write operations' / read operations').
    pub reported_write_units: f64,
    pub reported_read_units: f64,
    /// Whether any response carried `ConsumedCapacity`.
    pub reported: bool,
    /// Update clauses the shadow could not apply (their attribute kept its old value).
    pub unparsed_updates: u64,
}

impl Usage {
    pub fn total_write_units(&self) -> f64 {
        self.write_units.values().sum()
    }

    pub fn total_read_units(&self) -> f64 {
        self.read_units.values().sum()
    }

    /// Requests (or billed requests) of one service.
    pub fn service(&self, service: &str) -> RequestCount {
        let mut sum = RequestCount::default();
        for ((s, _), c) in &self.requests {
            if s.eq_ignore_ascii_case(service) {
                sum.requests += c.requests;
                sum.billed += c.billed;
            }
        }
        sum
    }
}

/// A global secondary index as the meter models it.
#[derive(Debug, Clone)]
pub struct IndexSpec {
    pub name: String,
    pub pk: String,
    pub sk: String,
    pub projected: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    usage: Usage,
    /// `(table, PK, SK)` → the item as stored.
    shadow: HashMap<(String, String, String), DynamoItem>,
}

/// The interceptor (see the module docs). Cheap to clone; clones share their counts.
#[derive(Debug, Clone)]
pub struct Meter {
    state: Arc<Mutex<State>>,
    key: (String, String),
    indexes: Arc<Vec<IndexSpec>>,
    ask: bool,
}

/// The request, kept from before serialization (when the orchestrator still has the input)
/// until the response is in.
#[derive(Debug, Clone)]
enum DynamoRequest {
    Get(Box<GetItemInput>),
    Put(Box<PutItemInput>),
    Update(Box<UpdateItemInput>),
    Delete(Box<DeleteItemInput>),
    Query(Box<QueryInput>),
    BatchGet(Box<BatchGetItemInput>),
    TransactWrite(Box<TransactWriteItemsInput>),
}

#[derive(Debug, Clone)]
struct Pending(DynamoRequest);

impl Storable for Pending {
    type Storer = StoreReplace<Self>;
}

/// The kind of a switchyard table item, from its sort key (`H`, `S#…`, `E#…`, `I`, `W`).
pub fn item_kind(sk: &str) -> &'static str {
    match sk {
        "H" => "run header",
        "I" => "idempotency key",
        "W" => "webhook id",
        _ if sk.starts_with("S#") => "step record",
        _ if sk.starts_with("E#") => "history events",
        // `<hour, 13 digits>#…`: a stats bucket (`dynamo/buckets.rs`).
        _ if sk.len() > 13 && sk.as_bytes()[..13].iter().all(u8::is_ascii_digit) => "stats bucket",
        _ => "other",
    }
}

fn units(size: usize, per: usize) -> f64 {
    size.max(1).div_ceil(per) as f64
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn string_attr(item: &DynamoItem, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(s)) => s.clone(),
        Some(AttributeValue::N(n)) => n.clone(),
        _ => String::new(),
    }
}

/// How a metered write ended, as DynamoDB bills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// A failed condition: billed like the write.
    ConditionFailed,
    /// Failed on DynamoDB's side or unanswered: not billed.
    NotBilled,
}

impl Meter {
    /// A meter for a table of `DynamoStore`'s layout (keys `PK`/`SK`, the three indexes).
    pub fn for_table() -> Meter {
        let projected = vec![crate::dynamo::INDEX_PROJECTED.to_string()];
        Meter {
            state: Arc::default(),
            key: ("PK".into(), "SK".into()),
            indexes: Arc::new(vec![
                IndexSpec {
                    name: crate::dynamo::INDEX_BY_TENANT.into(),
                    pk: "GSI1PK".into(),
                    sk: "GSI1SK".into(),
                    projected: projected.clone(),
                },
                IndexSpec {
                    name: crate::dynamo::INDEX_ALL_RUNS.into(),
                    pk: "GSI2PK".into(),
                    sk: "GSI2SK".into(),
                    projected,
                },
                // Keys only: written when a run is created, deleted when it ends.
                IndexSpec {
                    name: crate::dynamo::INDEX_ACTIVE.into(),
                    pk: "GSI3PK".into(),
                    sk: "GSI3SK".into(),
                    projected: Vec::new(),
                },
            ]),
            ask: false,
        }
    }

    /// Also asks DynamoDB for `ReturnConsumedCapacity = TOTAL` on every request.
    pub fn ask_consumed_capacity(mut self) -> Meter {
        self.ask = true;
        self
    }

    /// The counts since the last `take`, and starts counting afresh (the shadow is kept).
    pub fn take(&self) -> Usage {
        std::mem::take(&mut lock(&self.state).usage)
    }

    fn shadow_key(&self, table: &str, item: &DynamoItem) -> (String, String, String) {
        (
            table.to_string(),
            string_attr(item, &self.key.0),
            string_attr(item, &self.key.1),
        )
    }

    fn index_entry(&self, ix: &IndexSpec, item: &DynamoItem) -> Option<DynamoItem> {
        if !item.contains_key(&ix.pk) || !item.contains_key(&ix.sk) {
            return None;
        }
        let names = [&self.key.0, &self.key.1, &ix.pk, &ix.sk]
            .into_iter()
            .chain(ix.projected.iter());
        Some(
            names
                .filter_map(|n| item.get(n).map(|v| (n.clone(), v.clone())))
                .collect(),
        )
    }

    /// Bills one item write (`factor` 2 in a transaction) and updates the shadow.
    fn bill_write(
        &self,
        st: &mut State,
        op: &str,
        key: (String, String, String),
        after: Option<DynamoItem>,
        factor: f64,
        outcome: Outcome,
    ) {
        let ok = outcome == Outcome::Written;
        let before = st.shadow.get(&key).cloned();
        let size = before.as_ref().map(item_size).unwrap_or(0).max(if ok {
            after.as_ref().map(item_size).unwrap_or(0)
        } else {
            0
        });
        let kind = match outcome {
            Outcome::Written => item_kind(&key.2).to_string(),
            Outcome::ConditionFailed => format!("{} (condition failed)", item_kind(&key.2)),
            Outcome::NotBilled => format!("{} (failed, not billed)", item_kind(&key.2)),
        };
        let slot = (op.to_string(), kind);
        let billed = if outcome == Outcome::NotBilled {
            0.0
        } else {
            factor * units(size, WRITE_UNIT)
        };
        *st.usage.write_units.entry(slot.clone()).or_default() += billed;
        *st.usage.writes.entry(slot).or_default() += 1;
        if !ok {
            return;
        }
        for ix in self.indexes.iter() {
            let old = before.as_ref().and_then(|b| self.index_entry(ix, b));
            let new = after.as_ref().and_then(|a| self.index_entry(ix, a));
            let changed = old != new;
            let mut bill = |entry: &DynamoItem| {
                let slot = (op.to_string(), format!("index {}", ix.name));
                *st.usage.write_units.entry(slot.clone()).or_default() +=
                    factor * units(item_size(entry), WRITE_UNIT);
                *st.usage.writes.entry(slot).or_default() += 1;
            };
            if changed {
                // A changed entry is a delete of the old one and a put of the new one.
                if let Some(o) = &old {
                    bill(o);
                }
                if let Some(n) = &new {
                    bill(n);
                }
            }
        }
        match after {
            Some(a) => st.shadow.insert(key, a),
            None => st.shadow.remove(&key),
        };
    }

    fn bill_read(&self, st: &mut State, op: &str, kind: &str, u: f64) {
        *st.usage
            .read_units
            .entry((op.to_string(), kind.to_string()))
            .or_default() += u;
    }

    /// The size of the stored item for `returned` (a projection of it), from the shadow when
    /// it is there; the shadow takes `returned` when it holds nothing (or only a projection).
    fn stored_size(&self, st: &mut State, table: &str, returned: &DynamoItem) -> usize {
        let key = self.shadow_key(table, returned);
        match st.shadow.get(&key) {
            Some(item) => item_size(item).max(item_size(returned)),
            None => {
                let n = item_size(returned);
                st.shadow.insert(key, returned.clone());
                n
            }
        }
    }

    fn apply_update(
        &self,
        st: &mut State,
        before: Option<DynamoItem>,
        key: &DynamoItem,
        expr: &str,
        values: &HashMap<String, AttributeValue>,
        names: &HashMap<String, String>,
    ) -> DynamoItem {
        let mut item = before.unwrap_or_else(|| key.clone());
        let resolve = |n: &str| names.get(n.trim()).cloned().unwrap_or(n.trim().to_string());
        let mut parsed_set = false;
        for (action, clauses) in update_sections(expr) {
            match action.as_str() {
                // `ADD a :x, b :y` (the stats counters): numbers added, sets of strings joined.
                "ADD" => {
                    for clause in split_top(clauses) {
                        let mut parts = clause.split_whitespace();
                        let (Some(name), Some(value), None) =
                            (parts.next(), parts.next(), parts.next())
                        else {
                            st.usage.unparsed_updates += 1;
                            continue;
                        };
                        let attr = resolve(name);
                        match (item.get(&attr), values.get(value)) {
                            (Some(AttributeValue::N(old)), Some(AttributeValue::N(add))) => {
                                let sum = old.parse::<f64>().unwrap_or(0.0)
                                    + add.parse::<f64>().unwrap_or(0.0);
                                item.insert(attr, AttributeValue::N(format!("{sum}")));
                            }
                            (_, Some(v)) => {
                                item.insert(attr, v.clone());
                            }
                            (_, None) => st.usage.unparsed_updates += 1,
                        }
                    }
                }
                // `REMOVE a, b` (an ended run leaving the `active` index).
                "REMOVE" => {
                    for clause in split_top(clauses) {
                        item.remove(&resolve(clause));
                    }
                }
                "SET" => {
                    parsed_set = true;
                    for clause in split_top(clauses) {
                        let Some((lhs, rhs)) = clause.split_once('=') else {
                            st.usage.unparsed_updates += 1;
                            continue;
                        };
                        let attr = resolve(lhs);
                        match eval(rhs.trim(), &item, values, &resolve) {
                            Some(v) => {
                                item.insert(attr, v);
                            }
                            None => st.usage.unparsed_updates += 1,
                        }
                    }
                }
                _ => st.usage.unparsed_updates += 1,
            }
        }
        if !parsed_set {
            st.usage.unparsed_updates += 1;
        }
        item
    }

    fn finish(&self, op: &str, req: DynamoRequest, ctx: &FinalizerInterceptorContextRef<'_>) {
        let output = ctx.output_or_error();
        // DynamoDB bills a write whose condition failed (an HTTP 400 answer); one that failed
        // on DynamoDB's side (5xx) or got no answer is not billed, and is shown apart so a
        // bench sees it (moto's 500s on long update expressions were once read as failed
        // conditions).
        let ok = match output {
            Some(Ok(_)) => Outcome::Written,
            _ if ctx.response().is_some_and(|r| r.status().is_client_error()) => {
                Outcome::ConditionFailed
            }
            _ => Outcome::NotBilled,
        };
        let out = match output {
            Some(Ok(o)) => Some(o),
            _ => None,
        };
        let mut st = lock(&self.state);
        let st = &mut *st;
        let mut reported: Vec<ConsumedCapacity> = Vec::new();
        let mut writes = false;
        match req {
            DynamoRequest::Put(input) => {
                writes = true;
                let table = input.table_name.clone().unwrap_or_default();
                let item = input.item.clone().unwrap_or_default();
                let key = self.shadow_key(&table, &item);
                self.bill_write(st, op, key, Some(item), 1.0, ok);
                if let Some(o) = out.and_then(|o| o.downcast_ref::<PutItemOutput>()) {
                    reported.extend(o.consumed_capacity.clone());
                }
            }
            DynamoRequest::Update(input) => {
                writes = true;
                let table = input.table_name.clone().unwrap_or_default();
                let key_item = input.key.clone().unwrap_or_default();
                let key = self.shadow_key(&table, &key_item);
                let before = st.shadow.get(&key).cloned();
                let after = self.apply_update(
                    st,
                    before,
                    &key_item,
                    input.update_expression.as_deref().unwrap_or_default(),
                    &input
                        .expression_attribute_values
                        .clone()
                        .unwrap_or_default(),
                    &input.expression_attribute_names.clone().unwrap_or_default(),
                );
                self.bill_write(st, op, key, Some(after), 1.0, ok);
                if let Some(o) = out.and_then(|o| o.downcast_ref::<UpdateItemOutput>()) {
                    reported.extend(o.consumed_capacity.clone());
                }
            }
            DynamoRequest::Delete(input) => {
                writes = true;
                let table = input.table_name.clone().unwrap_or_default();
                let key = self.shadow_key(&table, &input.key.clone().unwrap_or_default());
                self.bill_write(st, op, key, None, 1.0, ok);
                if let Some(o) = out.and_then(|o| o.downcast_ref::<DeleteItemOutput>()) {
                    reported.extend(o.consumed_capacity.clone());
                }
            }
            DynamoRequest::TransactWrite(input) => {
                writes = true;
                for t in input.transact_items.clone().unwrap_or_default() {
                    if let Some(p) = t.put {
                        let key = self.shadow_key(&p.table_name, &p.item);
                        self.bill_write(st, op, key, Some(p.item), 2.0, ok);
                    } else if let Some(u) = t.update {
                        let key = self.shadow_key(&u.table_name, &u.key);
                        let before = st.shadow.get(&key).cloned();
                        let after = self.apply_update(
                            st,
                            before,
                            &u.key,
                            &u.update_expression,
                            &u.expression_attribute_values.unwrap_or_default(),
                            &u.expression_attribute_names.unwrap_or_default(),
                        );
                        self.bill_write(st, op, key, Some(after), 2.0, ok);
                    } else if let Some(d) = t.delete {
                        let key = self.shadow_key(&d.table_name, &d.key);
                        self.bill_write(st, op, key, None, 2.0, ok);
                    } else if let Some(c) = t.condition_check {
                        // Billed as a transactional write of the item's size (it is not
                        // changed).
                        let key = self.shadow_key(&c.table_name, &c.key);
                        let same = st.shadow.get(&key).cloned();
                        self.bill_write(st, op, key, same, 2.0, ok);
                    }
                }
                if let Some(o) = out.and_then(|o| o.downcast_ref::<TransactWriteItemsOutput>()) {
                    reported.extend(o.consumed_capacity.clone().unwrap_or_default());
                }
            }
            DynamoRequest::Get(input) => {
                let table = input.table_name.clone().unwrap_or_default();
                let factor = if input.consistent_read == Some(true) {
                    1.0
                } else {
                    0.5
                };
                let key = self.shadow_key(&table, &input.key.clone().unwrap_or_default());
                let o = out.and_then(|o| o.downcast_ref::<GetItemOutput>());
                let size = match o.and_then(|o| o.item.as_ref()) {
                    Some(item) => self.stored_size(st, &table, item),
                    None => 0,
                };
                self.bill_read(st, op, item_kind(&key.2), factor * units(size, READ_UNIT));
                if let Some(o) = o {
                    reported.extend(o.consumed_capacity.clone());
                }
            }
            DynamoRequest::Query(input) => {
                let table = input.table_name.clone().unwrap_or_default();
                let factor = if input.consistent_read == Some(true) {
                    1.0
                } else {
                    0.5
                };
                let o = out.and_then(|o| o.downcast_ref::<QueryOutput>());
                let mut size = 0;
                if let Some(items) = o.and_then(|o| o.items.as_ref()) {
                    for item in items {
                        size += if input.index_name.is_some() {
                            item_size(item)
                        } else {
                            self.stored_size(st, &table, item)
                        };
                    }
                }
                let kind = match &input.index_name {
                    Some(ix) => format!("index {ix}"),
                    None => "run partition".into(),
                };
                self.bill_read(st, op, &kind, factor * units(size, READ_UNIT));
                if let Some(o) = o {
                    reported.extend(o.consumed_capacity.clone());
                }
            }
            DynamoRequest::BatchGet(input) => {
                let o = out.and_then(|o| o.downcast_ref::<BatchGetItemOutput>());
                for (table, ka) in input.request_items.clone().unwrap_or_default() {
                    let factor = if ka.consistent_read == Some(true) {
                        1.0
                    } else {
                        0.5
                    };
                    let got = o
                        .and_then(|o| o.responses.as_ref())
                        .and_then(|r| r.get(&table))
                        .cloned()
                        .unwrap_or_default();
                    for item in &got {
                        let size = self.stored_size(st, &table, item);
                        let key = self.shadow_key(&table, item);
                        self.bill_read(st, op, item_kind(&key.2), factor * units(size, READ_UNIT));
                    }
                    // Keys not found still cost the minimum.
                    let missing = ka.keys.len().saturating_sub(got.len());
                    self.bill_read(st, op, "missing", factor * missing as f64);
                }
                if let Some(o) = o {
                    reported.extend(o.consumed_capacity.clone().unwrap_or_default());
                }
            }
        }
        if !reported.is_empty() {
            st.usage.reported = true;
        }
        for c in reported {
            let total = c.capacity_units.unwrap_or(0.0);
            if writes {
                st.usage.reported_write_units += c.write_capacity_units.unwrap_or(total);
            } else {
                st.usage.reported_read_units += c.read_capacity_units.unwrap_or(total);
            }
        }
    }
}

/// Splits `a = x, b = f(y, z)` on the commas outside parentheses.
/// An update expression's sections: `SET …`, `REMOVE …`, `ADD …`, `DELETE …`, each action
/// keyword (at the top level, outside parentheses) with the text up to the next one.
fn update_sections(expr: &str) -> Vec<(String, &str)> {
    const ACTIONS: [&str; 4] = ["SET", "REMOVE", "ADD", "DELETE"];
    let mut out: Vec<(String, &str)> = Vec::new();
    let (mut depth, mut current): (i32, Option<(String, usize)>) = (0, None);
    let mut i = 0;
    let bytes = expr.as_bytes();
    while i < bytes.len() {
        match bytes[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            _ => {}
        }
        let at_word = i == 0 || bytes[i - 1].is_ascii_whitespace();
        if depth == 0 && at_word {
            let rest = &expr[i..];
            let word = rest.split_whitespace().next().unwrap_or("");
            if let Some(kw) = ACTIONS.iter().find(|k| word.eq_ignore_ascii_case(k)) {
                if let Some((action, start)) = current.take() {
                    out.push((action, expr[start..i].trim()));
                }
                current = Some((kw.to_string(), i + word.len()));
                i += word.len();
                continue;
            }
        }
        i += 1;
    }
    if let Some((action, start)) = current {
        out.push((action, expr[start..].trim()));
    }
    out
}

fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The value of an update's right-hand side: `:v`, `if_not_exists(a, x)`,
/// `list_append(x, y)`.
fn eval(
    rhs: &str,
    item: &DynamoItem,
    values: &HashMap<String, AttributeValue>,
    resolve: &dyn Fn(&str) -> String,
) -> Option<AttributeValue> {
    let rhs = rhs.trim();
    if rhs.starts_with(':') {
        return values.get(rhs).cloned();
    }
    let (func, args) = rhs.split_once('(')?;
    let args = split_top(args.strip_suffix(')')?);
    match (func.trim(), args.as_slice()) {
        ("if_not_exists", [attr, default]) => item
            .get(&resolve(attr))
            .cloned()
            .or_else(|| eval(default, item, values, resolve)),
        ("list_append", [a, b]) => {
            let operand = |x: &str| match eval(x, item, values, resolve) {
                Some(v) => Some(v),
                None => item.get(&resolve(x)).cloned(),
            };
            match (operand(a)?, operand(b)?) {
                (AttributeValue::L(mut x), AttributeValue::L(y)) => {
                    x.extend(y);
                    Some(AttributeValue::L(x))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

impl Intercept for Meter {
    fn name(&self) -> &'static str {
        "switchyard::Meter"
    }

    fn modify_before_serialization(
        &self,
        context: &mut BeforeSerializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if !self.ask {
            return Ok(());
        }
        let total = Some(ReturnConsumedCapacity::Total);
        let input = context.input_mut();
        if let Some(i) = input.downcast_mut::<GetItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<PutItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<UpdateItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<DeleteItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<QueryInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<BatchGetItemInput>() {
            i.return_consumed_capacity = total;
        } else if let Some(i) = input.downcast_mut::<TransactWriteItemsInput>() {
            i.return_consumed_capacity = total;
        }
        Ok(())
    }

    fn read_before_serialization(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let req = if let Some(i) = input.downcast_ref::<GetItemInput>() {
            DynamoRequest::Get(Box::new(i.clone()))
        } else if let Some(i) = input.downcast_ref::<PutItemInput>() {
            DynamoRequest::Put(Box::new(i.clone()))
        } else if let Some(i) = input.downcast_ref::<UpdateItemInput>() {
            DynamoRequest::Update(Box::new(i.clone()))
        } else if let Some(i) = input.downcast_ref::<DeleteItemInput>() {
            DynamoRequest::Delete(Box::new(i.clone()))
        } else if let Some(i) = input.downcast_ref::<QueryInput>() {
            DynamoRequest::Query(Box::new(i.clone()))
        } else if let Some(i) = input.downcast_ref::<BatchGetItemInput>() {
            DynamoRequest::BatchGet(Box::new(i.clone()))
        } else if let Some(i) = input.downcast_ref::<TransactWriteItemsInput>() {
            DynamoRequest::TransactWrite(Box::new(i.clone()))
        } else {
            return Ok(());
        };
        cfg.interceptor_state().store_put(Pending(req));
        Ok(())
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(meta) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let bytes = context.request().body().bytes().map_or(0, <[u8]>::len);
        let billed = if meta.service().eq_ignore_ascii_case("sqs") {
            bytes.max(1).div_ceil(SQS_CHUNK) as u64
        } else {
            1
        };
        let slot = (meta.service().to_string(), meta.name().to_string());
        let mut st = lock(&self.state);
        let c = st.usage.requests.entry(slot).or_default();
        c.requests += 1;
        c.billed += billed;
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(meta) = cfg.load::<Metadata>().cloned() else {
            return Ok(());
        };
        if meta.name() == "ReceiveMessage" {
            let empty = match context.output_or_error() {
                Some(Ok(o)) => o
                    .downcast_ref::<ReceiveMessageOutput>()
                    .is_some_and(|o| o.messages.as_ref().is_none_or(Vec::is_empty)),
                _ => false,
            };
            if empty {
                // Moves the last attempt's count to the empty receives.
                let mut st = lock(&self.state);
                let slot = (meta.service().to_string(), meta.name().to_string());
                if let Some(c) = st.usage.requests.get_mut(&slot) {
                    c.requests = c.requests.saturating_sub(1);
                    c.billed = c.billed.saturating_sub(1);
                }
                let e = st
                    .usage
                    .requests
                    .entry((meta.service().to_string(), "ReceiveMessage (empty)".into()))
                    .or_default();
                e.requests += 1;
                e.billed += 1;
            }
            return Ok(());
        }
        if let Some(Pending(req)) = cfg.load::<Pending>().cloned() {
            self.finish(meta.name(), req, context);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.into())
    }

    #[test]
    fn updates_apply_the_forms_the_store_writes() {
        let values = HashMap::from([
            (":body".to_string(), s("b2")),
            (":none".to_string(), AttributeValue::L(vec![])),
            (":batch".to_string(), AttributeValue::L(vec![s("e2")])),
        ]);
        let meter = Meter::for_table();
        let mut st = State::default();
        let key: DynamoItem = HashMap::from([("PK".into(), s("RUN#a")), ("SK".into(), s("S#x"))]);
        let mut before = key.clone();
        before.insert("body".into(), s("b1"));
        before.insert("ev".into(), AttributeValue::L(vec![s("e1")]));
        let after = meter.apply_update(
            &mut st,
            Some(before),
            &key,
            "SET body = :body, ev = list_append(if_not_exists(ev, :none), :batch)",
            &values,
            &HashMap::new(),
        );
        assert_eq!(after.get("body"), Some(&s("b2")));
        assert_eq!(
            after.get("ev"),
            Some(&AttributeValue::L(vec![s("e1"), s("e2")]))
        );
        assert_eq!(st.usage.unparsed_updates, 0);
    }

    /// A run's end: `SET … REMOVE` the `active` index keys, billed as that index's delete.
    #[test]
    fn an_update_that_removes_index_keys_bills_the_index_delete() {
        let meter = Meter::for_table();
        let mut st = State::default();
        let item: DynamoItem = HashMap::from([
            ("PK".into(), s("RUN#a")),
            ("SK".into(), s("H")),
            ("ver".into(), AttributeValue::N("1".into())),
            ("GSI3PK".into(), s("ACTIVE")),
            ("GSI3SK".into(), s("1#a")),
        ]);
        let key = meter.shadow_key("t", &item);
        meter.bill_write(
            &mut st,
            "PutItem",
            key.clone(),
            Some(item.clone()),
            1.0,
            Outcome::Written,
        );
        let values = HashMap::from([
            (":body".to_string(), s("b")),
            (":new".to_string(), AttributeValue::N("2".into())),
            (":none".to_string(), AttributeValue::L(vec![])),
            (":batch".to_string(), AttributeValue::L(vec![s("e")])),
        ]);
        let after = meter.apply_update(
            &mut st,
            Some(item.clone()),
            &item,
            "SET body = :body, ver = :new, ev = list_append(if_not_exists(ev, :none), :batch) REMOVE GSI3PK, GSI3SK",
            &values,
            &HashMap::new(),
        );
        assert_eq!(st.usage.unparsed_updates, 0);
        assert_eq!(after.get("ver"), Some(&AttributeValue::N("2".into())));
        assert!(!after.contains_key("GSI3PK") && !after.contains_key("GSI3SK"));
        meter.bill_write(
            &mut st,
            "UpdateItem",
            key,
            Some(after),
            1.0,
            Outcome::Written,
        );
        let ix = |op: &str| (op.to_string(), "index active".to_string());
        assert_eq!(st.usage.write_units[&ix("PutItem")], 1.0);
        assert_eq!(st.usage.write_units[&ix("UpdateItem")], 1.0, "the delete");
    }

    /// A failed condition is billed like the write; a write that failed on DynamoDB's side
    /// is counted apart, at no units.
    #[test]
    fn failed_writes_are_billed_only_for_a_failed_condition() {
        let meter = Meter::for_table();
        let mut st = State::default();
        let item: DynamoItem = HashMap::from([
            ("PK".into(), s("RUN#r1")),
            ("SK".into(), s("S#a")),
            ("body".into(), s(&"x".repeat(1500))),
        ]);
        let key = meter.shadow_key("t", &item);
        for outcome in [Outcome::ConditionFailed, Outcome::NotBilled] {
            meter.bill_write(
                &mut st,
                "PutItem",
                key.clone(),
                Some(item.clone()),
                1.0,
                outcome,
            );
        }
        let slot = |kind: &str| ("PutItem".to_string(), kind.to_string());
        // Nothing stored yet: the minimum unit.
        assert_eq!(
            st.usage.write_units[&slot("step record (condition failed)")],
            1.0
        );
        assert_eq!(
            st.usage.writes[&slot("step record (failed, not billed)")],
            1
        );
        assert_eq!(
            st.usage.write_units[&slot("step record (failed, not billed)")],
            0.0
        );
        meter.bill_write(
            &mut st,
            "PutItem",
            key.clone(),
            Some(item.clone()),
            1.0,
            Outcome::Written,
        );
        meter.bill_write(
            &mut st,
            "UpdateItem",
            key,
            Some(item),
            1.0,
            Outcome::ConditionFailed,
        );
        assert_eq!(st.usage.write_units[&slot("step record")], 2.0);
        let failed = (
            "UpdateItem".to_string(),
            "step record (condition failed)".to_string(),
        );
        assert_eq!(
            st.usage.write_units[&failed], 2.0,
            "billed on the stored item"
        );
    }

    #[test]
    fn writes_bill_the_larger_item_and_transactions_twice() {
        let meter = Meter::for_table();
        let mut st = State::default();
        let mut item: DynamoItem =
            HashMap::from([("PK".into(), s("RUN#a")), ("SK".into(), s("H"))]);
        item.insert("body".into(), s(&"x".repeat(1500)));
        let key = meter.shadow_key("t", &item);
        meter.bill_write(
            &mut st,
            "PutItem",
            key.clone(),
            Some(item),
            1.0,
            Outcome::Written,
        );
        let small: DynamoItem = HashMap::from([("PK".into(), s("RUN#a")), ("SK".into(), s("H"))]);
        meter.bill_write(
            &mut st,
            "TransactWriteItems",
            key,
            Some(small),
            2.0,
            Outcome::Written,
        );
        let slot = |op: &str| (op.to_string(), "run header".to_string());
        assert_eq!(st.usage.write_units[&slot("PutItem")], 2.0);
        assert_eq!(st.usage.write_units[&slot("TransactWriteItems")], 4.0);
    }

    #[test]
    fn an_item_with_index_keys_writes_an_index_entry() {
        let meter = Meter::for_table();
        let mut st = State::default();
        let item: DynamoItem = HashMap::from([
            ("PK".into(), s("RUN#a")),
            ("SK".into(), s("H")),
            ("GSI1PK".into(), s("TENANT#t")),
            ("GSI1SK".into(), s("1#a")),
            ("workflow".into(), s("w")),
        ]);
        let key = meter.shadow_key("t", &item);
        meter.bill_write(&mut st, "PutItem", key, Some(item), 1.0, Outcome::Written);
        let ix = ("PutItem".to_string(), "index by_tenant".to_string());
        assert_eq!(st.usage.write_units[&ix], 1.0);
        assert!(!st
            .usage
            .write_units
            .contains_key(&("PutItem".to_string(), "index all_runs".to_string())));
    }
}
