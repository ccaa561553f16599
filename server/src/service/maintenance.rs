//! The Maintenance service: what kube-apiserver and etcdctl ask about the server.

use crate::brain::Brain;
use crate::header::Identity;
use crate::status::from_kv;
use backend::engine::Engine;
use etcdpb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, alarm_request::AlarmAction, maintenance_server::Maintenance,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes per Snapshot message.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// The etcd API version Engram reports. kube-apiserver enables consistent reads from its cache
/// and WatchList only for a server of 3.5.13 or later.
pub const ETCD_API_VERSION: &str = "3.5.13";

/// Maintenance answers for this member: its store, its alarms; Status names the leader.
pub struct MaintenanceService {
    brain: Arc<Brain>,
    identity: Identity,
}

impl MaintenanceService {
    pub fn new(brain: Arc<Brain>, identity: Identity) -> Self {
        MaintenanceService { brain, identity }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Engram has no raft log: raft_index and raft_applied_index report the current revision,
    /// which grows with every write as a raft index does.
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let store = self.brain.store();
        let revision = store.revision();
        let size = store.engine().size_on_disk() as i64;
        // No leader known (an election is under way): etcd reports leader 0.
        let (leader, term) = self.brain.leader().unwrap_or((0, self.identity.raft_term));
        let resp = StatusResponse {
            version: ETCD_API_VERSION.to_string(),
            db_size: size,
            db_size_in_use: size,
            leader,
            raft_index: revision as u64,
            raft_applied_index: revision as u64,
            raft_term: term,
            ..Default::default()
        };
        Ok(self.identity.respond(resp, revision))
    }

    /// The NOSPACE alarm is the one alarm Engram raises (see `space.rs`); GET lists it,
    /// ACTIVATE raises it, DEACTIVATE clears it (writes are refused while it is raised).
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        let member = AlarmMember {
            member_id: self.identity.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        let concerns_us = (req.member_id == 0 || req.member_id == self.identity.member_id)
            && (req.alarm == AlarmType::None as i32 || req.alarm == AlarmType::Nospace as i32);
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                if concerns_us && self.brain.store().no_space() {
                    vec![member]
                } else {
                    Vec::new()
                }
            }
            Ok(AlarmAction::Activate) if req.alarm == AlarmType::Nospace as i32 => {
                self.brain.store().set_no_space(true);
                vec![member]
            }
            Ok(AlarmAction::Deactivate) if req.alarm == AlarmType::Nospace as i32 => {
                let was = self.brain.store().no_space();
                self.brain.store().set_no_space(false);
                if was { vec![member] } else { Vec::new() }
            }
            _ => Vec::new(),
        };
        let resp = AlarmResponse {
            header: None,
            alarms,
        };
        Ok(self.identity.respond(resp, self.brain.store().revision()))
    }

    /// A documented no-op: the embedded engine reuses the pages compaction frees (redb's own
    /// compaction needs the database closed), so there is nothing to hand back on line.
    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let resp = DefragmentResponse::default();
        Ok(self.identity.respond(resp, self.brain.store().revision()))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let hash = self.brain.store().hash().await.map_err(from_kv)?;
        let resp = HashResponse { header: None, hash };
        Ok(self.identity.respond(resp, self.brain.store().revision()))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let (hash, _revision, compact_revision) = self
            .brain
            .store()
            .hash_kv(req.into_inner().revision)
            .await
            .map_err(from_kv)?;
        let resp = HashKvResponse {
            header: None,
            hash,
            compact_revision,
        };
        Ok(self.identity.respond(resp, self.brain.store().revision()))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// A consistent copy of the whole store in Engram's snapshot format; `engram restore`
    /// turns it back into a data directory.
    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let store = self.brain.store();
        let chunks = store.backup(SNAPSHOT_CHUNK).await.map_err(from_kv)?;
        let estimate = store.engine().size_on_disk();
        let identity = self.identity;
        let revision = store.revision();
        let mut sent = 0u64;
        let out = ReceiverStream::new(chunks).map(move |chunk| {
            let blob = chunk.map_err(|e| Status::unavailable(e.to_string()))?;
            sent += blob.len() as u64;
            // The size is known only at the end: report an estimate that reaches 0 there.
            let last = blob.len() < SNAPSHOT_CHUNK;
            let mut resp = SnapshotResponse {
                header: None,
                remaining_bytes: if last {
                    0
                } else {
                    estimate.saturating_sub(sent).max(1)
                },
                blob,
            };
            identity.stamp(&mut resp, revision);
            Ok(resp)
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(Status::unimplemented(
            "engram: MoveLeader needs the multi-member brain cluster; a single member is its own leader",
        ))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!(
        "engram: Maintenance.{method} is not implemented yet"
    ))
}
