//! CPU-heavy and blocking work, kept off the async runtime's workers. Those few threads serve
//! every request and drive the database driver's I/O; a task that holds one for milliseconds
//! stalls everything queued behind it. Three cases:
//!
//! - `run`: parsing, validating, hashing and sealing a payload. A few kilobytes take
//!   microseconds and run in place; a multi-megabyte Bundle moves to the blocking pool.
//! - `blocking`: calls into a synchronous store (redb reads), always on the blocking pool.
//! - `password`: argon2id (tens of milliseconds and ~19 MiB each), on the blocking pool and at
//!   most `password_slots()` at a time, so a burst of logins or `client_credentials` requests
//!   queues for those slots instead of taking every core (and a gigabyte of memory).
//!
//! Owns nothing but these decisions; it must not be used for network I/O (that has async APIs).

use std::sync::OnceLock;

use tokio::sync::Semaphore;

/// Payloads up to this size are processed in place.
pub const INLINE_LIMIT: usize = 64 * 1024;

/// Runs `work`, which processes `size` bytes: in place when small, on the blocking pool when
/// large. A panic inside `work` is resumed here, as if it had run in place.
pub async fn run<T, F>(size: usize, work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if size <= INLINE_LIMIT {
        return work();
    }
    blocking(work).await
}

/// Runs `work` on the blocking pool. A panic inside it is resumed here.
pub async fn blocking<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// How many password hashes may run at once: every core but one, which stays free for
/// requests that need no hashing.
pub fn password_slots() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

/// Runs a password hash or check on the blocking pool, waiting for one of the
/// `password_slots()`.
pub async fn password<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| Semaphore::new(password_slots()));
    // The semaphore is never closed, so acquiring cannot fail; if it ever did, hashing
    // without a slot is still correct, only less polite.
    let _slot = slots.acquire().await.ok();
    blocking(work).await
}
