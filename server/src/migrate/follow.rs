//! Following the source: every revision it commits is applied here as the same revision, its
//! leases, compaction, users and roles mirrored, until the cut-over.

use super::auth::{self, AuthMark};
use super::source::Source;
use crate::brain::{Brain, Route, Store};
use backend::Replicating;
use backend::kv::KvError;
use etcdpb::mvccpb::Event;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Pause before reconnecting after the source's stream broke.
const RECONNECT: Duration = Duration::from_secs(1);
/// How often the lag is logged, and the source's compaction and auth revision looked at.
const REPORT: Duration = Duration::from_secs(10);
/// Watch responses handed to the writer and not yet confirmed committed, at most.
const CONFIRM_AHEAD: usize = 256;

/// Where a migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Applying the source's revisions as they come.
    Following,
    /// Engram took over at this revision: it serves writes, the source is left alone.
    CutOver { revision: i64 },
    /// Following stopped and cannot go on; the reason says what to do.
    Failed(String),
}

/// One migration: the source, this member, and where it stands.
pub struct Migration {
    pub source: Source,
    brain: OnceLock<Arc<Brain>>,
    stage: Mutex<Stage>,
    /// The leases of the source as last read: id and granted TTL.
    leases: Mutex<HashMap<i64, i64>>,
    lease_poll: Duration,
    /// The data directory: where a snapshot read for the source's users and roles goes.
    dir: PathBuf,
    /// One copy of the source's users and roles at a time.
    pub(super) auth_sync: tokio::sync::Mutex<()>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Told why, when following cannot go on (the process ends with it).
    fatal: Mutex<Option<oneshot::Sender<String>>>,
    /// One cut-over at a time.
    pub(super) cutting_over: tokio::sync::Mutex<()>,
}

impl Migration {
    pub fn new(
        source: Source,
        lease_poll: Duration,
        dir: PathBuf,
        fatal: oneshot::Sender<String>,
    ) -> Arc<Self> {
        Arc::new(Migration {
            source,
            brain: OnceLock::new(),
            stage: Mutex::new(Stage::Following),
            leases: Mutex::new(HashMap::new()),
            lease_poll,
            dir,
            auth_sync: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            fatal: Mutex::new(Some(fatal)),
            cutting_over: tokio::sync::Mutex::new(()),
        })
    }

    /// Starts following the source through `brain`'s store.
    pub fn start(self: &Arc<Self>, brain: Arc<Brain>) {
        let _ = self.brain.set(brain);
        let tasks = vec![
            tokio::spawn(self.clone().follow()),
            tokio::spawn(self.clone().mirror_leases()),
            tokio::spawn(self.clone().report()),
        ];
        *lock(&self.tasks) = tasks;
    }

    pub fn brain(&self) -> Option<&Arc<Brain>> {
        self.brain.get()
    }

    pub fn stage(&self) -> Stage {
        lock(&self.stage).clone()
    }

    fn set_stage(&self, stage: Stage) {
        *lock(&self.stage) = stage;
    }

    pub fn lease_count(&self) -> usize {
        lock(&self.leases).len()
    }

