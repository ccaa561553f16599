//! Where the auth state lives in the engine: the `AUTH` region, one row per user and per role
//! (etcd's own `authpb.User` and `authpb.Role` messages), the enabled flag, the auth revision
//! and the token signing key.

use super::state::AuthState;
use crate::engine::{EngineError, KeyRange, Snapshot, for_each_page};
use crate::mvcc::keys::AUTH;
use bytes::{BufMut, Bytes, BytesMut};
use etcdpb::authpb::{Role, User};
use prost::Message;
use std::collections::BTreeMap;

const USER: &[u8] = b"user/";
const ROLE: &[u8] = b"role/";

/// What a row of the region holds, told by its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// Whether authentication is enabled: one byte, 1 or 0.
    Enabled,
    /// The auth revision: 8 bytes, big-endian.
    Revision,
    /// The token signing key (Engram's own: etcd keeps none).
    TokenKey,
    /// A user (`authpb.User`) by name.
    User(&'a [u8]),
    /// A role (`authpb.Role`) by name.
    Role(&'a [u8]),
}

impl<'a> Record<'a> {
    /// What the row under `key` (a key of the region) holds; `None` for a key Engram does not
    /// write.
    pub fn of(key: &'a [u8]) -> Option<Self> {
        match key.strip_prefix(&[AUTH])? {
            b"enabled" => Some(Record::Enabled),
            b"revision" => Some(Record::Revision),
            b"token-key" => Some(Record::TokenKey),
            rest => rest
                .strip_prefix(USER)
                .map(Record::User)
                .or_else(|| rest.strip_prefix(ROLE).map(Record::Role)),
        }
    }
}

fn named(kind: &[u8], name: &[u8]) -> Bytes {
    let mut key = BytesMut::with_capacity(1 + kind.len() + name.len());
    key.put_u8(AUTH);
    key.put_slice(kind);
    key.put_slice(name);
    key.freeze()
}

pub fn enabled_key() -> Bytes {
    Bytes::from_static(b"\x08enabled")
}

pub fn revision_key() -> Bytes {
    Bytes::from_static(b"\x08revision")
}

pub fn token_key_key() -> Bytes {
    Bytes::from_static(b"\x08token-key")
}

pub fn user_key(name: impl AsRef<[u8]>) -> Bytes {
    named(USER, name.as_ref())
}

pub fn role_key(name: impl AsRef<[u8]>) -> Bytes {
    named(ROLE, name.as_ref())
}

pub fn encode_flag(on: bool) -> Bytes {
    Bytes::from_static(if on { &[1] } else { &[0] })
}

pub fn encode_revision(revision: u64) -> Bytes {
    Bytes::copy_from_slice(&revision.to_be_bytes())
}

pub fn user_row(user: &User) -> (Bytes, Option<Bytes>) {
    (
        named(USER, &user.name),
        Some(Bytes::from(user.encode_to_vec())),
    )
}

pub fn role_row(role: &Role) -> (Bytes, Option<Bytes>) {
    (
        named(ROLE, &role.name),
        Some(Bytes::from(role.encode_to_vec())),
    )
}

/// The whole region.
pub fn region() -> KeyRange {
    KeyRange::new(
        Bytes::from_static(&[AUTH]),
        Some(Bytes::from_static(&[AUTH + 1])),
    )
}

/// Reads the auth state from `snapshot` (a new store's when the region is empty).
pub async fn load<S: Snapshot>(snapshot: &S) -> Result<AuthState, EngineError> {
    let mut rows = Vec::new();
    for_each_page(snapshot, region(), 256, |page| {
        rows.extend_from_slice(page);
        true
    })
    .await?;
    state_from_rows(&rows)
}

/// The auth state the rows of the region make (a new store's for no rows). Rows Engram does
/// not write are ignored.
pub fn state_from_rows(rows: &[(Bytes, Bytes)]) -> Result<AuthState, EngineError> {
    let mut enabled = false;
    let mut revision = 1;
    let mut token_key = None;
    let mut users = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for (key, value) in rows {
        let corrupt = || EngineError::Corrupt(format!("auth record {key:?}"));
        match Record::of(key) {
            Some(Record::Enabled) => enabled = value.first() == Some(&1),
            Some(Record::Revision) => {
                revision = u64::from_be_bytes(value[..].try_into().map_err(|_| corrupt())?)
            }
            Some(Record::TokenKey) => token_key = Some(value.clone()),
            Some(Record::User(_)) => {
                let user = User::decode(&value[..]).map_err(|_| corrupt())?;
                users.insert(String::from_utf8_lossy(&user.name).into_owned(), user);
            }
            Some(Record::Role(_)) => {
                let role = Role::decode(&value[..]).map_err(|_| corrupt())?;
                roles.insert(String::from_utf8_lossy(&role.name).into_owned(), role);
            }
            None => {}
        }
    }
    Ok(AuthState::from_parts(
        enabled, revision, users, roles, token_key,
    ))
}
