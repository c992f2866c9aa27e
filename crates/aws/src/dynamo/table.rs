//! The table: creating it (and its indexes and TTL) for tests, `dev` and provisioning.

use super::*;

pub(super) fn attribute(name: &str) -> Result<AttributeDefinition, StoreError> {
    built(
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build(),
    )
}

pub(super) fn key_schema(hash: &str, range: &str) -> Result<Vec<KeySchemaElement>, StoreError> {
    let element = |name: &str, kind| {
        built(
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build(),
        )
    };
    Ok(vec![
        element(hash, KeyType::Hash)?,
        element(range, KeyType::Range)?,
    ])
}

pub(super) fn index(
    name: &str,
    hash: &str,
    range: &str,
) -> Result<GlobalSecondaryIndex, StoreError> {
    // The sweep's index holds keys only: it is read for run ids, never for a listing row.
    let projection = if name == INDEX_ACTIVE {
        Projection::builder()
            .projection_type(ProjectionType::KeysOnly)
            .build()
    } else {
        Projection::builder()
            .projection_type(ProjectionType::Include)
            .non_key_attributes(INDEX_PROJECTED)
            .build()
    };
    built(
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .set_key_schema(Some(key_schema(hash, range)?))
            .projection(projection)
            .build(),
    )
}

/// Creates the state table `name` ([`TABLE_SCHEMA`]: on-demand, both indexes, TTL on `ttl`)
/// and waits until it and its indexes are `ACTIVE`. A table of that name that exists already
/// is waited for and given its TTL, not created again: `switchyard dev --backend aws` can run
/// twice. Its key schema is checked, not its indexes' projections.
pub async fn create_table(client: &Client, name: &str) -> Result<(), StoreError> {
    let mut attributes = Vec::new();
    for a in [
        "PK", "SK", "GSI1PK", "GSI1SK", "GSI2PK", "GSI2SK", "GSI3PK", "GSI3SK",
    ] {
        attributes.push(attribute(a)?);
    }
    let res = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_attribute_definitions(Some(attributes))
        .set_key_schema(Some(key_schema("PK", "SK")?))
        .global_secondary_indexes(index(INDEX_BY_TENANT, "GSI1PK", "GSI1SK")?)
        .global_secondary_indexes(index(INDEX_ALL_RUNS, "GSI2PK", "GSI2SK")?)
        .global_secondary_indexes(index(INDEX_ACTIVE, "GSI3PK", "GSI3SK")?)
        .send()
        .await;
    if let Err(e) = res {
        let exists = e
            .as_service_error()
            .is_some_and(|se| se.is_resource_in_use_exception());
        if !exists {
            return Err(dynamo_error("CreateTable", e));
        }
    }
    wait_active(client, name).await?;
    enable_ttl(client, name).await
}

/// Polls `DescribeTable` until the table and every index are `ACTIVE` (seconds on AWS, at once
/// on an emulator), for at most five minutes.
pub(super) async fn wait_active(client: &Client, name: &str) -> Result<(), StoreError> {
    for _ in 0..600 {
        let out = client
            .describe_table()
            .table_name(name)
            .send()
            .await
            .map_err(|e| dynamo_error("DescribeTable", e))?;
        let Some(t) = out.table else {
            return Err(StoreError::Unavailable(format!(
                "DynamoDB DescribeTable {name}: no table"
            )));
        };
        let keys: Vec<_> = t.key_schema().iter().map(|k| k.attribute_name()).collect();
        if keys != ["PK", "SK"] {
            return Err(StoreError::Invalid(format!(
                "table {name} exists with keys {keys:?}, not the state table's PK/SK"
            )));
        }
        let active = t.table_status() == Some(&TableStatus::Active)
            && t.global_secondary_indexes()
                .iter()
                .all(|i| i.index_status() == Some(&aws_sdk_dynamodb::types::IndexStatus::Active));
        if active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(StoreError::Unavailable(format!(
        "DynamoDB table {name} not ACTIVE after 5 minutes"
    )))
}

pub(super) async fn enable_ttl(client: &Client, name: &str) -> Result<(), StoreError> {
    let current = client
        .describe_time_to_live()
        .table_name(name)
        .send()
        .await
        .map_err(|e| dynamo_error("DescribeTimeToLive", e))?;
    let on = current.time_to_live_description().is_some_and(|d| {
        matches!(
            d.time_to_live_status(),
            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
        ) && d.attribute_name() == Some(TTL_ATTRIBUTE)
    });
    if on {
        return Ok(());
    }
    let spec = built(
        TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL_ATTRIBUTE)
            .build(),
    )?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| dynamo_error("UpdateTimeToLive", e))?;
    Ok(())
}
