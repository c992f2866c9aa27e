//! How a body or an event batch is stored: text while small, else deflated against a preset
//! dictionary of Switchyard's own JSON.
//!
//! # Why a dictionary
//!
//! DynamoDB bills a write per started KB of the whole item, and the items are small JSON
//! documents (a step record is 200–2,000 bytes): plain deflate learns the field names anew in
//! every body, so it saves little below ~500 bytes. Deflate with a *preset dictionary* starts
//! with a window that already holds the names and shapes every record repeats (`"status":
//! "succeeded"`, `"output":{"kind":"inline","value":`, an event batch's `"kind":
//! "step_started"`), so a 200-byte record shrinks to ~90 and a header or step record crosses
//! the 1 KB line later (issue 25: on `make bench-aws`'s items, step records 31% and headers
//! 16% fewer bytes than plain deflate from 512 bytes).
//!
//! # Format
//!
//! - `S`: the text as it is (below [`BODY_PACK_FROM`] / [`EVENTS_PACK_FROM`] bytes, or when
//!   packing does not make it smaller).
//! - `B` starting with [`DICTIONARY_V1`] (`0x06`): the rest is a raw deflate stream made with
//!   [`DICTIONARY`] as its preset dictionary (as zlib's `deflateSetDictionary` on a raw
//!   stream: inflate it with a window that starts with the dictionary). `0x06` can never begin
//!   a raw deflate stream (its block type bits are `11`, which deflate reserves), so this
//!   byte tells the two `B` formats apart without a second attribute.
//! - any other `B`: plain raw deflate, as items written before the dictionary are.
//!
//! The dictionary is part of the stored format: it never changes. A better one would be a
//! new marker byte (`0x07`, `0x0e`, …: any with bits 1 and 2 set) beside this one.

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use miniz_oxide::deflate::core::{
    compress_to_output, create_comp_flags_from_zip_params, CompressorOxide, TDEFLFlush, TDEFLStatus,
};
use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

/// Bodies (header and step JSON) from this many bytes on are packed when that is smaller:
/// with the dictionary even a short record packs to about half.
pub(super) const BODY_PACK_FROM: usize = 64;
/// Event batches from this many bytes on are packed when that is smaller.
pub(super) const EVENTS_PACK_FROM: usize = 48;

/// The first byte of a value deflated against [`DICTIONARY`] (format v1).
pub(super) const DICTIONARY_V1: u8 = 0x06;

/// The deflate level: 6 (zlib's default); 9 saved under 1% on the examples' items.
const LEVEL: i32 = 6;

/// Switchyard's own JSON as records and events serialize it (field names, enum values, the
/// usual shapes), the most common last: deflate codes nearer matches more cheaply. Never
/// edited once released (see the module docs).
pub(super) const DICTIONARY: &[u8] = concat!(
    r#"{"class":"rate_limited","class":"timeout","class":"unavailable","class":"invalid","class":"malformed","retryable":true,"#,
    r#""wait":{"reason":"approval","reason":"callback","reason":"timer","until":1796},"callback_url":"https://","metadata":{},"#,
    r#""traceparent":"00-","rerun_of":{"run_id":"run_","from":""},"reruns":["run_"],"error":{"class":"","message":"","step":""},"#,
    r#""job":{"id":"","poll_at":1796},"approval":{"decision":"approved","by":"","at":1796},"chosen":"","sources":[""],"feedback":[""],"#,
    r#""escalations":[],"baseline_usd":0.0,"selected":{"#,
    r#"[{"at":1796,"kind":"run_waiting","detail":{"reason":"approval"}}][{"at":1796,"kind":"lease_taken_over","detail":{"from":"worker-"}}]"#,
    r#"[{"at":1796,"kind":"step_retry_scheduled","step":"","attempt":1,"detail":{"class":"","next_at":1796,"message":""}}]"#,
    r#"[{"at":1796,"kind":"step_fallback","step":"","attempt":1,"detail":{"from":"","to":"","class":""}}]"#,
    r#"[{"at":1796,"kind":"step_failed","step":"","attempt":1,"detail":{"class":"","message":""}}]"#,
    r#"[{"at":1796,"kind":"run_failed","detail":{"cost_usd":0.0,"error":{"class":"","message":""}}}]"#,
    r#"[{"at":1796,"kind":"step_skipped","step":"","attempt":0,"detail":{"reason":"route `` chose ``"}}]"#,
    r#"{"status":"pending","status":"running","status":"retrying","status":"waiting","status":"failed","#,
    r#""status":"skipped","attempt":0,"model_attempt":0,"model_index":0,"finished_at":1796,"latency_ms":0,"cost_usd":0.0,"fallback_used":false,"repairs":0}"#,
    r#"{"tenant":"","workflow":{"name":"","version":"1.0.0","hash":""},"status":"pending","status":"running","#,
    r#""input":{"kind":"blob","key":"","bytes":},"input":{"kind":"inline","value":{"#,
    r#""created_at":1796,"updated_at":1796,"deadline_at":1796,"lease":{"owner":"worker-","until":1796}}"#,
    r#""status":"succeeded","output":{"kind":"inline","value":{"},"created_at":1796,"updated_at":1796,"ended_at":1796,"deadline_at":1796}"#,
    r#"[{"at":1796,"kind":"run_created","detail":{"workflow":"","version":"1.0.0","hash":""}}]"#,
    r#"[{"at":1796,"kind":"run_succeeded","detail":{"cost_usd":0.00,"error":null}}]"#,
    r#"{"status":"running","attempt":1,"model_attempt":1,"model_index":0,"started_at":1796,"lease_until":1796,"lease_owner":"worker-","#,
    r#"{"status":"succeeded","attempt":1,"model_attempt":1,"model_index":0,"started_at":1796,"finished_at":1796,"#,
    r#""output":{"kind":"inline","value":{"text":"","usage":{"input_tokens":,"output_tokens":},"finish_reason":"stop","model":"local/","json":{"#,
    r#""provider":"local","model":"local/","prompt_version":"@1","provider_request_id":"local-","#,
    r#""latency_ms":0,"cost_usd":0.0,"usage":{"input_tokens":,"output_tokens":},"fallback_used":false,"repairs":0}"#,
    r#"[{"at":1796,"kind":"step_started","step":"","attempt":1,"detail":{"model":"local/","prompt_version":"@1"}},"#,
    r#"{"at":1796,"kind":"step_succeeded","step":"","attempt":1,"detail":{"model":"local/","latency_ms":0,"cost_usd":0.0,"fallback_used":false,"usage":{"input_tokens":,"output_tokens":}}}]"#,
)
.as_bytes();

