//! The `BlobStore` port as content-addressed files: `blobs/ab/cdef…` holds the bytes whose
//! sha256 is `abcdef…`. Two hex characters of fan-out keep directories small.
//!
//! Client uploads wait in `blobs/uploads/<tenant>/<sha256>` (with the declared media type in
//! `<sha256>.type`) until a run adopts them: then they are renamed into the blob tree
//! (`uploads` cannot be a fan-out directory: `u` is not a hex digit).

use async_trait::async_trait;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::ports::{BlobStore, PresignedPut};
use switchyard_core::upload::{self, Declared};
use switchyard_core::Clock;
use switchyard_core::{sha256_hex, StoreError};

/// Distinguishes temp files of concurrent writers in this process.
static TEMP_FILES: AtomicU64 = AtomicU64::new(0);

/// Blobs under one directory; cheap to clone.
///
/// File I/O runs on the caller's thread: blobs here are prompts, outputs and definitions of at
/// most a few megabytes, on a local disk, and the `Db` handles make the same choice.
#[derive(Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    /// When this process serves blobs over HTTP (`switchyard dev`): presigned links point
    /// there instead of at the file.
    served: Option<Served>,
}

/// Where blobs are served, and the secret their links are signed with.
#[derive(Clone)]
struct Served {
    base_url: String,
    secret: Arc<Vec<u8>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for FsBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBlobStore")
            .field("root", &self.root)
            .field("served", &self.served.as_ref().map(|s| &s.base_url))
            .finish()
    }
}

fn unavailable(p: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("blob file {}: {e}", p.display()))
}

impl FsBlobStore {
    pub(crate) fn new(root: PathBuf) -> FsBlobStore {
        FsBlobStore { root, served: None }
    }

    /// Presigned links become `{base_url}/v1/blobs/{key}?expires=MS&sig=HEX`, signed with
    /// `secret` ([`switchyard_core::presign`]), for a process that serves that route.
    pub fn served_at(mut self, base_url: &str, secret: Vec<u8>, clock: Arc<dyn Clock>) -> Self {
        self.served = Some(Served {
            base_url: base_url.trim_end_matches('/').to_string(),
            secret: Arc::new(secret),
            clock,
        });
        self
    }

    /// The file for `key`, after checking that the key is a lowercase sha256 hex digest: keys
    /// come from URLs and records, and must never be able to name a path outside `root`.
    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let ok = key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(StoreError::NotFound(format!(
                "blob key {key:?} is not a sha256 hex digest (64 lowercase hex characters)"
            )));
        }
        Ok(self.root.join(&key[..2]).join(&key[2..]))
    }

    /// Where a tenant's upload of `sha256` waits (the key checked as in [`Self::path`]).
    fn upload_path(&self, tenant: &str, sha256: &str) -> Result<PathBuf, StoreError> {
        if !upload::is_sha256_hex(sha256) {
            return Err(StoreError::NotFound(format!(
                "upload {sha256:?}: not a sha256 hex digest (64 lowercase hex characters)"
            )));
        }
        Ok(self
            .root
            .join("uploads")
            .join(upload::tenant_segment(tenant))
            .join(sha256))
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename: readers
/// see the whole file or nothing, and a crash cannot leave a complete name on partial content.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(path);
    std::fs::create_dir_all(dir).map_err(|e| unavailable(dir, e))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TEMP_FILES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(unavailable(path, e));
    }
    Ok(())
}

