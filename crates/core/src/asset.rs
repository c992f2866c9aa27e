//! Generated assets are kept, not just linked. A provider's output file lives at a URL the
//! provider controls and expires (Replicate's delivery URLs last about an hour), and a
//! `data:` URL bloats every state write that carries it. So when a step with the `asset` role
//! succeeds, the engine copies the file into the blob store (content-addressed: the key is the
//! sha256 of the bytes) and the normalized output becomes:
//!
//! ```json
//! {"url": "<presigned link to our copy>", "content_type": "image/png", "bytes": 123,
//!  "sha256": "<hex>", "blob": "<hex>", "source_url": "<the provider's URL>"}
//! ```
//!
//! `url` is presigned when the output is made (later steps of the run can fetch it) and again
//! whenever a client reads the run (`blob` names the copy, so a fresh link can always be made:
//! a link signed with a Lambda's temporary credentials dies with them). `source_url` is left
//! out for `data:` URLs. This module is the pure part: reading `data:` URLs and shaping the
//! output; fetching and storing are the engine's and the provider's.
//!
//! **Downloading is not the job.** A `data:` URL is decoded where the answer arrives. A file
//! at a URL is downloaded by an action of its own: when the job's result arrives (webhook,
//! poll or answer), the record keeps it (`StepRecord::download`, the job's cost charged
//! once) and the download is scheduled at once; a download that fails for a passing reason
//! is tried again after a backoff, up to [`DOWNLOAD_ATTEMPTS`] downloads of at most
//! [`DOWNLOAD_TIMEOUT_MS`] each, and the job itself is never submitted again for it — it
//! succeeded and was paid for. A download that cannot succeed (refused, expired link: not a
//! retryable class), or the last one, fails the step with the download's class and a message
//! naming the download and the file's host ([`download_error`]).

use crate::error::StepError;
use crate::sha256_hex;
use crate::time::Dur;
use crate::workflow::RetryPolicy;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A fetched asset file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub bytes: Vec<u8>,
    /// As the source declared it (`application/octet-stream` when it did not).
    pub content_type: String,
}

/// What a `data:` URL without a media type means (RFC 2397).
const DEFAULT_DATA_TYPE: &str = "text/plain;charset=US-ASCII";

pub fn is_data_url(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("data:"))
}

/// The bytes and media type of a `data:` URL (base64 or percent-encoded).
pub fn decode_data_url(url: &str) -> Result<Fetched, String> {
    if !is_data_url(url) {
        return Err("not a data: URL".into());
    }
    let (meta, data) = url[5..]
        .split_once(',')
        .ok_or("a data: URL needs a `,` before its data")?;
    let (media, base64) = match meta.strip_suffix(";base64") {
        Some(m) => (m, true),
        None => (meta, false),
    };
    let bytes = if base64 {
        B64.decode(data.trim())
            .map_err(|e| format!("the data: URL's base64 is invalid: {e}"))?
    } else {
        percent_decode(data)?
    };
    let content_type = if media.is_empty() {
        DEFAULT_DATA_TYPE.to_string()
    } else {
        media.to_string()
    };
    Ok(Fetched {
        bytes,
        content_type,
    })
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-escape at byte {i} of the data: URL"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Downloads of one output file, the first included.
pub const DOWNLOAD_ATTEMPTS: u32 = 5;

/// Bound on one download (connecting, and reading the whole file). It fits every worker
/// invocation timeout the template allows (60 s and up), with room for the checkpoint.
pub const DOWNLOAD_TIMEOUT_MS: u64 = 30_000;

/// The backoff between downloads: 2 s after the first failure, doubling, at most 30 s, with
/// equal jitter (so the delays are 1–2 s, 2–4 s, 4–8 s, 8–16 s).
pub fn download_backoff() -> RetryPolicy {
    RetryPolicy {
        max_attempts: DOWNLOAD_ATTEMPTS,
        initial_backoff: Dur(2_000),
        max_backoff: Dur(30_000),
        multiplier: 2.0,
        jitter: true,
    }
}

/// The host (and port, if any) of a URL, for messages: never its path or query, which may
/// carry a signature. `data:` URLs have none (`inline data`).
pub fn host_of(url: &str) -> &str {
    if is_data_url(url) {
        return "inline data";
    }
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        "an unknown host"
    } else {
        host
    }
}

