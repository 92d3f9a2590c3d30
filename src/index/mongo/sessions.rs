//! The sessions this process's transactions run in, recorded so that the next process of the
//! same owner (a server replica, by name) can abort what a crash left open.
//!
//! A transaction whose client died is not aborted by MongoDB until the transaction lifetime
//! (`transactionLifetimeLimitSeconds`, 60 s by default) has passed, and until then it holds
//! every document it wrote: after a `kill -9` mid-commit, the replica's own audit trail records
//! were unwritable for a minute, and every audited request with them. So each session a
//! transaction runs in is noted in the `sessions` collection under the owner before its first
//! transaction, and at start the new process kills the sessions its predecessor noted
//! (`killSessions`, which aborts their transactions at once) and starts a fresh list.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};

use mongodb::ClientSession;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::Error as MongoError;

use super::{MongoIndex, unavailable};
use crate::index::IndexError;

/// Who this process's sessions are noted under, and which are noted already.
#[derive(Default)]
pub(super) struct SessionBook {
    owner: RwLock<Option<String>>,
    noted: Mutex<HashSet<Vec<u8>>>,
}

fn lsid_bytes(lsid: &Document) -> Vec<u8> {
    match lsid.get("id") {
        Some(Bson::Binary(binary)) => binary.bytes.clone(),
        _ => Vec::new(),
    }
}

impl MongoIndex {
    /// Aborts the transactions an earlier process under `owner` left open (see the module
    /// documentation); from now on this process's sessions are noted under `owner`. Returns
    /// how many sessions were killed.
    pub(super) async fn recover_sessions(&self, owner: &str) -> Result<usize, IndexError> {
        let noted: Option<Document> = self
            .sessions
            .find_one(doc! {"_id": owner})
            .await
            .map_err(unavailable)?;
        let lsids: Vec<Bson> = noted
            .and_then(|d| d.get_array("lsids").ok().cloned())
            .unwrap_or_default();
        if !lsids.is_empty() {
            self.client
                .database("admin")
                .run_command(doc! {"killSessions": lsids.clone()})
                .await
                .map_err(unavailable)?;
        }
        self.sessions
            .replace_one(doc! {"_id": owner}, doc! {"_id": owner, "lsids": []})
            .upsert(true)
            .await
            .map_err(unavailable)?;
        if let Ok(mut slot) = self.session_book.owner.write() {
            *slot = Some(owner.to_owned());
        }
        Ok(lsids.len())
    }

    /// Notes `session` under the owner, once, before a transaction runs in it.
    pub(super) async fn note_session(&self, session: &ClientSession) -> Result<(), MongoError> {
        let Some(owner) = self.session_book.owner.read().ok().and_then(|o| o.clone()) else {
            return Ok(());
        };
        let lsid = session.id().clone();
        let key = lsid_bytes(&lsid);
        let known = self
            .session_book
            .noted
            .lock()
            .map(|noted| noted.contains(&key))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        self.sessions
            .update_one(doc! {"_id": &owner}, doc! {"$addToSet": {"lsids": lsid}})
            .upsert(true)
            .await?;
        if let Ok(mut noted) = self.session_book.noted.lock() {
            noted.insert(key);
        }
        Ok(())
    }
}
