//! Users, roles and the enabled flag as etcd 3.5 keeps them in its database, and their
//! conversion to and from Engram's `AUTH` region (`crate::auth::records`), so that auth moves
//! with every backup, both ways.
//!
//! etcd's buckets (`server/auth/store.go`, read off a real etcd 3.5.1's snapshot):
//! - `auth`: `authEnabled` = one byte, 1 or 0 (absent until authentication is first enabled),
//!   `authRevision` = the auth revision, 8 bytes big-endian;
//! - `authUsers`: user name → `authpb.User` (name, bcrypt password hash, roles sorted, options);
//! - `authRoles`: role name → `authpb.Role` (name, permissions sorted by key).
//!
//! Users and roles are the same messages on both sides, so their bytes are copied as they are
//! (a password hash included: Engram writes `$2a$` hashes, as etcd does). Engram's token
//! signing key has no place in etcd (its simple tokens live in memory): it is left behind on
//! the way out and made afresh on the way in, so tokens never outlive a move.

use super::EtcdDbError;
use crate::auth::records::{self, Record};
use crate::bolt::BoltReader;
use crate::engine::{Snapshot, for_each_page};
use bytes::Bytes;
use etcdpb::authpb::{Role, User};
use prost::Message;

pub const AUTH_BUCKET: &[u8] = b"auth";
pub const USERS_BUCKET: &[u8] = b"authUsers";
pub const ROLES_BUCKET: &[u8] = b"authRoles";
const ENABLED: &[u8] = b"authEnabled";
const REVISION: &[u8] = b"authRevision";

/// Whether `name` is one of etcd's auth buckets.
pub fn is_auth_bucket(name: &[u8]) -> bool {
    [AUTH_BUCKET, USERS_BUCKET, ROLES_BUCKET].contains(&name)
}

/// Bucket entries (key, value), in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The entries of etcd's three auth buckets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EtcdAuth {
    pub auth: Entries,
    pub users: Entries,
    pub roles: Entries,
}

/// The `AUTH` region of `snapshot` as etcd's auth buckets.
pub async fn to_etcd<S: Snapshot>(snapshot: &S) -> Result<EtcdAuth, EtcdDbError> {
    let mut out = EtcdAuth::default();
    let mut enabled = false;
    // A store whose auth never changed has no revision row: its revision is etcd's first, 1.
    let mut revision = 1u64.to_be_bytes().to_vec();
    for_each_page(snapshot, records::region(), 256, |page| {
        for (key, value) in page {
            match Record::of(key) {
                Some(Record::Enabled) => enabled = value.first() == Some(&1),
                Some(Record::Revision) => revision = value.to_vec(),
                Some(Record::User(name)) => out.users.push((name.to_vec(), value.to_vec())),
                Some(Record::Role(name)) => out.roles.push((name.to_vec(), value.to_vec())),
                Some(Record::TokenKey) | None => {}
            }
        }
        true
    })
    .await?;
    // In key order: `authEnabled` sorts before `authRevision`.
    out.auth = vec![
        (ENABLED.to_vec(), vec![u8::from(enabled)]),
        (REVISION.to_vec(), revision),
    ];
    Ok(out)
}

/// The auth buckets of the etcd database `reader` reads, as rows of Engram's `AUTH` region
/// (without a token key). Each user and role is checked to decode and to be filed under its
/// own name.
pub fn from_etcd(reader: &BoltReader) -> Result<Vec<(Bytes, Bytes)>, EtcdDbError> {
    let mut rows = Vec::new();
    if let Some(bucket) = reader.bucket(AUTH_BUCKET)? {
        for entry in reader.entries(&bucket) {
            let (key, value) = entry?;
            match key.as_slice() {
                ENABLED => rows.push((records::enabled_key(), records::encode_flag(value == [1]))),
                REVISION => {
                    let revision = <[u8; 8]>::try_from(value.as_slice()).map_err(|_| {
                        EtcdDbError::Invalid(format!("the auth revision is {} bytes", value.len()))
                    })?;
                    rows.push((
                        records::revision_key(),
                        records::encode_revision(u64::from_be_bytes(revision)),
                    ));
                }
                // Nothing else is in etcd 3.5's bucket; later releases' additions stay behind.
                _ => {}
            }
        }
    }
    if let Some(bucket) = reader.bucket(USERS_BUCKET)? {
        for entry in reader.entries(&bucket) {
            let (name, value) = entry?;
            let user = User::decode(value.as_slice())
                .map_err(|e| invalid("user", &name, &e.to_string()))?;
            if user.name != name {
                return Err(invalid("user", &name, "filed under another name"));
            }
            rows.push((records::user_key(&name), Bytes::from(value)));
        }
    }
    if let Some(bucket) = reader.bucket(ROLES_BUCKET)? {
        for entry in reader.entries(&bucket) {
            let (name, value) = entry?;
            let role = Role::decode(value.as_slice())
                .map_err(|e| invalid("role", &name, &e.to_string()))?;
            if role.name != name {
                return Err(invalid("role", &name, "filed under another name"));
            }
            rows.push((records::role_key(&name), Bytes::from(value)));
        }
    }
    Ok(rows)
}

