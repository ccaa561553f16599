//! Group `concurrency-api`: etcd's server-side recipes, the `v3lockpb.Lock` and
//! `v3electionpb.Election` services, as clients use them (`etcdctl lock` and `etcdctl elect`
//! call them; so do clients in languages without etcd's `concurrency` package). etcd runs
//! them as its `concurrency.Mutex` and `concurrency.Election` on keys under `<name>/`, one
//! per lease (`<name>/<lease in hex>`), ordered by create revision.
//!
//! Each case runs its steps one after another, waiting for every answer (a blocked call
//! until its key is in line), so that the revisions are those of etcd 3.5. Lease ids (random
//! in etcd) are written `<A>`, `<B>`... in the transcript.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use etcdpb::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcdpb::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, ResponseHeader,
};
use etcdpb::mvccpb::KeyValue;
use etcdpb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ResignRequest,
};
use etcdpb::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Status;

use super::hrev;
use crate::case;
use crate::case::{Case, Ctx, expect_eq, expect_err};
use crate::client::{b, prefix_end, range};
use crate::normalize;

const G: &str = "concurrency-api";
/// Bound on anything a case waits for (reaching it fails the case; nothing is timed).
const WAIT: Duration = Duration::from_secs(10);
/// How long a call that must block is given to return (wrongly) before it counts as waiting.
const PENDING: Duration = Duration::from_millis(300);
/// A lease id no server granted.
const NO_SUCH_LEASE: i64 = 0x0bad_1ea5_0000_0001;
/// What etcd 3.5 answers when a recipe's write names a lease that does not exist: its
/// client's error, which gRPC sends as Unknown.
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

pub fn cases() -> Vec<Case> {
    vec![
        case!(G, lock_is_exclusive),
        case!(G, lock_released_by_lease_revoke),
        case!(G, lock_key_is_visible_to_kv),
        case!(G, lock_waits_for_a_client_side_holder),
        case!(G, election_campaign_leader_proclaim),
        case!(G, election_observe),
        case!(G, errors),
    ]
}

/// A case's view of the two services: its leases, named `A`, `B`... in the transcript, and
/// calls that write what they got to it.
#[derive(Clone)]
struct Api {
    c: Ctx,
    leases: Vec<(i64, &'static str)>,
}

impl Api {
    /// Grants one lease (60 s) per label.
    async fn new(c: &Ctx, labels: &[&'static str]) -> Result<Api> {
        let mut leases = Vec::new();
        for l in labels {
            let g = c
                .conn
                .lease
                .clone()
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .context("LeaseGrant")?
                .into_inner();
            ensure!(g.error.is_empty(), "LeaseGrant: {}", g.error);
            leases.push((g.id, *l));
        }
        Ok(Api {
            c: c.clone(),
            leases,
        })
    }

    fn lease(&self, label: &str) -> i64 {
        self.leases
            .iter()
            .find(|(_, l)| *l == label)
            .map_or(0, |(id, _)| *id)
    }

    /// Revokes the lease `label` (deleting its keys).
    async fn revoke(&self, what: &str, label: &str) -> Result<()> {
        let r = self
            .c
            .conn
            .lease
            .clone()
            .lease_revoke(LeaseRevokeRequest {
                id: self.lease(label),
            })
            .await
            .map(|r| r.into_inner());
        self.rec(what, &r, |v| self.rev(&v.header));
        r?;
        Ok(())
    }

    /// Revokes every lease of the case (those already revoked answer NotFound).
    async fn close(&self) {
        for (id, _) in &self.leases {
            let req = LeaseRevokeRequest { id: *id };
            let _ = self.c.conn.lease.clone().lease_revoke(req).await;
        }
    }

    fn label(&self, id: i64) -> String {
        match self.leases.iter().find(|(i, _)| *i == id) {
            Some((_, l)) => format!("<{l}>"),
            None if id == 0 => "0".into(),
            None => format!("{id:x}"),
        }
    }

    /// `key` without the case's prefix, with a lease id as its last part named.
    fn key(&self, key: &[u8]) -> String {
        let k = self.c.n.key(key);
        let named = k.rsplit_once('/').and_then(|(head, tail)| {
            let (_, l) = self.leases.iter().find(|(i, _)| format!("{i:x}") == tail)?;
            Some(format!("{head}/<{l}>"))
        });
        named.unwrap_or(k)
    }

    fn rev(&self, h: &Option<ResponseHeader>) -> String {
        match h {
            Some(h) => format!("rev={}", self.c.n.rev(h.revision)),
            None => "no-header".into(),
        }
    }

    fn kv(&self, kv: &KeyValue) -> String {
        format!(
            "{}={} c={} m={} v={} lease={}",
            self.key(&kv.key),
            String::from_utf8_lossy(&kv.value).escape_debug(),
            self.c.n.rev(kv.create_revision),
            self.c.n.rev(kv.mod_revision),
            kv.version,
            self.label(kv.lease)
        )
    }

    fn leader_key(&self, l: &Option<LeaderKey>) -> String {
        match l {
            Some(l) => format!(
                "name={} key={} rev={} lease={}",
                self.c.n.key(&l.name),
                self.key(&l.key),
                self.c.n.rev(l.rev),
                self.label(l.lease)
            ),
            None => "none".into(),
        }
    }

    fn rec<T>(&self, what: &str, r: &Result<T, Status>, f: impl Fn(&T) -> String) {
        match r {
            Ok(v) => self.c.note(format!("{what}: {}", f(v))),
            Err(s) => self.c.note(format!("{what}: ERR {}", normalize::status(s))),
        }
    }

    fn show_lock(&self, v: &LockResponse) -> String {
        format!("{} key={}", self.rev(&v.header), self.key(&v.key))
    }

    fn show_campaign(&self, v: &CampaignResponse) -> String {
        format!(
            "{} leader=[{}]",
            self.rev(&v.header),
            self.leader_key(&v.leader)
        )
    }

    fn show_leader(&self, v: &LeaderResponse) -> String {
        let kv = v.kv.as_ref().map(|kv| self.kv(kv)).unwrap_or_default();
        format!("{} kv=[{kv}]", self.rev(&v.header))
    }

    async fn lock(&self, what: &str, name: &Bytes, lease: i64) -> Result<LockResponse, Status> {
        let req = LockRequest {
            name: name.clone(),
            lease,
        };
        let r = self.c.conn.lock.clone().lock(req).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.show_lock(v));
        r
    }

