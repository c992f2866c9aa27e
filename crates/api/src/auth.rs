//! API keys → tenants.
//!
//! `SWITCHYARD_API_KEYS` is `key:tenant,key2:tenant2`. Only the SHA-256 of each key is kept in
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
            let digest = match key_part.strip_prefix("sha256:") {
                Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
                    h.to_ascii_lowercase()
                }
                Some(_) => return Err(err("a sha256: entry needs 64 hex digits")),
                None if key_part.len() < 16 => {
                    return Err(err("the key is shorter than 16 characters"))
                }
                None => hash(key_part),
            };
            entries.push((digest, tenant.to_string()));
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
}
