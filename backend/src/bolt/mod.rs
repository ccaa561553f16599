//! bbolt files, the format etcd keeps its data in and writes its backups as: read one page at a
//! time, written in one pass from sorted input. Nothing here knows what etcd stores in them
//! (see [`crate::etcd`]).
//!
//! Why not a crate: `bbolt-rs` (the one Rust port) cannot open etcd's files, which carry no
//! freelist (etcd opens bbolt with `NoFreelistSync`), and builds a whole write transaction in
//! memory (5 GiB for a million keys, measured); the format, as bbolt 1.3 writes it for etcd
//! 3.5, is small:
//!
//! - Every page starts with a 16-byte header: page id (u64), flags (u16: branch 0x01, leaf
//!   0x02, meta 0x04, freelist 0x10), element count (u16), overflow (u32: a page spanning `n`
//!   pages has overflow `n - 1`). Integers are little-endian.
//! - Pages 0 and 1 are meta pages: magic `0xED0CDAED`, version 2, page size, flags, the root
//!   bucket (root page id, sequence), the freelist page id (`u64::MAX`: none), the high-water
//!   mark (page count), the transaction id, and an FNV-1a-64 checksum of those 56 bytes. The
//!   valid one with the higher transaction id is current.
//! - A leaf element is 16 bytes (flags u32, pos u32, key size u32, value size u32), a branch
//!   element 16 bytes (pos u32, key size u32, child page id u64); `pos` counts from the
//!   element itself to its key, which the value follows. A branch element's key is its child's
//!   first key.
//! - The root bucket is a tree whose leaf elements (flag 0x01) are the top-level buckets; a
//!   bucket's value is its root page id and sequence, followed, when the root page id is 0, by
//!   the bucket's single leaf page inline.

mod read;
mod write;

pub use read::{BoltReader, Bucket, Entries};
pub use write::BoltWriter;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
/// A leaf element whose value is a bucket.
const BUCKET_ELEMENT: u32 = 0x01;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Bytes of a meta page's fields, checksum included.
const META_BYTES: usize = 64;
/// The meta page's "no freelist page" (etcd's files never have one).
const NO_FREELIST: u64 = u64::MAX;
/// bbolt's limit on key size.
pub const MAX_KEY_BYTES: usize = 32768;

/// What is wrong with a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("not a bbolt file: {0}")]
    NotBolt(&'static str),
    #[error("corrupt bbolt file: {0}")]
    Corrupt(String),
    #[error("bbolt writer: {0}")]
    Misuse(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type BoltResult<T> = Result<T, BoltError>;

/// FNV-1a, 64 bits: the meta page checksum.
fn fnv64a(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}
