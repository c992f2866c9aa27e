//! Client uploads: inputs too large for an API request (API Gateway takes 10 MB, a Lambda
//! payload 6 MB) travel as bytes to the blob store and as a small reference in the run input.
//!
//! The flow (docs/api.md, "Uploads"):
//! 1. `POST /v1/uploads {sha256, bytes, content_type}` checks the declaration
//!    ([`Declared::check`]) and answers a presigned PUT. The store refuses other bytes: S3 signs
//!    the size, type and `x-amz-checksum-sha256`; `switchyard dev` checks all three itself.
//! 2. The client PUTs the bytes, then starts a run whose input carries
//!    `{"$upload": "<sha256>"}` anywhere (a field, an array item).
//! 3. At the start of the run, each reference is adopted into the blob store (the upload may
//!    expire; the run's copy does not) and rewritten with what was stored:
//!    `{"$upload", "bytes", "content_type"}`. The input schema sees that object, so a workflow
//!    can bound `bytes` or pick `content_type`s; routes can branch on them.
//! 4. Where data leaves for a model (a model step's `input` and `params`), each reference is
//!    replaced by its content ([`decode`]): JSON parsed, text as a string, anything else as a
//!    `data:` URL (what Replicate and vision inputs take).
//!
//! Uploads are per tenant (`uploads/<tenant>/<sha256>`): a tenant can adopt only what it
//! uploaded itself, so a reference cannot be used to learn whether someone else stored some
//! content. Pure: no I/O here.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The key of a reference object: `{"$upload": "<sha256 hex>"}`.
pub const REF_KEY: &str = "$upload";
/// Largest upload accepted (64 MiB). A worker holds an upload in memory (and a model request
/// its base64 or text form) while it sends it to a model: this bounds the worker's memory, not
/// S3's (5 GB per PUT).
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// How long a presigned upload URL stays valid (15 minutes).
pub const PUT_TTL_MS: u64 = 15 * 60 * 1000;
/// Most upload references one run input may carry (each is adopted at the start, in order).
pub const MAX_REFS_PER_INPUT: usize = 32;
/// Longest accepted `content_type`.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;

/// What a client says it will upload; the store holds it to every field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// sha256 of the bytes, 64 lower-case hex digits: the blob's key.
    pub sha256: String,
    pub bytes: u64,
    /// A media type, `type/subtype` (parameters such as `; charset=utf-8` allowed).
    pub content_type: String,
}

/// A declaration that cannot be accepted, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: &'static str,
    pub message: String,
}

/// Whether `s` is a blob key: 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Declared {
    /// Checks the declaration against the limits (`max_bytes`: [`MAX_BYTES`] in service).
    pub fn check(&self, max_bytes: u64) -> Result<(), Refusal> {
        if !is_sha256_hex(&self.sha256) {
            return Err(Refusal {
                field: "sha256",
                message: "expected the sha256 of the bytes as 64 lower-case hex digits".into(),
            });
        }
        if self.bytes == 0 || self.bytes > max_bytes {
            return Err(Refusal {
                field: "bytes",
                message: format!("expected 1 to {max_bytes} bytes, got {}", self.bytes),
            });
        }
        if !is_media_type(&self.content_type) {
            return Err(Refusal {
                field: "content_type",
                message: format!(
                    "expected a media type such as `application/pdf` or `text/plain; \
                     charset=utf-8` (printable ASCII, at most {MAX_CONTENT_TYPE_BYTES} bytes)"
                ),
            });
        }
        Ok(())
    }

    /// Checks uploaded bytes against the declaration (size first: it is free).
    pub fn verify(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 != self.bytes {
            return Err(format!(
                "the upload is {} bytes; {} were declared",
                bytes.len(),
                self.bytes
            ));
        }
        if crate::sha256_hex(bytes) != self.sha256 {
            return Err("the uploaded bytes do not hash to the declared sha256".into());
        }
        Ok(())
    }

    /// The sha256 as S3's `x-amz-checksum-sha256` wants it: base64 of the 32 bytes.
    pub fn checksum_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD
            .encode(hex::decode(&self.sha256).unwrap_or_default())
    }

    /// The reference a run input carries once the upload is adopted.
    pub fn reference(&self) -> Value {
        json!({REF_KEY: self.sha256, "bytes": self.bytes, "content_type": self.content_type})
    }
}

