//! Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, base64, sent as `v1,<sig>` (several may be listed,
//! space-separated, during secret rotation). Pure arithmetic: the caller passes `now`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a timestamp may be from `now`, either way (replay protection).
pub const TOLERANCE_SECS: u64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhook secret is not of the form whsec_<base64>")]
    BadSecret,
    #[error("webhook-timestamp is missing or not a number")]
    BadTimestamp,
    #[error("webhook-timestamp is more than 5 minutes away from now")]
    Stale,
    #[error("no webhook-signature matches")]
    Mismatch,
}

fn key(secret: &str) -> Result<Vec<u8>, SignatureError> {
    let raw = secret.strip_prefix("whsec_").unwrap_or(secret);
    B64.decode(raw).map_err(|_| SignatureError::BadSecret)
}

fn mac(secret: &str, id: &str, ts: &str, body: &[u8]) -> Result<Hmac<Sha256>, SignatureError> {
    let mut m =
        Hmac::<Sha256>::new_from_slice(&key(secret)?).map_err(|_| SignatureError::BadSecret)?;
    m.update(id.as_bytes());
    m.update(b".");
    m.update(ts.as_bytes());
    m.update(b".");
    m.update(body);
    Ok(m)
}

/// The `webhook-signature` header value for a message.
pub fn sign(
    secret: &str,
    id: &str,
    timestamp_secs: u64,
    body: &[u8],
) -> Result<String, SignatureError> {
    let m = mac(secret, id, &timestamp_secs.to_string(), body)?;
    Ok(format!("v1,{}", B64.encode(m.finalize().into_bytes())))
}

/// Verifies a delivery; the comparison is constant-time (`Mac::verify_slice`).
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now_secs: u64,
) -> Result<(), SignatureError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if ts.abs_diff(now_secs) > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    for sig in signatures.split_whitespace() {
        let Some(b64) = sig.strip_prefix("v1,") else {
            continue;
        };
        let Ok(bytes) = B64.decode(b64) else { continue };
        if mac(secret, id, timestamp.trim(), body)?
            .verify_slice(&bytes)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Whether a provider callback carrying `token` belongs to the attempt `rec` is on: the step
/// waits for its job, or is still in the submit call (a fast job can call back before the
/// provider's answer to the submit arrives; the claim already holds the token), and the token
/// is that attempt's. Anything else — an old attempt's callback, a step that moved on — is
/// stale: acknowledged, not applied. Tokens compare in constant time.
pub fn callback_is_current(rec: &crate::state::StepRecord, token: &str) -> bool {
    use crate::state::StepStatus;
    matches!(rec.status, StepStatus::Waiting | StepStatus::Running)
        && rec
            .job
            .as_ref()
            .is_some_and(|j| constant_eq(&j.callback_token, token))
}

/// Compares secrets without an early exit on the first differing byte.
pub fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A new random-looking secret is not the core's business (no randomness here); this builds
/// the `whsec_` form from bytes the caller chose.
pub fn secret_from_bytes(bytes: &[u8]) -> String {
    format!("whsec_{}", B64.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which callbacks settle a step: only the current attempt's, while it waits or submits.
    #[test]
    fn only_the_current_attempts_callback_applies() {
        use crate::state::{JobRef, StepRecord, StepStatus};
        let rec = |status, token: Option<&str>| {
            let mut r = StepRecord::pending("s");
            r.status = status;
            r.job = token.map(|t| JobRef {
                provider: "replicate".into(),
                model: "replicate/a/b".into(),
                job_id: "p1".into(),
                callback_token: t.into(),
            });
            r
        };
        // (status, token held by the step, token in the callback, applies)
        let table = [
            (StepStatus::Waiting, Some("tok-2"), "tok-2", true),
            (StepStatus::Running, Some("tok-2"), "tok-2", true),
            (StepStatus::Waiting, Some("tok-2"), "tok-1", false),
            (StepStatus::Waiting, Some("tok-2"), "tok-", false),
            (StepStatus::Waiting, None, "tok-2", false),
            (StepStatus::Succeeded, Some("tok-2"), "tok-2", false),
            (StepStatus::Retrying, Some("tok-2"), "tok-2", false),
        ];
        for (status, held, sent, applies) in table {
            assert_eq!(
                callback_is_current(&rec(status, held), sent),
                applies,
                "{status:?} {held:?} {sent}"
            );
        }
    }

    // The example from the Standard Webhooks specification.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: u64 = 1614265330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_spec_example() {
        assert_eq!(sign(SECRET, ID, TS, BODY).unwrap(), SIG);
        assert_eq!(
            verify(SECRET, ID, &TS.to_string(), SIG, BODY, TS + 10),
            Ok(())
        );
    }

    #[test]
    fn rejects_what_it_should() {
        let ts = TS.to_string();
        let table: [(&str, &str, &[u8], u64, SignatureError); 5] = [
            (&ts, SIG, br#"{"test": 1}"#, TS, SignatureError::Mismatch),
            (&ts, "v1,AAAA", BODY, TS, SignatureError::Mismatch),
            (&ts, SIG, BODY, TS + 301, SignatureError::Stale),
            ("yesterday", SIG, BODY, TS, SignatureError::BadTimestamp),
            (&ts, "v2,whatever", BODY, TS, SignatureError::Mismatch),
        ];
        for (t, sig, body, now, want) in table {
            assert_eq!(verify(SECRET, ID, t, sig, body, now), Err(want));
        }
        // Rotation: any listed signature may match.
        assert_eq!(
            verify(SECRET, ID, &ts, &format!("v1,AAAA {SIG}"), BODY, TS),
            Ok(())
        );
    }
}
