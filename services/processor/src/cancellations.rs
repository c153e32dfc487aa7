//! Cancellation of running jobs. Each processor instance holds one ordered consumer on
//! `downloads.events.*.cancelled` and cancels the matching in-flight job's token; a job that is
//! not running here is ignored. (A job cancelled before it starts is caught by the
//! compare-and-set on its record, so no message can slip between the two.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_nats::jetstream;
use common::{JobId, names};
use tokio_util::sync::CancellationToken;

/// In-flight jobs of this instance and their cancellation tokens.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<HashMap<JobId, CancellationToken>>>);

/// Removes a job from [`InFlight`] when dropped.
pub struct Registration {
    in_flight: InFlight,
    job_id: JobId,
    token: CancellationToken,
}

impl Registration {
    /// The job's token: cancelled when its owner cancels it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.in_flight.jobs().remove(&self.job_id);
    }
}

impl InFlight {
    /// The map. A panic while it was held cannot leave it half-changed (every change is one
    /// insert or remove), so a poisoned lock is used as it is rather than aborting a `Drop`.
    fn jobs(&self) -> MutexGuard<'_, HashMap<JobId, CancellationToken>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tracks a job from now until the registration drops.
    pub fn register(&self, job_id: JobId) -> Registration {
        let token = CancellationToken::new();
        self.jobs().insert(job_id, token.clone());
        Registration {
            in_flight: self.clone(),
            job_id,
            token,
        }
    }

    /// Cancels a job if it runs here; returns whether it did.
    pub fn cancel(&self, job_id: JobId) -> bool {
        match self.jobs().get(&job_id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// How many jobs run here now.
    pub fn len(&self) -> usize {
        self.jobs().len()
    }

    /// Whether no job runs here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Listens for cancellation events until `shutdown`, re-subscribing after errors.
pub async fn listen(
    jetstream: jetstream::Context,
    in_flight: InFlight,
    ready: tokio::sync::oneshot::Sender<()>,
    shutdown: CancellationToken,
) {
    let cancel = |message: jetstream::Message| {
        let job_id = message.subject.split('.').nth(2).and_then(JobId::parse);
        match job_id {
            Some(job_id) if in_flight.cancel(job_id) => tracing::info!(%job_id, "cancelling running job"),
            Some(_) => {}
            None => tracing::warn!(subject = %message.subject, "cancellation event with a malformed subject ignored"),
        }
        std::future::ready(())
    };
    common::consume::follow_new(
        "cancellations",
        &jetstream,
        names::EVENTS_STREAM,
        names::CANCELLED_EVENTS_FILTER,
        cancel,
        Some(ready),
        shutdown,
    )
    .await;
}
