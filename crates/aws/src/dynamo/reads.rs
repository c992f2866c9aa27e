//! Reads: a run's items in one partition query, the header alone, the history.

use super::*;

impl DynamoStore {
    /// The header item, strongly consistent (a worker must see the write before its own).
    pub(super) async fn header_item(&self, run_id: &str) -> Result<Option<DynamoItem>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item_key(run_pk(run_id), HEADER_SK)))
            .projection_expression("body, ver")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| dynamo_error("GetItem", e))?;
        if out.item.is_some() {
            self.known.insert(run_id);
        }
        Ok(out.item)
    }

    /// `NotFound` unless the run exists: before writes that would otherwise create items for
    /// a run that is not there.
    pub(super) async fn ensure_run(&self, run_id: &str) -> Result<(), StoreError> {
        if self.known.contains(run_id) || self.header_item(run_id).await?.is_some() {
            Ok(())
        } else {
            Err(StoreError::NotFound(format!("run {run_id}")))
        }
    }

    /// Every item of a run's partition from `SK >= from` on (all of them without), strongly
    /// consistent, page after page.
    pub(super) async fn partition(
        &self,
        run_id: &str,
        from: Option<&str>,
        projection: &str,
    ) -> Result<Vec<DynamoItem>, StoreError> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .projection_expression(projection)
                .expression_attribute_values(":pk", s(run_pk(run_id)))
                .set_exclusive_start_key(start);
            q = match from {
                Some(sk) => q
                    .key_condition_expression("PK = :pk AND SK >= :from")
                    .expression_attribute_values(":from", s(sk)),
                None => q.key_condition_expression("PK = :pk"),
            };
            let out = q.send().await.map_err(|e| dynamo_error("Query", e))?;
            items.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }
}
