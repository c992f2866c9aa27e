//! Listing: runs by tenant, by every tenant and the active ones, through the indexes, with
//! cursors.

use super::*;

/// Where a listing page ended, and for which query: `v1.` + base64url(JSON).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Cursor {
    /// The tenant (`None`: all tenants).
    pub(super) t: Option<String>,
    pub(super) s: Option<RunStatus>,
    pub(super) w: Option<String>,
    pub(super) at: Millis,
    pub(super) id: String,
}

impl Cursor {
    pub(super) fn encode(&self) -> Result<String, StoreError> {
        Ok(format!(
            "v1.{}",
            URL_SAFE_NO_PAD.encode(to_json(self, "listing cursor")?)
        ))
    }

    /// The cursor, if it is one this store made for this very query.
    pub(super) fn decode(text: &str, q: &RunQuery) -> Result<Cursor, StoreError> {
        let bad = |why: &str| {
            StoreError::Invalid(format!("`{text}` is not a cursor of this listing: {why}"))
        };
        let raw = text
            .strip_prefix("v1.")
            .ok_or_else(|| bad("unknown format"))?;
        let json = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|_| bad("not base64url"))?;
        let c: Cursor = serde_json::from_slice(&json).map_err(|_| bad("not a position"))?;
        if c.t.as_deref() != q.scope.tenant() || c.s != q.status || c.w != q.workflow {
            return Err(bad("made for another tenant or other filters"));
        }
        Ok(c)
    }
}

/// The index a listing reads, its partition, and the names of its keys.
pub(super) struct Index {
    name: &'static str,
    pk: (&'static str, String),
    sk: &'static str,
}

impl Index {
    pub(super) fn of(scope: &ListScope) -> Index {
        match scope {
            ListScope::Tenant(t) => Index {
                name: INDEX_BY_TENANT,
                pk: ("GSI1PK", tenant_pk(t)),
                sk: "GSI1SK",
            },
            ListScope::AllTenants => Index {
                name: INDEX_ALL_RUNS,
                pk: ("GSI2PK", ALL_RUNS_PK.to_string()),
                sk: "GSI2SK",
            },
        }
    }

    /// The `ExclusiveStartKey` after a cursor's row: the index keys and the table keys.
    pub(super) fn start_after(&self, c: &Cursor) -> DynamoItem {
        let mut k = item_key(run_pk(&c.id), HEADER_SK);
        k.insert(self.pk.0.into(), s(self.pk.1.clone()));
        k.insert(self.sk.into(), s(index_sk(c.at, &c.id)));
        k
    }
}

pub(super) fn summary(h: RunHeader) -> RunSummary {
    RunSummary {
        run_id: h.run_id,
        tenant: h.tenant,
        workflow: h.workflow.name,
        version: h.workflow.version,
        status: h.status,
        created_at: h.created_at,
        updated_at: h.updated_at,
    }
}

impl DynamoStore {
    /// Up to `max` run ids of the index after `start`, newest first, the workflow filter
    /// applied; and where the index continues.
    pub(super) async fn index_page(
        &self,
        index: &Index,
        workflow: Option<&str>,
        start: Option<DynamoItem>,
        max: usize,
    ) -> Result<(Vec<String>, Option<DynamoItem>), StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index.name)
            .key_condition_expression(format!("{} = :pk", index.pk.0))
            .expression_attribute_values(":pk", s(index.pk.1.clone()))
            .scan_index_forward(false)
            .limit(i32::try_from(max).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start);
        if let Some(w) = workflow {
            q = q
                .filter_expression("workflow = :wf")
                .expression_attribute_values(":wf", s(w));
        }
        let out = q.send().await.map_err(|e| dynamo_error("Query", e))?;
        let ids = out
            .items()
            .iter()
            .map(|item| {
                let pk = attr_s(item, "PK", &format!("an entry of index {}", index.name))?;
                Ok(pk.trim_start_matches("RUN#").to_string())
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((ids, out.last_evaluated_key))
    }

    /// The headers of `ids` (≤ 100), eventually consistent: a listing may lag a write by
    /// moments, as its index does anyway. Unprocessed keys (throttling) are asked again.
    pub(super) async fn headers(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, RunHeader>, StoreError> {
        let mut pending: Vec<DynamoItem> = ids
            .iter()
            .map(|id| item_key(run_pk(id), HEADER_SK))
            .collect();
        let mut found = HashMap::new();
        for attempt in 0..BATCH_GET_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
            }
            let keys = built(
                KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    .projection_expression("PK, body, ver")
                    .build(),
            )?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, keys)
                .send()
                .await
                .map_err(|e| dynamo_error("BatchGetItem", e))?;
            for item in out
                .responses
                .and_then(|mut r| r.remove(&self.table))
                .unwrap_or_default()
            {
                let id = attr_s(&item, "PK", "a listed header")?
                    .trim_start_matches("RUN#")
                    .to_string();
                let h = read_header(&item, &id)?;
                found.insert(id, h);
            }
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        if pending.is_empty() {
            Ok(found)
        } else {
            Err(StoreError::Unavailable(format!(
                "throttled by DynamoDB (retry with backoff): BatchGetItem left {} headers unread",
                pending.len()
            )))
        }
    }
}
