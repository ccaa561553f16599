//! Who a request comes from and what it may do: etcd's `AuthInfo` and the permission checks of
//! its `authApplierV3`, done here for every service.
//!
//! A request names its user by a token in its `token` metadata (`authorization` from the JSON
//! gateway), as etcd's clients send it; without a token, under `--client-cert-auth`, by the
//! common name of its client certificate (etcd's `AuthInfoFromTLS`). With authentication
//! disabled nothing is checked and tokens are ignored; enabled, an unknown or expired token
//! fails the request at once, and a request with neither is checked as nobody (etcd's "user
//! name is empty"). The checks read the auth state of the store serving the request; a write
//! is then applied by the leader's writer only if that state has not changed meanwhile
//! ([`Authority`]). A follower forwards writes with the caller's token, or vouches for its
//! certificate's user (the leader sees the follower's certificate, not the client's), and the
//! leader checks them again against its own state.

use crate::brain::{Brain, Store};
use crate::status::from_auth;
use crate::tls::ClientCertificate;
use backend::auth::options::OptionsError;
use backend::auth::provider::TokenProvider;
use backend::auth::{Access, AuthError, AuthState, Authority, vouch};
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

/// Where a follower says whose certificate a forwarded request came with: a vouch (see
/// `backend::auth::vouch`), or [`NO_CERTIFICATE`]. Either way the leader then ignores the
/// certificate of the connection, which is the follower's own.
const FORWARDED_CERT_USER: &str = "engram-cert-user";
const NO_CERTIFICATE: &str = "none";

/// Issues and checks tokens; shared by every service of a member.
pub struct Authenticator {
    tokens: TokenProvider,
    bcrypt_cost: u32,
    /// Whose auth state signs the vouches of forwarded requests.
    brain: Arc<Brain>,
}

impl Authenticator {
    /// The tokens `--auth-token` asks for (simple ones expire after `token_ttl` unused).
    pub fn new(
        auth_token: &str,
        token_ttl: std::time::Duration,
        bcrypt_cost: u32,
        brain: Arc<Brain>,
    ) -> Result<Self, OptionsError> {
        Ok(Authenticator {
            tokens: TokenProvider::from_flag(auth_token, token_ttl)?,
            bcrypt_cost,
            brain,
        })
    }

    pub fn bcrypt_cost(&self) -> u32 {
        self.bcrypt_cost
    }

    /// A token for `user` under `state` (etcd's `Authenticate`, once the password matched).
    pub fn issue(&self, state: &AuthState, user: &str) -> Result<String, AuthError> {
        self.tokens.issue(state, user)
    }

    /// The user `credentials` name under `state` (etcd's `AuthInfoFromCtx`, then, without a
    /// token, `AuthInfoFromTLS`).
    pub fn info(
        &self,
        credentials: &Credentials,
        state: Arc<AuthState>,
    ) -> Result<AuthInfo, AuthError> {
        if !state.enabled() {
            return Ok(AuthInfo {
                user: None,
                revision: 0,
                state,
            });
        }
        let (user, revision) = match (&credentials.token, &credentials.certificate) {
            (Some(token), _) => {
                let token = token.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
                let caller = self.tokens.check(&state, token);
                let caller = caller.ok_or(AuthError::InvalidAuthToken)?;
                (Some(caller.user), caller.revision)
            }
            (None, CertUser::Absent) => (None, 0),
            // A certificate's user stands for the current auth revision, as a simple token's.
            (None, CertUser::Connection(name)) => (Some(name.to_string()), state.revision()),
            (None, CertUser::Vouched(text)) => {
                let text = text.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
                // A vouch under another key: authentication was disabled and enabled again
                // while the request was on its way.
                let user = vouch::vouched(&state, text).ok_or(AuthError::InvalidAuthToken)?;
                (Some(user), state.revision())
            }
        };
        Ok(AuthInfo {
            user,
            revision,
            state,
        })
    }