fn invalid(what: &str, name: &[u8], why: &str) -> EtcdDbError {
    EtcdDbError::Invalid(format!(
        "{what} {:?} of the auth buckets: {why}",
        String::from_utf8_lossy(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, MemoryEngine, WriteBatch};

    /// A user and a role as a real etcd 3.5.1 stored them (`user add alice`, `role add reader`,
    /// `role grant-permission reader read /a/ --prefix` and `readwrite k1`).
    const ALICE: &[u8] = b"\n\x05alice\x12<$2a$10$v40QQ0G9pwPxoNmzIyz1wuOtSPsxMdofs7QAkJTaPEHo3d572BHQy\x1a\x06reader\"\x00";
    const READER: &[u8] = b"\n\x06reader\x12\n\x12\x03/a/\x1a\x03/a0\x12\x06\x08\x02\x12\x02k1";

    /// etcd's messages decode as Engram's and encode back to the same bytes, so a user moved
    /// either way is the same user.
    #[test]
    fn etcds_records_are_engrams() {
        let user = User::decode(ALICE).unwrap();
        assert_eq!(user.name, "alice");
        assert!(user.password.starts_with(b"$2a$10$"));
        assert_eq!(user.roles, ["reader"]);
        assert_eq!(user.encode_to_vec(), ALICE);
        let role = Role::decode(READER).unwrap();
        assert_eq!(role.key_permission.len(), 2);
        assert_eq!(role.encode_to_vec(), READER);
    }

    /// The region read as etcd's buckets: flag, revision, users and roles by name, in key
    /// order; the token key stays behind. A store that never changed auth has revision 1.
    #[tokio::test]
    async fn the_region_becomes_etcds_buckets() {
        let engine = MemoryEngine::new();
        let empty = to_etcd(&engine.snapshot().await.unwrap()).await.unwrap();
        assert_eq!(
            empty.auth,
            [
                (ENABLED.to_vec(), vec![0]),
                (REVISION.to_vec(), 1u64.to_be_bytes().to_vec())
            ]
        );
        assert!(empty.users.is_empty() && empty.roles.is_empty());

        let mut batch = WriteBatch::default();
        batch.put(records::enabled_key(), records::encode_flag(true));
        batch.put(records::revision_key(), records::encode_revision(10));
        batch.put(records::token_key_key(), Bytes::from_static(b"secret"));
        batch.put(records::user_key("alice"), Bytes::from_static(ALICE));
        batch.put(records::role_key("reader"), Bytes::from_static(READER));
        engine.write(batch).await.unwrap();
        let buckets = to_etcd(&engine.snapshot().await.unwrap()).await.unwrap();
        assert_eq!(
            buckets.auth,
            [
                (ENABLED.to_vec(), vec![1]),
                (REVISION.to_vec(), 10u64.to_be_bytes().to_vec())
            ]
        );
        assert_eq!(buckets.users, [(b"alice".to_vec(), ALICE.to_vec())]);
        assert_eq!(buckets.roles, [(b"reader".to_vec(), READER.to_vec())]);
    }

    fn etcd_db(
        dir: &std::path::Path,
        auth: &[(&[u8], &[u8])],
        users: &[(&[u8], &[u8])],
    ) -> BoltReader {
        let path = dir.join("db");
        let mut bolt = crate::bolt::BoltWriter::new(std::fs::File::create(&path).unwrap()).unwrap();
        for (bucket, entries) in [
            (AUTH_BUCKET, auth),
            (ROLES_BUCKET, &[(&b"reader"[..], READER)][..]),
            (USERS_BUCKET, users),
        ] {
            bolt.begin_bucket(bucket).unwrap();
            for (k, v) in entries {
                bolt.put(k, v).unwrap();
            }
            bolt.end_bucket().unwrap();
        }
        bolt.finish().unwrap();
        BoltReader::open(&path).unwrap()
    }

    /// etcd's buckets read as rows that make its state; a record under another name than its
    /// own, or a revision of the wrong size, is refused.
    #[test]
    fn etcds_buckets_become_the_region() {
        let dir = tempfile::tempdir().unwrap();
        let revision = 10u64.to_be_bytes();
        let good = etcd_db(
            dir.path(),
            &[(ENABLED, &[1]), (REVISION, &revision)],
            &[(b"alice", ALICE)],
        );
        let rows = from_etcd(&good).unwrap();
        let state = records::state_from_rows(&rows).unwrap();
        assert_eq!((state.enabled(), state.revision()), (true, 10));
        assert_eq!(state.user_names(), ["alice"]);
        assert_eq!(state.role_names(), ["reader"]);
        assert!(state.token_key().is_none());
        assert!(rows.contains(&(records::user_key("alice"), Bytes::from_static(ALICE))));

        let dir = tempfile::tempdir().unwrap();
        let misfiled = etcd_db(dir.path(), &[], &[(b"bob", ALICE)]);
        assert!(matches!(from_etcd(&misfiled), Err(EtcdDbError::Invalid(_))));
        let dir = tempfile::tempdir().unwrap();
        let short = etcd_db(dir.path(), &[(REVISION, &[1, 2])], &[]);
        assert!(matches!(from_etcd(&short), Err(EtcdDbError::Invalid(_))));
    }
}
