//! A multi-document transaction for writers that hold no lease (the API's checks that must see
//! and change several documents atomically, e.g. "never the last admin"): all of it or nothing,
//! retried from the start on transient errors.

use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::ClientSession;
use mongodb::options::WriteConcern;

use crate::error::StoreError;
use crate::fence::{commit_or_retry, is_transient_conflict};
use crate::store::Store;

impl Store {
    /// Runs `body(session, context)` in one majority transaction and commits it. A write
    /// conflict with another transaction (or any transient transaction error) runs `body` again
    /// from the start, until the store's timeout; `body` must therefore do only store operations
    /// through `session`. A refusal of its own is returned through
    /// [`mongodb::error::Error::custom`] and comes back as [`StoreError::Mongo`] whose source
    /// carries it ([`StoreError::custom`]).
    pub async fn transaction<R, C: Sync>(
        &self,
        what: &str,
        context: &C,
        body: for<'a> fn(&'a mut ClientSession, &'a C) -> BoxFuture<'a, mongodb::error::Result<R>>,
    ) -> Result<R, StoreError> {
        let started = tokio::time::Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let run = async {
                let mut session = self.client().start_session().await?;
                session
                    .start_transaction()
                    .write_concern(WriteConcern::majority())
                    .await?;
                match body(&mut session, context).await {
                    Ok(result) => commit_or_retry(&mut session).await.map(|()| result),
                    Err(err) => {
                        // Aborted by the server already, or now: nothing of it is applied.
                        let _ = session.abort_transaction().await;
                        Err(err)
                    }
                }
            };
            let left = self.timeout().saturating_sub(started.elapsed());
            let err = match tokio::time::timeout(left, run).await {
                Ok(Ok(result)) => return Ok(result),
                Ok(Err(err)) => err,
                Err(_) => {
                    return Err(StoreError::Timeout {
                        op: what.to_owned(),
                        timeout: self.timeout(),
                    });
                }
            };
            if !is_transient_conflict(&err) || started.elapsed() >= self.timeout() {
                return Err(StoreError::mongo(what, err));
            }
            tokio::time::sleep(Duration::from_millis(2u64 << attempt.min(6))).await;
        }
    }
}
