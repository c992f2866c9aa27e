//! The blob store contract: keys are the sha256 of the bytes, in lower-case hex.

use switchyard_core::ports::BlobStore;
use switchyard_core::{sha256_hex, StoreError};

/// A put returns the content hash, twice the same; a get returns the bytes; a presign names
/// the blob.
pub async fn put_get_round_trip_is_content_addressed(blobs: &dyn BlobStore) {
    let key = blobs.put(b"hello", "text/plain").await.unwrap();
    assert_eq!(key, sha256_hex(b"hello"));
    assert_eq!(blobs.put(b"hello", "text/plain").await.unwrap(), key);
    assert_eq!(blobs.get(&key).await.unwrap(), b"hello");
    let big = vec![7u8; 2 * 1024 * 1024];
    let big_key = blobs.put(&big, "application/octet-stream").await.unwrap();
    assert_eq!(blobs.get(&big_key).await.unwrap(), big);
    let url = blobs.presign(&key, 60_000).await.unwrap();
    assert!(!url.is_empty());
}

/// Keys that are not a stored blob's hash — traversal attempts, other spellings, truncations —
/// are `NotFound`, for get and presign alike.
pub async fn bad_and_missing_keys_are_refused(blobs: &dyn BlobStore) {
    let missing = sha256_hex(b"never stored");
    let table = [
        "../../switchyard.sqlite".to_string(),
        format!("../{}", &missing[3..]),
        missing.to_uppercase(),
        missing[..63].to_string(),
        String::new(),
        missing,
    ];
    for key in table {
        assert!(
            matches!(blobs.get(&key).await, Err(StoreError::NotFound(_))),
            "get {key:?}"
        );
        assert!(
            matches!(blobs.presign(&key, 1).await, Err(StoreError::NotFound(_))),
            "presign {key:?}"
        );
    }
}

/// Uploads are per tenant: bytes other than the declared ones are refused; adopting moves the
/// tenant's own upload into the blob store (and says what was stored), twice harmlessly;
/// another tenant, or a hash nobody uploaded, finds nothing.
pub async fn uploads_are_adopted_per_tenant(blobs: &dyn BlobStore) {
    use switchyard_core::upload::Declared;
    let bytes = b"%PDF-1.7 a large document".to_vec();
    let declared = Declared {
        sha256: sha256_hex(&bytes),
        bytes: bytes.len() as u64,
        content_type: "application/pdf".into(),
    };
    let short = &bytes[..bytes.len() - 1];
    assert!(
        matches!(
            blobs.accept_upload("acme", &declared, short).await,
            Err(StoreError::Invalid(_))
        ),
        "a short body is refused"
    );
    let mut other = bytes.clone();
    other[0] = b'#';
    assert!(
        matches!(
            blobs.accept_upload("acme", &declared, &other).await,
            Err(StoreError::Invalid(_))
        ),
        "other bytes of the same size are refused"
    );
    assert!(matches!(
        blobs.adopt_upload("acme", &declared.sha256).await,
        Err(StoreError::NotFound(_))
    ));
    blobs
        .accept_upload("acme", &declared, &bytes)
        .await
        .unwrap();
    for tenant in ["globex", "..", "acme/.."] {
        assert!(
            matches!(
                blobs.adopt_upload(tenant, &declared.sha256).await,
                Err(StoreError::NotFound(_))
            ),
            "tenant {tenant:?} adopts nothing of acme's"
        );
    }
    assert!(
        matches!(
            blobs.get(&declared.sha256).await,
            Err(StoreError::NotFound(_))
        ),
        "not a blob before it is adopted"
    );
    assert_eq!(
        blobs.adopt_upload("acme", &declared.sha256).await.unwrap(),
        declared
    );
    assert_eq!(
        blobs.adopt_upload("acme", &declared.sha256).await.unwrap(),
        declared,
        "adopting again (a retried start) is harmless"
    );
    assert_eq!(blobs.get(&declared.sha256).await.unwrap(), bytes);
    assert!(matches!(
        blobs.adopt_upload("acme", "../../etc/passwd").await,
        Err(StoreError::NotFound(_))
    ));
}
