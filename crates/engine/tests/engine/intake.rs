//! 16. Intake

use super::*;

pub(crate) const TYPED: &str = r#"
    name: typed
    version: "1"
    input_schema:
      type: object
      required: [x]
      properties:
        x: {type: integer}
        nested:
          type: object
          properties:
            y: {type: string}
    steps:
      - {id: a, kind: transform, value: "${input.x}"}
"#;

#[tokio::test]
pub(crate) async fn input_failing_its_schema_is_refused_and_nothing_is_stored() {
    let h = H::new();
    let wf = h.compile(TYPED);
    // (input, field named)
    let table = [
        (json!({"x": "three"}), "input.x"),
        (json!({"x": 1, "nested": {"y": 2}}), "input.nested.y"),
        (json!({"nested": {}}), "input.x"),
    ];
    for (input, field) in table {
        let err = h
            .try_start(&wf, input.clone(), Some("k"))
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::InvalidInput { .. }), "{err:?}");
        assert_eq!(err.field(), Some(field), "{input}");
        assert_eq!((err.status(), err.code()), (422, "invalid_input"));
    }
    assert!(h
        .engine
        .list_runs(&all_runs())
        .await
        .unwrap()
        .runs
        .is_empty());
    assert!(h.queue.is_empty().await.unwrap());
    // The key was not used up by the refused requests.
    let ok = h.try_start(&wf, json!({"x": 1}), Some("k")).await.unwrap();
    assert!(!ok.existing);
}

