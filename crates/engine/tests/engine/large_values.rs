//! 15. Large values

use super::*;

#[tokio::test]
pub(crate) async fn large_values_go_to_the_blob_store_and_are_read_back() {
    let h = H::with_config(|c| c.inline_limit_bytes = 1024);
    let text = "lorem ipsum ".repeat(300);
    let yaml = r#"
        name: big
        version: "1"
        output:
          text: "${steps.copy.output}"
          tag: "${steps.small.output.tag}"
        steps:
          - id: big
            model: local/echo
            input: "${input}"
          - {id: small, kind: transform, value: {tag: "${steps.big.output.json.tag}"}}
          - {id: copy, kind: transform, value: "${steps.big.output.json.text}"}
    "#;
    let (run, status) = h.run(yaml, json!({"text": text, "tag": "t-1"})).await;
    assert_eq!(status, RunStatus::Succeeded);
    let snap = h.snap(&run).await;
    assert!(matches!(snap.header.input, ValueRef::Blob { .. }));
    let is_blob =
        |step: &str| matches!(snap.step(step).unwrap().output, Some(ValueRef::Blob { .. }));
    assert!(is_blob("big") && is_blob("copy") && !is_blob("small"));
    if let Some(ValueRef::Blob { bytes, .. }) = &snap.step("big").unwrap().output {
        assert!(*bytes > 1024);
    }
    // Later references read the stored values back.
    assert_eq!(h.output(&run, "small").await, json!({"tag": "t-1"}));
    assert_eq!(h.output(&run, "copy").await, json!(text));
    let out = h.run_output(&run).await;
    assert_eq!(out, json!({"text": text, "tag": "t-1"}));

    // The run document links a large output instead of inlining it.
    let Some(ValueRef::Blob { key, bytes }) = snap.header.output.clone() else {
        panic!("the run output should be a blob: {:?}", snap.header.output)
    };
    let view = h.engine.view(&snap).await.unwrap();
    let url = view.output["url"].as_str().unwrap();
    // Content-addressed: `blobs/<first two hex digits>/<the rest>`.
    assert!(
        url.starts_with("file://") && url.ends_with(&key[2..]),
        "{url}"
    );
    assert_eq!(view.output["bytes"], bytes);
    let path = url.trim_start_matches("file://");
    let on_disk: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(on_disk, out);
}
