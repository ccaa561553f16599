//! Writing a bbolt file in one pass: top-level buckets in name order, each bucket's keys in
//! ascending order. Leaves are written as they fill; a bucket's branch levels are built from
//! the first key and page of each leaf when it ends, so memory holds one page and one small
//! entry per leaf, whatever the size of the file. Pages 0 and 1 (the meta pages) are written
//! last, once the root is known. Like etcd's own files, the result has no freelist page.

use super::{
    BRANCH, BUCKET_ELEMENT, BoltError, BoltResult, ELEMENT, LEAF, MAGIC, MAX_KEY_BYTES, META,
    META_BYTES, NO_FREELIST, PAGE_HEADER, VERSION, fnv64a,
};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};

/// bbolt's (and etcd's) page size on the machines Engram runs on.
const PAGE_SIZE: usize = 4096;

/// Writes a bbolt file from sorted input.
pub struct BoltWriter {
    out: BufWriter<File>,
    next_page: u64,
    /// Finished buckets: name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
    open: Option<Vec<u8>>,
    /// The elements of the leaf being filled: (flags, key, value).
    leaf: Vec<(u32, Vec<u8>, Vec<u8>)>,
    leaf_bytes: usize,
    /// The first key and page of every leaf written for the open bucket.
    leaves: Vec<(Vec<u8>, u64)>,
    last_key: Option<Vec<u8>>,
}

