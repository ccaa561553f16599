//! `--auth`: a fresh server gets etcd's auth turned on before the workload, and every request
//! of the run carries the token of a non-root user whose role may read and write every key the
//! workloads touch. A non-root user, because that is what a shared cluster's clients are, and
//! because etcd (like Engram) skips the permission lookup for root: root would measure the
//! token check alone.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use etcdpb::authpb::Permission;
use etcdpb::authpb::permission::Type as PermType;
use etcdpb::etcdserverpb::auth_client::AuthClient;
use etcdpb::etcdserverpb::kv_client::KvClient;
use etcdpb::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthenticateRequest, RangeRequest,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

/// The user every request of an `--auth` run is made as.
pub const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
const ROOT_PASSWORD: &str = "bench-root-password";

/// Creates root and the bench user (readwrite on every key from "/" on: all the workloads'
/// keys), enables auth, and returns the bench user's token. On a server that already has auth
/// enabled this fails: `--auth` is for the fresh servers of `--compare`.
pub async fn enable(channel: Channel) -> Result<AsciiMetadataValue> {
    let mut auth = AuthClient::new(channel.clone());
    for (name, password) in [("root", ROOT_PASSWORD), (USER, PASSWORD)] {
        auth.user_add(AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("--auth: add user {name}"))?;
    }
    auth.role_add(AuthRoleAddRequest { name: USER.into() })
        .await
        .context("--auth: add role")?;
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: USER.into(),
        perm: Some(Permission {
            perm_type: PermType::Readwrite as i32,
            key: Bytes::from_static(b"/"),
            // From "/" to the end of the keyspace.
            range_end: Bytes::from_static(&[0]),
        }),
    })
    .await
    .context("--auth: grant the role its keys")?;
    for (user, role) in [("root", "root"), (USER, USER)] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .with_context(|| format!("--auth: grant {role} to {user}"))?;
    }
    auth.auth_enable(AuthEnableRequest {})
        .await
        .context("--auth: enable")?;
    // A run that believes auth is on but measures a server without it would report nothing
    // about auth: a request without a token must now be refused as etcd refuses it.
    let anonymous = KvClient::new(channel.clone())
        .range(RangeRequest {
            key: Bytes::from_static(b"/"),
            ..Default::default()
        })
        .await;
    match anonymous {
        Err(status) if status.message() == "etcdserver: user name is empty" => {}
        other => bail!("--auth: a request without a token was not refused: {other:?}"),
    }
    let token = auth
        .authenticate(AuthenticateRequest {
            name: USER.into(),
            password: PASSWORD.into(),
        })
        .await
        .context("--auth: authenticate")?
        .into_inner()
        .token;
    AsciiMetadataValue::try_from(token.as_str()).context("--auth: token is not ASCII")
}
