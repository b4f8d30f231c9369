//! A request from outside to stop: SIGINT / SIGTERM in `backupctl`, the
//! deadline in a Lambda function. The operations that change something
//! (create, restore) watch it and stop as after a failure: a backup
//! publishes nothing, a restore removes what it created (see
//! `docs/POSTGRES.md`), and both say so.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// Cheap to clone; every clone sees the same request.
#[derive(Clone, Default)]
pub struct Interrupt(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Why: `SIGINT`, `SIGTERM`, `the Lambda deadline`. The first reason
    /// stays until [`Interrupt::reset`].
    reason: Mutex<Option<&'static str>>,
    notify: Notify,
}

impl Interrupt {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks everything watching to stop. Only the first reason is kept.
    pub fn trigger(&self, reason: &'static str) {
        self.0
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
        self.0.notify.notify_waiters();
    }

    /// Forgets a request that was answered, for the next piece of work (a
    /// warm Lambda environment serves invocation after invocation with the
    /// same services; one that hit its deadline must not stop the next).
    pub fn reset(&self) {
        *self.0.reason.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The reason, once [`Interrupt::trigger`] was called.
    pub fn reason(&self) -> Option<&'static str> {
        *self.0.reason.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves when [`Interrupt::trigger`] is (or was) called; returns the reason.
    pub async fn wait(&self) -> &'static str {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a trigger in between still wakes us.
            notified.as_mut().enable();
            if let Some(reason) = self.reason() {
                return reason;
            }
            notified.await;
        }
    }

    /// Runs `work` unless the interrupt comes first; `Err(reason)` then,
    /// `work` having been dropped (a transaction it held rolls back).
    pub async fn guard<T>(&self, work: impl Future<Output = T>) -> Result<T, &'static str> {
        tokio::select! {
            biased;
            reason = self.wait() => Err(reason),
            done = work => Ok(done),
        }
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Interrupt").field(&self.reason()).finish()
    }
}

/// Two handles are equal when they are the same request.
impl PartialEq for Interrupt {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Interrupt {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_trigger_before_or_during_the_work_stops_it_with_its_reason() {
        let interrupt = Interrupt::new();
        assert_eq!(interrupt.guard(async { 7 }).await, Ok(7));

        let waiting = interrupt.clone();
        let stopped = tokio::spawn(async move { waiting.guard(std::future::pending::<()>()).await });
        tokio::task::yield_now().await;
        interrupt.trigger("SIGINT");
        interrupt.trigger("SIGTERM");
        assert_eq!(stopped.await.unwrap(), Err("SIGINT"));
        // Already triggered: the work does not start.
        assert_eq!(interrupt.guard(async { 7 }).await, Err("SIGINT"));
        assert_eq!(interrupt.reason(), Some("SIGINT"));
        // Reset for the next piece of work, which then runs.
        interrupt.reset();
        assert_eq!(interrupt.guard(async { 7 }).await, Ok(7));
    }
}
