//! Backoff arithmetic. Jitter is deterministic (a hash of run, step and attempt) so the planner
//! stays a pure function and tests can assert exact delays, while two runs that fail together
//! still spread their retries apart.

use crate::workflow::RetryPolicy;

/// Delay before the attempt after `failed_attempt` (1-based) on the same model.
pub fn backoff_ms(policy: &RetryPolicy, failed_attempt: u32, seed: &str) -> u64 {
    let exp = failed_attempt.saturating_sub(1).min(62) as i32;
    let raw = policy.initial_backoff.ms() as f64 * policy.multiplier.powi(exp);
    let capped = raw.min(policy.max_backoff.ms() as f64).max(0.0) as u64;
    if !policy.jitter || capped < 2 {
        return capped;
    }
    // "Equal jitter": half fixed, half random, so a retry never comes back instantly.
    let half = capped / 2;
    half + fnv1a(seed, failed_attempt) % (capped - half + 1)
}

fn fnv1a(seed: &str, n: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain(n.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Dur;

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Dur(100),
            max_backoff: Dur(1_000),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn exponential_and_capped() {
        let p = policy(false);
        let got: Vec<u64> = (1..=6).map(|a| backoff_ms(&p, a, "r/s")).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_in_band_and_is_deterministic() {
        let p = policy(true);
        for a in 1..=8 {
            for seed in ["r1/a", "r2/a", "r1/b"] {
                let full = backoff_ms(&policy(false), a, seed);
                let j = backoff_ms(&p, a, seed);
                assert!(
                    j >= full / 2 && j <= full,
                    "attempt {a}: {j} not in [{}, {full}]",
                    full / 2
                );
                assert_eq!(j, backoff_ms(&p, a, seed));
            }
        }
        // Different runs spread out.
        let spread: std::collections::HashSet<u64> = (0..20)
            .map(|i| backoff_ms(&p, 3, &format!("run{i}/s")))
            .collect();
        assert!(spread.len() > 10, "{spread:?}");
    }
}
