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

use crate::sha256_hex;
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
