//! Passwords (argon2id) and random secrets (refresh tokens, client secrets: 256 bits, stored as
//! SHA-256). Comparisons are constant-time; nothing here logs a secret.

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, ParamsString, PasswordHash, SaltString, rand_core::OsRng},
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
        let argon2 = self.argon2()?;
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| format!("salt: {e}"))?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        with_memory(argon2.params().block_count(), |blocks| {
            argon2.hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
        })
        .map_err(|e| format!("argon2: {e}"))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon2.params()).map_err(|e| format!("argon2: {e}"))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| format!("argon2: {e}"))?),
        };
        Ok(phc.to_string())
    }
}

/// Checks a password against a PHC string; the parameters come from the string itself.
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(version), Ok(params)) = (
        Algorithm::try_from(parsed.algorithm),
        parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(&parsed),
    ) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let hashed = with_memory(argon2.params().block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
    });
    hashed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// argon2's working memory (19 MiB at the default cost), kept between hashes. Allocated afresh
/// for each, it was freed into glibc's allocator, which keeps a chunk that large in the arena of
/// the thread that freed it once its dynamic mmap threshold has risen: every blocking thread that
/// hashed held another 19 MiB (sso's resident memory rose 19 MiB at a time with logins, up to
/// one chunk per arena). Here at most [`memory_slots`] hashes run at once, each in a buffer of
/// the pool, which is never freed: the memory passwords cost stays at most that many buffers.
static MEMORY: std::sync::Mutex<Pool> = std::sync::Mutex::new(Pool {
    free: Vec::new(),
    in_use: 0,
});
static MEMORY_FREED: std::sync::Condvar = std::sync::Condvar::new();

/// The buffers not in use, and how many are.
struct Pool {
    free: Vec<Vec<Block>>,
    in_use: usize,
}

/// Hashes that may run at once (each holds one buffer), one per core the process may use (its
/// CPU quota in a container); more wait for a buffer to be free.
pub fn memory_slots() -> usize {
    static SLOTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SLOTS.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get().max(1)))
}

/// Runs `f` with `blocks` argon2 blocks from the pool, waiting while every buffer is in use.
fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let mut buffer = {
        let mut pool = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
        while pool.free.is_empty() && pool.in_use >= memory_slots() {
            pool = MEMORY_FREED.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
        pool.in_use += 1;
        pool.free.pop().unwrap_or_default()
    };
    // A cost other than the last one's resizes the buffer (old stored hashes, a changed
    // setting); the usual cost reuses it as it is.
    buffer.resize(blocks, Block::default());
    let result = f(&mut buffer);
    let mut pool = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    pool.free.push(buffer);
    pool.in_use -= 1;
    drop(pool);
    MEMORY_FREED.notify_one();
    result
}

/// Buffers the pool holds, in use or free.
#[cfg(test)]
fn pooled() -> usize {
    let pool = MEMORY.lock().unwrap_or_else(|e| e.into_inner());
    pool.free.len() + pool.in_use
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

    /// The least work argon2id allows, so the tests spend no time hashing.
    fn cheap_cost() -> PasswordCost {
        PasswordCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn concurrent_hashes_share_a_bounded_pool_of_memory() {
        let cost = cheap_cost();
        let phc = cost.hash("correct horse").unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let phc = phc.clone();
                std::thread::spawn(move || {
                    for _ in 0..4 {
                        assert!(verify_password("correct horse", &phc));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let held = pooled();
        assert!(
            (1..=memory_slots()).contains(&held),
            "{held} buffers for 32 hashes on 8 threads"
        );
    }

    #[test]
    fn passwords_and_secrets_round_trip() {
        let cost = cheap_cost();
        let phc = cost.hash("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("wrong horse", &phc));
        assert!(!verify_password("x", "not a hash"));
        // Interchangeable with the argon2 crate's own PHC hashing and verifying, both ways.
        {
            use argon2::password_hash::{PasswordHasher, PasswordVerifier};
            let theirs = cost
                .argon2()
                .unwrap()
                .hash_password(b"correct horse", &SaltString::generate(&mut OsRng))
                .unwrap()
                .to_string();
            assert!(verify_password("correct horse", &theirs));
            assert!(!verify_password("wrong horse", &theirs));
            let ours = PasswordHash::new(&phc).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(b"correct horse", &ours)
                    .is_ok()
            );
        }
        let secret = random_secret();
        assert_eq!(secret.len(), 43);
        assert!(digest_matches(&secret, &digest(&secret)));
        assert!(!digest_matches(&random_secret(), &digest(&secret)));
    }
}