#[async_trait]
impl BlobStore for FsBlobStore {
    /// `content_type` is not kept locally (S3 stores it as object metadata; nothing here reads it).
    async fn put(&self, bytes: &[u8], _content_type: &str) -> Result<String, StoreError> {
        let key = sha256_hex(bytes);
        let path = self.path(&key)?;
        // Same key, same bytes: an existing file of the right size is this blob already. A
        // damaged one (wrong size) is replaced rather than kept forever.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(key);
        }
        write_whole(&path, bytes)?;
        Ok(key)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::NotFound(format!("blob {key}"))
            } else {
                unavailable(&path, e)
            }
        })?;
        let actual = sha256_hex(&bytes);
        if actual != key {
            return Err(StoreError::Corrupt(format!(
                "blob file {} has content hash {actual}, not its name",
                path.display()
            )));
        }
        Ok(bytes)
    }

    /// A `file://` URL of the blob's absolute path. `ttl_ms` is ignored: a local file has no
    /// expiring signature; anyone who can read the data directory can read the blob.
    async fn presign(&self, key: &str, ttl_ms: u64) -> Result<String, StoreError> {
        let path = self.path(key)?;
        if !path.is_file() {
            return Err(StoreError::NotFound(format!("blob {key}")));
        }
        Ok(match &self.served {
            None => file_url(&path),
            Some(s) => {
                let expires = s.clock.now_ms().saturating_add(ttl_ms);
                let sig = switchyard_core::presign::signature(&s.secret, key, expires);
                format!("{}/v1/blobs/{key}?expires={expires}&sig={sig}", s.base_url)
            }
        })
    }

    /// dev's `PUT /v1/uploads/{sha256}?tenant=…&bytes=…&content_type=…&expires=…&sig=…`,
    /// signed over the tenant and every declared field. A store that serves no HTTP has no
    /// URL to give (`Invalid`): the CLI's local runs read their input from files.
    async fn presign_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        ttl_ms: u64,
    ) -> Result<PresignedPut, StoreError> {
        let Some(s) = &self.served else {
            return Err(StoreError::Invalid(
                "uploads need a server to PUT to: run `switchyard dev`".into(),
            ));
        };
        self.upload_path(tenant, &declared.sha256)?;
        let expires = s.clock.now_ms().saturating_add(ttl_ms);
        let sig = switchyard_core::presign::signature(
            &s.secret,
            &upload::link_subject(tenant, declared),
            expires,
        );
        let query = url_query(&[
            ("tenant", tenant),
            ("bytes", &declared.bytes.to_string()),
            ("content_type", &declared.content_type),
            ("expires", &expires.to_string()),
            ("sig", &sig),
        ]);
        Ok(PresignedPut {
            url: format!("{}/v1/uploads/{}?{query}", s.base_url, declared.sha256),
            headers: vec![("content-type".into(), declared.content_type.clone())],
        })
    }

    async fn accept_upload(
        &self,
        tenant: &str,
        declared: &Declared,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let path = self.upload_path(tenant, &declared.sha256)?;
        declared.verify(bytes).map_err(StoreError::Invalid)?;
        write_whole(
            &path.with_extension("type"),
            declared.content_type.as_bytes(),
        )?;
        write_whole(&path, bytes)
    }

    async fn adopt_upload(&self, tenant: &str, sha256: &str) -> Result<Declared, StoreError> {
        let from = self.upload_path(tenant, sha256)?;
        let to = self.path(sha256)?;
        let content_type = match std::fs::read_to_string(from.with_extension("type")) {
            Ok(ct) => ct,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("upload {sha256}")))
            }
            Err(e) => return Err(unavailable(&from, e)),
        };
        // Adopted before (a retried start) and the upload file already moved: the blob is the
        // upload. Otherwise move the file into the blob tree, checked on the way.
        let bytes = if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| unavailable(&from, e))?;
            if sha256_hex(&bytes) != sha256 {
                return Err(StoreError::Corrupt(format!(
                    "upload file {} does not hash to its name",
                    from.display()
                )));
            }
            let dir = to.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(dir).map_err(|e| unavailable(dir, e))?;
            std::fs::rename(&from, &to).map_err(|e| unavailable(&to, e))?;
            bytes.len() as u64
        } else {
            std::fs::metadata(&to)
                .map_err(|_| StoreError::NotFound(format!("upload {sha256}")))?
                .len()
        };
        Ok(Declared {
            sha256: sha256.to_string(),
            bytes,
            content_type,
        })
    }
}

/// `k=v&…` with values percent-encoded (content types carry `/`, `;`, spaces).
fn url_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v, b"-._~")))
        .collect::<Vec<_>>()
        .join("&")
}

/// `file://` + the path, percent-encoding anything outside the URL-safe set (spaces, say).
fn file_url(path: &Path) -> String {
    format!(
        "file://{}",
        percent_encode(&path.to_string_lossy(), b"/-._~")
    )
}

/// `s` with every byte that is neither alphanumeric nor in `safe` percent-encoded.
fn percent_encode(s: &str, safe: &[u8]) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || safe.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::Backend;

    #[tokio::test]
    async fn put_get_is_idempotent_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Backend::open(dir.path()).unwrap().blobs();
        let key = blobs.put(b"hello", "text/plain").await.unwrap();
        assert_eq!(key, sha256_hex(b"hello"));
        assert_eq!(blobs.put(b"hello", "text/plain").await.unwrap(), key);
        assert_eq!(blobs.get(&key).await.unwrap(), b"hello");
        let file = blobs.root.join(&key[..2]).join(&key[2..]);
        assert!(file.is_file());
        let url = blobs.presign(&key, 60_000).await.unwrap();
        assert_eq!(url, format!("file://{}", file.display()));
        // No temp files left behind.
        assert_eq!(
            std::fs::read_dir(file.parent().unwrap()).unwrap().count(),
            1
        );

        // Same size, different content: only the re-hash on read can tell.
        std::fs::write(&file, b"jello").unwrap();
        assert!(matches!(blobs.get(&key).await, Err(StoreError::Corrupt(_))));
        // Wrong size: put repairs it.
        std::fs::write(&file, b"hell").unwrap();
        blobs.put(b"hello", "text/plain").await.unwrap();
        assert_eq!(blobs.get(&key).await.unwrap(), b"hello");
    }

    fn fresh() -> (tempfile::TempDir, std::sync::Arc<dyn BlobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Backend::open(dir.path()).unwrap().blobs();
        (dir, std::sync::Arc::new(blobs))
    }

    // The port contract, on files.
    switchyard_contract::blob_store_contract!(fresh());

    #[test]
    fn file_urls_are_escaped() {
        assert_eq!(
            file_url(Path::new("/data dir/ab/c%d")),
            "file:///data%20dir/ab/c%25d"
        );
    }
}
