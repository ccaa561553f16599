//! Backups Engram wrote before it wrote etcd's format (see `crate::etcd::export`): read back
//! into an empty engine, so that `engram restore` still takes them.
//!
//! The format: `MAGIC`, then entries `u32 key length, key, u32 value length, value` in key
//! order (the engine's own keyspace), then `u32::MAX` and the CRC-32 of everything before it,
//! padded to a multiple of 512 bytes and followed by the SHA-256 of all before it.
//!
//! Its entries are the engine's own rows, so users, roles and the enabled flag (the `AUTH`
//! region) come back as they were written, and a store opened on the restored engine loads
//! them. Only the members' election records (`BRAIN`) were left out.
//!
//! Engram no longer writes it: an etcd database carries everything it did (every version,
//! revision, compacted revision and lease) and etcd's own tools read it. It is somewhat larger
//! (20,000 keys of 1 KiB written 3 times: 83 MB against 71 MB; bbolt's pages are not full).

use crate::engine::{Engine, EngineError, KeyRange, Snapshot, WriteBatch};
use bytes::Bytes;
use std::io::Read;

pub const MAGIC: &[u8] = b"ENGRAM-SNAPSHOT-1\n";
const END: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("not an Engram snapshot")]
    NotASnapshot,
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("the target data directory is not empty")]
    NotEmpty,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes the snapshot read from `input` into `engine`, which must be empty.
