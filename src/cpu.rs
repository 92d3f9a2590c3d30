//! CPU-heavy work and the async runtime. Parsing, validating, hashing and sealing a payload of
//! a few kilobytes takes microseconds and runs in place; the same work on a multi-megabyte
//! Bundle takes long enough to stall the runtime's workers, and with them every other request
//! and the database driver's I/O. `run` moves such work to the blocking pool.
//!
//! Owns nothing but that decision; it must not be used for IO (that has its own async APIs).

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
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
