//! Bulk Data export jobs (FHIR Bulk Data Access 2.0, the asynchronous pattern): a kick-off
//! becomes a job run in the background, page by page through `Repository::export_page`, so
//! every resource in its output passed the same scopes-then-consent decision as a read by the
//! same client; its output is one or more NDJSON files per resource type, kept sealed on disk
//! under a key only this process holds (`vault::EphemeralKey`), served only to the client and
//! user that asked, and removed after the retention time, on cancellation, or with the process.
//!
//! Owns: the job table, the output files and their expiry. Must not know HTTP (`http::export`
//! turns jobs into the kick-off, status, file and cancel responses) and must not read a
//! resource any other way than through the repository.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Principal;
use crate::fhir::instant::now_millis;
use crate::fhir::resource::{self, ResourceType};
use crate::repository::export::Cohort;
use crate::repository::{RepoError, Repository};
use crate::vault::EphemeralKey;

/// Rows of history read per page of an export.
const PAGE: usize = 500;
/// A type's output is split into files of about this size (the spec allows several per type;
/// a client can start on the first while the next is fetched).
const MAX_FILE_BYTES: usize = 32 << 20;
/// The default time a finished job's files are kept.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);

/// What a kick-off asked for.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    pub level: Level,
    /// `_type`: `None` for every type the client may have.
    pub types: Option<Vec<ResourceType>>,
    /// `_since`, in milliseconds.
    pub since: Option<i64>,
    /// The kick-off URL as the client sent it, for the manifest's `request`.
    pub request_url: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    System,
    Patient,
    Group(String),
}

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// No such job for this client (never told apart from another client's job).
    #[error(
        "no export job {0} for this client: it finished and expired, was cancelled, or never existed"
    )]
    NotFound(String),
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The job itself failed while running (a backend went away, a stored resource failed a check).
    #[error("the export failed: {detail}")]
    Failed { detail: String, unavailable: bool },
}

/// Who may see a job and fetch its files: the client and user of the kick-off's token.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    issuer: String,
    client_id: String,
    subject: String,
}

impl Owner {
    fn of(principal: &Principal) -> Owner {
        Owner {
            issuer: principal.issuer.clone(),
            client_id: principal.client_id.clone(),
            subject: principal.subject.clone(),
        }
    }
}

/// One output file: its type, how many resources it holds, and what it discloses (each
/// resource and its patients), which the download's AuditEvent names.
#[derive(Clone, Debug)]
pub struct OutputFile {
    pub resource_type: &'static str,
    pub count: usize,
    pub disclosed: Vec<(String, Vec<String>)>,
}

/// Where a job is.
#[derive(Clone, Debug)]
pub enum Status {
    Running {
        /// A line for `X-Progress`.
        progress: String,
    },
    Complete {
        transaction_time: i64,
        request_url: String,
        files: Vec<OutputFile>,
        /// When the files go (milliseconds).
        expires_at: i64,
    },
    Failed {
        detail: String,
        unavailable: bool,
    },
}

pub struct Job {
    pub id: String,
    owner: Owner,
    request: ExportRequest,
    /// When the kick-off was accepted: the manifest's `transactionTime`.
    transaction_time: i64,
    cancelled: AtomicBool,
    status: Mutex<Status>,
}

