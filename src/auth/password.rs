//! argon2id hashing and checking of passwords and client secrets, with the working memory of
//! each hash kept for the next one.
//!
//! Why not `Argon2::hash_password`: it allocates its ~19 MiB of working memory on every call
//! and frees it after. On glibc, once a block that size has been freed, the allocator raises
//! its mmap threshold and serves the next ones from the arena of whichever blocking-pool thread
//! runs the hash; those threads come and go, each arena keeps what it was given, and small
//! long-lived allocations land between the freed blocks so they are never returned. The soak
//! measured it: resident memory grew by ~750 MB a minute at 38 token requests a second while
//! the live heap stayed under 150 MB (BENCHMARKS.md). Reusing the memory allocates it once per
//! concurrent hash (`cpu::password_slots()` of them) and never again.
//!
//! The hashes are standard PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), checked
//! with the parameters they carry.

use std::sync::Mutex;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Working memories not in use; at most `SPARE_LIMIT` are kept.
static SPARE: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());

/// More than the hashes that can run at once (`cpu::password_slots()`, plus the CLI's own).
const SPARE_LIMIT: usize = 8;

/// Runs `work` with `blocks` blocks of argon2 working memory, reused from an earlier hash.
fn with_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    let spare = SPARE.lock().ok().and_then(|mut spare| spare.pop());
    let mut memory = spare.unwrap_or_default();
    // A stored hash with other parameters than ours needs another size: resized, kept.
    memory.resize(blocks, Block::default());
    let outcome = work(&mut memory);
    if let Ok(mut spare) = SPARE.lock()
        && spare.len() < SPARE_LIMIT
    {
        spare.push(memory);
    }
    outcome
}

/// argon2id with the default (OWASP) parameters: a PHC string, or `None` if hashing failed.
pub fn hash(secret: &str) -> Option<String> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_bytes).ok()?;
    let mut out = vec![0u8; params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN)];
    with_memory(params.block_count(), |memory| {
        argon2.hash_password_into_with_memory(secret.as_bytes(), salt_bytes, &mut out, memory)
    })
    .ok()?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params).try_into().ok()?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).ok()?),
    };
    Some(phc.to_string())
}

/// Whether `secret` is the one `phc` was made from. Anything that is not a valid argon2 PHC
/// string matches nothing.
pub fn verify(phc: &str, secret: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let hashed = with_memory(params.block_count(), |memory| {
        argon2.hash_password_into_with_memory(secret.as_bytes(), salt_bytes, &mut out, memory)
    });
    // `Output`'s equality is constant-time.
    hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

#[cfg(test)]
mod tests {
    use argon2::PasswordVerifier;

    use super::*;

    #[test]
    fn hashes_are_standard_phc_strings_both_ways() {
        let ours = hash("correct horse").expect("hashed");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        // The argon2 crate's own verifier accepts ours...
        let parsed = PasswordHash::new(&ours).expect("a PHC string");
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        // ...and ours accepts its, with other parameters than the default.
        let params = Params::new(8192, 1, 1, Some(16)).expect("params");
        let theirs = argon2::PasswordHasher::hash_password(
            &Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            b"battery staple",
            &SaltString::generate(&mut OsRng),
        )
        .expect("hashed")
        .to_string();
        assert!(verify(&theirs, "battery staple"));
        assert!(!verify(&theirs, "battery stapler"));
        assert!(verify(&ours, "correct horse"));
        assert!(!verify(&ours, "correct horsf"));
        assert!(!verify("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$", "x"));
    }

    #[test]
    fn working_memory_is_kept_for_the_next_hash_and_bounded() {
        let _ = hash("one");
        let kept = SPARE.lock().expect("lock");
        assert!(!kept.is_empty(), "the memory went back to the spares");
        assert!(kept.len() <= SPARE_LIMIT);
        assert!(
            kept.iter()
                .all(|memory| memory.len() == Params::default().block_count())
        );
    }
}
