//! Presigned links to blobs, for backends that serve blobs themselves (the embedded backend
//! under `switchyard dev`; on AWS, S3 presigns). A link names the blob key and an expiry time,
//! signed with HMAC-SHA256 under a secret only the server knows; whoever holds the link may
//! read that blob until it expires, and nothing else. Pure: the caller passes `now`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a link does not open its blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link has expired")]
    Expired,
    #[error("the link's signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], key: &str, expires_ms: u64) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(key.as_bytes());
    m.update(b"\n");
    m.update(expires_ms.to_string().as_bytes());
    Some(m)
}

/// The hex signature of a link to `key` valid until `expires_ms`.
pub fn signature(secret: &[u8], key: &str, expires_ms: u64) -> String {
    mac(secret, key, expires_ms)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Checks a link at `now_ms` (constant-time comparison of the signature).
pub fn check(
    secret: &[u8],
    key: &str,
    expires_ms: u64,
    sig_hex: &str,
    now_ms: u64,
) -> Result<(), LinkError> {
    let sig = hex::decode(sig_hex).map_err(|_| LinkError::Mismatch)?;
    let m = mac(secret, key, expires_ms).ok_or(LinkError::Mismatch)?;
    m.verify_slice(&sig).map_err(|_| LinkError::Mismatch)?;
    if now_ms > expires_ms {
        return Err(LinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (secret, key, expires, signature, now, verdict)
    type Row<'a> = (&'a [u8], &'a str, u64, &'a str, u64, Result<(), LinkError>);

    #[test]
    fn links_open_their_blob_until_they_expire() {
        let s = b"server-secret";
        let sig = signature(s, "ab12", 1_000);
        let table: [Row; 6] = [
            (s, "ab12", 1_000, &sig, 999, Ok(())),
            (s, "ab12", 1_000, &sig, 1_000, Ok(())),
            (s, "ab12", 1_000, &sig, 1_001, Err(LinkError::Expired)),
            (s, "ab13", 1_000, &sig, 10, Err(LinkError::Mismatch)),
            (s, "ab12", 2_000, &sig, 10, Err(LinkError::Mismatch)),
            (b"other", "ab12", 1_000, &sig, 10, Err(LinkError::Mismatch)),
        ];
        for (secret, key, exp, sig, now, want) in table {
            assert_eq!(check(secret, key, exp, sig, now), want, "{key} {exp} {now}");
        }
        assert_eq!(
            check(s, "ab12", 1_000, "not hex", 0),
            Err(LinkError::Mismatch)
        );
    }
}
