//! The Auth service: users, roles, permissions, enabling authentication, and `Authenticate`.
//!
//! Every call runs on the leader, as etcd runs them through raft: a follower forwards it with
//! the caller's credentials and re-reads the auth state the leader changed. On the leader each
//! call is checked (only root may manage users and roles once authentication is on; a user may
//! read itself and its own roles), passwords are hashed here (never in the writer, never
//! logged), and the change goes through the store's writer, in order with every write.

use crate::auth_info::{AuthInfo, Authenticator, Credentials};
use crate::brain::{Brain, Route, Store};
use crate::header::Identity;
use crate::status::{forwarded, from_auth, from_kv};
use backend::auth::{AuthChange, AuthError, password};
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
    brain: Arc<Brain>,
    auth: Arc<Authenticator>,
    identity: Identity,
}

/// Runs a call on the leader: `$method` of the leader's Auth service from a follower, or
/// `$local` (given the store, the caller and the request) here.
macro_rules! on_leader {
    ($self:ident, $req:ident, $method:ident, |$store:ident, $info:ident, $msg:ident| $local:expr) => {{
        let credentials = Credentials::of(&$req);
        let resp = match $self.brain.route().await.map_err(from_kv)? {
            Route::Forward(leader) => {
                let resp = leader
                    .auth()
                    .$method($self.auth.attach(&credentials, $req.into_inner()))
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                $self.reload().await;
                resp
            }
            Route::Local($store) => {
                let $info = $self.auth.info_on(&credentials, &$store)?;
                let $msg = $req.into_inner();
                $local
            }
        };
        Ok($self.respond(resp))
    }};
}

impl AuthService {
    pub fn new(brain: Arc<Brain>, auth: Arc<Authenticator>, identity: Identity) -> Self {
        AuthService {
            brain,
            auth,
            identity,
        }
    }

    fn respond<R: WithHeader>(&self, resp: R) -> Response<R> {
        self.identity.respond(resp, self.brain.store().revision())
    }

    /// After a change forwarded to the leader: this member sees it before answering.
    async fn reload(&self) {
        if let Err(err) = self.brain.store().reload_auth().await {
            tracing::warn!(%err, "re-reading users and roles");
        }
    }

    /// Applies `change` as `info`'s caller, who must be root once authentication is on.
    async fn change(
        &self,
        store: &Store,
        info: &AuthInfo,
        change: AuthChange,
    ) -> Result<(), Status> {
        info.check_admin().map_err(from_auth)?;
        store
            .change_auth(change, info.user())
            .await
            .map_err(from_kv)?;
        Ok(())
    }

    async fn hash(&self, password: String) -> Result<Vec<u8>, Status> {
        password::hash(password, self.auth.bcrypt_cost())
            .await
            .map_err(|err| Status::internal(format!("hashing the password: {err}")))
    }
}

