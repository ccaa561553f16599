//! An engine that fails on demand: for tests of how the store and the member meet a storage
//! failure (a full disk, an fsync that fails) without needing the failure from a real disk.
//!
//! Failures are armed on a [`Faults`] handle and strike the next write or sync. A *latching*
//! engine then refuses every later write with the same error and reports it as its
//! [`fault`](Engine::fault), as fjall does once a write failed; a *transient* one fails that
//! call only, as an engine that recovers by itself does (TiKV after a region error).

use super::{Engine, EngineError, EngineResult, WriteBatch};
use std::sync::{Arc, Mutex};

/// Which call an armed failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOn {
    /// The next write, durable or not: the batch is not applied.
    Write,
    /// The next sync: the batches written before it were applied, but are not known durable.
    Sync,
}

/// The failures to come, shared by a test and its [`FaultyEngine`].
#[derive(Default)]
pub struct Faults {
    latching: bool,
    armed: Mutex<Option<(FailOn, EngineError)>>,
    latched: Mutex<Option<EngineError>>,
    /// Fails every write and sync until healed, without latching (an unreachable TiKV).
    failing: Mutex<Option<EngineError>>,
}

impl Faults {
    /// Fails the next `on` with `err`.
    pub fn arm(&self, on: FailOn, err: EngineError) {
        *lock(&self.armed) = Some((on, err));
    }

    /// Fails every write and sync with `err` until [`Faults::heal`], as an engine that is
    /// unreachable for a while does: it reports no fault of its own.
    pub fn fail_until_healed(&self, err: EngineError) {
        *lock(&self.failing) = Some(err);
    }

    pub fn heal(&self) {
        *lock(&self.failing) = None;
    }

    /// What an engine's write fails with when the disk is full.
    pub fn no_space() -> EngineError {
        EngineError::NoSpace("No space left on device (os error 28)".into())
    }

    /// What an engine's write or sync fails with when the device fails.
    pub fn io_error() -> EngineError {
        EngineError::Storage("write failed: Input/output error (os error 5)".into())
    }

    fn strike(&self, call: FailOn) -> EngineResult<()> {
        if let Some(err) = lock(&self.latched).clone() {
            return Err(err);
        }
        if let Some(err) = lock(&self.failing).clone() {
            return Err(err);
        }
        let mut armed = lock(&self.armed);
        if armed.as_ref().is_some_and(|(on, _)| *on == call)
            && let Some((_, err)) = armed.take()
        {
            if self.latching {
                *lock(&self.latched) = Some(err.clone());
            }
            return Err(err);
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// `inner` with failures injected by its [`Faults`].
#[derive(Clone)]
pub struct FaultyEngine<E> {
    inner: E,
    faults: Arc<Faults>,
}

impl<E: Engine> FaultyEngine<E> {
    /// An engine that takes no more writes after one failed (fjall's behaviour).
    pub fn latching(inner: E) -> (Self, Arc<Faults>) {
        Self::new(inner, true)
    }

    /// An engine that fails only the calls a failure was armed for.
    pub fn transient(inner: E) -> (Self, Arc<Faults>) {
        Self::new(inner, false)
    }

    fn new(inner: E, latching: bool) -> (Self, Arc<Faults>) {
        let faults = Arc::new(Faults {
            latching,
            ..Faults::default()
        });
        let engine = FaultyEngine {
            inner,
            faults: faults.clone(),
        };
        (engine, faults)
    }

    /// The engine underneath, failures aside (what a restart would find).
    pub fn inner(&self) -> &E {
        &self.inner
    }
}

impl<E: Engine> Engine for FaultyEngine<E> {
    type Snapshot = E::Snapshot;

    async fn snapshot(&self) -> EngineResult<Self::Snapshot> {
        self.inner.snapshot().await
    }

    async fn write(&self, batch: WriteBatch) -> EngineResult<()> {
        self.faults.strike(FailOn::Write)?;
        self.faults.strike(FailOn::Sync)?;
        self.inner.write(batch).await
    }

    async fn write_unsynced(&self, batch: WriteBatch) -> EngineResult<()> {
        self.faults.strike(FailOn::Write)?;
        self.inner.write_unsynced(batch).await
    }

    async fn sync(&self) -> EngineResult<()> {
        self.faults.strike(FailOn::Sync)?;
        self.inner.sync().await
    }

    fn size_on_disk(&self) -> u64 {
        self.inner.size_on_disk()
    }

    async fn history_released(&self) -> EngineResult<()> {
        self.inner.history_released().await
    }

    fn fault(&self) -> Option<EngineError> {
        lock(&self.faults.latched).clone()
    }

    fn logical_size(&self) -> u64 {
        self.inner.logical_size()
    }
}