    /// Stops following (the cut-over, or a failure).
    pub(super) fn stop(&self, stage: Stage) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        self.set_stage(stage);
    }

    /// The store of this member once it leads (it is the only member writing the engine).
    async fn store(&self) -> Option<Store> {
        let brain = self.brain.get()?;
        loop {
            if let Ok(Route::Local(store)) = brain.route().await {
                return Some(store);
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// Applies the source's revisions from the one after the store's, for as long as the
    /// source's stream lasts; then resumes where it stopped.
    async fn follow(self: Arc<Self>) {
        loop {
            let Some(store) = self.store().await else {
                return;
            };
            match self.follow_stream(&store).await {
                Ok(()) => {}
                Err(Stop::Resume) => {}
                Err(Stop::Fail(reason)) => {
                    tracing::error!(%reason, "migration stopped");
                    self.stop(Stage::Failed(reason.clone()));
                    if let Some(fatal) = lock(&self.fatal).take() {
                        let _ = fatal.send(reason);
                    }
                    return;
                }
            }
            tokio::time::sleep(RECONNECT).await;
        }
    }

    /// One watch of the source, from the revision after the store's: each response's
    /// revisions are handed to the writer as soon as they arrive, and their commits confirmed
    /// in order alongside, so that the revisions of many responses share group commits.
    async fn follow_stream(&self, store: &Store) -> Result<(), Stop> {
        let from = store.revision() + 1;
        let (_keep_open, mut stream) = self.source.watch(from).await.map_err(|status| {
            tracing::warn!(%status, source = %self.source.url, "watching the source failed");
            Stop::Resume
        })?;
        let (queued, mut to_confirm) = tokio::sync::mpsc::channel::<Replicating>(CONFIRM_AHEAD);
        let mut confirm = tokio::spawn(async move {
            while let Some(replicating) = to_confirm.recv().await {
                replicating.committed().await?;
            }
            Ok::<(), KvError>(())
        });
        let ended = loop {
            let response = tokio::select! {
                response = stream.message() => response,
                confirmed = &mut confirm => break confirmed_stop(confirmed),
            };
            let response = match response {
                Ok(Some(response)) => response,
                Ok(None) => {
                    tracing::warn!(source = %self.source.url, "the source's watch ended");
                    break Stop::Resume;
                }
                Err(status) => {
                    tracing::warn!(%status, source = %self.source.url, "the source's watch broke");
                    break Stop::Resume;
                }
            };
            if response.canceled {
                break Stop::Fail(if response.compact_revision > 0 {
                    format!(
                        "the source compacted its history past revision {from} (to {}) before \
                         it was followed: run engram migrate again on the same data \
                         directory, and it starts again from a fresh snapshot",
                        response.compact_revision
                    )
                } else {
                    format!("the source canceled the watch: {}", response.cancel_reason)
                });
            }
            if let Some(header) = &response.header
                && let Some(brain) = self.brain()
            {
                brain.set_source_revision(header.revision);
            }
            match handover(store, response.events).await {
                Ok(Some(replicating)) => {
                    if queued.send(replicating).await.is_err() {
                        break confirmed_stop((&mut confirm).await);
                    }
                }
                Ok(None) => {}
                Err(err) => break replication_stop(err),
            }
        };
        // What was handed over is committed (or failed) before following resumes.
        drop(queued);
        if !confirm.is_finished() {
            let _ = (&mut confirm).await;
        }
        Err(ended)
    }

    /// Reads the source's leases every poll interval and makes them the store's.
    async fn mirror_leases(self: Arc<Self>) {
        loop {
            if let Err(err) = self.sync_leases().await {
                tracing::warn!(%err, "reading the source's leases failed");
            }
            tokio::time::sleep(self.lease_poll).await;
        }
    }

    /// Makes the store's leases the source's, now.
    pub(super) async fn sync_leases(&self) -> Result<(), crate::error::BoxError> {
        let known = lock(&self.leases).clone();
        let leases = self.source.leases(&known).await?;
        if let Some(store) = self.store().await {
            store.replicate_leases(leases.clone()).await?;
        }
        *lock(&self.leases) = leases.into_iter().collect();
        Ok(())
    }

    /// Compacts the store as the source did (`compacted`), if it is behind.
    pub(super) async fn mirror_compaction(&self, compacted: i64) -> Result<(), KvError> {
        let Some(store) = self.store().await else {
            return Ok(());
        };
        if compacted > store.compacted() && compacted <= store.revision() {
            store.replicate_compaction(compacted).await?;
            tracing::info!(compacted, "compacted as the source did");
        }
        Ok(())
    }

    /// Makes the store's users, roles and enabled flag the source's, if they moved there (see
    /// `auth.rs`). Returns the mark copied, `None` if nothing had moved.
    pub(super) async fn sync_auth(&self) -> Result<Option<AuthMark>, crate::error::BoxError> {
        let _one = self.auth_sync.lock().await;
        let Some(store) = self.store().await else {
            return Ok(None);
        };
        auth::sync(&self.source, &store, &self.dir).await
    }

    /// Logs how far behind the source the store is, and mirrors the source's compaction and
    /// its users and roles.
    async fn report(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REPORT).await;
            let (Some(brain), Some(store)) = (self.brain(), self.store().await) else {
                continue;
            };
            let lag = brain.replication_lag().unwrap_or(0);
            tracing::info!(
                lag,
                applied = store.revision(),
                source = %self.source.url,
                "migration: following the source, {lag} revisions behind"
            );
            let compacted = match self.source.revision().await {
                Ok(current) => self.source.compacted(current).await,
                Err(status) => Err(status),
            };
            match compacted {
                Ok(compacted) => {
                    if let Err(err) = self.mirror_compaction(compacted).await {
                        tracing::warn!(%err, compacted, "compacting as the source did failed");
                    }
                }
                Err(status) => tracing::debug!(%status, "reading the source's compaction"),
            }
            if let Err(err) = self.sync_auth().await {
                tracing::warn!(%err, "copying the source's users and roles failed");
            }
        }
    }
}

/// Why one watch of the source ended.
enum Stop {
    /// Watch again from the store's revision.
    Resume,
    /// Following cannot go on, for this reason.
    Fail(String),
}

fn replication_stop(err: KvError) -> Stop {
    if let KvError::ReplicationGap { .. } = err {
        return Stop::Fail(format!("a revision of the source was missed: {err}"));
    }
    tracing::warn!(%err, "applying the source's revision failed; resuming");
    Stop::Resume
}

fn confirmed_stop(confirmed: Result<Result<(), KvError>, tokio::task::JoinError>) -> Stop {
    match confirmed {
        Ok(Err(err)) => replication_stop(err),
        _ => Stop::Resume,
    }
}

/// Hands the events of one watch response to the writer: each revision whole, in order (etcd
/// never splits a revision across responses).
async fn handover(store: &Store, events: Vec<Event>) -> Result<Option<Replicating>, KvError> {
    let mut revisions: Vec<(i64, Vec<Event>)> = Vec::new();
    for event in events {
        let rev = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
        match revisions.last_mut() {
            Some((at, events)) if *at == rev => events.push(event),
            _ => revisions.push((rev, vec![event])),
        }
    }
    if revisions.is_empty() {
        return Ok(None);
    }
    store.replicate(revisions).await.map(Some)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