    /// [`Self::info`] under `store`'s auth state, as etcd's gRPC error.
    pub fn info_on(&self, credentials: &Credentials, store: &Store) -> Result<AuthInfo, Status> {
        self.info(credentials, store.auth()).map_err(from_auth)
    }

    /// `message` as a request with `credentials`, to forward to the leader: the token, or a
    /// vouch for the certificate's user under this member's auth state (none if it has no
    /// key: authentication is off here, so the leader's check decides).
    pub fn attach<T>(&self, credentials: &Credentials, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        if let Some(token) = &credentials.token {
            metadata.insert(TOKEN, token.clone());
            return request;
        }
        let vouched = match &credentials.certificate {
            CertUser::Absent => None,
            CertUser::Vouched(text) => Some(text.clone()),
            CertUser::Connection(name) => vouch::vouch(&self.brain.store().auth(), name)
                .and_then(|text| AsciiMetadataValue::try_from(text).ok()),
        };
        let value = vouched.unwrap_or(AsciiMetadataValue::from_static(NO_CERTIFICATE));
        metadata.insert(FORWARDED_CERT_USER, value);
        request
    }
}

/// The user a client certificate names, as a request carries it.
#[derive(Clone, Debug, Default)]
enum CertUser {
    /// No certificate (none is asked for without --client-cert-auth, or the gateway's call).
    #[default]
    Absent,
    /// The common name of the certificate the connection was verified with.
    Connection(Arc<str>),
    /// A follower's vouch for the certificate user of the request it forwarded.
    Vouched(AsciiMetadataValue),
}

/// What names the caller of a request: its token, as sent, or its certificate's user.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    token: Option<AsciiMetadataValue>,
    certificate: CertUser,
}

impl Credentials {
    pub fn of<T>(request: &Request<T>) -> Self {
        let metadata = request.metadata();
        let token = metadata
            .get(TOKEN)
            .or_else(|| metadata.get(AUTHORIZATION))
            .cloned();
        let certificate = match metadata.get(FORWARDED_CERT_USER) {
            Some(value) if value == NO_CERTIFICATE => CertUser::Absent,
            Some(value) => CertUser::Vouched(value.clone()),
            None => match request.extensions().get::<Option<ClientCertificate>>() {
                Some(Some(cert)) => CertUser::Connection(cert.common_name.clone()),
                _ => CertUser::Absent,
            },
        };
        Credentials { token, certificate }
    }
}

/// The user a request comes from (none: authentication is disabled, or neither a token nor a
/// certificate named one), the auth revision its token stands for, and the auth state it is
/// checked under.
pub struct AuthInfo {
    user: Option<String>,
    revision: u64,
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

    /// How etcd's permission checks begin (`isOpPermitted`): a caller whose token stands for
    /// no revision is nobody, one whose token is older than the auth revision (a JWT issued
    /// before users or roles last changed) must authenticate again.
    fn current(&self) -> Result<(), AuthError> {
        match self.user {
            _ if !self.state.enabled() => Ok(()),
            None => Err(AuthError::UserEmpty),
            Some(_) if self.revision == 0 => Err(AuthError::UserEmpty),
            Some(_) if self.revision < self.state.revision() => Err(AuthError::OldRevision),
            Some(_) => Ok(()),
        }
    }

    /// Whether checks are needed at all: authentication is on and the user is not root (or
    /// its token is old).
    fn restricted(&self) -> bool {
        self.state.enabled()
            && !(self.current().is_ok()
                && self
                    .user
                    .as_deref()
                    .is_some_and(|u| self.state.is_root_user(u)))
    }

    pub fn check(&self, access: Access, key: &[u8], range_end: &[u8]) -> Result<(), AuthError> {
        self.current()?;
        self.state.check(self.user(), access, key, range_end)
    }