impl BoltWriter {
    /// Writes into `file` (empty, opened for writing).
    pub fn new(mut file: File) -> BoltResult<Self> {
        file.seek(SeekFrom::Start(2 * PAGE_SIZE as u64))?;
        Ok(BoltWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            next_page: 2,
            buckets: Vec::new(),
            open: None,
            leaf: Vec::new(),
            leaf_bytes: PAGE_HEADER,
            leaves: Vec::new(),
            last_key: None,
        })
    }

    /// Starts bucket `name`, which must sort after every bucket before it.
    pub fn begin_bucket(&mut self, name: &[u8]) -> BoltResult<()> {
        if self.open.is_some() {
            return Err(BoltError::Misuse("a bucket is open already"));
        }
        if self
            .buckets
            .last()
            .is_some_and(|(last, _)| name <= last.as_slice())
        {
            return Err(BoltError::Misuse(
                "buckets must come in ascending name order",
            ));
        }
        self.open = Some(name.to_vec());
        self.last_key = None;
        Ok(())
    }

    /// Adds `key` (after every key before it in the bucket) with `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> BoltResult<()> {
        if self.open.is_none() {
            return Err(BoltError::Misuse("no bucket is open"));
        }
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(BoltError::Misuse("keys are 1 to 32768 bytes"));
        }
        if self.last_key.as_deref().is_some_and(|last| key <= last) {
            return Err(BoltError::Misuse("keys must come in ascending order"));
        }
        self.last_key = Some(key.to_vec());
        self.push(0, key, value)
    }

    fn push(&mut self, flags: u32, key: &[u8], value: &[u8]) -> BoltResult<()> {
        let size = ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty()
            && (self.leaf_bytes + size > PAGE_SIZE || self.leaf.len() == usize::from(u16::MAX))
        {
            self.flush_leaf()?;
        }
        self.leaf.push((flags, key.to_vec(), value.to_vec()));
        self.leaf_bytes += size;
        Ok(())
    }

    fn flush_leaf(&mut self) -> BoltResult<()> {
        let elements = std::mem::take(&mut self.leaf);
        self.leaf_bytes = PAGE_HEADER;
        let body = elements
            .iter()
            .map(|(_, k, v)| ELEMENT + k.len() + v.len())
            .sum();
        let id = self.write_page(LEAF, elements.len(), body, |page| {
            let mut data = PAGE_HEADER + elements.len() * ELEMENT;
            for (i, (flags, key, value)) in elements.iter().enumerate() {
                let e = PAGE_HEADER + i * ELEMENT;
                page[e..e + 4].copy_from_slice(&flags.to_le_bytes());
                page[e + 4..e + 8].copy_from_slice(&((data - e) as u32).to_le_bytes());
                page[e + 8..e + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
                page[e + 12..e + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
                page[data..data + key.len()].copy_from_slice(key);
                data += key.len();
                page[data..data + value.len()].copy_from_slice(value);
                data += value.len();
            }
        })?;
        let first = elements.into_iter().next().map(|(_, k, _)| k);
        self.leaves.push((first.unwrap_or_default(), id));
        Ok(())
    }

    /// Writes one page (with overflow pages for a body larger than a page): `fill` writes the
    /// elements and data after the header. Returns its id.
    fn write_page(
        &mut self,
        flags: u16,
        count: usize,
        body: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> BoltResult<u64> {
        let pages = (PAGE_HEADER + body).div_ceil(PAGE_SIZE).max(1);
        let mut page = vec![0u8; pages * PAGE_SIZE];
        let id = self.next_page;
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[8..10].copy_from_slice(&flags.to_le_bytes());
        page[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        page[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        fill(&mut page);
        self.out.write_all(&page)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Builds branch levels over `children` (first key, page) until one page remains: the
    /// root.
    fn tree(&mut self, mut children: Vec<(Vec<u8>, u64)>) -> BoltResult<u64> {
        while children.len() > 1 {
            let mut parents = Vec::new();
            let mut start = 0;
            while start < children.len() {
                let mut end = start;
                let mut bytes = PAGE_HEADER;
                while end < children.len()
                    && end - start < usize::from(u16::MAX)
                    && (end == start || bytes + ELEMENT + children[end].0.len() <= PAGE_SIZE)
                {
                    bytes += ELEMENT + children[end].0.len();
                    end += 1;
                }
                let level = &children[start..end];
                let id = self.write_page(BRANCH, level.len(), bytes - PAGE_HEADER, |page| {
                    let mut data = PAGE_HEADER + level.len() * ELEMENT;
                    for (i, (key, child)) in level.iter().enumerate() {
                        let e = PAGE_HEADER + i * ELEMENT;
                        page[e..e + 4].copy_from_slice(&((data - e) as u32).to_le_bytes());
                        page[e + 4..e + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
                        page[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
                        page[data..data + key.len()].copy_from_slice(key);
                        data += key.len();
                    }
                })?;
                parents.push((children[start].0.clone(), id));
                start = end;
            }
            children = parents;
        }
        children
            .first()
            .map(|(_, id)| *id)
            .ok_or(BoltError::Misuse("a tree of no pages"))
    }

    /// Ends the open bucket.
    pub fn end_bucket(&mut self) -> BoltResult<()> {
        let name = self
            .open
            .take()
            .ok_or(BoltError::Misuse("no bucket is open"))?;
        // An empty bucket gets an empty leaf as its root.
        if !self.leaf.is_empty() || self.leaves.is_empty() {
            self.flush_leaf()?;
        }
        let leaves = std::mem::take(&mut self.leaves);
        let root = self.tree(leaves)?;
        self.buckets.push((name, root));
        Ok(())
    }

    /// Writes the root bucket and the meta pages, syncs, and returns the file with the
    /// database's size in bytes.
    pub fn finish(mut self) -> BoltResult<(File, u64)> {
        if self.open.is_some() {
            return Err(BoltError::Misuse("a bucket is still open"));
        }
        for (name, root) in std::mem::take(&mut self.buckets) {
            let mut header = [0u8; 16];
            header[0..8].copy_from_slice(&root.to_le_bytes());
            self.push(BUCKET_ELEMENT, &name, &header)?;
        }
        self.flush_leaf()?;
        let leaves = std::mem::take(&mut self.leaves);
        let root = self.tree(leaves)?;
        let pages = self.next_page;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        // Two valid meta pages; the one with the higher transaction id is current.
        for (id, txid) in [(0u64, 2u64), (1, 1)] {
            let mut page = vec![0u8; PAGE_SIZE];
            page[0..8].copy_from_slice(&id.to_le_bytes());
            page[8..10].copy_from_slice(&META.to_le_bytes());
            let m = &mut page[PAGE_HEADER..PAGE_HEADER + META_BYTES];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&NO_FREELIST.to_le_bytes());
            m[40..48].copy_from_slice(&pages.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let checksum = fnv64a(&m[..56]);
            m[56..64].copy_from_slice(&checksum.to_le_bytes());
            file.seek(SeekFrom::Start(id * PAGE_SIZE as u64))?;
            file.write_all(&page)?;
        }
        file.sync_all()?;
        Ok((file, pages * PAGE_SIZE as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::super::BoltReader;
    use super::*;

    /// What the writer writes, the reader reads back: many leaves and branch levels, a value
    /// spanning overflow pages, an empty bucket, and the check finds nothing wrong.
    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut writer = BoltWriter::new(File::create(&path).unwrap()).unwrap();
        writer.begin_bucket(b"empty").unwrap();
        writer.end_bucket().unwrap();
        writer.begin_bucket(b"key").unwrap();
        for i in 0..20_000u32 {
            let value = if i == 777 {
                vec![7u8; 3 * PAGE_SIZE]
            } else {
                i.to_le_bytes().to_vec()
            };
            writer.put(&i.to_be_bytes(), &value).unwrap();
        }
        assert!(writer.put(&5u32.to_be_bytes(), b"x").is_err());
        writer.end_bucket().unwrap();
        assert!(writer.begin_bucket(b"alarm").is_err());
        let (_, size) = writer.finish().unwrap();

        let reader = BoltReader::open(&path).unwrap();
        assert_eq!(reader.size(), size);
        let names: Vec<Vec<u8>> = reader
            .buckets()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, [b"empty".to_vec(), b"key".to_vec()]);
        let empty = reader.bucket(b"empty").unwrap().unwrap();
        assert_eq!(reader.entries(&empty).count(), 0);
        let keys = reader.bucket(b"key").unwrap().unwrap();
        let mut n = 0u32;
        for entry in reader.entries(&keys) {
            let (key, value) = entry.unwrap();
            assert_eq!(key, n.to_be_bytes());
            if n == 777 {
                assert_eq!(value, vec![7u8; 3 * PAGE_SIZE]);
            } else {
                assert_eq!(value, n.to_le_bytes());
            }
            n += 1;
        }
        assert_eq!(n, 20_000);
        assert_eq!(reader.check().unwrap(), 20_000);
        assert!(reader.bucket(b"missing").unwrap().is_none());
    }

    /// A truncated file, a flipped byte in a meta page or in a page of the tree, and a file
    /// of another kind are errors, not panics.
    #[test]
    fn damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut writer = BoltWriter::new(File::create(&path).unwrap()).unwrap();
        writer.begin_bucket(b"key").unwrap();
        for i in 0..5_000u32 {
            writer.put(&i.to_be_bytes(), &[1u8; 100]).unwrap();
        }
        writer.end_bucket().unwrap();
        let (_, size) = writer.finish().unwrap();
        let good = std::fs::read(&path).unwrap();
        let read_all = |bytes: &[u8]| -> BoltResult<u64> {
            let p = dir.path().join("damaged");
            std::fs::write(&p, bytes).unwrap();
            BoltReader::open(&p)?.check()
        };
        assert_eq!(read_all(&good).unwrap(), 5_000);
        assert!(read_all(&good[..size as usize / 2]).is_err());
        let mut meta = good.clone();
        meta[20] ^= 1;
        meta[PAGE_SIZE + 20] ^= 1;
        assert!(read_all(&meta).is_err());
        // Every page of the tree damaged in its header (its id, its element count), and every
        // leaf in its first element's position, is caught.
        for page in 2..(size as usize / PAGE_SIZE) {
            let at = page * PAGE_SIZE;
            let leaf = u16::from_le_bytes([good[at + 8], good[at + 9]]) == LEAF;
            for offset in [0, 10, PAGE_HEADER + 4] {
                if offset == PAGE_HEADER + 4 && !leaf {
                    continue;
                }
                let mut bad = good.clone();
                bad[at + offset] ^= 0x40;
                assert!(read_all(&bad).is_err(), "page {page} offset {offset}");
            }
        }
        assert!(matches!(
            read_all(b"ENGRAM-SNAPSHOT-1\n and more bytes to fill a page of something else"),
            Err(BoltError::NotBolt(_))
        ));
    }
}
