//! Leader election through the storage engine itself.
//!
//! Members of one cluster share one engine (TiKV), so they elect their leader with the tool the
//! engine gives them: compare-and-swap. Two records live in the engine's `BRAIN` region:
//! - the **term**, a counter bumped by every takeover. It is the fencing token: the leader's
//!   store requires it unchanged in every batch it writes (see `StoreOptions::fence`), so a
//!   leader that was paused or cut off can never commit once another member took over, whatever
//!   its clock says;
//! - the **leader record**: who leads in which term, and a renewal counter the leader bumps
//!   every third of the lease. Other members watch the record change by their own clock (as
//!   Kubernetes' leader election does), so members need no synchronised clocks: a record that
//!   has not changed for a whole lease belongs to a dead leader, and the next member to see
//!   that takes over with a new term.
//!
//! A leader that cannot renew within its lease steps down on its own before anyone may take
//! over, so it never serves a linearizable read after its successor could have written. A
//! member restarting under its own name takes over its own record at once (its previous
//! incarnation is gone: a StatefulSet runs one pod per name), so a single member restarts
//! without waiting out its lease. A leader that shuts down gracefully releases the record, so
//! a follower takes over at once.

use backend::engine::{Engine, EngineError, Snapshot, WriteBatch};
use backend::mvcc::keys;
use bytes::Bytes;
use prost::Message;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Who leads, as stored in the engine.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct LeaderRecord {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, repeated, tag = "4")]
    pub client_urls: Vec<String>,
    /// Bumped by every renewal: the leader is alive while this keeps changing.
    #[prost(uint64, tag = "5")]
    pub renewal: u64,
    /// Set by a leader that stepped down gracefully: anyone may take over at once.
    #[prost(bool, tag = "6")]
    pub released: bool,
    /// Set with `released` by a leader that handed the lead to this member (MoveLeader): only
    /// it may take over at once; the others wait a lease, in case it is gone.
    #[prost(uint64, tag = "7")]
    pub successor: u64,
}

/// A member's registration, listed by MemberList.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct MemberRecord {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}

/// What this member knows about the leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// No live leader known (starting, or an election is due).
    Unknown,
    /// This member leads in `term`.
    Leading { term: u64 },
    /// Another member leads.
    Following { leader: LeaderRecord },
}

/// How this member takes part in elections.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub member: MemberRecord,
    /// How long a leader's record may stay unrenewed before another member takes over.
    pub lease: Duration,
}

/// The term's durable encoding (the fence value).
pub fn encode_term(term: u64) -> Bytes {
    Bytes::copy_from_slice(&term.to_be_bytes())
}

fn decode_term(value: &[u8]) -> u64 {
    value.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

/// Registers the member and runs its elections until `stop` is set. Publishes what it learns
/// on the returned channel. On stop, a leader releases its record first. A member id sent on
/// `handover` while this member leads hands the lead to that member (MoveLeader).
pub fn start<E: Engine + Clone>(
    engine: E,
    config: ElectionConfig,
    stop: watch::Receiver<bool>,
    handover: watch::Receiver<u64>,
) -> (watch::Receiver<Leadership>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Leadership::Unknown);
    let task = tokio::spawn(run(engine, config, tx, stop, handover));
    (rx, task)
}

/// The records as one read saw them.
struct Observed {
    term: Option<Bytes>,
    leader: Option<Bytes>,
}

async fn observe<E: Engine>(engine: &E) -> Result<Observed, EngineError> {
    let snapshot = engine.snapshot().await?;
    Ok(Observed {
        term: snapshot.get(&keys::brain_term()).await?,
        leader: snapshot.get(&keys::brain_leader()).await?,
    })
}

async fn register<E: Engine>(engine: &E, member: &MemberRecord) -> Result<(), EngineError> {
    let mut batch = WriteBatch::default();
    batch.put(keys::brain_member(member.id), member.encode_to_vec());
    engine.write(batch).await
}

/// Removes the member's registration (a member leaving the cluster for good).
pub async fn unregister<E: Engine>(engine: &E, id: u64) -> Result<(), EngineError> {
    let mut batch = WriteBatch::default();
    batch.delete(keys::brain_member(id));
    engine.write(batch).await
}

/// Every registered member, by id.
pub async fn members<E: Engine>(engine: &E) -> Result<Vec<MemberRecord>, EngineError> {
    let snapshot = engine.snapshot().await?;
    let entries = snapshot.scan(&keys::brain_members(), 10_000, false).await?;
    Ok(entries
        .iter()
        .filter_map(|(_, v)| MemberRecord::decode(&v[..]).ok())
        .collect())
}

