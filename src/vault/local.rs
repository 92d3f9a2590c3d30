//! The embedded BlobStore: one file per blob under `DIR/blobs/xx/CID`, named by its CID.
//!
//! Durability without one fsync per request: a `put` writes its file (temp name, then rename),
//! then waits on the group syncer, which runs one `syncfs` for every put that arrived while the
//! previous one was running. A 2xx therefore still means the blob is on disk, at a cost shared by
//! all concurrent writers (group commit).
//!
//! Must not interpret the bytes: they are sealed envelopes.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::blob::{BlobError, BlobStore, verify};
use super::cid::{cid_of, looks_like_cid};

pub struct LocalBlobStore {
    root: PathBuf,
    syncer: GroupSync,
}

impl LocalBlobStore {
    /// Opens (creating if needed) the store under `data_dir/blobs`.
    pub fn open(data_dir: &Path) -> io::Result<LocalBlobStore> {
        let root = data_dir.join("blobs");
        std::fs::create_dir_all(&root)?;
        let syncer = GroupSync::start(root.clone())?;
        Ok(LocalBlobStore { root, syncer })
    }

    fn path_of(&self, cid: &str) -> Option<PathBuf> {
        looks_like_cid(cid).then(|| shard_path(&self.root, cid))
    }
}

/// `ROOT/xx/CID`: the leading characters are the same for every CID; the tail spreads evenly.
fn shard_path(root: &Path, cid: &str) -> PathBuf {
    let shard = &cid[cid.len().saturating_sub(2)..];
    root.join(shard).join(cid)
}

fn io_error(e: io::Error) -> BlobError {
    BlobError::Unavailable(format!("local blob directory: {e}"))
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, bytes: Vec<u8>) -> Result<String, BlobError> {
        let root = self.root.clone();
        // Hashing and writing happen together off the async workers.
        let (cid, written) = tokio::task::spawn_blocking(move || {
            let cid = cid_of(&bytes);
            let path = shard_path(&root, &cid);
            write_once(&path, &bytes).map(|written| (cid, written))
        })
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))?
        .map_err(io_error)?;
        if written {
            self.syncer.sync().await.map_err(io_error)?;
        }
        Ok(cid)
    }

    async fn get(&self, cid: &str) -> Result<Vec<u8>, BlobError> {
        let path = self
            .path_of(cid)
            .ok_or_else(|| BlobError::NotFound(cid.to_owned()))?;
        let cid = cid.to_owned();
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => verify(&cid, bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(BlobError::NotFound(cid)),
            Err(e) => Err(io_error(e)),
        })
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))?
    }

    async fn remove(&self, cid: &str) -> Result<(), BlobError> {
        let Some(path) = self.path_of(cid) else {
            return Ok(());
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => self.syncer.sync().await.map_err(io_error),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn list(&self) -> Result<Vec<String>, BlobError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut cids = Vec::new();
            for shard in std::fs::read_dir(&root)? {
                let shard = shard?;
                if !shard.file_type()?.is_dir() {
                    continue;
                }
                for entry in std::fs::read_dir(shard.path())? {
                    let name = entry?.file_name().to_string_lossy().into_owned();
                    if looks_like_cid(&name) {
                        cids.push(name);
                    }
                }
            }
            Ok(cids)
        })
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))?
        .map_err(io_error)
    }

    async fn health(&self) -> Result<String, BlobError> {
        tokio::fs::metadata(&self.root).await.map_err(io_error)?;
        Ok(format!("local files in {}", self.root.display()))
    }
}

/// Writes `bytes` at `path` unless a blob is already there (same name, same bytes). Returns
/// whether a file was written. The temp-then-rename order means a crash never leaves a
/// truncated file under a CID name.
fn write_once(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let (temp_path, mut file) = tempfile_in(dir)?;
    let written = file
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&temp_path, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    written?;
    Ok(true)
}

/// A uniquely named, newly created temp file in `dir`.
fn tempfile_in(dir: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    for _ in 0..16 {
        let name = format!(".tmp-{:016x}", rand::random::<u64>());
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("could not create a temp file"))
}

/// Batches durability requests into one `syncfs` per round. One task owns the file system
/// flush; callers send a reply channel and wait.
struct GroupSync {
    requests: mpsc::UnboundedSender<oneshot::Sender<io::Result<()>>>,
}

impl GroupSync {
    fn start(root: PathBuf) -> io::Result<GroupSync> {
        let dir = Arc::new(std::fs::File::open(&root)?);
        let (requests, mut inbox) = mpsc::unbounded_channel::<oneshot::Sender<io::Result<()>>>();
        tokio::spawn(async move {
            while let Some(first) = inbox.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = inbox.try_recv() {
                    waiting.push(more);
                }
                let dir = dir.clone();
                let result = tokio::task::spawn_blocking(move || syncfs(&dir))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                for reply in waiting {
                    let outcome = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = reply.send(outcome);
                }
            }
        });
        Ok(GroupSync { requests })
    }

    /// Returns once everything written before the call is on stable storage.
    async fn sync(&self) -> io::Result<()> {
        let (reply, done) = oneshot::channel();
        self.requests
            .send(reply)
            .map_err(|_| io::Error::other("the blob syncer has stopped"))?;
        done.await
            .map_err(|_| io::Error::other("the blob syncer has stopped"))?
    }
}

/// Flushes the whole file system holding `dir` (data and metadata, renames included).
fn syncfs(dir: &std::fs::File) -> io::Result<()> {
    // SAFETY: `syncfs` only reads the descriptor, which `dir` keeps open for the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_by_cid_and_refuses_tampered_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::open(dir.path()).unwrap();
        let cid = store.put(b"sealed bytes".to_vec()).await.unwrap();
        assert_eq!(cid, cid_of(b"sealed bytes"));
        assert_eq!(store.put(b"sealed bytes".to_vec()).await.unwrap(), cid);
        assert_eq!(store.get(&cid).await.unwrap(), b"sealed bytes");
        assert_eq!(store.list().await.unwrap(), vec![cid.clone()]);

        std::fs::write(store.path_of(&cid).unwrap(), b"tampered").unwrap();
        assert!(matches!(
            store.get(&cid).await,
            Err(BlobError::Corrupt { .. })
        ));

        store.remove(&cid).await.unwrap();
        assert!(matches!(store.get(&cid).await, Err(BlobError::NotFound(_))));
        assert!(matches!(
            store.get("../../etc/passwd").await,
            Err(BlobError::NotFound(_))
        ));
    }
}
