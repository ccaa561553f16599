//! An etcd 3.5 database (`etcdctl snapshot save`'s file, or a member's `member/snap/db`) read
//! into an empty engine: every row etcd holds becomes the same version at the same revision
//! and position in Engram's store, with etcd's compacted and current revisions, its leases and
//! its users, roles, enabled flag and auth revision, so that the store answers every read,
//! watch, HashKV and Authenticate as that etcd did.
//!
//! The file is checked before anything is written: its SHA-256 trailer when it has one
//! (a file of `512·n + 32` bytes, as `etcdctl snapshot save` writes), and every page of every
//! bucket. Then it is read one page at a time on a thread of its own while the rows are
//! written to the engine in batches: memory stays small whatever the size of the file.

use super::auth::{from_etcd, is_auth_bucket};
use super::{
    EtcdDbError, FINISHED_COMPACT, KEY_BUCKET, LEASE_BUCKET, LeaseRecord, META_BUCKET,
    SCHEDULED_COMPACT, parse_row_key,
};
use crate::auth::{AuthState, records as auth_records, token};
use crate::bolt::{BoltReader, Entries};
use crate::engine::{Engine, Snapshot, WriteBatch, for_each_page};
use crate::mvcc::keys;
use crate::mvcc::record::{Version, decode_index, encode_counter};
use bytes::Bytes;
use etcdpb::mvccpb::KeyValue;
use prost::Message;
use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::Path;

/// Rows written per engine batch.
const BATCH_ROWS: usize = 1024;
/// Bytes of values written per engine batch, at most (about).
const BATCH_BYTES: usize = 4 << 20;

/// What an etcd database held, and what of it the store could not take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    /// Rows of the `key` bucket (versions of keys, deletions included).
    pub rows: u64,
    /// Keys that exist at the current revision.
    pub keys: u64,
    pub leases: u64,
    /// etcd's current revision: the next write gets the one after.
    pub revision: i64,
    /// etcd's compacted revision (-1: never compacted).
    pub compacted: i64,
    /// Whether the file ended with a SHA-256 trailer (which was checked).
    pub checksummed: bool,
    /// Users, roles and whether authentication is enabled.
    pub auth: ImportedAuth,
    /// What the database held that Engram does not carry over: bucket and entries.
    pub left_behind: Vec<(String, u64)>,
}

/// The auth state an etcd database held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportedAuth {
    pub enabled: bool,
    pub revision: u64,
    pub users: usize,
    pub roles: usize,
}

/// Whether the file at `path` is a bbolt database (by its first page, not its name).
pub fn is_etcd_db(path: &Path) -> bool {
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| u32::from_le_bytes([head[16], head[17], head[18], head[19]]) == 0xED0C_DAED)
}

/// An etcd database that passed [`verify`].
#[derive(Debug, Clone)]
pub struct Verified {
    path: std::path::PathBuf,
    /// Whether it ended with a SHA-256 trailer (which matched).
    pub checksummed: bool,
}

/// Checks the database at `path` (its SHA-256 trailer, every page of every bucket, the `meta`
/// bucket etcd needs) without writing anything.
pub fn verify(path: &Path) -> Result<Verified, EtcdDbError> {
    let reader = BoltReader::open(path)?;
    let len = std::fs::metadata(path)?.len();
    let checksummed = len % 512 == 32 && len >= reader.size() + 32;
    if checksummed {
        let mut file = std::fs::File::open(path)?;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut left = len - 32;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            file.read_exact(&mut buf[..n])?;
            sha.update(&buf[..n]);
            left -= n as u64;
        }
        let mut trailer = [0u8; 32];
        file.read_exact(&mut trailer)?;
        if sha.finish().as_ref() != trailer {
            return Err(EtcdDbError::Checksum);
        }
    }
    reader.check()?;
    if reader.bucket(META_BUCKET)?.is_none() {
        return Err(EtcdDbError::Invalid(
            "no meta bucket: not an etcd database".into(),
        ));
    }
    Ok(Verified {
        path: path.to_path_buf(),
        checksummed,
    })
}

/// The auth state of a checked etcd database: users (with their password hashes), roles, the
/// enabled flag and the auth revision, as that etcd held them (no token key).
pub fn auth_of(db: &Verified) -> Result<AuthState, EtcdDbError> {
    let rows = from_etcd(&BoltReader::open(&db.path)?)?;
    Ok(auth_records::state_from_rows(&rows)?)
}

/// One step for the importer, sent by the thread reading the file.
enum Step {
    /// Rows of the `AUTH` region.
    Auth(Vec<(Bytes, Bytes)>),
    Row(Vec<u8>, Vec<u8>),
    Lease(Vec<u8>),
    Meta(Vec<u8>, Vec<u8>),
    /// A bucket Engram does not carry over, with its entry count.
    LeftBehind(String, u64),
}

