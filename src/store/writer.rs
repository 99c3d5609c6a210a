//! The single writer: batches concurrent jobs, applies them atomically, flushes once, then
//! answers every job of the batch. Nothing is answered before its flush.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};

use super::{CommitNotice, MAX_BATCH, StoreError, Txn};

/// What the writer calls once the batch holding a job is durable (or failed).
type Finisher = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
pub(super) type Job = Box<dyn FnOnce(&mut Txn) -> Finisher + Send>;

pub(super) fn job<T, E, F>(change: F, reply: oneshot::Sender<Result<T, E>>) -> Job
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut Txn) -> Result<T, E> + Send + 'static,
{
    Box::new(move |txn: &mut Txn| {
        let outcome = change(txn);
        if outcome.is_ok() {
            txn.keep_job();
        } else {
            txn.discard_job();
        }
        Box::new(move |committed: Result<(), StoreError>| {
            let answer = match committed {
                Ok(()) => outcome,
                // A refused job wrote nothing, so its own error stands even if the batch failed.
                Err(error) => outcome.and(Err(error.into())),
            };
            let _ = reply.send(answer);
        })
    })
}

pub(super) async fn run(
    db: sled::Db,
    tree: sled::Tree,
    mut jobs: mpsc::Receiver<Job>,
    commits: broadcast::Sender<Arc<CommitNotice>>,
) {
    let mut pending = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut pending, MAX_BATCH).await > 0 {
        let mut txn = Txn::new(&tree);
        let finishers: Vec<Finisher> = pending.drain(..).map(|job| job(&mut txn)).collect();
        let (batch, notice, empty) = txn.into_parts();
        let committed = if empty { Ok(()) } else { commit(&db, &tree, batch).await };
        if let Err(error) = &committed {
            tracing::error!(%error, jobs = finishers.len(), "commit failed; the batch's callers get an error");
        }
        let succeeded = committed.is_ok();
        for finish in finishers {
            finish(committed.clone());
        }
        if succeeded && !empty {
            let _ = commits.send(Arc::new(notice));
        }
    }
    if let Err(error) = db.flush_async().await {
        tracing::error!(%error, "final flush failed");
    }
}

async fn commit(db: &sled::Db, tree: &sled::Tree, batch: sled::Batch) -> Result<(), StoreError> {
    tree.apply_batch(batch)?;
    db.flush_async().await?;
    Ok(())
}