pub async fn restore<E: Engine>(engine: &E, mut input: impl Read) -> Result<u64, SnapshotError> {
    let probe = engine.snapshot().await?;
    if !probe
        .scan(&KeyRange::new(Bytes::new(), None), 1, false)
        .await?
        .is_empty()
    {
        return Err(SnapshotError::NotEmpty);
    }
    let mut crc = crc32fast::Hasher::new();
    let mut read =
        |n: usize, crc: &mut crc32fast::Hasher, hash: bool| -> Result<Vec<u8>, SnapshotError> {
            let mut bytes = vec![0; n];
            input.read_exact(&mut bytes).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
                _ => SnapshotError::Io(e),
            })?;
            if hash {
                crc.update(&bytes);
            }
            Ok(bytes)
        };
    if read(MAGIC.len(), &mut crc, true)? != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let word = |b: Vec<u8>| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let mut batch = WriteBatch::default();
    let mut entries = 0u64;
    loop {
        let len = word(read(4, &mut crc, true)?);
        if len == END {
            break;
        }
        let key = read(len as usize, &mut crc, true)?;
        let value_len = word(read(4, &mut crc, true)?);
        let value = read(value_len as usize, &mut crc, true)?;
        batch.put(key, value);
        entries += 1;
        if batch.mutations.len() >= 4096 {
            engine.write(std::mem::take(&mut batch)).await?;
        }
    }
    let expected = crc.clone().finalize();
    if word(read(4, &mut crc, false)?) != expected {
        return Err(SnapshotError::Checksum);
    }
    if !batch.is_empty() {
        engine.write(batch).await?;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MemoryEngine;
    use bytes::{BufMut, BytesMut};
    use tokio::sync::mpsc;

    /// Entries scanned per engine read.
    const PAGE: usize = 1024;

    /// The whole dump of `source`, in 4 KiB pieces put back together.
    async fn dumped(source: &MemoryEngine) -> Vec<u8> {
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(dump(source.snapshot().await.unwrap(), 4096, tx));
        let mut file = Vec::new();
        while let Some(piece) = rx.recv().await {
            file.extend_from_slice(&piece.unwrap());
        }
        file
    }

    /// Streams a consistent copy of `snapshot` in chunks of about `chunk` bytes into `out`.
    pub async fn dump<S: Snapshot>(
        snapshot: S,
        chunk: usize,
        out: mpsc::Sender<Result<Bytes, EngineError>>,
    ) {
        let mut crc = crc32fast::Hasher::new();
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut sent = 0usize;
        let mut buf = BytesMut::with_capacity(chunk + 1024);
        buf.put_slice(MAGIC);
        // The members' election records stay behind: a restored store elects its own leader.
        // Users and roles (after them) come along.
        let mut range = crate::mvcc::keys::data_range();
        let mut ranges = [crate::auth::records::region()].into_iter();
        loop {
            let page = match snapshot.scan(&range, PAGE, false).await {
                Ok(page) => page,
                Err(err) => {
                    let _ = out.send(Err(err)).await;
                    return;
                }
            };
            for (k, v) in &page {
                buf.put_u32(k.len() as u32);
                buf.put_slice(k);
                buf.put_u32(v.len() as u32);
                buf.put_slice(v);
                if buf.len() >= chunk {
                    let piece = buf.split().freeze();
                    crc.update(&piece);
                    sha.update(&piece);
                    sent += piece.len();
                    if out.send(Ok(piece)).await.is_err() {
                        return;
                    }
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => {
                    range.start = crate::engine::next_key(last)
                }
                _ => match ranges.next() {
                    Some(next) => range = next,
                    None => break,
                },
            }
        }
        buf.put_u32(END);
        crc.update(&buf);
        buf.put_u32(crc.finalize());
        let padding = (512 - (sent + buf.len()) % 512) % 512;
        buf.put_bytes(0, padding);
        sha.update(&buf);
        buf.put_slice(sha.finish().as_ref());
        let _ = out.send(Ok(buf.freeze())).await;
    }

    /// Users, roles and the enabled flag are dumped and restored, and a store opened on the
    /// restored engine enforces them; the election records stay behind.
    #[tokio::test]
    async fn auth_is_dumped_and_restored() {
        use crate::store::{Store, StoreOptions};
        let source = MemoryEngine::new();
        let store = Store::open(source.clone(), StoreOptions::default())
            .await
            .unwrap();
        for change in crate::auth::enable_with_root(b"$2a$04$hash") {
            store.change_auth(change, Some("root")).await.unwrap();
        }
        let mut batch = WriteBatch::default();
        batch.put(crate::mvcc::keys::brain_term(), Bytes::from_static(b"1"));
        source.write(batch).await.unwrap();
        let file = dumped(&source).await;
        let target = MemoryEngine::new();
        restore(&target, &file[..]).await.unwrap();
        let restored = Store::open(target.clone(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(*restored.auth(), *store.auth());
        assert!(restored.auth().enabled());
        assert_eq!(restored.auth().user_names(), ["root"]);
        let brain = target.snapshot().await.unwrap();
        assert!(
            brain
                .get(&crate::mvcc::keys::brain_term())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_dump_restores_to_the_same_keyspace_and_corruption_is_caught() {
        let source = MemoryEngine::new();
        let mut batch = WriteBatch::default();
        for i in 0..3000u32 {
            batch.put(i.to_be_bytes().to_vec(), vec![7u8; (i % 50) as usize]);
        }
        source.write(batch).await.unwrap();
        let file = dumped(&source).await;
        let target = MemoryEngine::new();
        assert_eq!(restore(&target, &file[..]).await.unwrap(), 3000);
        let all = KeyRange::new(Bytes::new(), None);
        let a = source
            .snapshot()
            .await
            .unwrap()
            .scan(&all, usize::MAX, false)
            .await
            .unwrap();
        let b = target
            .snapshot()
            .await
            .unwrap()
            .scan(&all, usize::MAX, false)
            .await
            .unwrap();
        assert_eq!(a, b);
        // Restoring twice into the same engine is refused.
        assert!(matches!(
            restore(&target, &file[..]).await,
            Err(SnapshotError::NotEmpty)
        ));
        // A flipped byte is detected; a cut file is too.
        // (Entry 0 is 12 bytes with an empty value; entry 1's one-byte value is at 24.)
        let mut bad = file.clone();
        bad[MAGIC.len() + 24] ^= 1;
        assert!(matches!(
            restore(&MemoryEngine::new(), &bad[..]).await,
            Err(SnapshotError::Checksum)
        ));
        assert_eq!(file.len() % 512, 32, "etcdctl's size check");
        let body = &file[..file.len() - 32];
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        assert_eq!(&file[file.len() - 32..], digest.as_ref());
        let cut = &file[..file.len() - 7 - 32 - 512];
        assert!(matches!(
            restore(&MemoryEngine::new(), cut).await,
            Err(SnapshotError::Truncated)
        ));
    }
}
