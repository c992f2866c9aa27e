//! [`BlobStore`] on S3: one bucket (optionally a key prefix), content-addressed.
//!
//! - **put**: the key is the sha256 of the bytes in lower-case hex; `PutObject` with
//!   `If-None-Match: *`, so a second put of the same bytes writes nothing: S3's 412
//!   `PreconditionFailed` (classified `Conflict`) is success, the bytes are there already.
//! - **get**: `GetObject`; the bytes are checked against their key (`Corrupt` if they differ).
//! - **presign**: a presigned `GetObject` URL (SigV4 query signing), valid for the TTL rounded up
//!   to a second, at most 7 days (SigV4's limit). A `HeadObject` first, so a missing blob is
//!   `NotFound` rather than a URL that answers 404.
//! - **uploads** ([`switchyard_core::upload`]): a presigned `PutObject` to
//!   `uploads/<tenant>/<sha256>` whose signature covers `Content-Type`, `Content-Length` and
//!   `x-amz-checksum-sha256`, so S3 refuses any other bytes; adopting one is a server-side
//!   `CopyObject` into the blob prefix (no bytes through the function), after a `HeadObject`
//!   that reads its size, type and, where the store keeps it, its checksum. The bucket's
//!   lifecycle deletes `uploads/` after `UploadsExpireDays`; adopted copies stay.
//! - A key that is not 64 lower-case hex digits is `NotFound` without a request.
//! - Path-style addressing (`http://host/bucket/key`) is a client setting
//!   ([`s3_client`]`(.., path_style)`): emulators such as moto need it; AWS takes either.

use crate::error::s3_error;
use async_trait::async_trait;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use std::time::Duration;
use switchyard_core::ports::{BlobStore, PresignedPut};
use switchyard_core::upload::{self, Declared};
use switchyard_core::{sha256_hex, StoreError};

/// The longest a SigV4 presigned URL can be valid.
pub const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Where client uploads wait to be adopted (the template's lifecycle rule and IAM policies name
/// this prefix).
pub const UPLOADS_PREFIX: &str = "uploads/";

/// An S3 client over `config`, with path-style addressing when `path_style`.
pub fn s3_client(config: &aws_types::SdkConfig, path_style: bool) -> Client {
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

    /// `uploads/<tenant>/<sha256>`, outside the blob prefix.
    fn upload_object(&self, tenant: &str, sha256: &str) -> Result<String, StoreError> {
        if is_key(sha256) {
            Ok(format!(
                "{UPLOADS_PREFIX}{}/{sha256}",
                upload::tenant_segment(tenant)
            ))
        } else {
            Err(StoreError::NotFound(format!(
                "upload {sha256:?}: not a sha256 key"
            )))
        }
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
        let conf = PresigningConfig::expires_in(ttl(ttl_ms))
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

    async fn presign_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        ttl_ms: u64,
    ) -> Result<PresignedPut, StoreError> {
        let object = self.upload_object(tenant, &declared.sha256)?;
        let conf = PresigningConfig::expires_in(ttl(ttl_ms))
            .map_err(|e| StoreError::Invalid(format!("presign TTL {ttl_ms} ms: {e}")))?;
        let bytes = i64::try_from(declared.bytes)
            .map_err(|_| StoreError::Invalid(format!("{} bytes", declared.bytes)))?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .content_type(&declared.content_type)
            .content_length(bytes)
            .checksum_sha256(declared.checksum_base64())
            .presigned(conf)
            .await
            .map_err(|e| s3_error("PutObject (presign)", e))?;
        Ok(PresignedPut {
            url: req.uri().to_string(),
            headers: req
                .headers()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    async fn accept_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        declared.verify(bytes).map_err(StoreError::Invalid)?;
        let object = self.upload_object(tenant, &declared.sha256)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object)
            .content_type(&declared.content_type)
            .checksum_sha256(declared.checksum_base64())
            .body(ByteStream::from(bytes.to_vec()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    async fn adopt_upload(&self, tenant: &str, sha256: &str) -> Result<Declared, StoreError> {
        let from = self.upload_object(tenant, sha256)?;
        let to = self.object(sha256)?;
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&from)
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", e))?;
        let declared = Declared {
            sha256: sha256.to_string(),
            bytes: head
                .content_length()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            content_type: head
                .content_type()
                .unwrap_or("application/octet-stream")
                .to_string(),
        };
        // S3 checked the bytes against the signed checksum at the PUT; an emulator may not
        // have (the blob store re-hashes on every read either way).
        if let Some(stored) = head.checksum_sha256() {
            let stored = stored.split('-').next().unwrap_or(stored);
            if stored != declared.checksum_base64() {
                return Err(StoreError::Invalid(format!(
                    "upload {sha256}: the stored checksum is not the sha256 it is named by"
                )));
            }
        }
        self.client
            .copy_object()
            .bucket(&self.bucket)
            .key(&to)
            .copy_source(format!("{}/{from}", self.bucket))
            .send()
            .await
            .map_err(|e| s3_error("CopyObject", e))?;
        Ok(declared)
    }
}

/// A presigned URL's lifetime: the TTL rounded up to a second, at most SigV4's 7 days.
fn ttl(ttl_ms: u64) -> Duration {
    Duration::from_millis(ttl_ms.div_ceil(1000).max(1) * 1000).min(MAX_PRESIGN_TTL)
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
