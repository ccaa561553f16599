//! The auth state at one auth revision: users, roles, whether authentication is enabled, and
//! each user's merged permissions, ready for the checks of every request.

use super::error::{AuthError, ROOT};
use super::perms::{Access, UserPermissions};
use bytes::Bytes;
use etcdpb::authpb::{Permission, Role, User, permission::Type};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The permission the root role shows: read and write of every key.
pub(super) fn root_permission() -> Permission {
    Permission {
        perm_type: Type::Readwrite as i32,
        key: Bytes::new(),
        range_end: Bytes::from_static(&[0]),
    }
}

/// Users, roles and the auth revision. Immutable: a change makes a new state.
#[derive(Clone, Debug)]
pub struct AuthState {
    pub(super) enabled: bool,
    /// etcd's auth revision: 1 in a new store, bumped by every change of users, roles or
    /// permissions and by disabling (not by enabling).
    pub(super) revision: u64,
    pub(super) users: BTreeMap<String, User>,
    pub(super) roles: BTreeMap<String, Role>,
    /// The key that signs tokens while authentication is enabled (a new one each time it is
    /// enabled, so disabling invalidates every token).
    pub(super) token_key: Option<Bytes>,
    /// Each user's merged permissions (none for root-role users: they may do anything).
    permissions: HashMap<String, Arc<UserPermissions>>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            token_key: None,
            permissions: HashMap::new(),
        }
    }
}

impl PartialEq for AuthState {
    fn eq(&self, other: &Self) -> bool {
        self.enabled == other.enabled
            && self.revision == other.revision
            && self.users == other.users
            && self.roles == other.roles
            && self.token_key == other.token_key
    }
}

impl AuthState {
    pub(super) fn from_parts(
        enabled: bool,
        revision: u64,
        users: BTreeMap<String, User>,
        roles: BTreeMap<String, Role>,
        token_key: Option<Bytes>,
    ) -> Self {
        let mut state = AuthState {
            enabled,
            revision,
            users,
            roles,
            token_key,
            permissions: HashMap::new(),
        };
        state.merge_permissions();
        state
    }

    pub(super) fn merge_permissions(&mut self) {
        self.permissions = self
            .users
            .iter()
            .map(|(name, user)| {
                let perms = user
                    .roles
                    .iter()
                    .filter_map(|role| self.roles.get(role))
                    .flat_map(|role| role.key_permission.iter());
                (name.clone(), Arc::new(UserPermissions::new(perms)))
            })
            .collect();
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The permissions a RoleGet shows: the root role's is every key, read and write.
    pub fn role_permissions(&self, name: &str) -> Option<Vec<Permission>> {
        let role = self.roles.get(name)?;
        Some(if name == ROOT {
            vec![root_permission()]
        } else {
            role.key_permission.clone()
        })
    }

    pub fn token_key(&self) -> Option<&Bytes> {
        self.token_key.as_ref()
    }

    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }

    fn is_root(user: &User) -> bool {
        user.roles
            .binary_search_by(|r| r.as_str().cmp(ROOT))
            .is_ok()
    }

    /// etcd's admin check: with authentication enabled, only a user with the root role passes.
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        if Self::is_root(user) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's check of one key or range: with authentication enabled, `user` must be given, exist
    /// and have the root role or `access` to all of it.
    pub fn check(
        &self,
        user: Option<&str>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.ok_or(AuthError::UserEmpty)?;
        let Some(found) = self.users.get(name) else {
            return Err(AuthError::PermissionDenied);
        };
        if Self::is_root(found) {
            return Ok(());
        }
        match self.permissions.get(name) {
            Some(perms) if perms.allows(access, key, range_end) => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    /// Whether `user` has the root role (so needs no per-key check).
    pub fn is_root_user(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(Self::is_root)
    }
}