/// `type/subtype[; params]`, printable ASCII without control characters.
fn is_media_type(ct: &str) -> bool {
    if ct.is_empty()
        || ct.len() > MAX_CONTENT_TYPE_BYTES
        || !ct.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return false;
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s))
}

/// The sha256 a value names when it is a reference object (`{"$upload": "<hex>", ...}`).
pub fn reference_of(v: &Value) -> Option<&str> {
    v.as_object()?.get(REF_KEY)?.as_str()
}

/// Every reference in `v` with the JSON path it sits at (`doc`, `pages.0`), in document order.
pub fn references(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(v, String::new(), &mut |path, sha, _| {
        out.push((path, sha.to_string()))
    });
    out
}

/// The `(sha256, content_type)` of every adopted reference in `v` (one that intake rewrote
/// with what was stored; a bare `{"$upload"}` has no type and is not listed).
pub fn adopted(v: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    walk(v, String::new(), &mut |_, sha, m| {
        if let Some(ct) = m.get("content_type").and_then(Value::as_str) {
            out.push((sha.to_string(), ct.to_string()));
        }
    });
    out
}

fn walk(v: &Value, path: String, f: &mut impl FnMut(String, &str, &Map<String, Value>)) {
    if let Value::Object(m) = v {
        if let Some(sha) = m.get(REF_KEY).and_then(Value::as_str) {
            f(path, sha, m);
            return;
        }
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(m) => m.iter().for_each(|(k, x)| walk(x, join(k), f)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| walk(x, join(&i.to_string()), f)),
        _ => {}
    }
}

/// Replaces every reference object in `v` by `f(sha256, reference)`, depth first.
pub fn replace<E>(
    v: &mut Value,
    f: &mut impl FnMut(&str, &Map<String, Value>) -> Result<Value, E>,
) -> Result<(), E> {
    if let Value::Object(m) = v {
        if let Some(sha) = m.get(REF_KEY).and_then(Value::as_str) {
            let sha = sha.to_string();
            *v = f(&sha, m)?;
            return Ok(());
        }
    }
    match v {
        Value::Object(m) => m.values_mut().try_for_each(|x| replace(x, f)),
        Value::Array(a) => a.iter_mut().try_for_each(|x| replace(x, f)),
        _ => Ok(()),
    }
}

