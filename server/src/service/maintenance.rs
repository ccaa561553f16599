//! The Maintenance service: what kube-apiserver and etcdctl ask about the server.

use crate::brain::{Brain, MoveLeaderError};
use crate::header::Identity;
use crate::status::from_kv;
use backend::engine::Engine;
use backend::etcd::EtcdDbError;
use backend::kv::KvError;
use etcdpb::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest,
    StatusResponse, alarm_request::AlarmAction, maintenance_server::Maintenance,
};
use futures::Stream;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Bytes per Snapshot message (etcd's `snapshotSendBufferSize`).
const SNAPSHOT_CHUNK: u64 = 32 * 1024;

/// The etcd API version Engram reports. kube-apiserver enables consistent reads from its cache
/// and WatchList only for a server of 3.5.13 or later.
pub const ETCD_API_VERSION: &str = "3.5.13";

/// Maintenance answers for this member: its store, its alarms; Status names the leader.
pub struct MaintenanceService {
    brain: Arc<Brain>,
    auth: Arc<crate::auth_info::Authenticator>,
    identity: Identity,
    /// Where a snapshot is written before it is sent (an anonymous file, gone once sent).
    backup_dir: PathBuf,
}

impl MaintenanceService {
    pub fn new(
        brain: Arc<Brain>,
        auth: Arc<crate::auth_info::Authenticator>,
        identity: Identity,
        backup_dir: PathBuf,
    ) -> Self {
        MaintenanceService {
            brain,
            auth,
            identity,
            backup_dir,
        }
    }

    /// With authentication on, only root may defragment, hash, snapshot, move the leader or
    /// downgrade; etcd refuses others with its auth package's unmapped errors.
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let credentials = crate::auth_info::Credentials::of(req);
        let info = self.auth.info(&credentials, self.brain.store().auth());
        let info = info.map_err(crate::status::from_auth_unmapped)?;
        info.check_admin()
            .map_err(crate::status::from_auth_unmapped)
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
        let in_use = store.engine().logical_size() as i64;
        // No leader known (an election is under way): etcd reports leader 0.
        let (leader, term) = self.brain.leader().unwrap_or((0, self.identity.raft_term));
        let resp = StatusResponse {
            version: ETCD_API_VERSION.to_string(),
            db_size: size,
            db_size_in_use: in_use,
            // etcd lists the raised alarms here, as Go prints an AlarmMember.
            errors: store
                .no_space_alarms()
                .iter()
                .map(|member| match member {
                    0 => "alarm:NOSPACE ".to_string(),
                    member => format!("memberID:{member} alarm:NOSPACE "),
                })
                .collect(),
            leader,
            raft_index: revision as u64,
            raft_applied_index: revision as u64,
            raft_term: term,
            ..Default::default()
        };
        Ok(self.identity.respond(resp, revision))
    }

    /// The NOSPACE alarm, one per member as in etcd (see `backend::store::alarm`): GET lists
    /// them (all, or those of the type asked), ACTIVATE raises the named member's (0 included)
    /// and answers it, DEACTIVATE clears it and answers it if it was raised. Engram raises no
    /// other alarm: CORRUPT and NONE are answered with no alarm.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // etcd proposes alarm requests through raft, which authenticates the token a request
        // carries (none is fine: an alarm needs no permission).
        let credentials = crate::auth_info::Credentials::of(&req);
        self.auth.info_on(&credentials, &self.brain.store())?;
        let req = req.into_inner();
        let store = self.brain.store();
        let nospace = |member_id| AlarmMember {
            member_id,
            alarm: AlarmType::Nospace as i32,
        };
        let asks_nospace = req.alarm == AlarmType::Nospace as i32;
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) if asks_nospace || req.alarm == AlarmType::None as i32 => {
                store.no_space_alarms().into_iter().map(nospace).collect()
            }
            Ok(AlarmAction::Activate) if asks_nospace => {
                store.raise_no_space(req.member_id);
                vec![nospace(req.member_id)]
            }
            Ok(AlarmAction::Deactivate) if asks_nospace => {
                if store.clear_no_space(req.member_id) {
                    vec![nospace(req.member_id)]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        };
        let resp = AlarmResponse {
            header: None,
            alarms,
        };
        Ok(self.identity.respond(resp, store.revision()))
    }

    /// A documented no-op: the embedded engine reuses the pages compaction frees (redb's own
    /// compaction needs the database closed), so there is nothing to hand back on line.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin(&req)?;
        // etcd answers without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin(&req)?;
        let hash = self.brain.store().hash().await.map_err(from_kv)?;
        let resp = HashResponse { header: None, hash };
        Ok(self.identity.respond(resp, self.brain.store().revision()))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin(&req)?;
        let hashed = self
            .brain
            .store()
            .hash_kv(req.into_inner().revision)
            .await
            .map_err(from_kv)?;
        let resp = HashKvResponse {
            header: None,
            hash: hashed.hash,
            compact_revision: hashed.compacted,
        };
        // etcd's header carries the current revision, whatever revision was hashed.
        Ok(self.identity.respond(resp, hashed.current))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    /// A consistent copy of the whole store as an etcd 3.5 database, streamed as etcd streams
    /// its own: `etcdctl snapshot save` writes a file `etcdutl snapshot restore` turns into a
    /// data directory for a real etcd, and `engram restore` into one for Engram.
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.admin(&req)?;
        let store = self.brain.store();
        let (file, size) = store
            .backup(&self.backup_dir)
            .await
            .map_err(backup_failed)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || send_snapshot(file, size, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    /// etcd's MoveLeader: asked of the leader, to a registered member (itself included).
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.admin(&req)?;
        let target = req.into_inner().target_id;
        match self.brain.move_leader(target).await {
            // etcd answers without a header.
            Ok(()) => Ok(Response::new(MoveLeaderResponse { header: None })),
            Err(err) => {
                let code = match err {
                    MoveLeaderError::NotLeader | MoveLeaderError::BadTransferee => {
                        tonic::Code::FailedPrecondition
                    }
                    MoveLeaderError::TimedOut | MoveLeaderError::Engine(_) => {
                        tonic::Code::Unavailable
                    }
                };
                Err(Status::new(code, err.to_string()))
            }
        }
    }

    async fn downgrade(
        &self,
        req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        self.admin(&req)?;
        Err(not_yet("Downgrade"))
    }
}

