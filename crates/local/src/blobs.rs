//! The `BlobStore` port as content-addressed files: `blobs/ab/cdef…` holds the bytes whose
//! sha256 is `abcdef…`. Two hex characters of fan-out keep directories small.

use async_trait::async_trait;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use switchyard_core::ports::BlobStore;
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
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).map_err(|e| unavailable(dir, e))?;
        // Temp file in the same directory, then rename: readers see the whole blob or nothing.
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TEMP_FILES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(bytes)?;
                // Flushed before the rename, so a crash cannot leave a complete name on
                // incomplete content.
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(unavailable(&path, e));
        }
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
}

/// `file://` + the path, percent-encoding anything outside the URL-safe set (spaces, say).
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
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
