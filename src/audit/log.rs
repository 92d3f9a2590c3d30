//! The durable queue of AuditEvents. Requests hand their finished interaction to one writer
//! task and wait; the writer takes everything waiting (group commit), makes one AuditEvent of
//! each, has the sink store the whole round at once (one sealed batch blob, one index commit),
//! and only then answers every request of the round. A request is answered only after its
//! AuditEvent is durable; if the round cannot be stored, every request in it fails with 503.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::trail::{Records, Trail};
use super::{AuditError, Interaction, Source, event};
use crate::fhir::instant::now_millis;

/// Where a round of AuditEvents goes: the repository, which seals them into one batch and
/// commits them, with the trail's records, in one index transaction.
#[async_trait]
pub trait AuditSink: Records {
    /// Stores `events` (AuditEvents as they will be served) and `records` durably, all or none.
    async fn persist(
        &self,
        events: Vec<serde_json::Value>,
        records: Vec<crate::index::Record>,
    ) -> Result<(), AuditError>;
}

/// Most AuditEvents in one round: bounds one batch blob (about 2 KB an event) and the time a
/// round holds the writer.
const MAX_ROUND: usize = 2048;

/// Requests waiting for the writer; past it, callers wait to enqueue (back-pressure).
const QUEUE: usize = 8192;

struct Waiting {
    interaction: Interaction,
    done: oneshot::Sender<Result<(), String>>,
}

/// The handle requests record through; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Waiting>,
}

impl AuditLog {
    /// Starts the writer task (it runs as long as some handle does).
    pub fn start(sink: Arc<dyn AuditSink>, source: Source) -> AuditLog {
        let (queue, inbox) = mpsc::channel(QUEUE);
        tokio::spawn(write_rounds(sink, source, inbox));
        AuditLog { queue }
    }

    /// Records `interaction`; returns once its AuditEvent is durable.
    pub async fn record(&self, interaction: Interaction) -> Result<(), AuditError> {
        let (done, stored) = oneshot::channel();
        let stopped = || AuditError::Unavailable("the audit writer has stopped".into());
        self.queue
            .send(Waiting { interaction, done })
            .await
            .map_err(|_| stopped())?;
        stored
            .await
            .map_err(|_| stopped())?
            .map_err(AuditError::Unavailable)
    }
}

async fn write_rounds(
    sink: Arc<dyn AuditSink>,
    source: Source,
    mut inbox: mpsc::Receiver<Waiting>,
) {
    let mut trail: Option<Trail> = None;
    let mut round = Vec::new();
    while inbox.recv_many(&mut round, MAX_ROUND).await > 0 {
        let outcome = store_round(sink.as_ref(), &source, &mut trail, &round)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &outcome {
            tracing::error!(events = round.len(), "audit round not stored: {e}");
        }
        for waiting in round.drain(..) {
            let _ = waiting.done.send(outcome.clone());
        }
    }
}

/// Makes the round's AuditEvents and stores them; the trail moves on only if they are durable.
async fn store_round(
    sink: &dyn AuditSink,
    source: &Source,
    trail: &mut Option<Trail>,
    round: &[Waiting],
) -> Result<(), AuditError> {
    let trail = match trail {
        Some(trail) => trail,
        None => trail.insert(Trail::load(sink, &source.replica).await?),
    };
    let recorded = now_millis();
    let events = round
        .iter()
        .map(|w| {
            let id = crate::fhir::resource::new_id();
            (
                event(&w.interaction, &id, recorded, source),
                w.interaction.patients(),
            )
        })
        .collect();
    let prepared = trail.prepare(sink, events, recorded).await?;
    sink.persist(prepared.events, prepared.records).await?;
    trail.committed(prepared.advance);
    Ok(())
}
