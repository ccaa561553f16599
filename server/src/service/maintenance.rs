//! The Maintenance service: what kube-apiserver and etcdctl ask about the server.

use crate::header::Identity;
use backend::Store;
use backend::engine::Engine;
use etcdpb::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_server::Maintenance,
};
use tonic::{Request, Response, Status};

/// The etcd API version Engram reports. kube-apiserver enables consistent reads from its cache
/// and WatchList only for a server of 3.5.13 or later.
pub const ETCD_API_VERSION: &str = "3.5.13";

pub struct MaintenanceService<E> {
    store: Store<E>,
    identity: Identity,
}

impl<E: Engine> MaintenanceService<E> {
    pub fn new(store: Store<E>, identity: Identity) -> Self {
        MaintenanceService { store, identity }
    }
}

#[tonic::async_trait]
impl<E: Engine> Maintenance for MaintenanceService<E> {
    /// Engram has no raft log: raft_index and raft_applied_index report the current revision,
    /// which grows with every write as a raft index does.
    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let revision = self.store.revision();
        let size = self.store.engine().size_on_disk() as i64;
        let mut resp = StatusResponse {
            version: ETCD_API_VERSION.to_string(),
            db_size: size,
            db_size_in_use: size,
            leader: self.identity.member_id,
            raft_index: revision as u64,
            raft_applied_index: revision as u64,
            raft_term: self.identity.raft_term,
            ..Default::default()
        };
        self.identity.fill(&mut resp.header, revision);
        Ok(Response::new(resp))
    }

    /// No alarm is raised yet: the space alarm comes with the maintenance work.
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let mut resp = AlarmResponse::default();
        self.identity.fill(&mut resp.header, self.store.revision());
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("Defragment"))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Hash"))
    }

    async fn hash_kv(
        &self,
        _req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        Err(not_yet("HashKV"))
    }

    type SnapshotStream = futures::stream::Empty<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(not_yet("MoveLeader"))
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
