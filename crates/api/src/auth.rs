//! API keys → tenants, and operator keys.
//!
//! `SWITCHYARD_API_KEYS` is `key:tenant,key2:tenant2`. `SWITCHYARD_OPERATOR_KEYS` is
//! `key,key2` (or `sha256:<hex>` entries): an operator key opens the operator routes
//! (`/v1/ops/…`: dead letters across every tenant), and nothing else; a tenant's key is
//! refused there with 403. Only the SHA-256 of each key is kept in
//! memory after parsing, and a presented key is hashed and compared with every entry in
//! constant time, so neither the table nor the comparison leaks a key. (On AWS the same table
//! comes from a secret, already hashed: entries of the form `sha256:<hex>:tenant`.)

use sha2::{Digest, Sha256};
use switchyard_core::webhook::constant_eq;

/// The key → tenant table.
#[derive(Clone, Default)]
pub struct ApiKeys {
    /// (hex SHA-256 of the key, tenant).
    entries: Vec<(String, String)>,
}

/// A malformed `SWITCHYARD_API_KEYS` entry (never echoes the key itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SWITCHYARD_API_KEYS entry {index}: {problem} (expected `key:tenant` or `sha256:<64 hex>:tenant`, comma-separated)")]
pub struct KeysError {
    /// 1-based position of the entry.
    pub index: usize,
    pub problem: &'static str,
}

/// Tenants are path-free identifiers: letters, digits, `-`, `_`, `.`; 1–64 characters.
fn valid_tenant(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The stored digest of a key entry: the hash of a plain key (at least 16 characters: a
/// short key is a guessable key), or a `sha256:<64 hex>` entry as given.
fn digest(key_part: &str) -> Result<String, &'static str> {
    match key_part.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        Some(_) => Err("a sha256: entry needs 64 hex digits"),
        None if key_part.len() < 16 => Err("the key is shorter than 16 characters"),
        None => Ok(hash(key_part)),
    }
}

/// The operator keys (`SWITCHYARD_OPERATOR_KEYS`), kept hashed like tenants' keys.
#[derive(Clone, Default)]
pub struct OperatorKeys(Vec<String>);

/// A malformed `SWITCHYARD_OPERATOR_KEYS` entry (never echoes the key itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SWITCHYARD_OPERATOR_KEYS entry {index}: {problem} (expected a key of at least 16 characters or `sha256:<64 hex>`, comma-separated)")]
pub struct OperatorKeysError {
    /// 1-based position of the entry.
    pub index: usize,
    pub problem: &'static str,
}

impl OperatorKeys {
    pub fn parse(spec: &str) -> Result<OperatorKeys, OperatorKeysError> {
        let mut out = Vec::new();
        for (i, raw) in spec.split(',').map(str::trim).enumerate() {
            if raw.is_empty() {
                continue;
            }
            out.push(digest(raw).map_err(|problem| OperatorKeysError {
                index: i + 1,
                problem,
            })?);
        }
        Ok(OperatorKeys(out))
    }

    /// One key (the dev server's generated operator key).
    pub fn single(key: &str) -> OperatorKeys {
        OperatorKeys(vec![hash(key)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is an operator key: every entry compared, in constant time.
    pub fn contains(&self, presented: &str) -> bool {
        let d = hash(presented);
        self.0
            .iter()
            .fold(false, |found, h| constant_eq(h, &d) | found)
    }
}

impl ApiKeys {
    /// Parses the `SWITCHYARD_API_KEYS` form. Keys must be at least 16 characters: a short key
    /// is a guessable key.
    pub fn parse(spec: &str) -> Result<ApiKeys, KeysError> {
        let mut entries = Vec::new();
        for (i, raw) in spec.split(',').map(str::trim).enumerate() {
            if raw.is_empty() {
                continue;
            }
            let err = |problem| KeysError {
                index: i + 1,
                problem,
            };
            let (key_part, tenant) = raw.rsplit_once(':').ok_or_else(|| err("no `:tenant`"))?;
            if !valid_tenant(tenant) {
                return Err(err(
                    "the tenant must be 1-64 letters, digits, `-`, `_` or `.`",
                ));
            }
            entries.push((digest(key_part).map_err(err)?, tenant.to_string()));
        }
        Ok(ApiKeys { entries })
    }

    /// One key for one tenant (the dev server's generated key).
    pub fn single(key: &str, tenant: &str) -> ApiKeys {
        ApiKeys {
            entries: vec![(hash(key), tenant.to_string())],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The tenant a presented key belongs to. Every entry is compared (no early exit), each
    /// comparison in constant time.
    pub fn tenant(&self, presented: &str) -> Option<&str> {
        let digest = hash(presented);
        let mut found = None;
        for (h, tenant) in &self.entries {
            if constant_eq(h, &digest) && found.is_none() {
                found = Some(tenant.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_tenants_and_bad_entries_say_which() {
        let k = ApiKeys::parse(
            "dev-key-0123456789:acme, other-key-abcdefgh:globex,sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08:hashed",
        )
        .unwrap();
        assert_eq!(k.tenant("dev-key-0123456789"), Some("acme"));
        assert_eq!(k.tenant("other-key-abcdefgh"), Some("globex"));
        // sha256("test")
        assert_eq!(k.tenant("test"), Some("hashed"));
        assert_eq!(k.tenant("dev-key-012345678"), None);
        assert_eq!(k.tenant(""), None);

        let table = [
            ("short:acme", 1, "shorter than 16"),
            ("dev-key-0123456789", 1, "no `:tenant`"),
            ("dev-key-0123456789:a/b", 1, "tenant"),
            ("dev-key-0123456789:ok,sha256:abc:t", 2, "64 hex"),
        ];
        for (spec, index, problem) in table {
            let e = ApiKeys::parse(spec).err().unwrap();
            assert_eq!(e.index, index, "{spec}");
            assert!(e.to_string().contains(problem), "{spec}: {e}");
            assert!(!e.to_string().contains("0123456789"), "the key leaked: {e}");
        }
        assert!(ApiKeys::parse("").unwrap().is_empty());
    }

    #[test]
    fn operator_keys_are_checked_and_bad_entries_say_which() {
        let k = OperatorKeys::parse(
            "ops-key-0123456789, sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        )
        .unwrap();
        assert!(k.contains("ops-key-0123456789"));
        assert!(k.contains("test"));
        assert!(!k.contains("ops-key-012345678"));
        assert!(!k.contains(""));
        for (spec, index, problem) in [
            ("short", 1, "shorter than 16"),
            ("ops-key-0123456789,sha256:abc", 2, "64 hex"),
        ] {
            let e = OperatorKeys::parse(spec).err().unwrap();
            assert_eq!(e.index, index, "{spec}");
            assert!(e.to_string().contains(problem), "{spec}: {e}");
            assert!(!e.to_string().contains("0123456789"), "the key leaked: {e}");
        }
        assert!(OperatorKeys::parse(" , ").unwrap().is_empty());
        assert!(!OperatorKeys::default().contains("anything-at-all-here"));
    }
}
