//! [`BlobStore`] on S3: one bucket (optionally a key prefix), content-addressed.
//!
//! - **put**: the key is the sha256 of the bytes in lower-case hex; `PutObject` with
//!   `If-None-Match: *`, so a second put of the same bytes writes nothing: S3's 412
//!   `PreconditionFailed` (classified `Conflict`) is success, the bytes are there already.
//! - **get**: `GetObject`; the bytes are checked against their key (`Corrupt` if they differ).
//! - **presign**: a presigned `GetObject` URL (SigV4 query signing), valid for the TTL rounded up
//!   to a second, at most 7 days (SigV4's limit). A `HeadObject` first, so a missing blob is
//!   `NotFound` rather than a URL that answers 404.
//! - A key that is not 64 lower-case hex digits is `NotFound` without a request.
//! - Path-style addressing (`http://host/bucket/key`) is a client setting
//!   ([`s3_client`]`(.., path_style)`): emulators such as moto need it; AWS takes either.

use crate::error::s3_error;
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::time::Duration;
use switchyard_core::ports::BlobStore;
use switchyard_core::{sha256_hex, StoreError};

/// The longest a SigV4 presigned URL can be valid.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// An S3 client over `config`, with path-style addressing when `path_style`.
pub fn s3_client(config: &aws_config::SdkConfig, path_style: bool) -> Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(path_style)
        .build();
    Client::from_conf(conf)
}

#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    /// Prepended to every key (`""` or ending in `/`).
    prefix: String,
}

fn is_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl S3BlobStore {
    pub fn new(client: Client, bucket: impl Into<String>) -> S3BlobStore {
        S3BlobStore {
            client,
            bucket: bucket.into(),
            prefix: String::new(),
        }
    }

    /// Keeps the blobs under `prefix/` in the bucket.
    pub fn with_prefix(mut self, prefix: &str) -> S3BlobStore {
        let p = prefix.trim_matches('/');
        self.prefix = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        self
    }

    fn object(&self, key: &str) -> Result<String, StoreError> {
        if is_key(key) {
            Ok(format!("{}{key}", self.prefix))
        } else {
            Err(StoreError::NotFound(format!(
                "blob {key:?}: not a sha256 key"
            )))
        }
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, bytes: &[u8], content_type: &str) -> Result<String, StoreError> {
        let key = sha256_hex(bytes);
        let res = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.object(&key)?)
            .content_type(content_type)
            .if_none_match("*")
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e));
        match res {
            // Conflict: the precondition failed, the same bytes are stored already.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(key),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let object = self.object(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("S3 GetObject {object}: reading the body: {e}"))
            })?
            .into_bytes()
            .to_vec();
        if sha256_hex(&bytes) != key {
            return Err(StoreError::Corrupt(format!(
                "blob {key}: stored bytes do not hash to their key"
            )));
        }
        Ok(bytes)
    }

    async fn presign(&self, key: &str, ttl_ms: u64) -> Result<String, StoreError> {
        let object = self.object(key)?;
        self.client
            .head_object()
            .bucket(&self.bucket)
            .key(&object)
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", e))?;
        let ttl = Duration::from_millis(ttl_ms.div_ceil(1000).max(1) * 1000).min(MAX_PRESIGN_TTL);
        let conf = PresigningConfig::expires_in(ttl)
            .map_err(|e| StoreError::Invalid(format!("presign TTL {ttl_ms} ms: {e}")))?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object)
            .presigned(conf)
            .await
            .map_err(|e| s3_error("GetObject (presign)", e))?;
        Ok(req.uri().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lower_case_sha256_hex() {
        assert!(is_key(&sha256_hex(b"x")));
        assert!(!is_key(&sha256_hex(b"x").to_uppercase()));
        assert!(!is_key("../../etc/passwd"));
        assert!(!is_key(""));
    }
}
