//! What the `auth` cases share: calls made as a user (a token in the `token` metadata, as
//! etcd's clients send it) that write what they got to the transcript, the names of the
//! case's users and roles, and the check and teardown that leave the endpoint as found.
//!
//! Users and roles are named `<case prefix><name>` (unique per run and case), shown
//! without the prefix; the root user is `root`, as etcd requires. Auth revisions are
//! shown relative to the one the case started at (`A+n`): etcd's never goes back.

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use etcdpb::authpb::permission::Type as PermType;
use etcdpb::authpb::{Permission, UserAddOptions};
use etcdpb::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthStatusResponse, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, AuthenticateRequest,
    AuthenticateResponse, ResponseHeader,
};
use tonic::metadata::AsciiMetadataValue;
use tonic::{Request, Status};

use crate::case::{Ctx, expect_eq, expect_err};
use crate::client::b;
use crate::normalize;

/// The user (and role) that may do anything; etcd refuses `auth enable` without it.
pub const ROOT: &str = "root";

// etcd's answers the cases expect.
pub const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
pub const DENIED: &str = "etcdserver: permission denied";
pub const NO_USER: &str = "etcdserver: user name is empty";
pub const BAD_TOKEN: &str = "etcdserver: invalid auth token";
pub const USER_NOT_FOUND: &str = "etcdserver: user name not found";
pub const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
/// The root user's password while a case runs (printed by a failed teardown, so that
/// whoever runs the tool can disable authentication by hand).
pub const ROOT_PASSWORD: &str = "engram-conformance-root";
/// [`Ctx::mark`]: the case created the root user (so its teardown deletes it).
const CREATED_ROOT: &str = "created root";
/// etcd's answer to Authenticate while authentication is disabled.
const NOT_ENABLED: &str = "etcdserver: authentication is not enabled";

/// Who a call is made as: a token sent as the `token` metadata, or none.
#[derive(Clone, Default)]
pub struct As(Option<AsciiMetadataValue>);

impl As {
    /// No token (with authentication on, etcd's "user name is empty").
    pub const NOBODY: As = As(None);

    /// Any string as a token (a made-up one is etcd's "invalid auth token").
    pub fn token(token: &str) -> Result<As> {
        let v = token
            .parse::<AsciiMetadataValue>()
            .with_context(|| format!("token {token:?} is not ASCII metadata"))?;
        Ok(As(Some(v)))
    }

    pub fn metadata(&self) -> Option<AsciiMetadataValue> {
        self.0.clone()
    }

    /// `message` as a request carrying this token.
    pub fn req<T>(&self, message: T) -> Request<T> {
        let mut r = Request::new(message);
        if let Some(t) = &self.0 {
            r.metadata_mut().insert("token", t.clone());
        }
        r
    }
}

/// A permission of `kind` on `key` (a single key when `end` is empty).
pub fn perm(kind: PermType, key: Bytes, end: Bytes) -> Permission {
    Permission {
        perm_type: kind as i32,
        key,
        range_end: end,
    }
}

/// One run of an `auth` case: its context and the auth revision it started at.
#[derive(Clone)]
pub struct Session {
    pub c: Ctx,
    auth_base: u64,
}

/// One Auth call as `$who`, written to the transcript as `$what: <header>` or its error.
macro_rules! auth_call {
    ($s:ident, $what:expr, $who:expr, $method:ident, $req:expr) => {{
        let r =
            $s.c.conn
                .auth
                .clone()
                .$method($who.req($req))
                .await
                .map(|r| r.into_inner());
        $s.rec($what, &r, |v| $s.hdr(&v.header));
        r
    }};
}

impl Session {
    /// Checks that authentication is off and that there is no root user (the case
    /// creates its own and never touches one it did not create), both recorded.
    pub async fn begin(c: &Ctx) -> Result<Session> {
        let st = c.conn.auth.clone().auth_status(AuthStatusRequest {}).await;
        let st = st.context("AuthStatus")?.into_inner();
        ensure!(
            !st.enabled,
            "authentication is enabled on the endpoint: the auth group needs it disabled"
        );
        let s = Session {
            c: c.clone(),
            auth_base: st.auth_revision,
        };
        s.c.note(format!("auth status: {}", s.show_status(&st)));
        let r = s.user_get("user get root", &As::NOBODY, ROOT).await;
        if r.is_ok() {
            bail!(
                "the endpoint already has a root user: the auth group creates its own \
                 (delete it, with authentication disabled, to run the group)"
            );
        }
        expect_err(
            "UserGet root",
            &r,
            "FailedPrecondition",
            "etcdserver: user name not found",
        )?;
        Ok(s)
    }

