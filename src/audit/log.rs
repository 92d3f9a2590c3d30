//! The durable queue of AuditEvents. A request builds its own AuditEvent (in its own task, so
//! that work is spread over every core) and hands it to the log; it is answered only once the
//! AuditEvent is durable, and if the round it was stored in failed, with a 503.
//!
//! The log is a pipeline of rounds (group commit), so a round's disk waits overlap the next
//! round's work instead of adding to it:
//!
//! 1. the *orderer* takes everything waiting, numbers and links it in the trail (cheap and
//!    serial: each patient's link names the leaf of their previous event) and starts…
//! 2. …the round's *storing* (search entries, sealing, one batch blob: CPU-heavy, spread over
//!    the blocking pool by the sink), while it goes on to order the next round;
//! 3. the *committer* commits the stored rounds strictly in order, every round waiting in one
//!    index commit with the trail's records, and answers their requests.
//!
//! The orderer advances its trail before the round is durable. If a round fails, every later
//! round already ordered after it is failed too (never committed: it was numbered after the
//! missing one), and the orderer starts again from the trail as the store holds it. A failure
//! is the only way that rounds are thrown away, so no sequence number is ever skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::trail::{Finished, Records, Trail};
use super::{AuditError, Draft, Interaction, Source, draft};
use crate::fhir::instant::now_millis;
use crate::index::{Commit, Record};

/// Where rounds of AuditEvents go: the repository, which seals each round into one batch and
/// commits it, with the trail's records, in one index transaction.
#[async_trait]
pub trait AuditSink: Records {
    /// Seals `events` (AuditEvents exactly as they will be served) into one batch blob and
    /// stores it; returns the index commits that point at it. Runs while earlier rounds are
    /// still being committed.
    async fn store(&self, events: Vec<Finished>) -> Result<Vec<Commit>, AuditError>;

    /// Commits a stored round and `records` durably, all or none. Called in round order.
    async fn commit(&self, commits: Vec<Commit>, records: Vec<Record>) -> Result<(), AuditError>;
}

/// Most AuditEvents in one round: bounds one batch blob (about 2 KB an event) and the time a
/// round holds the writer.
const MAX_ROUND: usize = 2048;

/// Requests waiting for the orderer; past it, callers wait to enqueue (back-pressure).
const QUEUE: usize = 8192;

/// Rounds ordered and not yet committed, besides the one being committed: enough to overlap
/// one round's storing with another's commit; more would only lengthen every request's wait.
const IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<(), String>>;

struct Waiting {
    /// The AuditEvent as the request made it (no place in the trail yet).
    draft: Draft,
    done: Reply,
}

/// A round on its way to the committer.
struct Ordered {
    /// The failure count the round was ordered under: it may be committed only if no round
    /// has failed since.
    epoch: u64,
    stored: tokio::task::JoinHandle<Result<Vec<Commit>, AuditError>>,
    records: Vec<Record>,
    replies: Vec<Reply>,
}

/// The handle requests record through; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Waiting>,
    source: Arc<Source>,
}

impl AuditLog {
    /// Starts the orderer and the committer (they run as long as some handle does).
    pub fn start(sink: Arc<dyn AuditSink>, source: Source) -> AuditLog {
        let (queue, inbox) = mpsc::channel(QUEUE);
        let (ordered, to_commit) = mpsc::channel(IN_FLIGHT);
        let failures = Arc::new(AtomicU64::new(0));
        let source = Arc::new(source);
        tokio::spawn(order_rounds(
            sink.clone(),
            source.replica.clone(),
            inbox,
            ordered,
            failures.clone(),
        ));
        tokio::spawn(commit_rounds(sink, to_commit, failures));
        AuditLog { queue, source }
    }

    /// Records `interaction`; returns once its AuditEvent is durable.
    pub async fn record(&self, interaction: Interaction) -> Result<(), AuditError> {
        let id = crate::fhir::resource::new_time_ordered_id();
        let waiting = |done| Waiting {
            draft: draft(&interaction, &id, now_millis(), &self.source),
            done,
        };
        let (done, stored) = oneshot::channel();
        let stopped = || AuditError::Unavailable("the audit writer has stopped".into());
        self.queue
            .send(waiting(done))
            .await
            .map_err(|_| stopped())?;
        stored
            .await
            .map_err(|_| stopped())?
            .map_err(AuditError::Unavailable)
    }
}