/// The error of the `n`-th failed download (1-based) of the file at `url`: the download's
/// class, and a message naming the download and its host around what went wrong. `last`:
/// no download follows (the step fails with it).
pub fn download_error(url: &str, err: &StepError, n: u32, last: bool) -> StepError {
    let host = host_of(url);
    let message = if !last {
        format!(
            "download {n} of {DOWNLOAD_ATTEMPTS} of the output file from {host} failed: {}",
            err.message
        )
    } else if err.class.is_retryable() {
        format!(
            "the job succeeded but its output file could not be downloaded from {host}: \
             {n} downloads failed, the last with: {}",
            err.message
        )
    } else {
        format!(
            "the job succeeded but its output file could not be downloaded from {host} \
             (download {n}, not retried: {}): {}",
            err.class, err.message
        )
    };
    let mut e = StepError::new(err.class, message).with_details(err.details.clone());
    e.retry_after_ms = err.retry_after_ms;
    e
}

/// Whether `output` (an asset step's normalized output) still points at the provider's copy.
pub fn needs_keeping(output: &Value) -> Option<&str> {
    if output.get("blob").is_some() {
        return None;
    }
    output.get("url").and_then(Value::as_str)
}

/// The asset output once its file is kept under `key` and linked by `url`.
pub fn kept(source_url: &str, file: &Fetched, key: &str, url: &str) -> Value {
    let mut v = json!({
        "url": url,
        "content_type": file.content_type,
        "bytes": file.bytes.len() as u64,
        "sha256": key,
        "blob": key,
    });
    if !is_data_url(source_url) {
        v["source_url"] = json!(source_url);
    }
    v
}

/// The content type to record: the declared one, else `guess` (from the URL), else
/// `application/octet-stream`.
pub fn content_type(declared: Option<&str>, guess: &str) -> String {
    match declared.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) if d != "application/octet-stream" || guess.is_empty() => d.to_string(),
        _ if !guess.is_empty() => guess.to_string(),
        _ => "application/octet-stream".to_string(),
    }
}

/// Whether the bytes are the ones the key names (a kept asset's `sha256`).
pub fn matches(key: &str, bytes: &[u8]) -> bool {
    sha256_hex(bytes) == key
}