fn admin(info: &AuthInfo) -> Result<(), Status> {
    info.check_admin().map_err(from_auth)
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        on_leader!(self, req, auth_enable, |store, info, _msg| {
            self.change(&store, &info, AuthChange::Enable).await?;
            AuthEnableResponse::default()
        })
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        on_leader!(self, req, auth_disable, |store, info, _msg| {
            self.change(&store, &info, AuthChange::Disable).await?;
            AuthDisableResponse::default()
        })
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        on_leader!(self, req, auth_status, |store, info, _msg| {
            admin(&info)?;
            let state = store.auth();
            AuthStatusResponse {
                header: None,
                enabled: state.enabled(),
                auth_revision: state.revision(),
            }
        })
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let resp = match self.brain.route().await.map_err(from_kv)? {
            Route::Forward(leader) => {
                let resp = leader
                    .auth()
                    .authenticate(req.into_inner())
                    .await
                    .map_err(forwarded)?
                    .into_inner();
                // The token names a user this member must know of.
                self.reload().await;
                resp
            }
            Route::Local(store) => {
                let AuthenticateRequest { name, password } = req.into_inner();
                let token = self.authenticate(&store, &name, password).await?;
                AuthenticateResponse {
                    header: None,
                    token,
                }
            }
        };
        Ok(self.respond(resp))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        on_leader!(self, req, user_add, |store, info, msg| {
            admin(&info)?;
            let no_password = msg.options.is_some_and(|o| o.no_password);
            let password_hash = if no_password {
                None
            } else {
                Some(self.hash(msg.password).await?)
            };
            let change = AuthChange::UserAdd {
                name: msg.name,
                password_hash,
                options: msg.options,
            };
            self.change(&store, &info, change).await?;
            AuthUserAddResponse::default()
        })
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        on_leader!(self, req, user_get, |_store, info, msg| {
            // A user may read itself.
            if let Err(err) = info.check_admin()
                && info.user() != Some(msg.name.as_str())
            {
                return Err(from_auth(err));
            }
            let user = info.state().user(&msg.name).ok_or(AuthError::UserNotFound);
            AuthUserGetResponse {
                header: None,
                roles: user.map_err(from_auth)?.roles.clone(),
            }
        })
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        on_leader!(self, req, user_list, |_store, info, _msg| {
            admin(&info)?;
            AuthUserListResponse {
                header: None,
                users: info.state().user_names(),
            }
        })
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        on_leader!(self, req, user_delete, |store, info, msg| {
            let change = AuthChange::UserDelete { name: msg.name };
            self.change(&store, &info, change).await?;
            AuthUserDeleteResponse::default()
        })
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        on_leader!(self, req, user_change_password, |store, info, msg| {
            admin(&info)?;
            let password_hash = self.hash(msg.password).await?;
            let change = AuthChange::UserChangePassword {
                name: msg.name,
                password_hash,
            };
            self.change(&store, &info, change).await?;
            AuthUserChangePasswordResponse::default()
        })
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        on_leader!(self, req, user_grant_role, |store, info, msg| {
            let change = AuthChange::UserGrantRole {
                user: msg.user,
                role: msg.role,
            };
            self.change(&store, &info, change).await?;
            AuthUserGrantRoleResponse::default()
        })
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        on_leader!(self, req, user_revoke_role, |store, info, msg| {
            let change = AuthChange::UserRevokeRole {
                name: msg.name,
                role: msg.role,
            };
            self.change(&store, &info, change).await?;
            AuthUserRevokeRoleResponse::default()
        })
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        on_leader!(self, req, role_add, |store, info, msg| {
            self.change(&store, &info, AuthChange::RoleAdd { name: msg.name })
                .await?;
            AuthRoleAddResponse::default()
        })
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        on_leader!(self, req, role_get, |_store, info, msg| {
            // A user may read its own roles.
            if let Err(err) = info.check_admin()
                && !info
                    .user()
                    .is_some_and(|u| info.state().has_role(u, &msg.role))
            {
                return Err(from_auth(err));
            }
            let perm = info.state().role_permissions(&msg.role);
            AuthRoleGetResponse {
                header: None,
                perm: perm.ok_or_else(|| from_auth(AuthError::RoleNotFound))?,
            }
        })
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        on_leader!(self, req, role_list, |_store, info, _msg| {
            admin(&info)?;
            AuthRoleListResponse {
                header: None,
                roles: info.state().role_names(),
            }
        })
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        on_leader!(self, req, role_delete, |store, info, msg| {
            let change = AuthChange::RoleDelete { role: msg.role };
            self.change(&store, &info, change).await?;
            AuthRoleDeleteResponse::default()
        })
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        on_leader!(self, req, role_grant_permission, |store, info, msg| {
            let change = AuthChange::RoleGrantPermission {
                name: msg.name,
                perm: msg.perm,
            };
            self.change(&store, &info, change).await?;
            AuthRoleGrantPermissionResponse::default()
        })
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        on_leader!(self, req, role_revoke_permission, |store, info, msg| {
            let change = AuthChange::RoleRevokePermission {
                role: msg.role,
                key: msg.key,
                range_end: msg.range_end,
            };
            self.change(&store, &info, change).await?;
            AuthRoleRevokePermissionResponse::default()
        })
    }
}

impl AuthService {
    /// etcd's `Authenticate`: the password is checked against the user's hash, then a token
    /// is issued under the same auth revision (checked again if users changed meanwhile).
    async fn authenticate(
        &self,
        store: &Store,
        name: &str,
        password: String,
    ) -> Result<String, Status> {
        loop {
            let state = store.auth();
            if !state.enabled() {
                return Err(from_auth(AuthError::AuthNotEnabled));
            }
            let user = state.user(name).ok_or(AuthError::AuthFailed);
            let user = user.map_err(from_auth)?;
            if user.options.is_some_and(|o| o.no_password) {
                return Err(from_auth(AuthError::NoPasswordUser));
            }
            if !password::matches(password.clone(), user.password.to_vec()).await {
                tracing::info!(user = name, "authentication failed: wrong password");
                return Err(from_auth(AuthError::AuthFailed));
            }
            let now = store.auth();
            if now.revision() != state.revision() {
                continue;
            }
            return self.auth.issue(&now, name).map_err(from_auth);
        }
    }
}
