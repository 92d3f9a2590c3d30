//! Custom search parameters and reindexing.
//!
//! The registry in force is the official one plus custom SearchParameters: files given at
//! start (`--search-parameters DIR`) and `SearchParameter` resources stored on the server with
//! status `active`. Writing or deleting a SearchParameter rebuilds the registry here; other
//! replicas notice within `REGISTRY_POLL` (`refresh_registry` on a timer).
//!
//! Every resource's index entries carry the fingerprint of the registry that made them; a
//! reindex rebuilds those made under another one, from the stored content. It is resumable by
//! construction: whatever is still stale is what is left, so a reindex stopped halfway (a
//! crash, a restart) simply continues where it stopped, and writes made meanwhile index
//! themselves under the new registry.

use std::time::Duration;

use super::{RepoError, Repository};
use crate::fhir::json;
use crate::fhir::resource::ResourceType;
use crate::index::{CandidateQuery, VersionRecord};
use crate::search::params::{RawParam, Registry};

/// How often a replica looks for SearchParameters written elsewhere.
pub const REGISTRY_POLL: Duration = Duration::from_secs(30);
/// Resources reindexed per round.
const BATCH: usize = 200;

/// How far a reindex has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReindexProgress {
    pub done: usize,
    pub total: usize,
}

/// The active SearchParameters stored on the server, by id, and a count of their changes.
#[derive(Default)]
pub(super) struct StoredParameters {
    by_id: std::collections::BTreeMap<String, RawParam>,
    /// Starts at 1 and grows with every change, so a rebuild knows whether it is behind.
    generation: u64,
}

impl StoredParameters {
    fn replace_all(&mut self, stored: Vec<(String, RawParam)>) {
        self.by_id = stored.into_iter().collect();
        self.generation += 1;
    }

    fn set(&mut self, id: &str, param: Option<RawParam>) {
        match param {
            Some(param) => self.by_id.insert(id.to_owned(), param),
            None => self.by_id.remove(id),
        };
        self.generation += 1;
    }

    fn all(&self) -> Vec<RawParam> {
        self.by_id.values().cloned().collect()
    }
}