/// `text` as a string attribute while shorter than `from` bytes, else packed (binary) when
/// that is smaller.
pub(super) fn pack(text: String, from: usize) -> AttributeValue {
    if text.len() >= from {
        if let Some(packed) = deflate_with_dictionary(text.as_bytes()) {
            if packed.len() < text.len() {
                return AttributeValue::B(Blob::new(packed));
            }
        }
    }
    AttributeValue::S(text)
}

/// The bytes of a packed attribute, either format, at most `limit` of them; the error says
/// why not.
pub(super) fn unpack(packed: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    match packed.first() {
        Some(&DICTIONARY_V1) => inflate_with_dictionary(&packed[1..], limit),
        Some(b) if b & 0b110 == 0b110 => Err(format!("unknown packing {b:#04x}")),
        _ => miniz_oxide::inflate::decompress_to_vec_with_limit(packed, limit)
            .map_err(|e| e.to_string()),
    }
}

/// `[DICTIONARY_V1]` and `data` deflated with [`DICTIONARY`] preset: the dictionary is
/// compressed first and flushed to a byte boundary (`Sync`), its output dropped, so the
/// compressor's window holds it and what follows is a stream that inflates against it.
/// `None` if the compressor fails (the caller stores text).
fn deflate_with_dictionary(data: &[u8]) -> Option<Vec<u8>> {
    let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(LEVEL, -15, 0));
    let (primed, _) = compress_to_output(&mut c, DICTIONARY, TDEFLFlush::Sync, |_| true);
    if primed != TDEFLStatus::Okay {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() / 2 + 8);
    out.push(DICTIONARY_V1);
    let (done, _) = compress_to_output(&mut c, data, TDEFLFlush::Finish, |bytes| {
        out.extend_from_slice(bytes);
        true
    });
    (done == TDEFLStatus::Done).then_some(out)
}