    /// `<prefix><short>`: a user or role name of this case (`root` stays `root`).
    pub fn name(&self, short: &str) -> String {
        if short == ROOT {
            return ROOT.into();
        }
        format!("{}{short}", self.c.n.prefix)
    }

    fn shown(&self, name: &str) -> String {
        self.c.n.key(name.as_bytes())
    }

    fn ours(&self, name: &str) -> bool {
        name.starts_with(&self.c.n.prefix)
    }

    pub fn rec<T>(&self, what: &str, r: &Result<T, Status>, f: impl Fn(&T) -> String) {
        match r {
            Ok(v) => self.c.note(format!("{what}: {}", f(v))),
            Err(s) => self.c.note(format!("{what}: ERR {}", normalize::status(s))),
        }
    }

    pub fn hdr(&self, h: &Option<ResponseHeader>) -> String {
        match h {
            Some(h) => format!("rev={}", self.c.n.rev(h.revision)),
            None => "no-header".into(),
        }
    }

    fn show_status(&self, v: &AuthStatusResponse) -> String {
        let d = v.auth_revision as i128 - self.auth_base as i128;
        format!(
            "{} enabled={} auth_rev=A{d:+}",
            self.hdr(&v.header),
            v.enabled
        )
    }

    /// Names of this case's users or roles in `names` (and root), in the order given.
    fn our_names(&self, names: &[String]) -> String {
        let v: Vec<String> = names
            .iter()
            .filter(|n| self.ours(n) || *n == ROOT)
            .map(|n| self.shown(n))
            .collect();
        format!("[{}]", v.join(", "))
    }