#[tokio::test]
pub(crate) async fn idempotency_key_returns_the_same_run_or_conflicts() {
    let h = H::new();
    let wf = h.compile(TYPED);
    let first = h
        .try_start(&wf, json!({"x": 1}), Some("key-1"))
        .await
        .unwrap();
    assert_eq!((first.status, first.existing), (RunStatus::Pending, false));
    let again = h
        .try_start(&wf, json!({"x": 1}), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(
        (again.run_id.as_str(), again.existing),
        (first.run_id.as_str(), true)
    );
    let other = h.try_start(&wf, json!({"x": 2}), Some("key-1")).await;
    assert!(
        matches!(&other, Err(EngineError::IdempotencyConflict(_))),
        "{other:?}"
    );
    let other = other.unwrap_err();
    assert_eq!(
        (other.status(), other.code()),
        (409, "idempotency_conflict")
    );
    assert_eq!(h.engine.list_runs(&all_runs()).await.unwrap().runs.len(), 1);

    // Once the run ended, the same request reports its status.
    assert_eq!(h.drive(&first.run_id).await, RunStatus::Succeeded);
    let late = h
        .try_start(&wf, json!({"x": 1}), Some("key-1"))
        .await
        .unwrap();
    assert_eq!(
        (late.run_id, late.status, late.existing),
        (first.run_id, RunStatus::Succeeded, true)
    );
    // Another key is another run.
    let fresh = h
        .try_start(&wf, json!({"x": 1}), Some("key-2"))
        .await
        .unwrap();
    assert!(!fresh.existing);
    assert_eq!(h.engine.list_runs(&all_runs()).await.unwrap().runs.len(), 2);
}

/// A request that claimed its key but died before creating the run: the retry creates the run
/// under the id the key points at, instead of reporting a run that does not exist.
#[tokio::test]
pub(crate) async fn a_retry_after_a_half_done_start_creates_the_run() {
    let h = H::new();
    let wf = h.compile(TYPED);
    let req = H::request(&wf, json!({"x": 1}));
    let body = serde_json::to_vec(&req).unwrap();
    let claimed = h
        .engine
        .store
        .claim_idempotency(
            support::TENANT,
            "key-9",
            &switchyard_core::sha256_hex(&body),
            "run_orphan",
            h.now(),
        )
        .await
        .unwrap();
    assert_eq!(claimed, switchyard_core::ports::IdempotencyClaim::New);
    let retry = h
        .try_start(&wf, json!({"x": 1}), Some("key-9"))
        .await
        .unwrap();
    assert_eq!(retry.run_id, "run_orphan");
    assert!(h.engine.store.load("run_orphan").await.unwrap().is_some());
    assert_eq!(h.drive("run_orphan").await, RunStatus::Succeeded);
}

/// A blob store that counts its writes.
struct CountingBlobs {
    inner: Arc<dyn switchyard_core::ports::BlobStore>,
    puts: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl switchyard_core::ports::BlobStore for CountingBlobs {
    async fn put(
        &self,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<String, switchyard_core::StoreError> {
        self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put(bytes, content_type).await
    }
    async fn get(&self, key: &str) -> Result<Vec<u8>, switchyard_core::StoreError> {
        self.inner.get(key).await
    }
    async fn presign(&self, key: &str, ttl_ms: u64) -> Result<String, switchyard_core::StoreError> {
        self.inner.presign(key, ttl_ms).await
    }
    async fn presign_upload(
        &self,
        tenant: &str,
        declared: &switchyard_core::upload::Declared,
        ttl_ms: u64,
    ) -> Result<switchyard_core::ports::PresignedPut, switchyard_core::StoreError> {
        self.inner.presign_upload(tenant, declared, ttl_ms).await
    }
    async fn accept_upload(
        &self,
        tenant: &str,
        declared: &switchyard_core::upload::Declared,
        bytes: &[u8],
    ) -> Result<(), switchyard_core::StoreError> {
        self.inner.accept_upload(tenant, declared, bytes).await
    }
    async fn adopt_upload(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<switchyard_core::upload::Declared, switchyard_core::StoreError> {
        self.inner.adopt_upload(tenant, key).await
    }
}

#[tokio::test]
pub(crate) async fn a_process_stores_each_definition_once_an_hour_not_once_a_run() {
    use std::sync::atomic::Ordering;
    let h = H::new();
    let blobs = Arc::new(CountingBlobs {
        inner: h.engine.blobs.clone(),
        puts: Default::default(),
    });
    let engine = switchyard_engine::Engine::new(
        h.engine.store.clone(),
        h.engine.queue.clone(),
        blobs.clone(),
        h.engine.clock.clone(),
        h.engine.providers.clone(),
        h.engine.workflows.clone(),
        (*h.engine.config).clone(),
    );
    let typed = h.compile(TYPED);
    let start = |wf: switchyard_core::workflow::Workflow, x: i64| {
        let engine = engine.clone();
        async move {
            let req = H::request(&wf, json!({"x": x}));
            engine.start_workflow(support::TENANT, &wf, req, None).await
        }
    };
    let mut hashes = Vec::new();
    for x in 0..3 {
        let run = start(typed.clone(), x).await.unwrap().run_id;
        hashes.push(h.snap(&run).await.header.workflow.hash);
    }
    assert_eq!(
        blobs.puts.load(Ordering::SeqCst),
        1,
        "three starts, one write"
    );
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    // The pinned definition is readable by a process that never stored it.
    let other = h.other_worker("elsewhere");
    assert_eq!(other.definition(&hashes[0]).await.unwrap().name, "typed");
    // Another definition is stored on its first start.
    let other_wf = h.compile(&TYPED.replace("version: \"1\"", "version: \"2\""));
    start(other_wf.clone(), 1).await.unwrap();
    assert_eq!(blobs.puts.load(Ordering::SeqCst), 2);
    // After PIN_REFRESH_MS the process stores it again (a blob store that expires objects
    // gets it back), then trusts its pin for another hour.
    h.clock.advance(switchyard_engine::PIN_REFRESH_MS);
    start(typed.clone(), 4).await.unwrap();
    start(typed.clone(), 5).await.unwrap();
    assert_eq!(blobs.puts.load(Ordering::SeqCst), 3);
    // Every run finishes on the pinned definitions.
    for run in engine.list_runs(&all_runs()).await.unwrap().runs {
        assert_eq!(h.drive(&run.run_id).await, RunStatus::Succeeded);
    }
}
