//! The changes of users, roles and permissions, applied by the store's writer one after
//! another, as etcd's auth store applies them: each answers etcd's error or yields the new
//! state and the rows that make it durable.

use super::error::{AuthError, ROOT};
use super::records;
use super::state::AuthState;
use bytes::Bytes;
use etcdpb::authpb::{Permission, Role, User, UserAddOptions};

/// A change of the auth state. Passwords arrive hashed: the service hashes them before the
/// change reaches the writer, so no password is ever in a request the writer holds.
#[derive(Clone, PartialEq)]
pub enum AuthChange {
    Enable,
    Disable,
    UserAdd {
        name: String,
        /// The bcrypt hash; `None` for a user created with `no_password`.
        password_hash: Option<Vec<u8>>,
        options: Option<UserAddOptions>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Option<Permission>,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
}

impl std::fmt::Debug for AuthChange {
    // Never prints a password hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthChange::UserAdd { name, .. } => write!(f, "UserAdd({name})"),
            AuthChange::UserChangePassword { name, .. } => write!(f, "UserChangePassword({name})"),
            AuthChange::Enable => write!(f, "Enable"),
            AuthChange::Disable => write!(f, "Disable"),
            AuthChange::UserDelete { name } => write!(f, "UserDelete({name})"),
            AuthChange::UserGrantRole { user, role } => write!(f, "UserGrantRole({user}, {role})"),
            AuthChange::UserRevokeRole { name, role } => {
                write!(f, "UserRevokeRole({name}, {role})")
            }
            AuthChange::RoleAdd { name } => write!(f, "RoleAdd({name})"),
            AuthChange::RoleDelete { role } => write!(f, "RoleDelete({role})"),
            AuthChange::RoleGrantPermission { name, .. } => {
                write!(f, "RoleGrantPermission({name})")
            }
            AuthChange::RoleRevokePermission { role, .. } => {
                write!(f, "RoleRevokePermission({role})")
            }
        }
    }
}

/// Engine rows to write (`Some`) or delete (`None`).
pub type Rows = Vec<(Bytes, Option<Bytes>)>;

/// What applying a change gives: the new state and its rows, or nothing to do.
pub struct Applied {
    pub state: AuthState,
    pub rows: Rows,
}

impl AuthChange {
    /// Applies the change to `state`. `new_token_key` is used if it enables authentication.
    /// `Ok(None)`: accepted, nothing changes (a role granted twice, enabling twice).
    pub fn apply(
        &self,
        state: &AuthState,
        new_token_key: impl FnOnce() -> Bytes,
    ) -> Result<Option<Applied>, AuthError> {
        let mut next = state.clone();
        let mut rows: Rows = Vec::new();
        match self {
            AuthChange::Enable => {
                if state.enabled {
                    return Ok(None);
                }
                let root = state.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                next.enabled = true;
                let key = new_token_key();
                next.token_key = Some(key.clone());
                rows.push((records::enabled_key(), Some(records::encode_flag(true))));
                rows.push((records::token_key_key(), Some(key)));
                // Enabling leaves the auth revision as it is (as etcd does).
                return Ok(Some(Applied { state: next, rows }));
            }
            AuthChange::Disable => {
                if !state.enabled {
                    return Ok(None);
                }
                next.enabled = false;
                next.token_key = None;
                rows.push((records::enabled_key(), Some(records::encode_flag(false))));
                rows.push((records::token_key_key(), None));
            }
            AuthChange::UserAdd {
                name,
                password_hash,
                options,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if state.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    password: password_hash.clone().map(Bytes::from).unwrap_or_default(),
                    roles: Vec::new(),
                    options: Some(options.unwrap_or_default()),
                };
                rows.push(records::user_row(&user));
                next.users.insert(name.clone(), user);
            }
            AuthChange::UserDelete { name } => {
                if state.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if next.users.remove(name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                rows.push((records::user_key(name), None));
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = next.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                let no_password = user.options.is_some_and(|o| o.no_password);
                user.password = if no_password {
                    Bytes::new()
                } else {
                    Bytes::from(password_hash.clone())
                };
                rows.push(records::user_row(user));
            }
            AuthChange::UserGrantRole { user, role } => {
                let found = next.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if role != ROOT && !state.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                match found.roles.binary_search(role) {
                    Ok(_) => return Ok(None),
                    Err(at) => found.roles.insert(at, role.clone()),
                }
                rows.push(records::user_row(found));
            }
            AuthChange::UserRevokeRole { name, role } => {
                if state.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let found = next.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                let before = found.roles.len();
                found.roles.retain(|r| r != role);
                if found.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                rows.push(records::user_row(found));
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if state.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                let role = Role {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    key_permission: Vec::new(),
                };
                rows.push(records::role_row(&role));
                next.roles.insert(name.clone(), role);
            }
            AuthChange::RoleDelete { role } => {
                if state.enabled && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if next.roles.remove(role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                rows.push((records::role_key(role), None));
                for user in next.users.values_mut() {
                    let before = user.roles.len();
                    user.roles.retain(|r| r != role);
                    if user.roles.len() != before {
                        rows.push(records::user_row(user));
                    }
                }
            }
            AuthChange::RoleGrantPermission { name, perm } => {
                let perm = perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                let role = next.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let perms = &mut role.key_permission;
                let at = perms.partition_point(|p| p.key < perm.key);
                match perms.get_mut(at) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type;
                    }
                    _ => {
                        perms.push(Permission {
                            perm_type: perm.perm_type,
                            key: perm.key.clone(),
                            range_end: perm.range_end.clone(),
                        });
                        // Stable, by key only, as etcd sorts them.
                        perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
                rows.push(records::role_row(role));
            }
            AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let found = next.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = found.key_permission.len();
                found
                    .key_permission
                    .retain(|p| p.key != *key || p.range_end != *range_end);
                if found.key_permission.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                rows.push(records::role_row(found));
            }
        }
        next.revision += 1;
        rows.push((
            records::revision_key(),
            Some(records::encode_revision(next.revision)),
        ));
        next.merge_permissions();
        Ok(Some(Applied { state: next, rows }))
    }
}