    pub async fn auth_status(&self, what: &str, who: &As) -> Result<AuthStatusResponse, Status> {
        let mut client = self.c.conn.auth.clone();
        let r = client.auth_status(who.req(AuthStatusRequest {})).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| self.show_status(v));
        r
    }

    /// Expects authentication `enabled` and the auth revision `changes` above the case's
    /// start: every change of users, roles or permissions adds one (enabling adds none).
    pub async fn expect_auth(&self, who: &As, enabled: bool, changes: u64) -> Result<()> {
        let st = self.auth_status("auth status", who).await?;
        expect_eq("AuthStatus enabled", st.enabled, enabled)?;
        expect_eq(
            "auth revision (changes since the case began)",
            st.auth_revision.saturating_sub(self.auth_base),
            changes,
        )
    }

    pub async fn auth_enable(&self, what: &str, who: &As) -> Result<(), Status> {
        auth_call!(self, what, who, auth_enable, AuthEnableRequest {}).map(|_| ())
    }

    pub async fn auth_disable(&self, what: &str, who: &As) -> Result<(), Status> {
        auth_call!(self, what, who, auth_disable, AuthDisableRequest {}).map(|_| ())
    }

    /// Authenticate as `user`, recorded; the token is shown only as given or not (its
    /// form is the server's).
    pub async fn authenticate_raw(
        &self,
        what: &str,
        user: &str,
        password: &str,
    ) -> Result<AuthenticateResponse, Status> {
        let req = AuthenticateRequest {
            name: self.name(user),
            password: password.into(),
        };
        let r = self.c.conn.auth.clone().authenticate(req).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| {
            let token = if v.token.is_empty() { "none" } else { "<set>" };
            format!("{} token={token}", self.hdr(&v.header))
        });
        r
    }

    /// [`Session::authenticate_raw`] that must succeed: the token.
    pub async fn authenticate(&self, what: &str, user: &str, password: &str) -> Result<As> {
        let r = self.authenticate_raw(what, user, password).await;
        let token = r.with_context(|| format!("{what}: Authenticate"))?.token;
        ensure!(!token.is_empty(), "{what}: Authenticate gave no token");
        As::token(&token)
    }

    /// UserAdd; `password: None` adds a user without one (`--no-password`).
    pub async fn user_add(
        &self,
        what: &str,
        who: &As,
        user: &str,
        password: Option<&str>,
    ) -> Result<(), Status> {
        let req = AuthUserAddRequest {
            name: self.name(user),
            password: password.unwrap_or_default().into(),
            options: Some(UserAddOptions {
                no_password: password.is_none(),
            }),
            hashed_password: String::new(),
        };
        let r = auth_call!(self, what, who, user_add, req).map(|_| ());
        if r.is_ok() && user == ROOT {
            self.c.mark(CREATED_ROOT);
        }
        r
    }

    pub async fn user_get(&self, what: &str, who: &As, user: &str) -> Result<Vec<String>, Status> {
        let req = AuthUserGetRequest {
            name: self.name(user),
        };
        let r = self.c.conn.auth.clone().user_get(who.req(req)).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| {
            let roles: Vec<String> = v.roles.iter().map(|n| self.shown(n)).collect();
            format!("{} roles=[{}]", self.hdr(&v.header), roles.join(", "))
        });
        r.map(|v| v.roles)
    }

    /// UserList, showing only this case's users and root (the endpoint may have others).
    pub async fn user_list(&self, what: &str, who: &As) -> Result<Vec<String>, Status> {
        let mut client = self.c.conn.auth.clone();
        let r = client.user_list(who.req(AuthUserListRequest {})).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| {
            format!("{} users={}", self.hdr(&v.header), self.our_names(&v.users))
        });
        r.map(|v| v.users)
    }

    pub async fn user_delete(&self, what: &str, who: &As, user: &str) -> Result<(), Status> {
        let req = AuthUserDeleteRequest {
            name: self.name(user),
        };
        auth_call!(self, what, who, user_delete, req).map(|_| ())
    }

    pub async fn user_passwd(
        &self,
        what: &str,
        who: &As,
        user: &str,
        password: &str,
    ) -> Result<(), Status> {
        let req = AuthUserChangePasswordRequest {
            name: self.name(user),
            password: password.into(),
            hashed_password: String::new(),
        };
        auth_call!(self, what, who, user_change_password, req).map(|_| ())
    }

    pub async fn grant_role(
        &self,
        what: &str,
        who: &As,
        user: &str,
        role: &str,
    ) -> Result<(), Status> {
        let req = AuthUserGrantRoleRequest {
            user: self.name(user),
            role: self.name(role),
        };
        auth_call!(self, what, who, user_grant_role, req).map(|_| ())
    }

    pub async fn revoke_role(
        &self,
        what: &str,
        who: &As,
        user: &str,
        role: &str,
    ) -> Result<(), Status> {
        let req = AuthUserRevokeRoleRequest {
            name: self.name(user),
            role: self.name(role),
        };
        auth_call!(self, what, who, user_revoke_role, req).map(|_| ())
    }

    pub async fn role_add(&self, what: &str, who: &As, role: &str) -> Result<(), Status> {
        let req = AuthRoleAddRequest {
            name: self.name(role),
        };
        auth_call!(self, what, who, role_add, req).map(|_| ())
    }

    /// RoleGet; permissions shown as `READ a` (one key) or `WRITE [p/, p0)` (a range).
    pub async fn role_get(&self, what: &str, who: &As, role: &str) -> Result<Vec<String>, Status> {
        let req = AuthRoleGetRequest {
            role: self.name(role),
        };
        let r = self.c.conn.auth.clone().role_get(who.req(req)).await;
        let r = r.map(|r| r.into_inner());
        let perms =
            |ps: &[Permission]| -> Vec<String> { ps.iter().map(|p| self.perm(p)).collect() };
        self.rec(what, &r, |v| {
            format!(
                "{} perms=[{}]",
                self.hdr(&v.header),
                perms(&v.perm).join("; ")
            )
        });
        r.map(|v| perms(&v.perm))
    }

    fn perm(&self, p: &Permission) -> String {
        let kind = PermType::try_from(p.perm_type).map_or("?", |t| t.as_str_name());
        let key = self.c.n.key(&p.key);
        if p.range_end.is_empty() {
            format!("{kind} {key}")
        } else {
            format!("{kind} [{key}, {})", self.c.n.key(&p.range_end))
        }
    }

    /// RoleList, showing only this case's roles and root.
    pub async fn role_list(&self, what: &str, who: &As) -> Result<Vec<String>, Status> {
        let mut client = self.c.conn.auth.clone();
        let r = client.role_list(who.req(AuthRoleListRequest {})).await;
        let r = r.map(|r| r.into_inner());
        self.rec(what, &r, |v| {
            format!("{} roles={}", self.hdr(&v.header), self.our_names(&v.roles))
        });
        r.map(|v| v.roles)
    }

    pub async fn role_delete(&self, what: &str, who: &As, role: &str) -> Result<(), Status> {
        let req = AuthRoleDeleteRequest {
            role: self.name(role),
        };
        auth_call!(self, what, who, role_delete, req).map(|_| ())
    }

    pub async fn grant(
        &self,
        what: &str,
        who: &As,
        role: &str,
        p: Permission,
    ) -> Result<(), Status> {
        let req = AuthRoleGrantPermissionRequest {
            name: self.name(role),
            perm: Some(p),
        };
        auth_call!(self, what, who, role_grant_permission, req).map(|_| ())
    }

    pub async fn revoke(
        &self,
        what: &str,
        who: &As,
        role: &str,
        key: Bytes,
        end: Bytes,
    ) -> Result<(), Status> {
        let req = AuthRoleRevokePermissionRequest {
            role: self.name(role),
            key,
            range_end: end,
        };
        auth_call!(self, what, who, role_revoke_permission, req).map(|_| ())
    }

    /// Creates the root user (with the root role) and `users` (each with its name as its
    /// password, and its own role `<user>-role` holding its permissions), then enables
    /// authentication; all recorded. Answers root's token and each user's, in order.
    pub async fn enable_with(&self, users: &[(&str, &[Permission])]) -> Result<(As, Vec<As>)> {
        self.user_add("user add root", &As::NOBODY, ROOT, Some(ROOT_PASSWORD))
            .await?;
        self.grant_role("grant root to root", &As::NOBODY, ROOT, ROOT)
            .await?;
        for (user, perms) in users {
            let role = format!("{user}-role");
            self.user_add(&format!("user add {user}"), &As::NOBODY, user, Some(user))
                .await?;
            self.role_add(&format!("role add {role}"), &As::NOBODY, &role)
                .await?;
            for p in perms.iter() {
                let what = format!("grant {role} {}", self.perm(p));
                self.grant(&what, &As::NOBODY, &role, p.clone()).await?;
            }
            self.grant_role(&format!("grant {role} to {user}"), &As::NOBODY, user, &role)
                .await?;
        }
        self.auth_enable("auth enable", &As::NOBODY).await?;
        let root = self
            .authenticate("authenticate root", ROOT, ROOT_PASSWORD)
            .await?;
        let mut tokens = Vec::new();
        for (user, _) in users {
            let what = format!("authenticate {user}");
            tokens.push(self.authenticate(&what, user, user).await?);
        }
        Ok((root, tokens))
    }
}