    /// A Lock call left running (it is written to the transcript when it returns).
    fn spawn_lock(&self, name: &Bytes, lease: i64) -> Pending<LockResponse> {
        let mut client = self.c.conn.lock.clone();
        let req = LockRequest {
            name: name.clone(),
            lease,
        };
        Pending(tokio::spawn(async move {
            client.lock(req).await.map(|r| r.into_inner())
        }))
    }

    async fn unlock(&self, what: &str, key: &Bytes) -> Result<(), Status> {
        let req = UnlockRequest { key: key.clone() };
        let r = self.c.conn.lock.clone().unlock(req).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.rev(&v.header));
        r.map(|_| ())
    }

    async fn campaign(
        &self,
        what: &str,
        name: &Bytes,
        lease: i64,
        value: &str,
    ) -> Result<CampaignResponse, Status> {
        let r = self
            .c
            .conn
            .election
            .clone()
            .campaign(campaign_req(name, lease, value))
            .await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.show_campaign(v));
        r
    }

    /// A Campaign call left running.
    fn spawn_campaign(&self, name: &Bytes, lease: i64, value: &str) -> Pending<CampaignResponse> {
        let mut client = self.c.conn.election.clone();
        let req = campaign_req(name, lease, value);
        Pending(tokio::spawn(async move {
            client.campaign(req).await.map(|r| r.into_inner())
        }))
    }

    async fn proclaim(
        &self,
        what: &str,
        leader: Option<&LeaderKey>,
        value: &str,
    ) -> Result<(), Status> {
        let req = ProclaimRequest {
            leader: leader.cloned(),
            value: b(value),
        };
        let r = self.c.conn.election.clone().proclaim(req).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.rev(&v.header));
        r.map(|_| ())
    }

    async fn resign(&self, what: &str, leader: Option<&LeaderKey>) -> Result<i64, Status> {
        let req = ResignRequest {
            leader: leader.cloned(),
        };
        let r = self.c.conn.election.clone().resign(req).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.rev(&v.header));
        r.map(|v| hrev(&v.header))
    }

    async fn leader(&self, what: &str, name: &Bytes) -> Result<LeaderResponse, Status> {
        let req = LeaderRequest { name: name.clone() };
        let r = self.c.conn.election.clone().leader(req).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.show_leader(v));
        r
    }

    /// Every key under `<name>/`, oldest first (the holder or leader first).
    async fn line(&self, what: &str, name: &Bytes) -> Result<Vec<KeyValue>> {
        let p = under(name);
        let req = RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            ..range(&p, &prefix_end(&p))
        };
        let r = self
            .c
            .conn
            .kv
            .clone()
            .range(req)
            .await
            .map(|r| r.into_inner());
        self.rec(what, &r, |v| {
            let kvs: Vec<String> = v.kvs.iter().map(|kv| self.kv(kv)).collect();
            format!("{} kvs=[{}]", self.rev(&v.header), kvs.join(", "))
        });
        Ok(r?.kvs)
    }

    /// Waits until `n` keys are under `<name>/` (a blocked call's key is in line).
    async fn wait_in_line(&self, name: &Bytes, n: i64) -> Result<()> {
        let p = under(name);
        let req = RangeRequest {
            count_only: true,
            ..range(&p, &prefix_end(&p))
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let count = self.c.conn.kv.clone().range(req.clone()).await?;
            let count = count.into_inner().count;
            if count == n {
                return Ok(());
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "{count} keys under the name, not {n}, after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens an Observe stream on `name` (its first message may only come later: the call
    /// runs in a task, as gRPC servers send the response headers with the first message).
    fn observe(&self, name: &Bytes) -> Observer {
        let mut client = self.c.conn.election.clone();
        let req = LeaderRequest { name: name.clone() };
        let (tx, rx) = mpsc::channel(16);
        let forward = async move {
            let mut stream = match client.observe(req).await {
                Ok(s) => s.into_inner(),
                Err(s) => {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
            };
            loop {
                let m = stream.message().await;
                let end = !matches!(m, Ok(Some(_)));
                if let Some(m) = m.transpose()
                    && tx.send(m).await.is_err()
                {
                    return;
                }
                if end {
                    return;
                }
            }
        };
        let task = tokio::spawn(async move {
            forward.await;
            Ok(())
        });
        Observer {
            rx,
            _task: Pending(task),
        }
    }
}

fn campaign_req(name: &Bytes, lease: i64, value: &str) -> CampaignRequest {
    CampaignRequest {
        name: name.clone(),
        lease,
        value: b(value),
    }
}

/// `<name>/`: where the participants of `name` are.
fn under(name: &Bytes) -> Bytes {
    let mut p = name.to_vec();
    p.push(b'/');
    Bytes::from(p)
}

/// `<name>/<lease in hex>`: the key of a participant with this lease.
fn participant(name: &Bytes, lease: i64) -> Bytes {
    b(format!("{}/{lease:x}", String::from_utf8_lossy(name)))
}

/// A call running in a task; dropped unfinished, it is canceled.
struct Pending<T>(JoinHandle<Result<T, Status>>);

impl<T: std::fmt::Debug> Pending<T> {
    /// Fails if the call returns within [`PENDING`] (`what` it should be waiting for).
    async fn still_waiting(&mut self, what: &str) -> Result<()> {
        tokio::time::sleep(PENDING).await;
        if self.0.is_finished() {
            let r = (&mut self.0).await?;
            bail!("returned while {what}: {r:?}");
        }
        Ok(())
    }

    /// The call's answer, once it returns.
    async fn answer(&mut self) -> Result<Result<T, Status>> {
        let r = tokio::time::timeout(WAIT, &mut self.0).await;
        Ok(r.with_context(|| format!("still waiting after {WAIT:?}"))??)
    }
}

impl<T> Drop for Pending<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An Observe stream's messages.
struct Observer {
    rx: mpsc::Receiver<Result<LeaderResponse, Status>>,
    _task: Pending<()>,
}

impl Observer {
    async fn next(&mut self, api: &Api, what: &str) -> Result<KeyValue> {
        let m = tokio::time::timeout(WAIT, self.rx.recv()).await;
        let m = m.with_context(|| format!("{what}: no Observe message within {WAIT:?}"))?;
        let m = m.with_context(|| format!("{what}: the Observe stream ended"))?;
        api.rec(what, &m, |v| api.show_leader(v));
        m?.kv
            .with_context(|| format!("{what}: Observe message without kv"))
    }

    async fn expect_silence(&mut self, what: &str) -> Result<()> {
        match tokio::time::timeout(PENDING, self.rx.recv()).await {
            Err(_) => Ok(()),
            Ok(m) => bail!("{what}: expected no Observe message, got {m:?}"),
        }
    }
}

/// Expects `kv` to be a participant's key: (key, value, create, mod, version, lease).
/// Leader's answer for election `name`, whose key-value must be `want` (as [`expect_kv`]).
async fn expect_leader(
    api: &Api,
    name: &Bytes,
    want: (&Bytes, &str, i64, i64, i64, i64),
) -> Result<LeaderResponse> {
    let l = api.leader("leader", name).await?;
    let kv = l.kv.as_ref().context("Leader answered no kv")?;
    expect_kv(api, "leader", kv, want)?;
    Ok(l)
}

fn expect_kv(
    api: &Api,
    what: &str,
    kv: &KeyValue,
    want: (&Bytes, &str, i64, i64, i64, i64),
) -> Result<()> {
    let got = (
        api.key(&kv.key),
        String::from_utf8_lossy(&kv.value).into_owned(),
        kv.create_revision,
        kv.mod_revision,
        kv.version,
        kv.lease,
    );
    let (key, value, create, modr, version, lease) = want;
    let want = (
        api.key(key),
        value.to_string(),
        create,
        modr,
        version,
        lease,
    );
    expect_eq(what, got, want)
}

/// Runs `body` with leases named `labels`, then revokes them whatever it answered.
async fn with_leases<F, Fut>(c: &Ctx, labels: &[&'static str], body: F) -> Result<()>
where
    F: FnOnce(Api) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let api = Api::new(c, labels).await?;
    let r = body(api.clone()).await;
    api.close().await;
    r
}

/// Lock is a mutex: a second Lock on the name (another lease) does not return while the
/// first holds it, and returns once the holder unlocks, with its own key `<name>/<lease>`,
/// created after the holder's.
async fn lock_is_exclusive(c: Ctx) -> Result<()> {
    with_leases(&c, &["A", "B"], |api| async move {
        let c = api.c.clone();
        let name = c.key("lock");
        let (a, b) = (api.lease("A"), api.lease("B"));
        let base = c.n.base;
        let first = api.lock("lock with A", &name, a).await?;
        expect_eq("A's key", &first.key, &participant(&name, a))?;
        expect_eq("A's Lock revision", hrev(&first.header), base + 1)?;
        let mut second = api.spawn_lock(&name, b);
        api.wait_in_line(&name, 2).await?;
        second.still_waiting("A holds the lock").await?;
        let line = api.line("in line", &name).await?;
        expect_eq("keys in line", line.len(), 2)?;
        let (ka, kb) = (&line[0], &line[1]);
        expect_kv(
            &api,
            "A's key",
            ka,
            (&first.key, "", base + 1, base + 1, 1, a),
        )?;
        let waiter = participant(&name, b);
        expect_kv(&api, "B's key", kb, (&waiter, "", base + 2, base + 2, 1, b))?;
        // Unlocking what nobody holds changes nothing.
        api.unlock("unlock a key not in line", &c.key("lock/none"))
            .await?;
        second.still_waiting("A holds the lock").await?;
        api.unlock("unlock A", &first.key).await?;
        let got = second.answer().await?;
        api.rec("lock with B returns", &got, |v| api.show_lock(v));
        let got = got?;
        expect_eq("B's key", &got.key, &waiter)?;
        // etcd's Mutex answers the header of its read of its own key after the wait.
        expect_eq("B's Lock revision", hrev(&got.header), base + 3)?;
        let line = api.line("after unlock", &name).await?;
        ensure!(
            line.len() == 1 && line[0].key == waiter,
            "B alone holds the lock"
        );
        ensure!(
            line[0].create_revision > ka.create_revision,
            "B's key was created after A's"
        );
        api.unlock("unlock B", &got.key).await?;
        Ok(())
    })
    .await
}

/// A holder's lease revoked, its key goes, and the waiter has the lock.
async fn lock_released_by_lease_revoke(c: Ctx) -> Result<()> {
    with_leases(&c, &["A", "B"], |api| async move {
        let c = api.c.clone();
        let name = c.key("lock");
        let (a, b) = (api.lease("A"), api.lease("B"));
        let base = c.n.base;
        let first = api.lock("lock with A", &name, a).await?;
        let mut second = api.spawn_lock(&name, b);
        api.wait_in_line(&name, 2).await?;
        second.still_waiting("A holds the lock").await?;
        api.revoke("revoke A", "A").await?;
        let got = second.answer().await?;
        api.rec("lock with B returns", &got, |v| api.show_lock(v));
        let got = got?;
        expect_eq("B's key", &got.key, &participant(&name, b))?;
        expect_eq("B's Lock revision", hrev(&got.header), base + 3)?;
        let line = api.line("after revoke", &name).await?;
        expect_eq("keys in line", line.len(), 1)?;
        expect_kv(
            &api,
            "B's key",
            &line[0],
            (&got.key, "", base + 2, base + 2, 1, b),
        )?;
        ensure!(first.key != got.key, "A and B got the same key");
        api.unlock("unlock B", &got.key).await?;
        Ok(())
    })
    .await
}

/// The lock is a key under `<name>/` that KV readers see: empty value, the holder's
/// lease. Locking again with the same lease gets the same key without a write; Unlock
/// deletes it (and a second Unlock writes nothing).
async fn lock_key_is_visible_to_kv(c: Ctx) -> Result<()> {
    with_leases(&c, &["A"], |api| async move {
        let c = api.c.clone();
        let name = c.key("lock");
        let a = api.lease("A");
        let base = c.n.base;
        let got = api.lock("lock with A", &name, a).await?;
        let line = api.line("get prefix", &name).await?;
        expect_eq("keys under the name", line.len(), 1)?;
        expect_kv(
            &api,
            "the lock's key",
            &line[0],
            (&got.key, "", base + 1, base + 1, 1, a),
        )?;
        let again = api.lock("lock with A again", &name, a).await?;
        expect_eq("the same key", &again.key, &got.key)?;
        expect_eq("no write", hrev(&again.header), base + 1)?;
        api.unlock("unlock", &got.key).await?;
        let line = api.line("get prefix after unlock", &name).await?;
        expect_eq("keys under the name", line.len(), 0)?;
        api.unlock("unlock again", &got.key).await?;
        let line = api.line("get prefix", &name).await?;
        ensure!(line.is_empty(), "the lock's key is gone");
        Ok(())
    })
    .await
}

/// A key put under `<name>/` by a client (as etcd's client-side `concurrency.Mutex` puts
/// it) holds the lock: Lock waits until that key is deleted.
async fn lock_waits_for_a_client_side_holder(c: Ctx) -> Result<()> {
    with_leases(&c, &["A", "C"], |api| async move {
        let c = api.c.clone();
        let name = c.key("lock");
        let (a, cl) = (api.lease("A"), api.lease("C"));
        let base = c.n.base;
        let held = participant(&name, cl);
        let put = PutRequest {
            key: held.clone(),
            lease: cl,
            ..Default::default()
        };
        let p = c.conn.kv.clone().put(put).await?.into_inner();
        c.note(format!("client puts <name>/<C>: {}", api.rev(&p.header)));
        let mut lock = api.spawn_lock(&name, a);
        api.wait_in_line(&name, 2).await?;
        lock.still_waiting("the client's key holds the lock")
            .await?;
        let d = c
            .conn
            .kv
            .clone()
            .delete_range(crate::client::del(&held))
            .await?;
        c.note(format!(
            "client deletes its key: {}",
            api.rev(&d.into_inner().header)
        ));
        let got = lock.answer().await?;
        api.rec("lock with A returns", &got, |v| api.show_lock(v));
        let got = got?;
        expect_eq("A's key", &got.key, &participant(&name, a))?;
        expect_eq("A's Lock revision", hrev(&got.header), base + 3)?;
        api.unlock("unlock A", &got.key).await?;
        Ok(())
    })
    .await
}

/// Campaign wins an empty election at once; Leader answers the leader's key and value;
/// Proclaim changes the value (and Campaign again with the same lease proclaims its new
/// value); a second candidate waits until the leader resigns, then leads.
async fn election_campaign_leader_proclaim(c: Ctx) -> Result<()> {
    with_leases(&c, &["A", "B"], |api| async move {
        let c = api.c.clone();
        let name = c.key("election");
        let (a, b) = (api.lease("A"), api.lease("B"));
        let base = c.n.base;
        let won = api.campaign("campaign A", &name, a, "a1").await?;
        let la = won.leader.clone().context("Campaign answered no leader")?;
        let want = LeaderKey {
            name: name.clone(),
            key: participant(&name, a),
            rev: base + 1,
            lease: a,
        };
        expect_eq("A's leader key", &la, &want)?;
        expect_eq("A's Campaign revision", hrev(&won.header), base + 1)?;
        let l = expect_leader(&api, &name, (&la.key, "a1", base + 1, base + 1, 1, a)).await?;
        expect_eq("Leader revision", hrev(&l.header), base + 1)?;
        api.proclaim("proclaim a2", Some(&la), "a2").await?;
        let l = expect_leader(&api, &name, (&la.key, "a2", base + 1, base + 2, 2, a)).await?;
        expect_eq("Leader revision", hrev(&l.header), base + 2)?;
        // Campaigning again with the leader's lease: the same leader, the new value.
        let again = api.campaign("campaign A again", &name, a, "a3").await?;
        expect_eq("A's leader key", again.leader.as_ref(), Some(&la))?;
        // etcd's Campaign answers the header of its (failed) put, before the proclaim.
        expect_eq(
            "A's second Campaign revision",
            hrev(&again.header),
            base + 2,
        )?;
        let l = expect_leader(&api, &name, (&la.key, "a3", base + 1, base + 3, 3, a)).await?;
        expect_eq("Leader revision", hrev(&l.header), base + 3)?;

        let mut second = api.spawn_campaign(&name, b, "b1");
        api.wait_in_line(&name, 2).await?;
        second.still_waiting("A leads").await?;
        let l = api.leader("leader while B waits", &name).await?;
        let value =
            l.kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        expect_eq("leader's value", value.as_deref(), Some("a3"))?;
        let r = api.resign("resign A", Some(&la)).await?;
        expect_eq("Resign revision", r, base + 5)?;
        let won = second.answer().await?;
        api.rec("campaign B returns", &won, |v| api.show_campaign(v));
        let won = won?;
        let lb = won.leader.clone().context("Campaign answered no leader")?;
        let want = LeaderKey {
            name: name.clone(),
            key: participant(&name, b),
            rev: base + 4,
            lease: b,
        };
        expect_eq("B's leader key", &lb, &want)?;
        expect_eq("B's Campaign revision", hrev(&won.header), base + 4)?;
        let l = expect_leader(&api, &name, (&lb.key, "b1", base + 4, base + 4, 1, b)).await?;
        expect_eq("Leader revision", hrev(&l.header), base + 5)?;
        api.resign("resign B", Some(&lb)).await?;
        api.line("get prefix", &name).await?;
        Ok(())
    })
    .await
}

/// Observe streams the leader (waiting for one on an empty election), then each value it
/// proclaims, in order, then the next leader once it resigns; an observer opened later
/// starts with the current leader.
async fn election_observe(c: Ctx) -> Result<()> {
    with_leases(&c, &["A", "B"], |api| async move {
        let c = api.c.clone();
        let name = c.key("election");
        let (a, b) = (api.lease("A"), api.lease("B"));
        let base = c.n.base;
        let mut obs = api.observe(&name);
        obs.expect_silence("no leader yet").await?;
        let won = api.campaign("campaign A", &name, a, "v1").await?;
        let la = won.leader.context("Campaign answered no leader")?;
        let kv = obs.next(&api, "observe").await?;
        expect_kv(
            &api,
            "observed",
            &kv,
            (&la.key, "v1", base + 1, base + 1, 1, a),
        )?;
        for (i, v) in ["v2", "v3"].into_iter().enumerate() {
            let i = i as i64;
            api.proclaim(&format!("proclaim {v}"), Some(&la), v).await?;
            let kv = obs.next(&api, "observe").await?;
            let want = (&la.key, v, base + 1, base + 2 + i, 2 + i, a);
            expect_kv(&api, "observed", &kv, want)?;
        }
        let mut second = api.spawn_campaign(&name, b, "w1");
        api.wait_in_line(&name, 2).await?;
        second.still_waiting("A leads").await?;
        obs.expect_silence("B is not the leader").await?;
        api.resign("resign A", Some(&la)).await?;
        let won = second.answer().await?;
        api.rec("campaign B returns", &won, |v| api.show_campaign(v));
        let lb = won?.leader.context("Campaign answered no leader")?;
        let kv = obs.next(&api, "observe").await?;
        expect_kv(
            &api,
            "observed",
            &kv,
            (&lb.key, "w1", base + 4, base + 4, 1, b),
        )?;
        api.proclaim("proclaim w2", Some(&lb), "w2").await?;
        let kv = obs.next(&api, "observe").await?;
        expect_kv(
            &api,
            "observed",
            &kv,
            (&lb.key, "w2", base + 4, base + 6, 2, b),
        )?;
        let mut late = api.observe(&name);
        let kv = late.next(&api, "observe from now").await?;
        expect_kv(
            &api,
            "observed",
            &kv,
            (&lb.key, "w2", base + 4, base + 6, 2, b),
        )?;
        api.resign("resign B", Some(&lb)).await?;
        Ok(())
    })
    .await
}

/// etcd's answers to the calls that fail (the services' own errors, and their client's,
/// are plain errors that gRPC sends as Unknown), and to the ones that do nothing.
async fn errors(c: Ctx) -> Result<()> {
    with_leases(&c, &["A"], |api| async move {
        let c = api.c.clone();
        let name = c.key("election");
        let lock = c.key("lock");
        let a = api.lease("A");
        let base = c.n.base;
        let r = api
            .lock("lock with no such lease", &lock, NO_SUCH_LEASE)
            .await;
        expect_err("Lock with no such lease", &r, "Unknown", LEASE_NOT_FOUND)?;
        let r = api
            .campaign("campaign with no such lease", &name, NO_SUCH_LEASE, "x")
            .await;
        expect_err(
            "Campaign with no such lease",
            &r,
            "Unknown",
            LEASE_NOT_FOUND,
        )?;
        let r = api.leader("leader of an empty election", &name).await;
        expect_err(
            "Leader of an empty election",
            &r,
            "Unknown",
            "election: no leader",
        )?;
        let not_leader = LeaderKey {
            name: name.clone(),
            key: participant(&name, a),
            rev: base + 1,
            lease: a,
        };
        let r = api
            .proclaim("proclaim, not the leader", Some(&not_leader), "x")
            .await;
        expect_err(
            "Proclaim by no leader",
            &r,
            "Unknown",
            "election: not leader",
        )?;
        let r = api
            .resign("resign, not the leader", Some(&not_leader))
            .await;
        expect_eq("Resign by no leader (no write)", r?, base)?;
        let won = api.campaign("campaign A", &name, a, "v").await?;
        let la = won.leader.context("Campaign answered no leader")?;
        let stale = LeaderKey {
            rev: la.rev - 1,
            ..la.clone()
        };
        let r = api
            .proclaim("proclaim, wrong revision", Some(&stale), "x")
            .await;
        expect_err(
            "Proclaim by a wrong revision",
            &r,
            "Unknown",
            "election: not leader",
        )?;
        let r = api.resign("resign, wrong revision", Some(&stale)).await;
        expect_eq("Resign by a wrong revision (no write)", r?, base + 1)?;
        let r = api.proclaim("proclaim without leader", None, "x").await;
        let missing = r#""leader" field must be provided"#;
        expect_err("Proclaim without leader", &r, "Unknown", missing)?;
        let r = api.resign("resign without leader", None).await;
        expect_err("Resign without leader", &r, "Unknown", missing)?;
        api.resign("resign A", Some(&la)).await?;
        let r = api
            .proclaim("proclaim after resigning", Some(&la), "x")
            .await;
        expect_err(
            "Proclaim after resigning",
            &r,
            "Unknown",
            "election: not leader",
        )?;
        let r = api.leader("leader after resigning", &name).await;
        expect_err(
            "Leader after resigning",
            &r,
            "Unknown",
            "election: no leader",
        )?;
        let r = api
            .unlock("unlock a key not held", &participant(&lock, a))
            .await;
        r?;
        Ok(())
    })
    .await
}