/// What makes `current` the auth state of the etcd the store replicates, `source` (read from a
/// snapshot of it: users with their password hashes, roles, the enabled flag and the auth
/// revision, all as they are there); `None` if they are the same already. Unlike a change, it
/// moves the auth revision to the source's, whatever it was. The token key stays while
/// authentication stays enabled, so tokens issued here stay valid unless their user changed;
/// enabling makes a new one, disabling drops it.
pub fn replicate(
    current: &AuthState,
    source: &AuthState,
    new_token_key: impl FnOnce() -> Bytes,
) -> Option<Applied> {
    if current.enabled == source.enabled
        && current.revision == source.revision
        && current.users == source.users
        && current.roles == source.roles
    {
        return None;
    }
    let mut rows: Rows = Vec::new();
    differing_rows(
        &current.users,
        &source.users,
        &mut rows,
        |u| records::user_key(&u.name),
        records::user_row,
    );
    differing_rows(
        &current.roles,
        &source.roles,
        &mut rows,
        |r| records::role_key(&r.name),
        records::role_row,
    );
    let token_key = match &current.token_key {
        _ if !source.enabled => None,
        Some(key) if current.enabled => Some(key.clone()),
        _ => Some(new_token_key()),
    };
    rows.push((
        records::enabled_key(),
        Some(records::encode_flag(source.enabled)),
    ));
    rows.push((
        records::revision_key(),
        Some(records::encode_revision(source.revision)),
    ));
    rows.push((records::token_key_key(), token_key.clone()));
    let state = AuthState::from_parts(
        source.enabled,
        source.revision,
        source.users.clone(),
        source.roles.clone(),
        token_key,
    );
    Some(Applied { state, rows })
}

/// The rows that turn `current` (users or roles by name) into `source`: a deletion for each
/// entry `source` lacks, a write for each it has differently.
fn differing_rows<T: PartialEq>(
    current: &std::collections::BTreeMap<String, T>,
    source: &std::collections::BTreeMap<String, T>,
    rows: &mut Rows,
    key: impl Fn(&T) -> Bytes,
    row: impl Fn(&T) -> (Bytes, Option<Bytes>),
) {
    for (name, entry) in current {
        if !source.contains_key(name) {
            rows.push((key(entry), None));
        }
    }
    for (name, entry) in source {
        if current.get(name) != Some(entry) {
            rows.push(row(entry));
        }
    }
}

