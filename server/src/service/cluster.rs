//! The Cluster service: Engram's members as etcd clients expect to list them.

use crate::auth_info::{Authenticator, Credentials};
use crate::brain::{Brain, election};
use crate::header::Identity;
use crate::status::from_auth;

use etcdpb::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// MemberList lists the members registered in the shared engine (see `brain::election`).
pub struct ClusterService {
    identity: Identity,
    brain: Arc<Brain>,
    auth: Arc<Authenticator>,
}

impl ClusterService {
    pub fn new(identity: Identity, brain: Arc<Brain>, auth: Arc<Authenticator>) -> Self {
        ClusterService {
            identity,
            brain,
            auth,
        }
    }

    /// etcd checks a membership change's caller before anything else
    /// (`checkMembershipOperationPermission`): with authentication enabled only root may
    /// change members. Others hear etcd's refusal; root hears why Engram changes none.
    fn membership_change<T>(&self, req: &Request<T>) -> Status {
        let info = self
            .auth
            .info(&Credentials::of(req), self.brain.store().auth());
        match info.and_then(|info| info.check_admin()) {
            Ok(()) => membership_is_not_raft(),
            Err(err) => from_auth(err),
        }
    }
}

/// Engram members are not raft peers: they join through the storage engine, so etcd's
/// membership changes have nothing to change.
fn membership_is_not_raft() -> Status {
    Status::unimplemented(
        "engram: members are stateless and join through the storage engine; \
         etcd membership changes do not apply",
    )
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(self.membership_change(&req))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(self.membership_change(&req))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(self.membership_change(&req))
    }

    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let members = election::members(self.brain.engine())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut resp = MemberListResponse {
            members: members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    name: m.name,
                    client_ur_ls: m.client_urls,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // etcd answers MemberList from its membership store, not the KV store: its header
        // carries no revision.
        resp.header = Some(self.identity.header());
        Ok(Response::new(resp))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(self.membership_change(&req))
    }
}