    /// etcd's `doSerialize`, once a read checked here is done: the auth state must not have
    /// changed meanwhile (a permission revoked fails it), and the caller's token must stand for
    /// the current auth revision exactly.
    pub fn still_holds(&self, now: &AuthState) -> Result<(), AuthError> {
        let unchanged = now.enabled() && now.revision() == self.state.revision();
        if self.state.enabled()
            && (!unchanged || (self.user.is_some() && self.revision != now.revision()))
        {
            return Err(AuthError::OldRevision);
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use backend::auth::AuthChange;
    use backend::auth::token::new_key;
    use etcdpb::authpb::{Permission, permission::Type};

    /// root, and alice with readwrite on `/k`; enabled.
    fn state() -> Arc<AuthState> {
        let mut state = AuthState::default();
        let user = |name: &str| AuthChange::UserAdd {
            name: name.into(),
            password_hash: Some(b"h".to_vec()),
            options: None,
        };
        let grant = |user: &str, role: &str| AuthChange::UserGrantRole {
            user: user.into(),
            role: role.into(),
        };
        let perm = Permission {
            perm_type: Type::Readwrite as i32,
            key: "/k".into(),
            range_end: Default::default(),
        };
        for change in [
            user("root"),
            user("alice"),
            AuthChange::RoleAdd {
                name: "root".into(),
            },
            AuthChange::RoleAdd { name: "r".into() },
            AuthChange::RoleGrantPermission {
                name: "r".into(),
                perm: Some(perm),
            },
            grant("root", "root"),
            grant("alice", "r"),
            AuthChange::Enable,
        ] {
            state = change.apply(&state, new_key).unwrap().unwrap().state;
        }
        Arc::new(state)
    }

    fn caller(user: &str, revision: u64) -> AuthInfo {
        AuthInfo {
            user: Some(user.into()),
            revision,
            state: state(),
        }
    }

    #[test]
    fn a_token_older_than_the_auth_revision_is_old_for_keys_not_for_admin() {
        let now = state().revision();
        assert_eq!(caller("alice", now).check_range(b"/k", b""), Ok(()));
        let old = caller("alice", now - 1);
        assert_eq!(old.check_range(b"/k", b""), Err(AuthError::OldRevision));
        let root = caller("root", now - 1);
        assert!(root.restricted(), "an old root token is checked");
        assert_eq!(root.check_range(b"/x", b""), Err(AuthError::OldRevision));
        assert_eq!(root.check_admin(), Ok(()));
        // A token standing for no revision names nobody, as in etcd.
        assert_eq!(
            caller("root", 0).check_range(b"/k", b""),
            Err(AuthError::UserEmpty)
        );
    }

    #[test]
    fn a_read_holds_only_at_its_tokens_revision() {
        let now = state();
        assert_eq!(caller("alice", now.revision()).still_holds(&now), Ok(()));
        // A JWT from a server whose auth revision is ahead passes the check but not the read.
        let ahead = caller("alice", now.revision() + 1);
        assert_eq!(ahead.check_range(b"/k", b""), Ok(()));
        assert_eq!(ahead.still_holds(&now), Err(AuthError::OldRevision));
    }

    #[test]
    fn a_forwarded_request_never_takes_the_connections_certificate() {
        let with_cert = |forwarded: Option<&'static str>| {
            let mut request = Request::new(());
            request.extensions_mut().insert(Some(ClientCertificate {
                common_name: Arc::from("root"),
            }));
            if let Some(value) = forwarded {
                request
                    .metadata_mut()
                    .insert(FORWARDED_CERT_USER, AsciiMetadataValue::from_static(value));
            }
            Credentials::of(&request).certificate
        };
        assert!(matches!(with_cert(None), CertUser::Connection(name) if &*name == "root"));
        assert!(matches!(with_cert(Some(NO_CERTIFICATE)), CertUser::Absent));
        assert!(matches!(with_cert(Some("x.1.00")), CertUser::Vouched(_)));
    }
}
