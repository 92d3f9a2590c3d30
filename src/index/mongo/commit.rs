//! The commit transaction of the MongoDB store: every commit of a `commit_all` (and the
//! records beside them) in one multi-document transaction, written with as few round trips as
//! the documents allow; the commit itself retried when its outcome is unknown.

use mongodb::bson::doc;
use mongodb::error::Error as MongoError;

use super::documents::{CurrentDoc, RecordDoc, VersionDoc, resource_key, version_key};
use super::{MongoIndex, StaleReplaces, TRANSACTION_ATTEMPTS, durable};
use crate::index::{Commit, Record};

impl MongoIndex {
    /// Every commit in one transaction: the new resources' documents in one `insert_many` per
    /// collection (a batch of AuditEvents is one round trip, not one per event), each
    /// replacement on its own.
    pub(super) async fn commit_all_in_transaction(
        &self,
        commits: &[Commit],
        records: &[Record],
    ) -> Result<(), MongoError> {
        let mut session = self.client.start_session().await?;
        self.note_session(&session).await?;
        session.start_transaction().write_concern(durable()).await?;
        let created: Vec<_> = commits
            .iter()
            .filter(|c| c.replaces.is_none())
            .map(CurrentDoc::from_commit)
            .collect();
        // One document is written as a single commit always was (`insert_one`), so an
        // ordinary write takes the same path on the server as before batches existed.
        match created.len() {
            0 => {}
            1 => {
                self.current
                    .insert_one(&created[0])
                    .session(&mut session)
                    .await?;
            }
            _ => {
                self.current
                    .insert_many(created)
                    .session(&mut session)
                    .await?;
            }
        }
        for commit in commits.iter().filter(|c| c.replaces.is_some()) {
            self.replace_current(commit, &mut session).await?;
        }
        match commits {
            [] => {}
            [only] => {
                self.versions
                    .insert_one(VersionDoc::from_commit(only))
                    .session(&mut session)
                    .await?;
            }
            _ => {
                self.versions
                    .insert_many(commits.iter().map(VersionDoc::from_commit))
                    .session(&mut session)
                    .await?;
            }
        }
        for record in records {
            let doc = RecordDoc::from_record(record.clone());
            self.records
                .replace_one(doc! {"_id": &doc.id}, &doc)
                .upsert(true)
                .session(&mut session)
                .await?;
        }
        // The server may have committed before the answer was lost: the commit itself is
        // what is retried then (retrying the writes could make a second version).
        let mut attempts = 0;
        loop {
            match session.commit_transaction().await {
                Err(e)
                    if e.contains_label(mongodb::error::UNKNOWN_TRANSACTION_COMMIT_RESULT)
                        && attempts < TRANSACTION_ATTEMPTS =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    /// Makes `commit` (which replaces a version) current inside `session`'s transaction, and
    /// marks the version it replaces as superseded; aborts the transaction if that version is
    /// no longer the current one.
    async fn replace_current(
        &self,
        commit: &Commit,
        session: &mut mongodb::ClientSession,
    ) -> Result<(), MongoError> {
        let record = &commit.record;
        let (rt, id) = (record.resource_type.as_str(), record.id.as_str());
        let key = resource_key(rt, id);
        let Some(previous) = commit.replaces else {
            return Ok(());
        };
        let swapped = self
            .current
            .replace_one(
                doc! {"_id": &key, "version": previous as i64},
                CurrentDoc::from_commit(commit),
            )
            .session(&mut *session)
            .await?;
        if swapped.matched_count == 0 {
            let _ = session.abort_transaction().await;
            return Err(MongoError::custom(StaleReplaces));
        }
        self.versions
            .update_one(
                doc! {"_id": version_key(rt, id, previous)},
                doc! {"$set": {"superseded_at": record.last_updated}},
            )
            .session(&mut *session)
            .await?;
        Ok(())
    }
}