/// `\0`: as a range end, every key from the start key on.
pub fn from_key() -> Bytes {
    b("\0")
}

/// The teardown of every `auth` case: authentication disabled (as the case's root),
/// the case's users and roles deleted, and root if the case created it. Runs after the
/// case whatever happened to it, so it assumes nothing about how far the case got.
pub async fn teardown(c: Ctx) -> Result<()> {
    let s = Session { c, auth_base: 0 };
    let mut problems = Vec::new();
    let mut auth = s.c.conn.auth.clone();
    let enabled = auth.auth_status(AuthStatusRequest {}).await;
    if !s.c.marked(CREATED_ROOT) && !enabled.is_ok_and(|st| !st.get_ref().enabled) {
        // Authentication was on before the case (it cannot enable it without a root user
        // of its own, and `begin` refuses to start then): nothing of the case's to undo.
        return Ok(());
    }
    if s.c.marked(CREATED_ROOT) {
        let req = AuthenticateRequest {
            name: ROOT.into(),
            password: ROOT_PASSWORD.into(),
        };
        match auth.authenticate(req).await {
            Ok(r) => {
                let root = As::token(&r.into_inner().token)?;
                if let Err(e) = auth.auth_disable(root.req(AuthDisableRequest {})).await {
                    problems.push(format!("auth disable as root: {}", normalize::status(&e)));
                }
            }
            Err(e) if e.message() == NOT_ENABLED => {}
            Err(e) => problems.push(format!("authenticate root: {}", normalize::status(&e))),
        }
    }
    match auth.user_list(AuthUserListRequest {}).await {
        Ok(l) => {
            for user in l.into_inner().users {
                if s.ours(&user) || (user == ROOT && s.c.marked(CREATED_ROOT)) {
                    let req = AuthUserDeleteRequest { name: user.clone() };
                    if let Err(e) = auth.user_delete(req).await {
                        problems.push(format!("delete user {user}: {}", normalize::status(&e)));
                    }
                }
            }
        }
        Err(e) => problems.push(format!("user list: {}", normalize::status(&e))),
    }
    match auth.role_list(AuthRoleListRequest {}).await {
        Ok(l) => {
            for role in l.into_inner().roles.into_iter().filter(|r| s.ours(r)) {
                let req = AuthRoleDeleteRequest { role: role.clone() };
                if let Err(e) = auth.role_delete(req).await {
                    problems.push(format!("delete role {role}: {}", normalize::status(&e)));
                }
            }
        }
        Err(e) => problems.push(format!("role list: {}", normalize::status(&e))),
    }
    match auth.auth_status(AuthStatusRequest {}).await {
        Ok(st) if st.get_ref().enabled => problems.push("authentication still enabled".into()),
        Ok(_) => {}
        Err(e) => problems.push(format!("auth status: {}", normalize::status(&e))),
    }
    if !problems.is_empty() {
        bail!(
            "the endpoint may be left with authentication ENABLED or with this case's users \
             and roles ({}): disable it with `etcdctl --user {ROOT}:{ROOT_PASSWORD} auth \
             disable`, then delete the users and roles named `{}*` (and `{ROOT}`)",
            problems.join("; "),
            s.c.n.prefix
        );
    }
    Ok(())
}