fn not_yet(method: &str) -> Status {
    Status::unimplemented(format!(
        "engram: Maintenance.{method} is not implemented yet"
    ))
}

/// Sends the database in `file` as etcd does: messages of 32 KiB, each with the bytes still to
/// come after it (no header), then one last message holding the SHA-256 of everything sent,
/// which `etcdctl snapshot save` appends to the file and `etcdutl snapshot restore` checks.
fn send_snapshot(
    mut file: std::fs::File,
    size: u64,
    tx: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut sent = 0u64;
    while sent < size {
        let mut blob = vec![0u8; SNAPSHOT_CHUNK.min(size - sent) as usize];
        if let Err(err) = std::io::Read::read_exact(&mut file, &mut blob) {
            let _ = tx.blocking_send(Err(Status::internal(format!(
                "reading the snapshot: {err}"
            ))));
            return;
        }
        sha.update(&blob);
        sent += blob.len() as u64;
        let message = SnapshotResponse {
            header: None,
            remaining_bytes: size - sent,
            blob: blob.into(),
        };
        if tx.blocking_send(Ok(message)).is_err() {
            return;
        }
    }
    let checksum = SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: sha.finish().as_ref().to_vec().into(),
    };
    let _ = tx.blocking_send(Ok(checksum));
}

/// The status of a snapshot that could not be written.
fn backup_failed(err: EtcdDbError) -> Status {
    match err {
        EtcdDbError::Kv(err) => from_kv(err),
        EtcdDbError::Engine(err) => from_kv(KvError::Engine(err)),
        other => Status::internal(format!("writing the snapshot: {other}")),
    }
}