/// The value a model sees for an upload's bytes: JSON types (`application/json`, `*+json`)
/// parsed, `text/*` as a string, anything else as a base64 `data:` URL.
pub fn decode(content_type: &str, bytes: &[u8]) -> Result<Value, String> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        return serde_json::from_slice(bytes)
            .map_err(|e| format!("the upload is `{content_type}` but not valid JSON: {e}"));
    }
    if essence.starts_with("text/") {
        return String::from_utf8(bytes.to_vec())
            .map(Value::String)
            .map_err(|e| format!("the upload is `{content_type}` but not UTF-8: {e}"));
    }
    Ok(Value::String(format!(
        "data:{essence};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )))
}

/// The tenant as one path segment of an upload's key (`uploads/<segment>/<sha256>`): the name
/// itself when it is plain (letters, digits, `-`, `_`, `.`, not starting with `.`), else `~`
/// and its hex, so `..` or `a/b` can never name another directory or prefix (and `~` is not a
/// tenant character, so the two forms never meet).
pub fn tenant_segment(tenant: &str) -> String {
    let plain = !tenant.is_empty()
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if plain {
        tenant.to_string()
    } else {
        format!("~{}", hex::encode(tenant))
    }
}

/// The link a backend that serves uploads itself (`switchyard dev`) signs for a PUT: every
/// declared field and the tenant, so the link cannot be reused for other bytes or by another
/// tenant. Used as the `key` of [`crate::presign::signature`].
pub fn link_subject(tenant: &str, d: &Declared) -> String {
    format!(
        "put\n{tenant}\n{}\n{}\n{}",
        d.sha256, d.bytes, d.content_type
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn declared(sha: &str, bytes: u64, ct: &str) -> Declared {
        Declared {
            sha256: sha.into(),
            bytes,
            content_type: ct.into(),
        }
    }

    #[test]
    fn declarations_are_checked_field_by_field() {
        let sha = crate::sha256_hex(b"x");
        let table: [(Declared, Option<&str>); 9] = [
            (declared(&sha, 1, "application/pdf"), None),
            (declared(&sha, 64, "text/plain; charset=utf-8"), None),
            (declared(&sha, 64, "application/vnd.api+json"), None),
            (
                declared(&sha.to_uppercase(), 1, "text/plain"),
                Some("sha256"),
            ),
            (declared(&sha[..63], 1, "text/plain"), Some("sha256")),
            (declared(&sha, 0, "text/plain"), Some("bytes")),
            (declared(&sha, 65, "text/plain"), Some("bytes")),
            (declared(&sha, 1, "pdf"), Some("content_type")),
            (
                declared(&sha, 1, "text/plain\r\nx-evil: 1"),
                Some("content_type"),
            ),
        ];
        for (d, field) in table {
            assert_eq!(d.check(64).err().map(|r| r.field), field, "{d:?}");
        }
    }

    #[test]
    fn references_are_found_with_their_paths_and_replaced() {
        let a = crate::sha256_hex(b"a");
        let mut v = json!({
            "doc": {"$upload": a},
            "pages": [1, {"$upload": "b", "bytes": 3}],
            "nested": {"deep": {"x": {"$upload": "c"}}},
            "not": {"upload": "d"},
        });
        let mut found = references(&v);
        found.sort();
        assert_eq!(
            found,
            vec![
                ("doc".to_string(), a.clone()),
                ("nested.deep.x".to_string(), "c".to_string()),
                ("pages.1".to_string(), "b".to_string()),
            ]
        );
        let typed = json!([{"$upload": "e", "content_type": "text/plain"}, {"$upload": "f"}]);
        assert_eq!(
            adopted(&typed),
            vec![("e".to_string(), "text/plain".to_string())]
        );
        replace::<()>(&mut v, &mut |sha, _| Ok(json!(format!("<{sha}>")))).unwrap();
        assert_eq!(v["doc"], json!(format!("<{a}>")));
        assert_eq!(v["pages"][1], json!("<b>"));
        assert_eq!(v["nested"]["deep"]["x"], json!("<c>"));
        assert_eq!(v["not"], json!({"upload": "d"}));
    }

    #[test]
    fn content_is_decoded_by_its_media_type() {
        let table: [(&str, &[u8], Result<Value, ()>); 6] = [
            ("application/json", br#"{"a":1}"#, Ok(json!({"a": 1}))),
            ("application/ld+json; x=y", b"[1]", Ok(json!([1]))),
            (
                "text/plain; charset=utf-8",
                "héllo".as_bytes(),
                Ok(json!("héllo")),
            ),
            (
                "image/PNG",
                b"\x89PNG",
                Ok(json!("data:image/png;base64,iVBORw==")),
            ),
            ("application/json", b"{", Err(())),
            ("text/markdown", b"\xff\xfe", Err(())),
        ];
        for (ct, bytes, want) in table {
            assert_eq!(decode(ct, bytes).map_err(|_| ()), want, "{ct}");
        }
    }

    #[test]
    fn tenants_are_one_safe_path_segment() {
        let table = [
            ("acme", "acme"),
            ("a.b-c_1", "a.b-c_1"),
            ("..", "~2e2e"),
            (".hidden", "~2e68696464656e"),
            ("a/b", "~612f62"),
            ("", "~"),
        ];
        for (tenant, want) in table {
            assert_eq!(tenant_segment(tenant), want, "{tenant:?}");
        }
    }

    #[test]
    fn links_name_tenant_and_every_declared_field() {
        let d = declared(&crate::sha256_hex(b"x"), 1, "text/plain");
        let base = link_subject("acme", &d);
        assert_ne!(base, link_subject("other", &d));
        assert_ne!(
            base,
            link_subject(
                "acme",
                &Declared {
                    bytes: 2,
                    ..d.clone()
                }
            )
        );
        assert_ne!(
            base,
            link_subject(
                "acme",
                &Declared {
                    content_type: "text/html".into(),
                    ..d
                }
            )
        );
    }
}
