//! The sweeper: removes (unpins) blobs that no index row references, once they have stayed
//! unreferenced for a grace period.
//!
//! An unreferenced blob is what a write leaves when it stops between its blob put and its
//! index commit (a crash, a lost race, a timeout). The grace period, far longer than any write,
//! keeps the sweeper off blobs whose commit is still on its way; the first sighting of each
//! is kept in the index, so the period holds across sweeps, restarts and replicas. A blob is
//! re-checked just before removal, and a referenced blob is never touched.
//!
//! Also here: the purge of expired authorization records (codes, refresh tokens, launch
//! contexts, replay caches), which read as absent once expired but would otherwise stay.

use std::time::Duration;

use super::{RepoError, Repository};
use crate::fhir::instant::now_millis;
use crate::metrics;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Blobs the store holds.
    pub examined: usize,
    /// Blobs some version references.
    pub referenced: usize,
    /// Unreferenced blobs still inside their grace period.
    pub waiting: usize,
    /// Unreferenced blobs removed.
    pub removed: usize,
}

impl Repository {
    /// One pass over every blob.
    pub async fn sweep(&self, grace: Duration) -> Result<SweepReport, RepoError> {
        let now = now_millis();
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let mut report = SweepReport::default();
        let cids = self.blobs.list().await?;
        for cid in cids {
            report.examined += 1;
            if self.index.references(&cid).await? {
                report.referenced += 1;
                continue;
            }
            let first_seen = self.index.note_unreferenced(&cid, now).await?;
            if now.saturating_sub(first_seen) < grace_ms {
                report.waiting += 1;
                continue;
            }
            // A commit may have landed since the first check: look again right before removing.
            if self.index.references(&cid).await? {
                report.referenced += 1;
            } else {
                self.blobs.remove(&cid).await?;
                report.removed += 1;
            }
            self.index.forget_unreferenced(&cid).await?;
        }
        metrics::count_by(
            "intellihealth_sweep_blobs_removed_total",
            &[],
            report.removed as f64,
        );
        Ok(report)
    }

    /// Deletes the expired authorization records; returns how many.
    pub async fn purge_expired_records(&self) -> Result<usize, RepoError> {
        let purged = self.index.purge_expired(now_millis()).await?;
        metrics::count_by("intellihealth_records_purged_total", &[], purged as f64);
        Ok(purged)
    }
}