fn is_key(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The blob keys of every kept asset inside `value` (any depth), once each.
pub fn kept_keys(value: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let (Some(Value::String(k)), Some(Value::String(_))) =
                    (m.get("blob"), m.get("url"))
                {
                    if is_key(k) && !out.contains(k) {
                        out.push(k.clone());
                    }
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut out);
    out
}

/// Points every kept asset inside `value` at its link in `links` (key → fresh URL).
pub fn relink(value: &mut Value, links: &BTreeMap<String, String>) {
    match value {
        Value::Object(m) => {
            let link = match m.get("blob") {
                Some(Value::String(k)) if m.get("url").is_some_and(Value::is_string) => {
                    links.get(k).cloned()
                }
                _ => None,
            };
            if let Some(url) = link {
                m.insert("url".into(), Value::String(url));
            }
            m.values_mut().for_each(|x| relink(x, links));
        }
        Value::Array(a) => a.iter_mut().for_each(|x| relink(x, links)),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    /// Bytes and content type, or a part of the error.
    type Want = Result<(&'static [u8], &'static str), &'static str>;

    #[test]
    fn data_urls_decode() {
        let table: [(&str, Want); 6] = [
            (
                "data:image/svg+xml;base64,PHN2Zz4=",
                Ok((b"<svg>", "image/svg+xml")),
            ),
            ("DATA:text/plain,a%20b", Ok((b"a b", "text/plain"))),
            ("data:,hi", Ok((b"hi", DEFAULT_DATA_TYPE))),
            ("data:image/png;base64,@@@", Err("base64")),
            ("data:image/png;base64", Err("`,`")),
            ("https://x/y.png", Err("not a data")),
        ];
        for (url, want) in table {
            match (decode_data_url(url), want) {
                (Ok(f), Ok((bytes, ct))) => {
                    assert_eq!(
                        (f.bytes.as_slice(), f.content_type.as_str()),
                        (bytes, ct),
                        "{url}"
                    )
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{url}: {e}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_kept_asset_names_its_copy_and_its_source() {
        let file = Fetched {
            bytes: b"png".to_vec(),
            content_type: "image/png".into(),
        };
        let key = sha256_hex(b"png");
        let v = kept(
            "https://replicate.delivery/a/out.png",
            &file,
            &key,
            "https://s3/link",
        );
        assert_eq!(v["url"], "https://s3/link");
        assert_eq!(
            (v["bytes"].as_u64(), v["sha256"].as_str()),
            (Some(3), Some(key.as_str()))
        );
        assert_eq!(v["blob"], key.as_str());
        assert_eq!(v["source_url"], "https://replicate.delivery/a/out.png");
        assert!(matches(&key, b"png"));
        let inline = kept("data:image/png;base64,cG5n", &file, &key, "u");
        assert!(inline.get("source_url").is_none(), "{inline}");
        assert_eq!(needs_keeping(&v), None);
        assert_eq!(
            needs_keeping(&json!({"url": "https://x"})),
            Some("https://x")
        );
    }

    #[test]
    fn downloads_are_named_by_their_host() {
        let table = [
            (
                "https://replicate.delivery/xezq/abc/out-0.webp?sig=s3cr3t",
                "replicate.delivery",
            ),
            (
                "https://user:pw@files.example.com:8443/a#x",
                "files.example.com:8443",
            ),
            ("http://127.0.0.1:9/v1/files/x", "127.0.0.1:9"),
            ("https://cdn.example?x=1", "cdn.example"),
            ("data:image/png;base64,AAAA", "inline data"),
            ("https:///nohost", "an unknown host"),
        ];
        for (url, host) in table {
            assert_eq!(host_of(url), host, "{url}");
        }
        let url = "https://replicate.delivery/xezq/abc/out-0.webp?sig=s3cr3t";
        let cause = StepError::new(ErrorClass::Transient, "could not connect");
        let e = download_error(url, &cause, 2, false);
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(
            e.message,
            "download 2 of 5 of the output file from replicate.delivery failed: could not connect"
        );
        let e = download_error(url, &cause, 5, true);
        assert!(e.message.contains("5 downloads failed"), "{e}");
        assert!(e.message.contains("from replicate.delivery"), "{e}");
        let gone = StepError::new(ErrorClass::Invalid, "404 not found");
        let e = download_error(url, &gone, 1, true);
        assert_eq!(e.class, ErrorClass::Invalid);
        assert!(
            e.message.contains("download 1, not retried: invalid"),
            "{e}"
        );
        for e in [
            download_error(url, &cause, 1, false),
            download_error(url, &gone, 1, true),
        ] {
            assert!(
                !e.message.contains("s3cr3t") && !e.message.contains("xezq"),
                "{e}"
            );
        }
        // The schedule: 1–2 s, 2–4 s, 4–8 s, 8–16 s (equal jitter).
        let p = download_backoff();
        for (n, full) in [(1, 2_000), (2, 4_000), (3, 8_000), (4, 16_000)] {
            let d = crate::machine::retry::backoff_ms(&p, n, "run/step/download");
            assert!((full / 2..=full).contains(&d), "{n}: {d}");
        }
    }

    #[test]
    fn content_types_prefer_what_was_declared() {
        let table = [
            (Some("image/webp"), "image/png", "image/webp"),
            (Some("application/octet-stream"), "image/png", "image/png"),
            (Some(" "), "image/png", "image/png"),
            (None, "", "application/octet-stream"),
            (
                Some("application/octet-stream"),
                "",
                "application/octet-stream",
            ),
        ];
        for (declared, guess, want) in table {
            assert_eq!(content_type(declared, guess), want, "{declared:?} {guess}");
        }
    }

    #[test]
    fn kept_assets_are_found_and_relinked_at_any_depth() {
        let k1 = "a".repeat(64);
        let k2 = "b".repeat(64);
        let mut v = json!({
            "asset": {"url": "old1", "blob": k1},
            "list": [{"url": "old2", "blob": k2}, {"url": "x", "blob": "not-a-key"}],
            "again": {"url": "old1b", "blob": k1},
        });
        assert_eq!(kept_keys(&v), vec![k1.clone(), k2.clone()]);
        let links = BTreeMap::from([(k1.clone(), "new1".to_string()), (k2, "new2".to_string())]);
        relink(&mut v, &links);
        assert_eq!(v["asset"]["url"], "new1");
        assert_eq!(v["again"]["url"], "new1");
        assert_eq!(v["list"][0]["url"], "new2");
        assert_eq!(v["list"][1]["url"], "x");
    }
}
