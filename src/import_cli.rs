//! `intellihealth import FILE|DIR…`: loads NDJSON files (`.ndjson`, one resource per line)
//! and JSON files (`.json`: a Bundle of any type, whose entries are imported, or a single
//! resource), gzipped or not (`.gz`), or folders of them searched recursively, into the stores
//! directly, as the server itself, like `reindex` (no server needed; on the embedded profile
//! none may hold the data directory).
//!
//! This module is the files and the progress; what is written, under which ids, and what is
//! left alone is `repository::import`. One thread reads the files in order, a line at a time
//! (an NDJSON file is never held whole in memory; a Bundle is, being one JSON document), and
//! hands chunks of resources through a bounded channel, so reading waits for writing instead
//! of filling memory. Several chunks are written at once, each in a task of its own so that
//! validating and sealing them spreads over the cores. A resource that cannot be imported is
//! reported on standard error with its file and line (or Bundle entry), and the rest go on;
//! the command fails at the end if any did.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use crate::progress::ProgressBar;
use intellihealth::admin;
use intellihealth::app;
use intellihealth::auth::Principal;
use intellihealth::config::{Config, StorageArgs};
use intellihealth::fhir::json;
use intellihealth::repository::import::{ImportItem, ImportOutcome, bundle_entries, is_bundle};

/// Chunks written at once by default, by index store.
const EMBEDDED_CONCURRENCY: usize = 16;
const MONGODB_CONCURRENCY: usize = 4;

/// The default bound on one backend call during an import (flags, env and the config file
/// still win). A chunk's commit is one transaction of hundreds of documents: on a busy
/// MongoDB it takes far longer than a request's write, and an import has no client waiting
/// on each call; it must still end if a store hangs.
const IMPORT_BACKEND_TIMEOUT_MS: u64 = 120_000;

/// Read buffer of an NDJSON file: large enough that reading is a few system calls per chunk.
const READ_BUFFER_BYTES: usize = 1 << 20;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// NDJSON (`.ndjson`) and JSON (`.json`: a Bundle of any type, or one resource) files,
    /// gzipped or not (`.ndjson.gz`, `.json.gz`), or folders of them (searched recursively).
    #[arg(required = true, value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    /// How many chunks are written at once. Each chunk stages its resources one after the
    /// other, every blob put waiting for the blob store's sync; more chunks share each sync.
    /// Default: 16 on the embedded store, 4 on MongoDB (whose commits queue behind each
    /// other there: more in flight adds no throughput, only longer commits).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Resources per chunk: each chunk is one transaction, committed to the index at once.
    #[arg(long, default_value_t = 200)]
    chunk_size: usize,
    #[command(flatten)]
    storage: StorageArgs,
}

/// A file to import and how it is read.
#[derive(Clone, Debug)]
struct Source {
    path: PathBuf,
    ndjson: bool,
    gzip: bool,
}

/// What the reader hands over: resources, and what could not even be read as one.
#[derive(Default)]
struct Batch {
    items: Vec<ImportItem>,
    /// `source: reason` lines.
    failures: Vec<String>,
}

#[derive(Default)]
struct Tally {
    created: usize,
    updated: usize,
    unchanged: usize,
    failed: usize,
}

impl Tally {
    fn done(&self) -> usize {
        self.created + self.updated + self.unchanged + self.failed
    }

    fn summary(&self) -> String {
        format!(
            "{} created, {} updated, {} unchanged, {} failed",
            self.created, self.updated, self.unchanged, self.failed
        )
    }
}

