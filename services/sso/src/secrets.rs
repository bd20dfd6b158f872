//! Passwords (argon2id) and random secrets (refresh tokens, client secrets: 256 bits, stored as
//! SHA-256). Comparisons are constant-time; nothing here logs a secret.

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Refuses a password outside the limits (8 to 1024 bytes); `field` names it in the message.
/// The CLI checks with this too, before it creates anything.
pub fn check_password(field: &str, password: &str) -> sipmba_runtime::ServiceResult<()> {
    if password.len() < 8 || password.len() > 1024 {
        return Err(sipmba_runtime::ServiceError::invalid(format!(
            "`{field}` must be 8 to 1024 bytes long, got {}",
            password.len()
        )));
    }
    Ok(())
}

/// argon2id cost, by default the OWASP recommendation (19 MiB, 2 passes, 1 lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordCost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl PasswordCost {
    fn argon2(&self) -> Result<Argon2<'static>, String> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("argon2 parameters: {e}"))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// Hashes a password (CPU-heavy: call from a blocking thread).
    pub fn hash(&self, password: &str) -> Result<String, String> {
        let salt = SaltString::generate(&mut OsRng);
        self.argon2()?
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("argon2: {e}"))
    }
}

/// Checks a password against a PHC string; the parameters come from the string itself.
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A new 256-bit secret, base64url without padding.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of a secret, hex.
pub fn digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time check of a presented secret against a stored digest.
pub fn digest_matches(secret: &str, stored: &str) -> bool {
    digest(secret).as_bytes().ct_eq(stored.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secrets_round_trip() {
        let cost = PasswordCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        };
        let phc = cost.hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("x", "not a hash"));
        let secret = random_secret();
        assert_eq!(secret.len(), 43);
        assert!(digest_matches(&secret, &digest(&secret)));
        assert!(!digest_matches(&random_secret(), &digest(&secret)));
    }
}
