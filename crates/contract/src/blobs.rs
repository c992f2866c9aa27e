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