pub async fn run(args: ImportArgs) -> Result<(), String> {
    if args.concurrency == Some(0) || args.chunk_size == 0 {
        return Err("--concurrency and --chunk-size must be at least 1".into());
    }
    let started = std::time::Instant::now();
    let config = Config::for_storage_bounded(&args.storage, IMPORT_BACKEND_TIMEOUT_MS)?;
    let sources = find_sources(&args.paths)?;
    let embedded = config.backends.mongodb_uri.is_none();
    let concurrency = args.concurrency.unwrap_or(if embedded {
        EMBEDDED_CONCURRENCY
    } else {
        MONGODB_CONCURRENCY
    });
    if embedded {
        refuse_a_running_server(&config.data_dir).await?;
    }
    let repo = app::open_repository(&config).await.map_err(|e| {
        let message = e.to_string();
        if embedded && message.contains("already open") {
            locked(&config.data_dir)
        } else {
            message
        }
    })?;
    // The custom SearchParameters stored here, so the resources are found by them at once.
    repo.refresh_registry().await.map_err(|e| e.to_string())?;
    let local_base: Arc<str> = config.base_url.clone().unwrap_or_default().into();
    let mut bar = ProgressBar::new("importing");
    let counted = sources.clone();
    let total = tokio::task::spawn_blocking(move || counted.iter().map(count).sum::<usize>())
        .await
        .map_err(|e| format!("counting the resources failed: {e}"))?;
    let files = sources.len();
    let (sender, receiver) = tokio::sync::mpsc::channel(concurrency * 2);
    let chunk_size = args.chunk_size;
    let reader = std::thread::Builder::new()
        .name("import-reader".into())
        .spawn(move || read_all(&sources, chunk_size, &sender))
        .map_err(|e| format!("cannot start the reader: {e}"))?;
    let principal = Arc::new(Principal::internal());
    let batches = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|batch| (batch, receiver))
    });
    let mut written = batches
        .map(|mut batch: Batch| {
            let (repo, principal, local_base) =
                (repo.clone(), principal.clone(), local_base.clone());
            let sources: Vec<String> = batch
                .items
                .iter_mut()
                .map(|item| std::mem::take(&mut item.source))
                .collect();
            tokio::spawn(async move {
                let outcomes = repo
                    .import_chunk(&principal, batch.items, &local_base)
                    .await;
                (batch.failures, sources, outcomes)
            })
        })
        .buffer_unordered(concurrency)
        .boxed();
    let mut tally = Tally::default();
    while let Some(joined) = written.next().await {
        let (failures, sources, outcomes) =
            joined.map_err(|e| format!("an import task failed: {e}"))?;
        for failure in failures {
            bar.note(&failure);
            tally.failed += 1;
        }
        let outcomes = match outcomes {
            Ok(outcomes) => outcomes,
            Err(e) => {
                bar.finish();
                return Err(format!(
                    "the import stopped: {e}. Before it stopped: {}. Running it again goes on \
                     from there (what was imported is left unchanged)",
                    tally.summary()
                ));
            }
        };
        for (source, outcome) in sources.iter().zip(outcomes) {
            match outcome {
                ImportOutcome::Created => tally.created += 1,
                ImportOutcome::Updated => tally.updated += 1,
                ImportOutcome::Unchanged => tally.unchanged += 1,
                ImportOutcome::Failed(reason) => {
                    bar.note(&format!("{source}: {reason}"));
                    tally.failed += 1;
                }
            }
        }
        bar.show(tally.done(), total.max(tally.done()));
    }
    drop(written);
    let _ = reader.join();
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{} resources from {files} {} in {seconds:.1} s ({:.0}/s): {}",
        tally.done(),
        if files == 1 { "file" } else { "files" },
        tally.done() as f64 / seconds.max(0.001),
        tally.summary()
    );
    if tally.failed > 0 {
        return Err(format!(
            "{} resources could not be imported (each is named above); the others were",
            tally.failed
        ));
    }
    Ok(())
}

/// On the embedded profile the server holds the data directory's index: an import beside it
/// could not open it, so say so plainly (a running server answers on its admin socket).
async fn refuse_a_running_server(data_dir: &Path) -> Result<(), String> {
    if tokio::net::UnixStream::connect(admin::socket_path(data_dir))
        .await
        .is_ok()
    {
        return Err(locked(data_dir));
    }
    Ok(())
}

fn locked(data_dir: &Path) -> String {
    format!(
        "the embedded store in {} is locked: a server (or another command) is running on it. \
         Stop it and import again; on the services profile an import runs beside the servers",
        data_dir.display()
    )
}

/// The files named, and the importable files of the folders named (recursively, in name
/// order, so that runs read them in the same order).
fn find_sources(paths: &[PathBuf]) -> Result<Vec<Source>, String> {
    let mut sources = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if metadata.is_dir() {
            walk(path, &mut sources).map_err(|e| format!("{}: {e}", path.display()))?;
        } else {
            sources.push(source_of(path).ok_or_else(|| {
                format!(
                    "{}: not a file to import (.ndjson, .json, .ndjson.gz or .json.gz)",
                    path.display()
                )
            })?);
        }
    }
    if sources.is_empty() {
        return Err("no .ndjson or .json files (gzipped or not) found there".into());
    }
    Ok(sources)
}

fn walk(dir: &Path, sources: &mut Vec<Source>) -> std::io::Result<()> {
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        // Hidden files are editors' and tools' leftovers, not data.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // A symbolic link to a folder is not followed: it could lead back here.
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&path, sources)?;
        } else if let Some(source) = source_of(&path) {
            sources.push(source);
        }
    }
    Ok(())
}

fn source_of(path: &Path) -> Option<Source> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let (stem, gzip) = match name.strip_suffix(".gz") {
        Some(stem) => (stem.to_owned(), true),
        None => (name, false),
    };
    let ndjson = if stem.ends_with(".ndjson") {
        true
    } else if stem.ends_with(".json") {
        false
    } else {
        return None;
    };
    Some(Source {
        path: path.to_owned(),
        ndjson,
        gzip,
    })
}