async fn order_rounds(
    sink: Arc<dyn AuditSink>,
    replica: String,
    mut inbox: mpsc::Receiver<Waiting>,
    ordered: mpsc::Sender<Ordered>,
    failures: Arc<AtomicU64>,
) {
    // The trail, and the failure count it was loaded under.
    let mut trail: Option<(Trail, u64)> = None;
    let mut waiting = Vec::new();
    while inbox.recv_many(&mut waiting, MAX_ROUND).await > 0 {
        let epoch = failures.load(Ordering::Acquire);
        if trail.as_ref().is_some_and(|(_, loaded)| *loaded != epoch) {
            // A round failed: what this trail assumed is not what the store holds.
            trail = None;
        }
        let mut replies = Vec::with_capacity(waiting.len());
        let drafts = waiting
            .drain(..)
            .map(|w| {
                replies.push(w.done);
                w.draft
            })
            .collect();
        let trail = match &mut trail {
            Some((trail, _)) => trail,
            None => match Trail::load(sink.as_ref(), &replica).await {
                Ok(loaded) => &mut trail.insert((loaded, epoch)).0,
                Err(e) => {
                    answer(replies, &Err(e.to_string()));
                    continue;
                }
            },
        };
        let prepared = match trail.prepare(sink.as_ref(), drafts).await {
            Ok(prepared) => prepared,
            Err(e) => {
                answer(replies, &Err(e.to_string()));
                continue;
            }
        };
        trail.committed(prepared.advance);
        let storing = sink.clone();
        let events = prepared.events;
        let round = Ordered {
            epoch,
            stored: tokio::spawn(async move { storing.store(events).await }),
            records: prepared.records,
            replies,
        };
        if ordered.send(round).await.is_err() {
            return;
        }
    }
}

async fn commit_rounds(
    sink: Arc<dyn AuditSink>,
    mut rounds: mpsc::Receiver<Ordered>,
    failures: Arc<AtomicU64>,
) {
    let mut waiting = Vec::with_capacity(IN_FLIGHT + 1);
    while rounds.recv_many(&mut waiting, IN_FLIGHT + 1).await > 0 {
        // Every round already ordered and waiting is committed with this one, in one index
        // commit: a commit's fixed cost (a transaction, an fsync) is then shared by all of
        // them, instead of limiting the trail to one round per commit when requests are few.
        let mut commits = Vec::new();
        let mut records = Vec::new();
        let mut replies = Vec::new();
        let mut failed = None;
        for round in waiting.drain(..) {
            if round.epoch != failures.load(Ordering::Acquire) {
                // Ordered before the last failure, after the round that failed.
                round.stored.abort();
                let stale = "an earlier round of the audit trail could not be stored";
                answer(round.replies, &Err(stale.to_owned()));
                continue;
            }
            replies.extend(round.replies);
            if failed.is_some() {
                // Numbered after a round that failed here: it fails with it.
                round.stored.abort();
                continue;
            }
            match round.stored.await {
                Ok(Ok(stored)) => {
                    commits.extend(stored);
                    records.extend(round.records);
                }
                Ok(Err(e)) => failed = Some(e),
                Err(e) => failed = Some(AuditError::Unavailable(format!("storing a round: {e}"))),
            }
        }
        if failed.is_none() && !replies.is_empty() {
            failed = sink.commit(commits, newest_of_each(records)).await.err();
        }
        let outcome = match failed {
            Some(e) => {
                tracing::error!(events = replies.len(), "audit rounds not stored: {e}");
                // The rounds ordered after these are numbered after them: fail them too.
                failures.fetch_add(1, Ordering::AcqRel);
                Err(e.to_string())
            }
            None => Ok(()),
        };
        answer(replies, &outcome);
    }
}

/// The last of the records with each kind and key (a later round's trail state and heads
/// replace an earlier one's): one write per document in the commit.
fn newest_of_each(records: Vec<Record>) -> Vec<Record> {
    let mut seen = std::collections::HashSet::new();
    let mut newest: Vec<Record> = records
        .into_iter()
        .rev()
        .filter(|r| seen.insert((r.kind.clone(), r.key.clone())))
        .collect();
    newest.reverse();
    newest
}

fn answer(replies: Vec<Reply>, outcome: &Result<(), String>) {
    for reply in replies {
        let _ = reply.send(outcome.clone());
    }
}