async fn run<E: Engine>(
    engine: E,
    config: ElectionConfig,
    tx: watch::Sender<Leadership>,
    stop: watch::Receiver<bool>,
    mut handover: watch::Receiver<u64>,
) {
    let id = config.member.id;
    campaign(&engine, config, &tx, stop, &mut handover).await;
    tx.send_replace(Leadership::Unknown);
    // A member that stops on purpose leaves MemberList (it registers again when it starts).
    if let Err(err) = unregister(&engine, id).await {
        tracing::warn!(%err, "removing the member's registration failed");
    }
}

/// Takes part in elections until `stop` is set (a leader releases the lead first).
async fn campaign<E: Engine>(
    engine: &E,
    config: ElectionConfig,
    tx: &watch::Sender<Leadership>,
    mut stop: watch::Receiver<bool>,
    handover: &mut watch::Receiver<u64>,
) {
    let lease = config.lease.max(Duration::from_millis(300));
    // How often a non-leader looks at the record: often enough to take a released lead at
    // once, cheap enough to ignore (one read of two keys).
    let retry = (lease / 4).min(Duration::from_millis(500));
    while let Err(err) = register(engine, &config.member).await {
        if engine.fault().is_some() {
            tracing::warn!(%err, "registering the member failed: the engine takes no writes");
            break;
        }
        tracing::warn!(%err, "registering the member failed; retrying");
        if sleep_or_stop(&mut stop, retry).await {
            return;
        }
    }
    // The leader record as last seen, and when it was first seen that way (our clock).
    let mut seen: Option<(Option<Bytes>, Instant)> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let observed = match observe(engine).await {
            Ok(o) => o,
            Err(err) => {
                tracing::warn!(%err, "reading the leader record failed");
                tx.send_replace(Leadership::Unknown);
                if sleep_or_stop(&mut stop, retry).await {
                    return;
                }
                continue;
            }
        };
        let now = Instant::now();
        if seen.as_ref().is_none_or(|(v, _)| *v != observed.leader) {
            seen = Some((observed.leader.clone(), now));
        }
        let since = seen.as_ref().map_or(now, |(_, at)| *at);
        let record = observed
            .leader
            .as_deref()
            .and_then(|v| LeaderRecord::decode(v).ok());
        // An engine that takes no more writes (see `Engine::fault`) takes none from any
        // member: its leader cannot renew, and no one can take over by writing. The record
        // stays as it is; whoever it names (or, with none, this member) leads read-only.
        let faulted = engine.fault().is_some();
        let me = config.member.id;
        let stale = !faulted && now - since >= lease;
        let vacant = match &record {
            None => true,
            Some(r) if r.released => r.successor == 0 || r.successor == me || stale,
            Some(r) => r.member_id == me || stale,
        };
        if !vacant {
            match record {
                // Handed to another member, which has yet to take it: nobody leads.
                Some(r) if r.released => {
                    tx.send_if_modified(|l| {
                        (*l != Leadership::Unknown)
                            .then(|| *l = Leadership::Unknown)
                            .is_some()
                    });
                }
                Some(leader) => {
                    tx.send_if_modified(|l| {
                        let next = Leadership::Following { leader };
                        (*l != next).then(|| *l = next).is_some()
                    });
                }
                None => {}
            }
            if sleep_or_stop(&mut stop, retry).await {
                return;
            }
            continue;
        }
        let stored_term = observed.term.as_deref().map_or(0, decode_term);
        if faulted {
            let mine = LeaderRecord {
                term: stored_term,
                member_id: config.member.id,
                name: config.member.name.clone(),
                client_urls: config.member.client_urls.clone(),
                renewal: 0,
                released: false,
                successor: 0,
            };
            tracing::warn!(
                term = stored_term,
                "the storage engine takes no writes: leading read-only"
            );
            tx.send_replace(Leadership::Leading { term: stored_term });
            let stopped = lead(engine, mine, Instant::now(), lease, &mut stop, handover).await;
            tx.send_replace(Leadership::Unknown);
            seen = None;
            if stopped {
                return;
            }
            continue;
        }
        let term = stored_term + 1;
        let mine = LeaderRecord {
            term,
            member_id: config.member.id,
            name: config.member.name.clone(),
            client_urls: config.member.client_urls.clone(),
            renewal: 0,
            released: false,
            successor: 0,
        };
        let mut batch = WriteBatch::default();
        batch.require(keys::brain_term(), observed.term.clone());
        batch.require(keys::brain_leader(), observed.leader.clone());
        batch.put(keys::brain_term(), encode_term(term));
        batch.put(keys::brain_leader(), mine.encode_to_vec());
        let started = Instant::now();
        match engine.write(batch).await {
            Ok(()) => {
                tracing::info!(term, "elected leader");
                tx.send_replace(Leadership::Leading { term });
                let stopped = lead(engine, mine, started, lease, &mut stop, handover).await;
                tx.send_replace(Leadership::Unknown);
                seen = None;
                if stopped {
                    return;
                }
            }
            Err(EngineError::ConditionFailed { .. }) => {
                // Another member moved first: follow it (read again at once).
            }
            Err(err) => {
                tracing::warn!(%err, "campaign failed");
                if sleep_or_stop(&mut stop, retry).await {
                    return;
                }
            }
        }
    }
}