/// Every export job of this process.
pub struct Exports {
    repo: Arc<Repository>,
    dir: PathBuf,
    retention: Duration,
    key: EphemeralKey,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Exports {
    /// Jobs whose files go under `dir`. What a previous process left there is removed: it was
    /// sealed under a key that died with that process.
    pub fn new(repo: Arc<Repository>, dir: PathBuf, retention: Duration) -> Arc<Exports> {
        let _ = std::fs::remove_dir_all(&dir);
        Arc::new(Exports {
            repo,
            dir,
            retention,
            key: EphemeralKey::generate(),
            jobs: Mutex::new(HashMap::new()),
        })
    }

    /// Accepts a kick-off: checks what can be checked before any work (the types' scopes, the
    /// Group), then runs the job in the background.
    pub async fn start(
        self: &Arc<Self>,
        principal: &Principal,
        request: ExportRequest,
    ) -> Result<Arc<Job>, BulkError> {
        let (candidates, cohort) = match &request.level {
            Level::System => (ResourceType::all().collect::<Vec<_>>(), Cohort::Everyone),
            Level::Patient => (
                crate::search::compartment::compartment_types(),
                Cohort::AllPatients,
            ),
            Level::Group(id) => (
                crate::search::compartment::compartment_types(),
                Cohort::Patients(self.repo.group_patients(principal, id).await?),
            ),
        };
        let types = match &request.types {
            Some(asked) => {
                for t in asked {
                    self.repo.may_export(principal, *t).await?;
                }
                // A type outside the patient compartment has nothing in a patient export.
                asked
                    .iter()
                    .copied()
                    .filter(|t| candidates.contains(t))
                    .collect()
            }
            None => {
                let types = self.repo.exportable(principal, &candidates);
                if types.is_empty() {
                    return Err(RepoError::Forbidden(
                        "the granted scopes allow no search of any type this export covers".into(),
                    )
                    .into());
                }
                types
            }
        };
        let job = Arc::new(Job {
            id: resource::new_id(),
            owner: Owner::of(principal),
            request,
            transaction_time: now_millis(),
            cancelled: AtomicBool::new(false),
            status: Mutex::new(Status::Running {
                progress: "starting".into(),
            }),
        });
        self.jobs
            .lock()
            .expect("job table poisoned")
            .insert(job.id.clone(), job.clone());
        // The job reads as the kick-off's principal, but is not part of that request: what it
        // judges is disclosed, and audited, when its files are downloaded.
        let mut reader = principal.clone();
        reader.touched = None;
        let (exports, running) = (self.clone(), job.clone());
        tokio::spawn(async move { exports.run(running, reader, types, cohort).await });
        Ok(job)
    }

    /// The job `id` as its owner sees it.
    pub fn status(&self, principal: &Principal, id: &str) -> Result<Status, BulkError> {
        let job = self.owned(principal, id)?;
        let status = job.status.lock().expect("job status poisoned").clone();
        Ok(status)
    }

    /// File `index` of a finished job: its NDJSON and what it discloses.
    pub async fn file(
        &self,
        principal: &Principal,
        id: &str,
        index: usize,
    ) -> Result<(Vec<u8>, OutputFile), BulkError> {
        let job = self.owned(principal, id)?;
        let file = match &*job.status.lock().expect("job status poisoned") {
            Status::Complete { files, .. } => files.get(index).cloned(),
            _ => None,
        }
        .ok_or_else(|| BulkError::NotFound(format!("{id}/{index}")))?;
        let sealed = tokio::fs::read(self.path(id, index))
            .await
            .map_err(|_| BulkError::NotFound(format!("{id}/{index}")))?;
        let ndjson = self
            .key
            .open(&aad(id, index), &sealed)
            .map_err(|e| RepoError::Integrity(format!("export file {id}/{index}: {e}")))?;
        Ok((ndjson, file))
    }

    /// `DELETE` of the status URL: the job stops (at its next page) and its files go.
    pub async fn cancel(&self, principal: &Principal, id: &str) -> Result<(), BulkError> {
        let job = self.owned(principal, id)?;
        job.cancelled.store(true, Ordering::Relaxed);
        self.remove(id).await;
        Ok(())
    }

    fn owned(&self, principal: &Principal, id: &str) -> Result<Arc<Job>, BulkError> {
        self.jobs
            .lock()
            .expect("job table poisoned")
            .get(id)
            .filter(|job| job.owner == Owner::of(principal))
            .cloned()
            .ok_or_else(|| BulkError::NotFound(id.to_owned()))
    }

    async fn remove(&self, id: &str) {
        self.jobs.lock().expect("job table poisoned").remove(id);
        let _ = tokio::fs::remove_dir_all(self.dir.join(id)).await;
    }

    fn path(&self, id: &str, index: usize) -> PathBuf {
        self.dir.join(id).join(format!("{index}.ndjson.sealed"))
    }

    async fn run(
        self: Arc<Self>,
        job: Arc<Job>,
        reader: Principal,
        types: Vec<ResourceType>,
        cohort: Cohort,
    ) {
        let outcome = self.export(&job, &reader, &types, &cohort).await;
        if job.cancelled.load(Ordering::Relaxed) {
            self.remove(&job.id).await;
            return;
        }
        let status = match outcome {
            Ok(files) => Status::Complete {
                transaction_time: job.transaction_time,
                request_url: job.request.request_url.clone(),
                files,
                expires_at: now_millis() + self.retention.as_millis() as i64,
            },
            Err(e) => {
                tracing::warn!(job = %job.id, error = %e, "export failed");
                let unavailable = matches!(
                    &e,
                    BulkError::Repo(RepoError::Unavailable { .. })
                        | BulkError::Failed {
                            unavailable: true,
                            ..
                        }
                );
                Status::Failed {
                    detail: e.to_string(),
                    unavailable,
                }
            }
        };
        *job.status.lock().expect("job status poisoned") = status;
        tokio::time::sleep(self.retention).await;
        self.remove(&job.id).await;
    }

    async fn export(
        &self,
        job: &Job,
        reader: &Principal,
        types: &[ResourceType],
        cohort: &Cohort,
    ) -> Result<Vec<OutputFile>, BulkError> {
        let mut files = Vec::new();
        let mut exported = 0usize;
        for (done, resource_type) in types.iter().enumerate() {
            let mut output = Output::new(resource_type.as_str());
            let mut after = None;
            loop {
                if job.cancelled.load(Ordering::Relaxed) {
                    return Ok(files);
                }
                let page = self
                    .repo
                    .export_page(
                        reader,
                        *resource_type,
                        job.request.since,
                        cohort,
                        after,
                        PAGE,
                    )
                    .await?;
                for version in page.versions {
                    exported += 1;
                    output.push(version);
                    if output.bytes.len() >= MAX_FILE_BYTES {
                        let full =
                            std::mem::replace(&mut output, Output::new(resource_type.as_str()));
                        files.push(self.write(&job.id, files.len(), full).await?);
                    }
                }
                self.progress(
                    job,
                    format!(
                        "{exported} resources; {} ({} of {} types)",
                        resource_type.as_str(),
                        done + 1,
                        types.len()
                    ),
                );
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            if output.file.count > 0 {
                files.push(self.write(&job.id, files.len(), output).await?);
            }
        }
        Ok(files)
    }

    fn progress(&self, job: &Job, line: String) {
        *job.status.lock().expect("job status poisoned") = Status::Running { progress: line };
    }

    /// Seals one file's NDJSON and writes it.
    async fn write(&self, id: &str, index: usize, output: Output) -> Result<OutputFile, BulkError> {
        let failed = |e: String| BulkError::Failed {
            detail: format!("cannot write export file: {e}"),
            unavailable: false,
        };
        let sealed = self
            .key
            .seal(&aad(id, index), &output.bytes)
            .map_err(|e| failed(e.to_string()))?;
        let path = self.path(id, index);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        tokio::fs::write(&path, sealed)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(output.file)
    }
}

/// The NDJSON of one file being filled.
struct Output {
    bytes: Vec<u8>,
    file: OutputFile,
}

impl Output {
    fn new(resource_type: &'static str) -> Output {
        Output {
            bytes: Vec::new(),
            file: OutputFile {
                resource_type,
                count: 0,
                disclosed: Vec::new(),
            },
        }
    }

    fn push(&mut self, version: crate::repository::ResourceVersion) {
        // Stored content is compact JSON: one line, as NDJSON needs.
        self.bytes
            .extend_from_slice(version.content.as_deref().unwrap_or_default());
        self.bytes.push(b'\n');
        self.file.count += 1;
        let record = version.record;
        self.file.disclosed.push((
            format!("{}/{}", record.resource_type, record.id),
            record.patients,
        ));
    }
}

/// The AAD binding a sealed file to its job and place, so one cannot be served as another.
fn aad(id: &str, index: usize) -> String {
    format!("bulk-export/{id}/{index}")
}
