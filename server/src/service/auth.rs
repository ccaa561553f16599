//! The Auth service, answering as etcd 3.5 answers with authentication disabled.
//!
//! Engram has no users or roles yet: the status says disabled, the lists are empty, lookups
//! find nothing, enabling fails because no root user exists (etcd's own reason), and adding
//! users or roles is refused with a message that says so.

use crate::header::Identity;
use etcdpb::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_server::Auth,
};
use etcdpb::header::WithHeader;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthService {
    identity: Identity,
    revision: Arc<dyn Fn() -> i64 + Send + Sync>,
}

impl AuthService {
    pub fn new(identity: Identity, revision: Arc<dyn Fn() -> i64 + Send + Sync>) -> Self {
        AuthService { identity, revision }
    }

    fn respond<R: WithHeader>(&self, resp: R) -> Response<R> {
        self.identity.respond(resp, (self.revision)())
    }
}

fn user_not_found() -> Status {
    Status::failed_precondition("etcdserver: user name not found")
}

fn role_not_found() -> Status {
    Status::failed_precondition("etcdserver: role name not found")
}

fn not_supported() -> Status {
    Status::unimplemented(
        "engram: users and roles are not supported yet (authentication is disabled)",
    )
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        _: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Err(Status::failed_precondition(
            "etcdserver: root user does not exist",
        ))
    }

    async fn auth_disable(
        &self,
        _: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(self.respond(AuthDisableResponse { header: None }))
    }

    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(self.respond(AuthStatusResponse {
            header: None,
            enabled: false,
            auth_revision: 1,
        }))
    }

    async fn authenticate(
        &self,
        _: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Err(Status::failed_precondition(
            "etcdserver: authentication is not enabled",
        ))
    }

    async fn user_add(
        &self,
        _: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        Err(not_supported())
    }

    async fn user_get(
        &self,
        _: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        Err(user_not_found())
    }

    async fn user_list(
        &self,
        _: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        Ok(self.respond(AuthUserListResponse {
            header: None,
            users: Vec::new(),
        }))
    }

    async fn user_delete(
        &self,
        _: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        Err(user_not_found())
    }

    async fn user_change_password(
        &self,
        _: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Err(user_not_found())
    }

    async fn user_grant_role(
        &self,
        _: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        Err(user_not_found())
    }

    async fn user_revoke_role(
        &self,
        _: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        Err(user_not_found())
    }

    async fn role_add(
        &self,
        _: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        Err(not_supported())
    }

    async fn role_get(
        &self,
        _: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        Err(role_not_found())
    }

    async fn role_list(
        &self,
        _: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Ok(self.respond(AuthRoleListResponse {
            header: None,
            roles: Vec::new(),
        }))
    }

    async fn role_delete(
        &self,
        _: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        Err(role_not_found())
    }

    async fn role_grant_permission(
        &self,
        _: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        Err(role_not_found())
    }

    async fn role_revoke_permission(
        &self,
        _: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        Err(role_not_found())
    }
}