/// Inflates `stream` into a buffer that starts with [`DICTIONARY`] (the decompressor reads
/// matches from what precedes its output position), then drops the dictionary.
fn inflate_with_dictionary(mut stream: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let start = DICTIONARY.len();
    let cap = start.saturating_add(limit);
    let mut out = DICTIONARY.to_vec();
    let first = start.saturating_add(stream.len().saturating_mul(4).max(256));
    out.resize(first.min(cap), 0);
    let mut r = DecompressorOxide::new();
    let mut pos = start;
    loop {
        let (status, read, written) = decompress(
            &mut r,
            stream,
            &mut out,
            pos,
            inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
        );
        pos += written;
        match status {
            TINFLStatus::Done => {
                out.truncate(pos);
                out.drain(..start);
                return Ok(out);
            }
            TINFLStatus::HasMoreOutput if out.len() < cap => {
                stream = stream.get(read..).ok_or("the stream ended early")?;
                let grown = out.len().saturating_mul(2).min(cap);
                out.resize(grown, 0);
            }
            TINFLStatus::HasMoreOutput => return Err(format!("more than {limit} bytes")),
            other => return Err(format!("{other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &AttributeValue) -> &[u8] {
        match v {
            AttributeValue::B(b) => b.as_ref(),
            other => panic!("not packed: {other:?}"),
        }
    }

    /// Table: what is stored as text and what packs, and every packed value reads back.
    #[test]
    fn values_pack_when_it_pays_and_read_back() {
        let record = r#"{"status":"skipped","attempt":0,"model_attempt":0,"model_index":0,"finished_at":1796645358535,"latency_ms":0,"cost_usd":0.0,"fallback_used":false,"repairs":0}"#;
        let long_text = format!(r#"{{"text":"{}"}}"#, "the quick brown fox ".repeat(400));
        // 70 characters of noise (xorshift): no match to find, and too short for a Huffman
        // table of its own to pay, so packing does not pay.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: String = (0..70)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'!' + (x % 90) as u8)
            })
            .collect();
        for (text, from, packs) in [
            ("{}", BODY_PACK_FROM, false),
            (record, BODY_PACK_FROM, true),
            (record, 4096, false),
            (long_text.as_str(), BODY_PACK_FROM, true),
            (random.as_str(), BODY_PACK_FROM, false),
        ] {
            let v = pack(text.to_string(), from);
            match &v {
                AttributeValue::S(s) => {
                    assert!(!packs, "{text:.40} stayed text");
                    assert_eq!(s, text);
                }
                AttributeValue::B(_) => {
                    assert!(packs, "{text:.40} was packed");
                    let b = bytes(&v);
                    assert_eq!(b[0], DICTIONARY_V1);
                    assert!(b.len() < text.len());
                    assert_eq!(unpack(b, 1 << 20).unwrap(), text.as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        // The dictionary pays on a short record: under half its text.
        let packed = pack(record.to_string(), BODY_PACK_FROM);
        assert!(
            bytes(&packed).len() * 2 < record.len(),
            "{}",
            bytes(&packed).len()
        );
    }

    /// Items written before the dictionary (plain raw deflate) still read back; a stream of
    /// an unknown packing, a corrupt one or one past the limit is an error, not a guess.
    #[test]
    fn plain_deflate_reads_back_and_bad_packings_are_errors() {
        let text =
            r#"{"status":"succeeded","output":{"kind":"inline","value":{"a":1}}}"#.repeat(20);
        let plain = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 6);
        assert_ne!(
            plain[0] & 0b110,
            0b110,
            "raw deflate never starts with block type 11"
        );
        assert_eq!(unpack(&plain, 1 << 20).unwrap(), text.as_bytes());
        let err = unpack(&[0x07, 1, 2, 3], 1 << 20).unwrap_err();
        assert!(err.contains("unknown packing 0x07"), "{err}");
        assert!(unpack(&[DICTIONARY_V1, 0xff, 0xff], 1 << 20).is_err());
        let AttributeValue::B(packed) = pack(text.clone(), BODY_PACK_FROM) else {
            panic!("packs")
        };
        let err = unpack(packed.as_ref(), 100).unwrap_err();
        assert!(err.contains("more than 100 bytes"), "{err}");
        // Exactly at the limit is fine.
        assert_eq!(
            unpack(packed.as_ref(), text.len()).unwrap(),
            text.as_bytes()
        );
    }

    /// The stored format is fixed: the dictionary's bytes never change (their SHA-256), and a
    /// value packed by another implementation — Python's `zlib` with `zdict=DICTIONARY`,
    /// `wbits=-15`, level 9 — reads back (a stream made elsewhere, not by `pack`).
    #[test]
    fn the_format_is_fixed_and_standard() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(DICTIONARY);
        assert_eq!(
            hex::encode(digest),
            "495836d666744929ee6a7ce6d20174c4d142d6cca5184ced897d14d464f46951",
            "DICTIONARY changed: stored items would no longer read (add a new marker instead)"
        );
        let from_python = hex::decode(
            "232251139f1a8352d34af3528a15404d1d055385a4d262a0bae2628594c4ca623d50750a00",
        )
        .unwrap();
        let mut stored = vec![DICTIONARY_V1];
        stored.extend(from_python);
        assert_eq!(
            unpack(&stored, 1 << 20).unwrap(),
            br#"{"status":"succeeded","attempt":1,"output":{"kind":"inline","value":{"text":"Refunds take 5 business days."}}}"#
        );
    }

    /// Output far larger than the first buffer guess (it doubles until done).
    #[test]
    fn a_highly_compressible_value_grows_its_buffer() {
        let text = "a".repeat(300_000);
        let AttributeValue::B(packed) = pack(text.clone(), BODY_PACK_FROM) else {
            panic!("packs")
        };
        assert!(packed.as_ref().len() < 2_000);
        assert_eq!(unpack(packed.as_ref(), 4 << 20).unwrap().len(), text.len());
    }
}