/// Reads custom SearchParameters from the `.json` files of `dir` (each a SearchParameter or a
/// Bundle of them).
pub fn read_parameter_files(dir: &std::path::Path) -> Result<Vec<RawParam>, String> {
    let mut out = Vec::new();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for file in files {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
        let resources: Vec<serde_json::Value> = match value["resourceType"].as_str() {
            Some("Bundle") => value["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone())
                .collect(),
            Some("SearchParameter") => vec![value],
            _ => {
                return Err(format!(
                    "{}: neither a SearchParameter nor a Bundle of them",
                    file.display()
                ));
            }
        };
        for resource in resources {
            let param: RawParam =
                serde_json::from_value(resource).map_err(|e| format!("{}: {e}", file.display()))?;
            out.push(param);
        }
    }
    Ok(out)
}

impl Repository {
    /// Sets the custom parameters read from files at start (kept for every rebuild).
    pub fn set_parameter_files(&self, files: Vec<RawParam>) {
        if let Ok(mut slot) = self.parameter_files.write() {
            *slot = files;
        }
    }

    /// Rebuilds the registry from the files and the stored active SearchParameters, read
    /// afresh from the store; returns whether it changed (and so whether resources are now
    /// stale). At start and on every poll: how a replica learns of parameters written elsewhere.
    pub async fn refresh_registry(&self) -> Result<bool, RepoError> {
        let stored = self.read_stored_parameters().await?;
        self.lock_stored_parameters().replace_all(stored);
        Ok(self.rebuild_registry().await)
    }

    /// Takes a SearchParameter this server just committed (`content` none for a delete) into
    /// the registry. Only that one parameter is read: reading every stored one again on each
    /// write made a burst of N writes cost N² loads.
    pub(super) async fn parameter_written(&self, id: &str, content: Option<&[u8]>) {
        let active = content
            .and_then(|c| serde_json::from_slice::<RawParam>(c).ok())
            .filter(|p| p.status.as_deref() == Some("active"));
        self.lock_stored_parameters().set(id, active);
        self.rebuild_registry().await;
    }

    fn lock_stored_parameters(&self) -> std::sync::MutexGuard<'_, StoredParameters> {
        self.stored_parameters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds the registry from the files and the stored parameters as they are now, unless a
    /// rebuild since their last change already did; returns whether the registry changed.
    async fn rebuild_registry(&self) -> bool {
        // Rebuilds one at a time: a slow rebuild from older parameters cannot land after a
        // newer one.
        let mut built = self.rebuilding.lock().await;
        let (generation, mut custom) = {
            let stored = self.lock_stored_parameters();
            if stored.generation == *built && *built != 0 {
                return false;
            }
            (stored.generation, stored.all())
        };
        let files = self
            .parameter_files
            .read()
            .map(|f| f.clone())
            .unwrap_or_default();
        custom.splice(0..0, files);
        let registry = crate::cpu::blocking(move || {
            let registry = Registry::with_custom(&custom);
            for problem in registry.unsupported_custom(&custom) {
                tracing::warn!("custom search parameter not used: {problem}");
            }
            registry
        })
        .await;
        *built = generation;
        let changed = registry.fingerprint() != self.registry().fingerprint();
        if changed {
            self.set_registry(registry);
        }
        changed
    }

    /// The active SearchParameter resources stored on this server, by id.
    async fn read_stored_parameters(&self) -> Result<Vec<(String, RawParam)>, RepoError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let query = CandidateQuery {
                resource_types: vec!["SearchParameter".into()],
                key_ranges: None,
                patient: None,
                after: after.clone(),
                limit: BATCH,
            };
            let batch = self.index.candidates(&query).await?;
            let done = batch.len() < BATCH;
            after = batch
                .last()
                .map(|c| (c.record.resource_type.clone(), c.record.id.clone()));
            for candidate in batch {
                let id = candidate.record.id.clone();
                let version = self.load(candidate.record).await?;
                let Some(content) = version.content else {
                    continue;
                };
                if let Ok(param) = serde_json::from_slice::<RawParam>(&content)
                    && param.status.as_deref() == Some("active")
                {
                    out.push((id, param));
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// How many current resources were indexed under another registry.
    pub async fn stale_count(&self) -> Result<usize, RepoError> {
        let fingerprint = self.registry().fingerprint();
        let (mut count, mut after) = (0usize, None);
        loop {
            let batch = self.index.stale(fingerprint, after.clone(), 1_000).await?;
            count += batch.len();
            if batch.len() < 1_000 {
                return Ok(count);
            }
            after = batch
                .last()
                .map(|r| (r.resource_type.clone(), r.id.clone()));
        }
    }

    /// The progress of the reindex under way (or of the last one), and whether one runs.
    pub fn reindex_status(&self) -> (ReindexProgress, bool) {
        self.reindexing.lock().map(|s| *s).unwrap_or_default()
    }

    /// Reindexes every stale resource, calling `progress` after each round.
    pub async fn reindex_stale(
        &self,
        mut progress: impl FnMut(ReindexProgress),
    ) -> Result<ReindexProgress, RepoError> {
        let total = self.stale_count().await?;
        let mut state = ReindexProgress { done: 0, total };
        let mut progress = |p: ReindexProgress, running: bool| {
            if let Ok(mut status) = self.reindexing.lock() {
                *status = (p, running);
            }
            crate::metrics::set(
                "intellihealth_reindex_pending",
                &[],
                p.total.saturating_sub(p.done) as f64,
            );
            progress(p);
        };
        progress(state, true);
        let mut after: Option<(String, String)> = None;
        loop {
            let registry = self.registry();
            let batch = self
                .index
                .stale(registry.fingerprint(), after.clone(), BATCH)
                .await?;
            let done = batch.len() < BATCH;
            after = batch
                .last()
                .map(|r| (r.resource_type.clone(), r.id.clone()));
            for record in batch {
                self.reindex_one(&registry, record).await?;
                state.done += 1;
            }
            // Writes meanwhile may have made more stale (a new registry): never below done.
            state.total = state.total.max(state.done);
            progress(state, !done);
            if done {
                return Ok(state);
            }
        }
    }

    async fn reindex_one(
        &self,
        registry: &std::sync::Arc<Registry>,
        record: VersionRecord,
    ) -> Result<(), RepoError> {
        let resource_type = ResourceType::parse(&record.resource_type)?;
        let (id, version) = (record.id.clone(), record.version);
        let patients = record.patients.clone();
        let loaded = self.load(record).await?;
        let Some(content) = loaded.content else {
            return Ok(());
        };
        let resource = json::parse(&content)
            .map_err(|e| RepoError::Integrity(format!("stored content is not JSON: {e}")))?;
        let searchable = super::searchable(
            registry.clone(),
            resource_type,
            &resource,
            content.len(),
            &patients,
        )
        .await;
        // `false`: a newer version was written meanwhile and indexed itself.
        self.index
            .reindex(resource_type.as_str(), &id, version, searchable)
            .await?;
        Ok(())
    }
}