/// Renews the lead until it is lost or handed over (returns false) or the member stops
/// (releases the record and returns true).
async fn lead<E: Engine>(
    engine: &E,
    mut record: LeaderRecord,
    mut renewed_at: Instant,
    lease: Duration,
    stop: &mut watch::Receiver<bool>,
    handover: &mut watch::Receiver<u64>,
) -> bool {
    let interval = lease / 3;
    // Step down while a successor still has to wait: our lease runs from the start of our last
    // successful write, a successor's wait from when it first saw that write.
    let margin = lease / 5;
    let mut read_only = false;
    // A handover asked before this member led is not for this lead.
    handover.borrow_and_update();
    // The member to hand the lead to, until the handover is written.
    let mut successor = 0;
    loop {
        let stopping = tokio::select! {
            stopping = sleep_or_stop(stop, interval) => stopping,
            Ok(()) = handover.changed() => {
                successor = *handover.borrow_and_update();
                false
            }
        };
        let handing_over = !stopping && successor != 0 && successor != record.member_id;
        let mut next = record.clone();
        if stopping || handing_over {
            next.released = true;
            next.successor = if handing_over { successor } else { 0 };
        } else {
            next.renewal += 1;
        }
        let mut batch = WriteBatch::default();
        batch.require(keys::brain_leader(), Some(record.encode_to_vec().into()));
        batch.put(keys::brain_leader(), next.encode_to_vec());
        let attempt = Instant::now();
        let result = tokio::time::timeout(lease, engine.write(batch)).await;
        match result {
            Ok(Ok(())) => {
                if stopping {
                    tracing::info!(term = record.term, "released the lead");
                    return true;
                }
                if handing_over {
                    tracing::info!(term = record.term, successor, "handed the lead over");
                    return false;
                }
                record = next;
                renewed_at = attempt;
            }
            Ok(Err(EngineError::ConditionFailed { .. })) => {
                tracing::warn!(term = record.term, "lost the lead to another member");
                return stopping;
            }
            Ok(Err(err)) if engine.fault().is_some() && !stopping => {
                // No member can write to a faulted engine, so none can take over: this one
                // goes on serving reads rather than leave the cluster without a leader.
                if !read_only {
                    tracing::warn!(%err, "the storage engine takes no writes: leading read-only");
                    read_only = true;
                }
                renewed_at = attempt;
            }
            Ok(Err(err)) => tracing::warn!(%err, "renewing the lead failed"),
            Err(_) => tracing::warn!("renewing the lead timed out"),
        }
        if stopping {
            return true;
        }
        if renewed_at.elapsed() + margin >= lease {
            tracing::warn!(
                term = record.term,
                "could not renew the lead in time; stepping down"
            );
            return false;
        }
    }
}

