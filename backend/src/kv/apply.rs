//! Applying Put, DeleteRange and Txn the way etcd's applier does, against a view that includes
//! the writes of earlier requests in the same group commit.

use super::error::{KvError, KvResult};
use super::range::{ReadRevisions, bounds, range};
use crate::engine::{Snapshot, for_each_page};
use crate::lease::{LeaseTable, MAX_TTL, MIN_TTL};
use crate::mvcc::keys;
use crate::mvcc::overlay::Overlay;
use crate::mvcc::{Version, View};
use etcdpb::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
};
use etcdpb::mvccpb::{Event, KeyValue, event::EventType};
use std::cmp::Ordering;
use std::future::Future;
use std::pin::Pin;

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// One request being applied: it reads at `begin` (the revision before it) and, if it writes,
/// writes at `begin + 1`.
pub struct Apply<'a, S> {
    pub snapshot: &'a S,
    pub overlay: &'a mut Overlay,
    pub begin: i64,
    pub compacted: i64,
    /// The newest revision in `snapshot` (everything above it is in `overlay`).
    pub published: i64,
    /// Leases committed before this batch (the overlay holds the batch's own changes).
    pub leases: &'a LeaseTable,
    /// Whether this request has written anything yet.
    pub changed: bool,
    /// The events of this request's revision, in op order.
    pub events: Vec<Event>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<'a, S: Snapshot> Apply<'a, S> {
    fn view(&self) -> View<'_, S> {
        View::with_overlay(self.snapshot, self.overlay, self.published)
    }

    /// etcd reads inside a write txn at `begin`, or `begin + 1` once the txn has written.
    fn read_revisions(&self) -> ReadRevisions {
        ReadRevisions {
            current: self.begin + self.changed as i64,
            compacted: self.compacted,
        }
    }

    pub fn revision(&self) -> i64 {
        self.begin + self.changed as i64
    }

    /// Whether lease `id` exists as of this point of the batch.
    pub fn lease_exists(&self, id: i64) -> bool {
        match self.overlay.leases.get(&id) {
            Some(granted) => granted.is_some(),
            None => self.leases.exists(id),
        }
    }

    /// LeaseGrant: records lease `id` (already chosen, non-zero) with etcd's TTL bounds.
    /// Returns the TTL granted.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> KvResult<i64> {
        if ttl > MAX_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if self.lease_exists(id) {
            return Err(KvError::LeaseExists);
        }
        let ttl = ttl.max(MIN_TTL);
        self.overlay.leases.insert(id, Some(ttl));
        Ok(ttl)
    }

    /// LeaseRevoke (and expiry): deletes every key attached to the lease in this request's
    /// one revision, in key order, then the lease.
    pub async fn lease_revoke(&mut self, id: i64) -> KvResult<()> {
        if !self.lease_exists(id) {
            return Err(KvError::LeaseNotFound);
        }
        let mut attached = std::collections::BTreeSet::new();
        for_each_page(self.snapshot, keys::lease_keys_of(id), 1024, |page| {
            attached.extend(page.iter().map(|(entry, _)| entry.slice(9..)));
            true
        })
        .await?;
        for ((lease, key), attach) in self.overlay.lease_keys.range((id, bytes::Bytes::new())..) {
            if *lease != id {
                break;
            }
            if *attach {
                attached.insert(key.clone());
            } else {
                attached.remove(key);
            }
        }
        for key in attached {
            let current = self.view().version_at(&key, self.revision()).await?;
            match current.and_then(Version::into_live) {
                Some(kv) if kv.lease == id => {
                    self.delete_range(&DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })
                    .await?;
                }
                _ => {
                    self.overlay.lease_keys.insert((id, key), false);
                }
            }
        }
        self.overlay.leases.insert(id, None);
        Ok(())
    }

    fn attach(&mut self, lease: i64, key: &bytes::Bytes, attach: bool) {
        if lease != 0 {
            self.overlay.lease_keys.insert((lease, key.clone()), attach);
        }
    }

    pub async fn range(&self, req: &RangeRequest) -> KvResult<RangeResponse> {
        range(&self.view(), req, self.read_revisions()).await
    }

    /// A top-level Put: etcd's lease and ignore_* checks, then the write.
    pub async fn put(&mut self, req: &PutRequest) -> KvResult<PutResponse> {
        if req.lease != 0 && !self.lease_exists(req.lease) {
            return Err(KvError::LeaseNotFound);
        }
        self.apply_put(req).await
    }

    async fn apply_put(&mut self, req: &PutRequest) -> KvResult<PutResponse> {
        let latest = self.view().version_at(&req.key, self.revision()).await?;
        let prev = latest.as_ref().and_then(Version::live).cloned();
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let rev = self.begin + 1;
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: match (&prev, req.ignore_value) {
                (Some(p), true) => p.value.clone(),
                _ => req.value.clone(),
            },
            lease: match (&prev, req.ignore_lease) {
                (Some(p), true) => p.lease,
                _ => req.lease,
            },
        };
        if let Some(p) = &prev
            && p.lease != kv.lease
        {
            self.attach(p.lease, &kv.key, false);
        }
        self.attach(kv.lease, &kv.key, true);
        self.record(latest, Version::Put(kv.clone()));
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(PutResponse {
            header: header(rev),
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    pub async fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> KvResult<DeleteRangeResponse> {
        let mut single = Vec::new();
        let bounds = bounds(&req.key, &req.range_end, &mut single);
        let doomed = self
            .view()
            .scan(bounds, self.revision(), None, false)
            .await?;
        let rev = self.begin + 1;
        for prev in &doomed {
            let latest = Some(Version::Put(prev.clone()));
            let tombstone = Version::Tombstone {
                key: prev.key.clone(),
                mod_revision: rev,
            };
            self.attach(prev.lease, &prev.key, false);
            self.record(latest, tombstone);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: prev.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: Some(prev.clone()),
            });
        }
        let deleted = doomed.len() as i64;
        Ok(DeleteRangeResponse {
            header: header(self.revision()),
            deleted,
            prev_kvs: if req.prev_kv { doomed } else { Vec::new() },
        })
    }

    /// A revision another etcd made, applied as it was made there (a store replicating the
    /// etcd it migrates from): each event as is, its create revision, version and lease
    /// included, at this request's revision, in the order given.
    pub async fn replicate(&mut self, events: &[Event]) -> KvResult<()> {
        let rev = self.begin + 1;
        for event in events {
            let Some(kv) = event.kv.clone() else {
                continue;
            };
            if kv.mod_revision != rev {
                return Err(KvError::ReplicationGap {
                    current: self.begin,
                    got: kv.mod_revision,
                });
            }
            let latest = self.view().version_at(&kv.key, self.revision()).await?;
            let prev = latest.as_ref().and_then(Version::live).cloned();
            if let Some(p) = &prev
                && (p.lease != kv.lease || event.r#type == EventType::Delete as i32)
            {
                self.attach(p.lease, &kv.key, false);
            }
            if event.r#type == EventType::Delete as i32 {
                let tombstone = Version::Tombstone {
                    key: kv.key.clone(),
                    mod_revision: rev,
                };
                self.record(latest, tombstone);
                self.events.push(Event {
                    r#type: EventType::Delete as i32,
                    kv: Some(KeyValue {
                        key: kv.key,
                        mod_revision: rev,
                        ..Default::default()
                    }),
                    prev_kv: prev,
                });
            } else {
                self.attach(kv.lease, &kv.key, true);
                self.record(latest, Version::Put(kv.clone()));
                self.events.push(Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: prev,
                });
            }
        }
        Ok(())
    }

    /// Adds `version` to the overlay; `latest` is the key's newest version before it.
    fn record(&mut self, latest: Option<Version>, version: Version) {
        let key = match &version {
            Version::Put(kv) => kv.key.clone(),
            Version::Tombstone { key, .. } => key.clone(),
        };
        // A key outside the overlay was read from the snapshot, where `latest` is its newest
        // version: the batch will require the engine's INDEX entry to still say so.
        let base_index = latest.map(|v| v.index_value());
        self.overlay.push(key, base_index, version);
        self.changed = true;
    }

    /// Txn: all compares (nested ones included) against the state before the txn, then etcd's
    /// checks along the chosen path, then the ops in order.
    pub async fn txn(&mut self, req: &TxnRequest) -> KvResult<TxnResponse> {
        let mut path = Vec::new();
        self.compare_path(req, &mut path).await?;
        self.check_path(req, &path, &mut 0).await?;
        let mut cursor = 0;
        let mut resp = self.apply_txn(req, &path, &mut cursor).await?;
        resp.header = header(self.revision());
        Ok(resp)
    }

    fn compare_path<'b>(
        &'b self,
        req: &'b TxnRequest,
        path: &'b mut Vec<bool>,
    ) -> BoxFuture<'b, KvResult<()>> {
        Box::pin(async move {
            let mut succeeded = true;
            for c in &req.compare {
                if !self.compare(c).await? {
                    succeeded = false;
                    break;
                }
            }
            path.push(succeeded);
            for op in branch(req, succeeded) {
                if let Some(Request::RequestTxn(inner)) = &op.request {
                    self.compare_path(inner, path).await?;
                }
            }
            Ok(())
        })
    }

    async fn compare(&self, c: &Compare) -> KvResult<bool> {
        let mut single = Vec::new();
        let bounds = bounds(&c.key, &c.range_end, &mut single);
        let kvs = self.view().scan(bounds, self.begin, None, false).await?;
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        if kvs.is_empty() {
            // A missing key has no value to compare: etcd fails every value compare on it.
            return Ok(
                target != CompareTarget::Value && compare_kv(c, target, &KeyValue::default())
            );
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
    }

    /// etcd's `checkRequests` for puts (ignore_*, leases) and ranges (revision bounds) on the
    /// chosen path, against the state before the txn.
    fn check_path<'b>(
        &'b self,
        req: &'b TxnRequest,
        path: &'b [bool],
        cursor: &'b mut usize,
    ) -> BoxFuture<'b, KvResult<()>> {
        Box::pin(async move {
            let succeeded = path.get(*cursor).copied().unwrap_or(false);
            *cursor += 1;
            for op in branch(req, succeeded) {
                match &op.request {
                    Some(Request::RequestPut(put)) => {
                        if put.ignore_value || put.ignore_lease {
                            let v = self.view().version_at(&put.key, self.begin).await?;
                            if v.and_then(Version::into_live).is_none() {
                                return Err(KvError::KeyNotFound);
                            }
                        }
                        if put.lease != 0 && !self.lease_exists(put.lease) {
                            return Err(KvError::LeaseNotFound);
                        }
                    }
                    Some(Request::RequestRange(r)) if r.revision != 0 => {
                        if r.revision > self.begin {
                            return Err(KvError::FutureRevision);
                        }
                        if r.revision < self.compacted {
                            return Err(KvError::Compacted);
                        }
                    }
                    Some(Request::RequestTxn(inner)) => {
                        self.check_path(inner, path, cursor).await?
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }

    fn apply_txn<'b>(
        &'b mut self,
        req: &'b TxnRequest,
        path: &'b [bool],
        cursor: &'b mut usize,
    ) -> BoxFuture<'b, KvResult<TxnResponse>> {
        Box::pin(async move {
            let succeeded = path.get(*cursor).copied().unwrap_or(false);
            *cursor += 1;
            let ops = branch(req, succeeded);
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                let response = match &op.request {
                    Some(Request::RequestRange(r)) => {
                        Some(Response::ResponseRange(self.range(r).await?))
                    }
                    Some(Request::RequestPut(p)) => {
                        Some(Response::ResponsePut(self.apply_put(p).await?))
                    }
                    Some(Request::RequestDeleteRange(d)) => {
                        Some(Response::ResponseDeleteRange(self.delete_range(d).await?))
                    }
                    Some(Request::RequestTxn(inner)) => {
                        // A nested txn's own header stays empty, as in etcd.
                        let mut nested = self.apply_txn(inner, path, cursor).await?;
                        nested.header = Some(ResponseHeader::default());
                        Some(Response::ResponseTxn(nested))
                    }
                    None => None,
                };
                responses.push(ResponseOp { response });
            }
            Ok(TxnResponse {
                header: None,
                succeeded,
                responses,
            })
        })
    }
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    let ordering = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value[..].cmp(&v[..]),
        (CompareTarget::Value, _) => kv.value[..].cmp(&[][..]),
        (CompareTarget::Create, u) => kv.create_revision.cmp(&match u {
            Some(TargetUnion::CreateRevision(r)) => *r,
            _ => 0,
        }),
        (CompareTarget::Mod, u) => kv.mod_revision.cmp(&match u {
            Some(TargetUnion::ModRevision(r)) => *r,
            _ => 0,
        }),
        (CompareTarget::Version, u) => kv.version.cmp(&match u {
            Some(TargetUnion::Version(r)) => *r,
            _ => 0,
        }),
        (CompareTarget::Lease, u) => kv.lease.cmp(&match u {
            Some(TargetUnion::Lease(r)) => *r,
            _ => 0,
        }),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

/// Used by the writer to turn a pending key's versions into engine entries.
pub(crate) fn revision_entry(version: &Version) -> (bytes::Bytes, bytes::Bytes) {
    let (key, rev) = match version {
        Version::Put(kv) => (&kv.key, kv.mod_revision),
        Version::Tombstone { key, mod_revision } => (key, *mod_revision),
    };
    (keys::revision_key(key, rev), version.encode())
}