fn open(source: &Source) -> std::io::Result<Box<dyn Read>> {
    let file = std::fs::File::open(&source.path)?;
    Ok(if source.gzip {
        // Multi-member: `cat a.gz b.gz` and parallel gzip tools write several members.
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// How many resources a file holds, for the progress bar's total: the non-blank lines of an
/// NDJSON file, the entries of a Bundle, else one. A file that cannot be read counts one.
fn count(source: &Source) -> usize {
    #[derive(serde::Deserialize)]
    struct Counted {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
        entry: Option<Vec<serde::de::IgnoredAny>>,
    }
    let Ok(reader) = open(source) else {
        return 1;
    };
    if source.ndjson {
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
        let (mut lines, mut line) = (0, Vec::new());
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return lines,
                Ok(_) if line.trim_ascii().is_empty() => {}
                Ok(_) => lines += 1,
            }
        }
    }
    let mut bytes = Vec::new();
    if BufReader::new(reader).read_to_end(&mut bytes).is_err() {
        return 1;
    }
    match serde_json::from_slice::<Counted>(&bytes) {
        Ok(Counted {
            resource_type: Some(kind),
            entry,
        }) if kind == "Bundle" => entry.map_or(0, |e| e.len()),
        _ => 1,
    }
}

/// Collects resources into batches of `chunk_size` and hands them over.
struct Chunker<'a> {
    chunk_size: usize,
    sender: &'a tokio::sync::mpsc::Sender<Batch>,
    batch: Batch,
}

impl Chunker<'_> {
    /// Adds a resource; `false` once nobody takes batches any more (the import stopped).
    fn item(&mut self, source: String, resource: json::Json) -> bool {
        self.batch.items.push(ImportItem { source, resource });
        self.batch.items.len() < self.chunk_size || self.flush()
    }

    fn failure(&mut self, line: String) {
        self.batch.failures.push(line);
    }

    fn flush(&mut self) -> bool {
        let batch = std::mem::take(&mut self.batch);
        batch.items.is_empty() && batch.failures.is_empty()
            || self.sender.blocking_send(batch).is_ok()
    }
}

/// The reader thread: every file in order, its resources in batches.
fn read_all(sources: &[Source], chunk_size: usize, sender: &tokio::sync::mpsc::Sender<Batch>) {
    let mut chunker = Chunker {
        chunk_size,
        sender,
        batch: Batch::default(),
    };
    for source in sources {
        let going_on = if source.ndjson {
            read_ndjson(source, &mut chunker)
        } else {
            read_json(source, &mut chunker)
        };
        if !going_on {
            return;
        }
    }
    chunker.flush();
}

/// An NDJSON file a line at a time; `false` once the import stopped.
fn read_ndjson(source: &Source, chunker: &mut Chunker<'_>) -> bool {
    let path = source.path.display();
    let reader = match open(source) {
        Ok(reader) => reader,
        Err(e) => {
            chunker.failure(format!("{path}: cannot open: {e}"));
            return true;
        }
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let (mut number, mut line) = (0usize, Vec::new());
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return true,
            Ok(_) => number += 1,
            Err(e) => {
                chunker.failure(format!("{path}:{}: cannot read: {e}", number + 1));
                return true;
            }
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        let at = format!("{path}:{number}");
        match json::parse(text) {
            Ok(resource) => {
                if !chunker.item(at, resource) {
                    return false;
                }
            }
            Err(e) => chunker.failure(format!("{at}: not JSON: {e}")),
        }
    }
}

/// A JSON file: a Bundle's entries, or the one resource it is; `false` once the import
/// stopped.
fn read_json(source: &Source, chunker: &mut Chunker<'_>) -> bool {
    let path = source.path.display();
    let mut bytes = Vec::new();
    if let Err(e) = open(source).and_then(|mut reader| reader.read_to_end(&mut bytes)) {
        chunker.failure(format!("{path}: cannot read: {e}"));
        return true;
    }
    let document = match json::parse(&bytes) {
        Ok(document) => document,
        Err(e) => {
            chunker.failure(format!("{path}: not JSON: {e}"));
            return true;
        }
    };
    drop(bytes);
    if !is_bundle(&document) {
        return chunker.item(path.to_string(), document);
    }
    for (n, entry) in bundle_entries(document) {
        let at = format!("{path}: entry {n}");
        match entry {
            Ok(resource) => {
                if !chunker.item(at, resource) {
                    return false;
                }
            }
            Err(reason) => chunker.failure(format!("{at}: {reason}")),
        }
    }
    true
}