/// Sleeps for `period`; returns true (at once) if `stop` is or becomes set.
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, period: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(period) => *stop.borrow(),
        changed = stop.changed() => changed.is_err() || *stop.borrow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backend::engine::MemoryEngine;
    use std::sync::Arc;

    fn config(id: u64, lease_ms: u64) -> ElectionConfig {
        ElectionConfig {
            member: MemberRecord {
                id,
                name: format!("m{id}"),
                client_urls: vec![format!("http://127.0.0.1:{id}")],
            },
            lease: Duration::from_millis(lease_ms),
        }
    }

    /// A handover channel nothing is ever sent on.
    fn no_handover() -> watch::Receiver<u64> {
        watch::channel(0).1
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Leadership>,
        pred: impl Fn(&Leadership) -> bool,
    ) -> Leadership {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|l| pred(l)))
            .await
            .expect("leadership did not change in time")
            .expect("election stopped")
            .clone()
    }

    #[tokio::test]
    async fn one_leader_then_takeover_with_a_higher_term() {
        let engine = Arc::new(MemoryEngine::new());
        let (stop_a, stop_a_rx) = watch::channel(false);
        let (mut a, task_a) = start(engine.clone(), config(1, 600), stop_a_rx, no_handover());
        let first = wait_for(&mut a, |l| matches!(l, Leadership::Leading { .. })).await;
        assert_eq!(first, Leadership::Leading { term: 1 });

        let (_stop_b, stop_b_rx) = watch::channel(false);
        let (mut b, _task_b) = start(engine.clone(), config(2, 600), stop_b_rx, no_handover());
        let seen = wait_for(&mut b, |l| matches!(l, Leadership::Following { .. })).await;
        let Leadership::Following { leader } = seen else {
            unreachable!()
        };
        assert_eq!((leader.member_id, leader.term), (1, 1));
        // b keeps following while a renews, for several leases.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(matches!(*b.borrow(), Leadership::Following { .. }));

        // a dies without releasing: b takes over after the lease, with term 2.
        task_a.abort();
        drop(stop_a);
        let taken = wait_for(&mut b, |l| matches!(l, Leadership::Leading { .. })).await;
        assert_eq!(taken, Leadership::Leading { term: 2 });
    }

    #[tokio::test]
    async fn a_released_lead_is_taken_at_once() {
        let engine = Arc::new(MemoryEngine::new());
        let (stop_a, stop_a_rx) = watch::channel(false);
        let (mut a, task_a) = start(engine.clone(), config(1, 60_000), stop_a_rx, no_handover());
        wait_for(&mut a, |l| matches!(l, Leadership::Leading { .. })).await;
        let (_stop_b, stop_b_rx) = watch::channel(false);
        let (mut b, _task_b) = start(engine.clone(), config(2, 60_000), stop_b_rx, no_handover());
        wait_for(&mut b, |l| matches!(l, Leadership::Following { .. })).await;
        stop_a.send_replace(true);
        task_a.await.unwrap();
        // With a one-minute lease, only the release lets b lead within the test's timeout.
        let taken = wait_for(&mut b, |l| matches!(l, Leadership::Leading { .. })).await;
        assert_eq!(taken, Leadership::Leading { term: 2 });
        // a left the cluster on purpose: only b is listed.
        let ids: Vec<u64> = members(&engine)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![2]);
    }

    #[tokio::test]
    async fn a_restarting_member_takes_its_own_record_at_once() {
        let engine = Arc::new(MemoryEngine::new());
        let (_stop, stop_rx) = watch::channel(false);
        let (mut a, task) = start(
            engine.clone(),
            config(1, 60_000),
            stop_rx.clone(),
            no_handover(),
        );
        wait_for(&mut a, |l| matches!(l, Leadership::Leading { .. })).await;
        task.abort();
        let (mut again, _task) = start(engine.clone(), config(1, 60_000), stop_rx, no_handover());
        let taken = wait_for(&mut again, |l| matches!(l, Leadership::Leading { .. })).await;
        assert_eq!(taken, Leadership::Leading { term: 2 });
    }

    #[tokio::test]
    async fn a_handed_over_lead_goes_to_the_successor_and_no_one_else() {
        let engine = Arc::new(MemoryEngine::new());
        let (_stop, stop_rx) = watch::channel(false);
        let (handover, handover_rx) = watch::channel(0);
        let (mut a, _a) = start(
            engine.clone(),
            config(1, 60_000),
            stop_rx.clone(),
            handover_rx,
        );
        wait_for(&mut a, |l| matches!(l, Leadership::Leading { .. })).await;
        let (mut b, _b) = start(
            engine.clone(),
            config(2, 60_000),
            stop_rx.clone(),
            no_handover(),
        );
        let (mut c, _c) = start(engine.clone(), config(3, 60_000), stop_rx, no_handover());
        wait_for(&mut b, |l| matches!(l, Leadership::Following { .. })).await;
        wait_for(&mut c, |l| matches!(l, Leadership::Following { .. })).await;

        // With a one-minute lease, only the handover lets c lead within the test's timeout.
        handover.send_replace(3);
        let taken = wait_for(&mut c, |l| matches!(l, Leadership::Leading { .. })).await;
        assert_eq!(taken, Leadership::Leading { term: 2 });
        let followed =
            |l: &Leadership| matches!(l, Leadership::Following { leader } if leader.member_id == 3);
        wait_for(&mut a, followed).await;
        wait_for(&mut b, followed).await;
    }
}
