//! Who a request comes from and what it may do: etcd's `AuthInfo` and the permission checks of
//! its `authApplierV3`, done here for every service.
//!
//! A request names its user by a token in its `token` metadata (`authorization` from the JSON
//! gateway), as etcd's clients send it. With authentication disabled nothing is checked and
//! tokens are ignored; enabled, an unknown or expired token fails the request at once, and a
//! request without one is checked as nobody (etcd's "user name is empty"). The checks read the
//! auth state of the store serving the request; a write is then applied by the leader's writer
//! only if that state has not changed meanwhile ([`Authority`]). A follower forwards writes
//! with the caller's token, and the leader checks them again against its own state.

use crate::brain::Store;
use crate::status::from_auth;
use backend::auth::token::Tokens;
use backend::auth::{Access, AuthError, AuthState, Authority};
use backend::kv::KvResult;
use etcdpb::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, request_op::Request as Op,
};
use std::sync::Arc;
use tonic::metadata::AsciiMetadataValue;
use tonic::{Request, Status};

/// The metadata keys a token arrives in (etcd's `TokenFieldNameGRPC`, `TokenFieldNameSwagger`).
const TOKEN: &str = "token";
const AUTHORIZATION: &str = "authorization";

/// Issues and checks tokens; shared by every service of a member.
pub struct Authenticator {
    tokens: Tokens,
    bcrypt_cost: u32,
}

impl Authenticator {
    pub fn new(token_ttl: std::time::Duration, bcrypt_cost: u32) -> Self {
        Authenticator {
            tokens: Tokens::new(token_ttl),
            bcrypt_cost,
        }
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    /// The user `credentials` name under `state` (etcd's `AuthInfoFromCtx`).
    pub fn info(
        &self,
        credentials: &Credentials,
        state: Arc<AuthState>,
    ) -> Result<AuthInfo, AuthError> {
        if !state.enabled() {
            return Ok(AuthInfo { user: None, state });
        }
        let user = match &credentials.token {
            Some(token) => {
                let token = token.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
                Some(
                    self.tokens
                        .check(&state, token)
                        .ok_or(AuthError::InvalidAuthToken)?,
                )
            }
            None => None,
        };
        Ok(AuthInfo { user, state })
    }

    /// [`Self::info`] under `store`'s auth state, as etcd's gRPC error.
    pub fn info_on(&self, credentials: &Credentials, store: &Store) -> Result<AuthInfo, Status> {
        self.info(credentials, store.auth()).map_err(from_auth)
    }
}

/// What names the caller of a request: its token, as sent.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<AsciiMetadataValue>,
}

impl Credentials {
    pub fn of<T>(request: &Request<T>) -> Self {
        let metadata = request.metadata();
        let token = metadata
            .get(TOKEN)
            .or_else(|| metadata.get(AUTHORIZATION))
            .cloned();
        Credentials { token }
    }

    /// `message` as a request with these credentials, to forward to the leader.
    pub fn attach<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert(TOKEN, token.clone());
        }
        request
    }
}

/// The user a request comes from (none: authentication is disabled, or no token was sent) and
/// the auth state it is checked under.
pub struct AuthInfo {
    user: Option<String>,
    state: Arc<AuthState>,
}

impl AuthInfo {
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn state(&self) -> &AuthState {
        &self.state
    }

    /// How the writer re-checks a write checked here.
    pub fn authority(&self) -> Authority {
        if self.state.enabled() && self.user.is_some() {
            Authority::Checked(Some(self.state.revision()))
        } else {
            Authority::Checked(None)
        }
    }

    /// Whether checks are needed at all: authentication is on and the user is not root.
    fn restricted(&self) -> bool {
        self.state.enabled()
            && !self
                .user
                .as_deref()
                .is_some_and(|u| self.state.is_root_user(u))
    }

    pub fn check(&self, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.state.check(self.user(), access, key, range_end)
    }

    pub fn check_range(&self, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.check(Access::Read, key, range_end)
    }

    pub fn check_admin(&self) -> Result<(), AuthError> {
        self.state.check_admin(self.user())
    }

    /// etcd's checks of a Put: write the key, read it for `prev_kv`, and write every key already
    /// attached to its lease (a user who could not revoke the lease may not attach to it).
    pub async fn check_put(&self, req: &PutRequest, store: &Store) -> KvResult<()> {
        self.check(Access::Write, &req.key, &[])?;
        if req.lease != 0 && self.restricted() {
            self.check_lease_keys(req.lease, store).await?;
        }
        if req.prev_kv {
            self.check(Access::Read, &req.key, &[])?;
        }
        Ok(())
    }

    pub fn check_delete(&self, req: &DeleteRangeRequest) -> Result<(), AuthError> {
        self.check(Access::Write, &req.key, &req.range_end)?;
        if req.prev_kv {
            self.check(Access::Read, &req.key, &req.range_end)?;
        }
        Ok(())
    }

    /// etcd's checks of a Txn: read every compared key, and each operation of both branches as
    /// if it were a request of its own. Nested txns are checked the same way (etcd 3.5 skips
    /// them, which lets a user write through a nested txn what it may not write directly).
    pub async fn check_txn(&self, req: &TxnRequest, store: &Store) -> KvResult<()> {
        if !self.restricted() {
            return Ok(());
        }
        let mut pending = vec![req];
        let mut leases = Vec::new();
        while let Some(txn) = pending.pop() {
            for cmp in &txn.compare {
                self.check_range(&cmp.key, &cmp.range_end)?;
            }
            for op in txn.success.iter().chain(&txn.failure) {
                match op_request(op) {
                    Some(Op::RequestRange(r)) => self.check_range(&r.key, &r.range_end)?,
                    Some(Op::RequestPut(p)) => {
                        self.check(Access::Write, &p.key, &[])?;
                        if p.prev_kv {
                            self.check_range(&p.key, &[])?;
                        }
                        if p.lease != 0 {
                            leases.push(p.lease);
                        }
                    }
                    Some(Op::RequestDeleteRange(d)) => self.check_delete(d)?,
                    Some(Op::RequestTxn(t)) => pending.push(t),
                    None => {}
                }
            }
        }
        leases.sort_unstable();
        leases.dedup();
        for lease in leases {
            self.check_lease_keys(lease, store).await?;
        }
        Ok(())
    }

    /// etcd's check of a LeaseRevoke (and of a Put attaching to the lease): the user may write
    /// every key attached to it.
    pub async fn check_lease_keys(&self, lease: i64, store: &Store) -> KvResult<()> {
        self.check_attached(Access::Write, lease, store).await
    }

    /// LeaseTimeToLive: the user may read every key attached to the lease (etcd 3.5.9 on; before,
    /// any user could list any lease's keys).
    pub async fn check_lease_readable(&self, lease: i64, store: &Store) -> KvResult<()> {
        self.check_attached(Access::Read, lease, store).await
    }

    async fn check_attached(&self, access: Access, lease: i64, store: &Store) -> KvResult<()> {
        if !self.restricted() {
            return Ok(());
        }
        for key in store.lease_keys(lease).await? {
            self.check(access, &key, &[])?;
        }
        Ok(())
    }
}

fn op_request(op: &RequestOp) -> Option<&Op> {
    op.request.as_ref()
}
