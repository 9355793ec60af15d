//! RFC 6238 time-based one-time passwords: HMAC-SHA1, 30-second steps, 6 digits, which is
//! what every authenticator app defaults to. A code is accepted for the current step and
//! one step either side (clock drift), and only for a step later than the last one
//! accepted, so an observed code cannot be used twice.

use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Seed length in bytes (160 bits, as RFC 4226 recommends).
pub const SEED_LEN: usize = 20;

/// The code of `step` with `digits` digits (RFC 4226 dynamic truncation).
pub fn code(seed: &[u8], step: u64, digits: u32) -> u32 {
    let mut mac =
        <Hmac<Sha1> as KeyInit>::new_from_slice(seed).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&step.to_be_bytes());
    let hash = mac.finalize().into_bytes();
    let offset = usize::from(hash[hash.len() - 1] & 0x0f);
    let binary = u32::from_be_bytes([
        hash[offset] & 0x7f,
        hash[offset + 1],
        hash[offset + 2],
        hash[offset + 3],
    ]);
    binary % 10u32.pow(digits)
}

/// The time step of a Unix time.
pub fn step_at(unix_secs: u64) -> u64 {
    unix_secs / STEP_SECS
}

/// Checks a 6-digit `given` code at `unix_secs`: the step it matches, if any, among the
/// current step and its neighbours that are later than `last_step`.
pub fn verify(seed: &[u8], given: &str, unix_secs: u64, last_step: u64) -> Option<u64> {
    if given.len() != DIGITS as usize || !given.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(unix_secs);
    let mut found = None;
    for step in [now.saturating_sub(1), now, now + 1] {
        let expected = format!("{:06}", code(seed, step, DIGITS));
        let ok = bool::from(expected.as_bytes().ct_eq(given.as_bytes()));
        if ok && step > last_step && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// The `otpauth://` URI authenticator apps read (as a QR code).
pub fn otpauth_uri(issuer: &str, account: &str, seed: &[u8]) -> String {
    let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        data_encoding::BASE32_NOPAD.encode(seed),
        enc(issuer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 seed, 8 digits.
    #[test]
    fn rfc6238_vectors() {
        let seed = b"12345678901234567890";
        for (t, want) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(code(seed, step_at(t), 8), want, "T={t}");
        }
    }

    #[test]
    fn window_and_reuse() {
        let seed = b"12345678901234567890";
        let t = 1_111_111_109;
        let now = format!("{:06}", code(seed, step_at(t), DIGITS));
        assert_eq!(verify(seed, &now, t, 0), Some(step_at(t)));
        // The same code again, once its step is recorded: refused.
        assert_eq!(verify(seed, &now, t, step_at(t)), None);
        let prev = format!("{:06}", code(seed, step_at(t) - 1, DIGITS));
        assert_eq!(verify(seed, &prev, t, 0), Some(step_at(t) - 1));
        let old = format!("{:06}", code(seed, step_at(t) - 2, DIGITS));
        assert_eq!(verify(seed, &old, t, 0), None);
        assert_eq!(verify(seed, "12345", t, 0), None);
        assert_eq!(verify(seed, "abcdef", t, 0), None);
    }

    #[test]
    fn uri_has_base32_seed() {
        let uri = otpauth_uri("coffer", "anna", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/coffer:anna?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=coffer&algorithm=SHA1&digits=6&period=30"
        );
    }
}
