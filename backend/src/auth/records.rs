//! Where the auth state lives in the engine: the `AUTH` region, one row per user and per role
//! (etcd's own `authpb.User` and `authpb.Role` messages), the enabled flag, the auth revision
//! and the token signing key.

use super::state::AuthState;
use crate::engine::{EngineError, KeyRange, Snapshot, next_key};
use crate::mvcc::keys::AUTH;
use bytes::{BufMut, Bytes, BytesMut};
use etcdpb::authpb::{Role, User};
use prost::Message;
use std::collections::BTreeMap;

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

pub fn user_key(name: &str) -> Bytes {
    named(b"user/", name.as_bytes())
}

pub fn role_key(name: &str) -> Bytes {
    named(b"role/", name.as_bytes())
}

pub fn encode_flag(on: bool) -> Bytes {
    Bytes::from_static(if on { &[1] } else { &[0] })
}

pub fn encode_revision(revision: u64) -> Bytes {
    Bytes::copy_from_slice(&revision.to_be_bytes())
}

pub fn user_row(user: &User) -> (Bytes, Option<Bytes>) {
    (
        named(b"user/", &user.name),
        Some(Bytes::from(user.encode_to_vec())),
    )
}

pub fn role_row(role: &Role) -> (Bytes, Option<Bytes>) {
    (
        named(b"role/", &role.name),
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
    let mut enabled = false;
    let mut revision = 1;
    let mut token_key = None;
    let mut users = BTreeMap::new();
    let mut roles = BTreeMap::new();
    let mut range = region();
    loop {
        let page = snapshot.scan(&range, 256, false).await?;
        for (key, value) in &page {
            let corrupt = || EngineError::Corrupt(format!("auth record {key:?}"));
            match &key[1..] {
                b"enabled" => enabled = value.first() == Some(&1),
                b"revision" => {
                    revision = u64::from_be_bytes(value[..].try_into().map_err(|_| corrupt())?)
                }
                b"token-key" => token_key = Some(value.clone()),
                name if name.starts_with(b"user/") => {
                    let user = User::decode(&value[..]).map_err(|_| corrupt())?;
                    users.insert(String::from_utf8_lossy(&user.name).into_owned(), user);
                }
                name if name.starts_with(b"role/") => {
                    let role = Role::decode(&value[..]).map_err(|_| corrupt())?;
                    roles.insert(String::from_utf8_lossy(&role.name).into_owned(), role);
                }
                _ => {}
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == 256 => range.start = next_key(last),
            _ => break,
        }
    }
    Ok(AuthState::from_parts(
        enabled, revision, users, roles, token_key,
    ))
}