/// Reads the etcd database `db` into `engine`, which must be empty.
pub async fn import<E: Engine>(engine: &E, db: &Verified) -> Result<Imported, EtcdDbError> {
    // The snapshot goes at once: held through the import, it would keep fjall from letting go
    // of every memtable written meanwhile (2.1 GiB of RSS for a million keys, measured).
    let empty = {
        let snapshot = engine.snapshot().await?;
        snapshot
            .scan(&keys::data_range(), 1, false)
            .await?
            .is_empty()
            && snapshot
                .scan(&auth_records::region(), 1, false)
                .await?
                .is_empty()
    };
    if !empty {
        return Err(EtcdDbError::NotEmpty);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Step>>(8);
    let path = db.path.clone();
    let reader = tokio::task::spawn_blocking(move || read_file(&path, tx));
    let mut out = Imported {
        checksummed: db.checksummed,
        compacted: -1,
        ..Default::default()
    };
    let written = write_rows(engine, rx, &mut out).await;
    match reader.await {
        Ok(read) => read?,
        Err(_) => return Err(EtcdDbError::Invalid("the snapshot reader panicked".into())),
    }
    written?;
    attach_leases(engine, &mut out).await?;
    Ok(out)
}

/// Sends the buckets of the file, page by page: leases and meta first, then the rows.
fn read_file(path: &Path, tx: tokio::sync::mpsc::Sender<Vec<Step>>) -> Result<(), EtcdDbError> {
    let reader = BoltReader::open(path)?;
    let send = |batch: Vec<Step>| {
        tx.blocking_send(batch)
            .map_err(|_| EtcdDbError::Invalid("the import stopped".into()))
    };
    send(vec![Step::Auth(from_etcd(&reader)?)])?;
    let mut rows = None;
    for (name, bucket) in reader.buckets()? {
        let entries = reader.entries(&bucket);
        match name.as_slice() {
            KEY_BUCKET => rows = Some(bucket),
            LEASE_BUCKET => send(collect(entries, |_, v| Step::Lease(v))?)?,
            META_BUCKET => send(collect(entries, Step::Meta)?)?,
            // The cluster version: Engram reports its own.
            b"cluster" => {}
            name if is_auth_bucket(name) => {}
            _ => {
                let count = entries.count() as u64;
                if count > 0 {
                    let name = String::from_utf8_lossy(&name).into_owned();
                    send(vec![Step::LeftBehind(name, count)])?;
                }
            }
        }
    }
    if let Some(bucket) = rows {
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        for entry in reader.entries(&bucket) {
            let (key, value) = entry?;
            batch.push(Step::Row(key, value));
            if batch.len() == BATCH_ROWS {
                send(std::mem::replace(
                    &mut batch,
                    Vec::with_capacity(BATCH_ROWS),
                ))?;
            }
        }
        send(batch)?;
    }
    Ok(())
}

fn collect(
    entries: Entries<'_>,
    make: impl Fn(Vec<u8>, Vec<u8>) -> Step,
) -> Result<Vec<Step>, EtcdDbError> {
    entries
        .map(|entry| entry.map(|(k, v)| make(k, v)).map_err(EtcdDbError::from))
        .collect()
}

/// Writes what the reader sends: leases and the compacted revision, then every row as its
/// version, `LOG` entry and latest-version index entry, then the current revision.
async fn write_rows<E: Engine>(
    engine: &E,
    mut rx: tokio::sync::mpsc::Receiver<Vec<Step>>,
    out: &mut Imported,
) -> Result<(), EtcdDbError> {
    let mut batch = WriteBatch::default();
    let mut bytes = 0usize;
    let mut last_main = 1i64;
    let (mut finished, mut scheduled) = (None, None);
    let mut last_row: Option<(i64, i64)> = None;
    while let Some(reads) = rx.recv().await {
        for step in reads {
            match step {
                Step::Auth(rows) => {
                    let state = auth_records::state_from_rows(&rows)?;
                    for (key, value) in rows {
                        batch.put(key, value);
                    }
                    // Tokens are Engram's own: a store that has authentication enabled needs a
                    // key to sign them with.
                    if state.enabled() {
                        batch.put(auth_records::token_key_key(), token::new_key());
                    }
                    out.auth = ImportedAuth {
                        enabled: state.enabled(),
                        revision: state.revision(),
                        users: state.user_names().len(),
                        roles: state.role_names().len(),
                    };
                }
                Step::Lease(value) => {
                    let lease = LeaseRecord::decode(value.as_slice())
                        .map_err(|e| EtcdDbError::Invalid(format!("a lease record: {e}")))?;
                    batch.put(keys::lease_key(lease.id), encode_counter(lease.ttl));
                    out.leases += 1;
                }
                Step::Meta(key, value) => {
                    let revision = || {
                        super::parse_row_key(&value)
                            .map(|(main, _, _)| main)
                            .ok_or_else(|| EtcdDbError::Invalid("a compacted revision".into()))
                    };
                    match key.as_slice() {
                        FINISHED_COMPACT => finished = Some(revision()?),
                        SCHEDULED_COMPACT => scheduled = Some(revision()?),
                        _ => {}
                    }
                }
                Step::LeftBehind(name, count) => out.left_behind.push((name, count)),
                Step::Row(key, value) => {
                    let (main, sub, tombstone) = parse_row_key(&key).ok_or_else(|| {
                        EtcdDbError::Invalid(format!("a row of the key bucket under {key:?}"))
                    })?;
                    if last_row.is_some_and(|last| last >= (main, sub)) || main < 1 || sub < 0 {
                        return Err(EtcdDbError::Invalid(format!(
                            "row {main}_{sub} out of order"
                        )));
                    }
                    last_row = Some((main, sub));
                    let kv = KeyValue::decode(value.as_slice())
                        .map_err(|e| EtcdDbError::Invalid(format!("row {main}_{sub}: {e}")))?;
                    let sub = u32::try_from(sub).map_err(|_| {
                        EtcdDbError::Invalid(format!("row {main}_{sub}: sub revision too large"))
                    })?;
                    let version = if tombstone {
                        Version::Tombstone {
                            key: kv.key.clone(),
                            mod_revision: main,
                        }
                    } else {
                        Version::Put(KeyValue {
                            mod_revision: main,
                            ..kv.clone()
                        })
                    };
                    bytes += kv.key.len() + kv.value.len();
                    batch.put(keys::revision_key(&kv.key, main), version.encode());
                    batch.put(keys::log_key(main, sub), kv.key.clone());
                    batch.put(keys::index_key(&kv.key), version.index_value());
                    last_main = main;
                    out.rows += 1;
                }
            }
            if batch.mutations.len() >= 3 * BATCH_ROWS || bytes >= BATCH_BYTES {
                engine.write(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
    }
    // etcd's current revision is its last row's, or the compacted one if that is later; a
    // compaction that was scheduled but not finished is finished by the store's compactor.
    let compacted = scheduled.max(finished).unwrap_or(-1);
    out.compacted = compacted;
    out.revision = last_main.max(compacted);
    if out.revision > 1 {
        batch.put(keys::meta_revision(), encode_counter(out.revision));
    }
    if compacted > 0 {
        batch.put(keys::meta_compacted(), encode_counter(compacted));
        let swept = finished.unwrap_or(-1);
        batch.put(keys::meta_compaction_done(), encode_counter(swept));
    }
    engine.write(batch).await?;
    Ok(())
}

/// Attaches every live key to the lease its newest version names, if that lease exists (etcd
/// rebuilds its attachments the same way when it opens a database), and counts live keys.
async fn attach_leases<E: Engine>(engine: &E, out: &mut Imported) -> Result<(), EtcdDbError> {
    let snapshot = engine.snapshot().await?;
    let mut leases = BTreeSet::new();
    for_each_page(&snapshot, keys::lease_records(), 1024, |page| {
        for (k, _) in page {
            if let Some(id) = k.get(1..9) {
                leases.insert(i64::from_be_bytes(id.try_into().unwrap_or_default()));
            }
        }
        true
    })
    .await?;
    let mut pages = keys::region_range(keys::INDEX, b"", None);
    loop {
        let page = snapshot.scan(&pages, 1024, false).await?;
        let full = page.len() == 1024;
        if let Some((last, _)) = page.last() {
            pages.start = crate::engine::next_key(last);
        }
        // The live keys of the page, and where their newest versions are.
        let (live, newest): (Vec<Bytes>, Vec<Bytes>) = page
            .iter()
            .filter_map(|(entry, value)| match decode_index(value) {
                Some((rev, true)) => keys::decode(entry).map(|(key, _)| {
                    let at = keys::revision_key(&key, rev);
                    (key, at)
                }),
                _ => None,
            })
            .unzip();
        let versions = snapshot.get_many(&newest).await?;
        let mut batch = WriteBatch::default();
        for (key, value) in live.iter().zip(versions) {
            out.keys += 1;
            let lease = value
                .and_then(|v| Version::decode(key.clone(), 0, v))
                .and_then(Version::into_live)
                .map_or(0, |kv| kv.lease);
            if lease != 0 && leases.contains(&lease) {
                batch.put(keys::lease_key_entry(lease, key), Bytes::new());
            }
        }
        if !batch.is_empty() {
            engine.write(batch).await?;
        }
        if !full {
            return Ok(());
        }
    }
}
