//! Passwords: argon2id hashes in PHC format, never the password.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::error::ApiError;

/// Hashes `password` with a fresh random salt (argon2id, the crate's
/// default cost: 19 MiB, 2 passes).
pub fn hash(password: &str) -> Result<String, ApiError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|_| ApiError::internal("no random source for the salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| ApiError::internal("salt encoding"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| ApiError::internal("password hashing failed"))
}

/// Whether `password` matches the stored PHC hash.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the user does not exist, so that a wrong
/// email takes as long as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("decoy-password-never-used").unwrap_or_default())
}

/// Failed logins per email: after `FAILURES_ALLOWED` failures within
/// `WINDOW_MS`, further attempts for that email are refused (429) until the
/// window has passed, whatever the password. Bounded in size.
#[derive(Default)]
pub struct LoginThrottle {
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, i64)>>,
}

const FAILURES_ALLOWED: u32 = 5;
const WINDOW_MS: i64 = 15 * 60 * 1000;
const TRACKED_MAX: usize = 100_000;

impl LoginThrottle {
    /// Seconds to wait before `email` may try again, if it is locked out.
    pub fn locked_for_s(&self, email: &str, now_ms: i64) -> Option<i64> {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match failures.get(email) {
            Some(&(count, first_ms))
                if count >= FAILURES_ALLOWED && now_ms - first_ms < WINDOW_MS =>
            {
                Some((first_ms + WINDOW_MS - now_ms + 999) / 1000)
            }
            _ => None,
        }
    }

    pub fn failed(&self, email: &str, now_ms: i64) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if failures.len() >= TRACKED_MAX {
            failures.retain(|_, (_, first_ms)| now_ms - *first_ms < WINDOW_MS);
        }
        let entry = failures.entry(email.to_owned()).or_insert((0, now_ms));
        if now_ms - entry.1 >= WINDOW_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, email: &str) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        failures.remove(email);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let first = hash("correct horse battery").unwrap();
        let second = hash("correct horse battery").unwrap();
        assert_ne!(first, second, "salted");
        assert!(first.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &first));
        assert!(!verify("correct horse batterY", &first));
        assert!(!verify("x", "not a hash"));
    }

    #[test]
    fn five_failures_lock_an_email_for_the_window() {
        let throttle = LoginThrottle::default();
        let start = 1_000_000;
        for _ in 0..5 {
            assert_eq!(throttle.locked_for_s("a@x.test", start), None);
            throttle.failed("a@x.test", start);
        }
        assert_eq!(throttle.locked_for_s("a@x.test", start + 1000), Some(899));
        assert_eq!(throttle.locked_for_s("b@x.test", start), None, "per email");
        assert_eq!(throttle.locked_for_s("a@x.test", start + WINDOW_MS), None);
        throttle.succeeded("a@x.test");
        assert_eq!(throttle.locked_for_s("a@x.test", start), None);
    }
}
