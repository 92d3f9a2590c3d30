//! Administering a running server: a Unix socket in the data directory through which the CLI's
//! account, key and sweep commands reach the server that holds the stores.
//!
//! On the embedded profile the server holds the data directory's database lock, so a CLI that
//! opened the stores itself would be refused ("Database already open"); instead it asks the
//! running server over `DATA_DIR/admin/admin.sock`. Who may ask is decided by the file system:
//! the socket lives in a directory only the server's user can enter (mode 0700), and each
//! connection's peer must also be that user (`SO_PEERCRED`). With no server running, the CLI
//! opens the stores itself, as before.
//!
//! The protocol is one JSON request per line and one JSON reply per line (`AdminRequest`,
//! `AdminReply`). Secrets never cross it: the CLI hashes a password or client secret before
//! sending, so the server only ever receives the argon2id hash.
//!
//! Knows no HTTP; must not expose anything the admin commands do not already do offline.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::auth::accounts::{Client, User};
use crate::auth::server::AuthServer;
use crate::repository::Repository;

/// One command for the running server.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Register (or replace) a client; its secret, if any, already hashed.
    AddClient {
        client: Client,
    },
    /// Add (or replace) a user; the password already hashed.
    AddUser {
        user: User,
    },
    RotateKeys,
    Sweep {
        grace_secs: u64,
    },
    /// Rebuilds the search entries made under another parameter registry; progress lines
    /// (`AdminProgress`) come before the reply.
    Reindex,
}

/// A progress line of a long request, before its reply.
#[derive(Serialize, Deserialize, Debug)]
pub struct AdminProgress {
    pub done: usize,
    pub total: usize,
}

/// The answer: what happened, in words for the operator.
#[derive(Serialize, Deserialize, Debug)]
pub struct AdminReply {
    pub ok: bool,
    pub message: String,
}

/// Longest a request line may be: a client with a large inline JWKS fits well within it.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Where the admin socket of a data directory is.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin").join("admin.sock")
}

/// Binds the admin socket of `data_dir`, in a directory only this user may enter. A socket
/// left by a server that is gone is replaced; one that answers belongs to a server still
/// running, and is left to it (`Ok(None)`).
pub async fn bind(data_dir: &Path) -> std::io::Result<Option<UnixListener>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = socket_path(data_dir);
    let dir = path.parent().unwrap_or(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Made by an older run with other permissions: tighten them before anything is bound.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Ok(None);
        }
        std::fs::remove_file(&path)?;
    }
    UnixListener::bind(&path).map(Some)
}

/// Removes the admin socket of `data_dir` (at shutdown, once no server answers on it).
pub fn unbind(data_dir: &Path) {
    let _ = std::fs::remove_file(socket_path(data_dir));
}

/// What the admin commands act on.
#[derive(Clone)]
pub struct AdminState {
    pub auth: Arc<AuthServer>,
    pub repo: Arc<Repository>,
}

/// Answers admin connections until `stopped` says so.
pub async fn serve(
    listener: UnixListener,
    state: AdminState,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        // The directory's permissions keep others out; the peer check holds even if they
        // were loosened by hand.
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(own_uid) {
            tracing::warn!("refused an admin connection from another user");
            continue;
        }
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &state).await {
                tracing::debug!("admin connection ended: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, state: &AdminState) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    reader.read_line(&mut line).await?;
    let reply = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(AdminRequest::Reindex) => {
            // Progress goes out as it comes; the reply follows.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<AdminProgress>();
            let writer = tokio::spawn(async move {
                while let Some(progress) = rx.recv().await {
                    let mut bytes = serde_json::to_vec(&progress).unwrap_or_default();
                    bytes.push(b'\n');
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                write
            });
            let result = state
                .repo
                .reindex_stale(|p| {
                    let _ = tx.send(AdminProgress {
                        done: p.done,
                        total: p.total,
                    });
                })
                .await;
            drop(tx);
            write = writer.await.map_err(std::io::Error::other)?;
            match result {
                Ok(p) => AdminReply {
                    ok: true,
                    message: format!("reindexed {} resources", p.done),
                },
                Err(e) => AdminReply {
                    ok: false,
                    message: e.to_string(),
                },
            }
        }
        Ok(request) => execute(request, state).await,
        Err(e) => AdminReply {
            ok: false,
            message: format!("not an admin request: {e}"),
        },
    };
    let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
    bytes.push(b'\n');
    write.write_all(&bytes).await?;
    write.shutdown().await
}

/// Carries out one request; the same work the CLI does when no server runs.
pub async fn execute(request: AdminRequest, state: &AdminState) -> AdminReply {
    let result: Result<String, String> = match request {
        AdminRequest::AddClient { client } => {
            let id = client.client_id.clone();
            state
                .auth
                .accounts
                .add_client(&client)
                .await
                .map(|()| format!("client {id} saved"))
                .map_err(|e| e.to_string())
        }
        AdminRequest::AddUser { user } => {
            let what = format!("user {} ({}) saved", user.username, user.fhir_user);
            state
                .auth
                .accounts
                .save_user(&user)
                .await
                .map(|()| what)
                .map_err(|e| e.to_string())
        }
        AdminRequest::RotateKeys => state
            .auth
            .tokens
            .keyring()
            .rotate()
            .await
            .map(|kid| {
                format!("new signing key {kid}; the previous one verifies until its tokens expire")
            })
            .map_err(|e| e.to_string()),
        AdminRequest::Sweep { grace_secs } => sweep(&state.repo, grace_secs).await,
        AdminRequest::Reindex => state
            .repo
            .reindex_stale(|_| {})
            .await
            .map(|p| format!("reindexed {} resources", p.done))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(message) => AdminReply { ok: true, message },
        Err(message) => AdminReply { ok: false, message },
    }
}

/// One sweep of unreferenced blobs and expired records, described for the operator.
pub async fn sweep(repo: &Repository, grace_secs: u64) -> Result<String, String> {
    let report = repo
        .sweep(Duration::from_secs(grace_secs))
        .await
        .map_err(|e| e.to_string())?;
    let purged = repo
        .purge_expired_records()
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "examined {} blobs: {} referenced, {} unreferenced and waiting out the grace period, {} removed; {} expired records deleted",
        report.examined, report.referenced, report.waiting, report.removed, purged
    ))
}

/// Sends `request` to the server running on `data_dir`, if one answers there. `None` when no
/// server is listening (the caller then acts on the stores itself). Progress lines, if the
/// request sends any, go to `progress`.
pub async fn send(
    data_dir: &Path,
    request: &AdminRequest,
    progress: impl FnMut(AdminProgress),
) -> Option<Result<AdminReply, String>> {
    let path = socket_path(data_dir);
    let stream = UnixStream::connect(&path).await.ok()?;
    Some(exchange(stream, request, progress).await)
}

async fn exchange(
    stream: UnixStream,
    request: &AdminRequest,
    mut progress: impl FnMut(AdminProgress),
) -> Result<AdminReply, String> {
    let (read, mut write) = stream.into_split();
    let mut bytes = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    write.write_all(&bytes).await.map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        if let Ok(p) = serde_json::from_str::<AdminProgress>(&line) {
            progress(p);
            continue;
        }
        return serde_json::from_str(&line).map_err(|e| format!("the server answered oddly: {e}"));
    }
    Err("the server closed the connection without an answer".into())
}