/// For tests: the changes that turn authentication on with a root user whose password hash
/// is `password_hash` (etcd requires the root user, with the root role, before `auth enable`).
#[cfg(test)]
pub(crate) fn enable_with_root(password_hash: &[u8]) -> [AuthChange; 4] {
    [
        AuthChange::UserAdd {
            name: ROOT.into(),
            password_hash: Some(password_hash.to_vec()),
            options: None,
        },
        AuthChange::RoleAdd { name: ROOT.into() },
        AuthChange::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        },
        AuthChange::Enable,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Bytes {
        Bytes::from_static(b"k")
    }

    fn apply(state: &AuthState, change: AuthChange) -> Result<AuthState, AuthError> {
        Ok(change
            .apply(state, key)?
            .map(|a| a.state)
            .unwrap_or_else(|| state.clone()))
    }

    fn user_add(name: &str) -> AuthChange {
        AuthChange::UserAdd {
            name: name.into(),
            password_hash: Some(b"hash".to_vec()),
            options: None,
        }
    }

    #[test]
    fn revisions_move_as_etcds() {
        let s = AuthState::default();
        assert_eq!(s.revision(), 1);
        let s = apply(&s, user_add("root")).unwrap();
        assert_eq!(s.revision(), 2);
        assert_eq!(
            apply(&s, AuthChange::Enable).unwrap_err(),
            AuthError::RootRoleNotExist
        );
        let s = apply(&s, AuthChange::RoleAdd { name: ROOT.into() }).unwrap();
        let grant = AuthChange::UserGrantRole {
            user: ROOT.into(),
            role: ROOT.into(),
        };
        let s = apply(&s, grant.clone()).unwrap();
        assert_eq!(s.revision(), 4);
        // Granting twice and enabling change no revision.
        assert!(grant.apply(&s, key).unwrap().is_none());
        let s = apply(&s, AuthChange::Enable).unwrap();
        assert!(s.enabled());
        assert_eq!(s.revision(), 4);
        assert_eq!(
            apply(&s, AuthChange::UserDelete { name: ROOT.into() }).unwrap_err(),
            AuthError::InvalidAuthMgmt
        );
        let s = apply(&s, AuthChange::Disable).unwrap();
        assert_eq!((s.enabled(), s.revision()), (false, 5));
        assert!(s.token_key().is_none());
    }

    /// Replicating a source's state takes its users, roles, flag and revision as they are,
    /// removes what it lacks, keeps the token key while enabled, and is nothing when equal.
    #[test]
    fn replicating_takes_the_sources_state() {
        let here = apply(&AuthState::default(), user_add("gone")).unwrap();
        let here = apply(&here, AuthChange::RoleAdd { name: "old".into() }).unwrap();
        let mut source = AuthState::default();
        let enabled = enable_with_root(b"hash");
        for change in enabled
            .into_iter()
            .chain([AuthChange::Disable, AuthChange::Enable])
        {
            source = apply(&source, change).unwrap();
        }
        let source = AuthState::from_parts(
            source.enabled,
            source.revision,
            source.users.clone(),
            source.roles.clone(),
            None,
        );
        let applied = replicate(&here, &source, || Bytes::from_static(b"new")).unwrap();
        let state = applied.state;
        assert_eq!((state.enabled(), state.revision()), (true, 5));
        assert_eq!(state.user_names(), [ROOT]);
        assert_eq!(state.role_names(), [ROOT]);
        assert_eq!(state.token_key().unwrap(), &Bytes::from_static(b"new"));
        assert!(applied.rows.contains(&(records::user_key("gone"), None)));
        assert!(applied.rows.contains(&(records::role_key("old"), None)));
        // The rows make the same state.
        let rows: Vec<(Bytes, Bytes)> = applied
            .rows
            .iter()
            .filter(|(k, _)| !k.ends_with(b"gone") && !k.ends_with(b"old"))
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        assert_eq!(records::state_from_rows(&rows).unwrap(), state);
        assert!(replicate(&state, &source, || Bytes::from_static(b"x")).is_none());
        // A password changed there: the row is rewritten, the token key kept.
        let mut changed = source.clone();
        if let Some(root) = changed.users.get_mut(ROOT) {
            root.password = Bytes::from_static(b"other hash");
        }
        changed.revision += 1;
        let again = replicate(&state, &changed, || Bytes::from_static(b"x")).unwrap();
        assert_eq!(again.state.token_key(), state.token_key());
        assert_eq!(again.state.user(ROOT).unwrap().password, "other hash");
        // Disabled there: the key goes.
        changed.enabled = false;
        let off = replicate(&again.state, &changed, || Bytes::from_static(b"x")).unwrap();
        assert!(off.state.token_key().is_none());
        assert!(off.rows.contains(&(records::token_key_key(), None)));
    }

    #[test]
    fn deleting_a_role_takes_it_from_its_users() {
        let s = AuthState::default();
        let s = apply(&s, user_add("a")).unwrap();
        let s = apply(&s, AuthChange::RoleAdd { name: "r".into() }).unwrap();
        let s = apply(
            &s,
            AuthChange::UserGrantRole {
                user: "a".into(),
                role: "r".into(),
            },
        )
        .unwrap();
        assert!(s.has_role("a", "r"));
        let s = apply(&s, AuthChange::RoleDelete { role: "r".into() }).unwrap();
        assert!(!s.has_role("a", "r"));
        assert_eq!(
            apply(
                &s,
                AuthChange::UserRevokeRole {
                    name: "a".into(),
                    role: "r".into()
                }
            )
            .unwrap_err(),
            AuthError::RoleNotGranted
        );
    }
}
