//! Reading a bbolt file page by page, checking every page it reads: a corrupt, truncated or
//! foreign file is an error, never a panic and never a silently shortened listing.

use super::{
    BRANCH, BUCKET_ELEMENT, BoltError, BoltResult, ELEMENT, LEAF, MAGIC, META, META_BYTES,
    PAGE_HEADER, VERSION, fnv64a,
};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An open bbolt file, read as its current meta page describes it. Bytes past the last page
/// (etcd's SHA-256 trailer) are not part of the database.
pub struct BoltReader {
    file: File,
    page_size: usize,
    /// Pages in the database (the high-water mark).
    pages: u64,
    root: u64,
}

/// A top-level bucket: where its tree is.
#[derive(Debug, Clone)]
pub struct Bucket {
    root: Root,
}

#[derive(Debug, Clone)]
enum Root {
    Page(u64),
    /// A bucket small enough to live inside its parent's leaf: its one leaf page.
    Inline(Vec<u8>),
}

/// One page's bytes (with its overflow pages).
struct Page {
    bytes: Vec<u8>,
}

impl Page {
    fn u16_at(&self, at: usize) -> BoltResult<u16> {
        let b = self.bytes.get(at..at + 2).ok_or_else(|| truncated(at))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_at(&self, at: usize) -> BoltResult<u32> {
        let b = self.bytes.get(at..at + 4).ok_or_else(|| truncated(at))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64_at(&self, at: usize) -> BoltResult<u64> {
        let b = self.bytes.get(at..at + 8).ok_or_else(|| truncated(at))?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn flags(&self) -> BoltResult<u16> {
        self.u16_at(8)
    }

    fn count(&self) -> BoltResult<usize> {
        Ok(usize::from(self.u16_at(10)?))
    }

    fn bytes_at(&self, at: usize, len: usize) -> BoltResult<&[u8]> {
        at.checked_add(len)
            .and_then(|end| self.bytes.get(at..end))
            .ok_or_else(|| truncated(at))
    }

    /// Leaf element `i`: (flags, key, value).
    fn leaf(&self, i: usize) -> BoltResult<(u32, &[u8], &[u8])> {
        let e = PAGE_HEADER + i * ELEMENT;
        let flags = self.u32_at(e)?;
        let pos = self.u32_at(e + 4)? as usize;
        let key_len = self.u32_at(e + 8)? as usize;
        let value_len = self.u32_at(e + 12)? as usize;
        let key = self.bytes_at(e + pos, key_len)?;
        let value = self.bytes_at(e + pos + key_len, value_len)?;
        Ok((flags, key, value))
    }

    /// Branch element `i`: (first key of the child, child page).
    fn branch(&self, i: usize) -> BoltResult<(&[u8], u64)> {
        let e = PAGE_HEADER + i * ELEMENT;
        let pos = self.u32_at(e)? as usize;
        let key_len = self.u32_at(e + 4)? as usize;
        let child = self.u64_at(e + 8)?;
        Ok((self.bytes_at(e + pos, key_len)?, child))
    }
}

fn truncated(at: usize) -> BoltError {
    BoltError::Corrupt(format!("an element points outside its page (offset {at})"))
}

/// The fields of a valid meta page.
struct Meta {
    page_size: usize,
    root: u64,
    pages: u64,
    txid: u64,
}

fn parse_meta(page: &[u8]) -> Option<Meta> {
    let flags = u16::from_le_bytes(page.get(8..10)?.try_into().ok()?);
    let m = page.get(PAGE_HEADER..PAGE_HEADER + META_BYTES)?;
    let u32_at = |at: usize| u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&m[at..at + 8]);
        u64::from_le_bytes(a)
    };
    if flags & META == 0 || u32_at(0) != MAGIC || u32_at(4) != VERSION {
        return None;
    }
    if u64_at(56) != fnv64a(&m[..56]) {
        return None;
    }
    Some(Meta {
        page_size: u32_at(8) as usize,
        root: u64_at(16),
        pages: u64_at(40),
        txid: u64_at(48),
    })
}

impl BoltReader {
    /// Opens `path`, checking its meta pages; the file must hold every page they count.
    pub fn open(path: &Path) -> BoltResult<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut first = vec![0u8; 4096.min(len as usize)];
        file.read_exact_at(&mut first, 0)?;
        if first.len() < PAGE_HEADER + META_BYTES {
            return Err(BoltError::NotBolt("shorter than a meta page"));
        }
        let magic = u32::from_le_bytes([first[16], first[17], first[18], first[19]]);
        if magic != MAGIC {
            return Err(BoltError::NotBolt("no bbolt magic number"));
        }
        let meta0 = parse_meta(&first);
        // The second meta page sits one page further; the first tells how far.
        let page_size = meta0.as_ref().map_or(4096, |m| m.page_size);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::Corrupt(format!("page size {page_size}")));
        }
        let mut second = vec![0u8; PAGE_HEADER + META_BYTES];
        let meta1 = match file.read_exact_at(&mut second, page_size as u64) {
            Ok(()) => parse_meta(&second),
            Err(_) => None,
        };
        let meta = match (meta0, meta1) {
            (Some(a), Some(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => {
                return Err(BoltError::Corrupt("both meta pages are invalid".into()));
            }
        };
        if meta.page_size != page_size {
            return Err(BoltError::Corrupt(
                "the meta pages disagree on the page size".into(),
            ));
        }
        let needed = meta.pages.saturating_mul(page_size as u64);
        if meta.pages < 3 || needed > len {
            return Err(BoltError::Corrupt(format!(
                "the file holds {len} bytes, its meta page counts {} pages of {page_size}",
                meta.pages
            )));
        }
        if meta.root < 2 || meta.root >= meta.pages {
            return Err(BoltError::Corrupt(format!("root page {}", meta.root)));
        }
        Ok(BoltReader {
            file,
            page_size,
            pages: meta.pages,
            root: meta.root,
        })
    }

    /// Bytes of the database (the pages its meta counts; what follows is not part of it).
    pub fn size(&self) -> u64 {
        self.pages * self.page_size as u64
    }

    fn page(&self, id: u64) -> BoltResult<Page> {
        if id < 2 || id >= self.pages {
            return Err(BoltError::Corrupt(format!(
                "page {id} outside the {} pages of the file",
                self.pages
            )));
        }
        let at = id * self.page_size as u64;
        let mut header = [0u8; PAGE_HEADER];
        self.file.read_exact_at(&mut header, at)?;
        let stored = u64::from_le_bytes(header[0..8].try_into().unwrap_or_default());
        if stored != id {
            return Err(BoltError::Corrupt(format!(
                "page {id} says it is page {stored}"
            )));
        }
        let overflow = u64::from(u32::from_le_bytes(
            header[12..16].try_into().unwrap_or_default(),
        ));
        if id + overflow >= self.pages {
            return Err(BoltError::Corrupt(format!("page {id} overflows the file")));
        }
        let mut bytes = vec![0u8; (overflow as usize + 1) * self.page_size];
        self.file.read_exact_at(&mut bytes, at)?;
        Ok(Page { bytes })
    }

    /// The top-level buckets, by name in byte order.
    pub fn buckets(&self) -> BoltResult<Vec<(Vec<u8>, Bucket)>> {
        let mut out = Vec::new();
        let mut entries = Entries::new(self, Root::Page(self.root), true);
        while let Some((flags, name, value)) = entries.next_element()? {
            if flags & BUCKET_ELEMENT == 0 {
                continue;
            }
            let root = u64::from_le_bytes(
                value
                    .get(0..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| BoltError::Corrupt("a bucket header is truncated".into()))?,
            );
            let root = if root == 0 {
                Root::Inline(value.get(16..).unwrap_or_default().to_vec())
            } else {
                Root::Page(root)
            };
            out.push((name, Bucket { root }));
        }
        Ok(out)
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> BoltResult<Option<Bucket>> {
        Ok(self
            .buckets()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b))
    }

    /// Every key and value of `bucket`, in key order.
    pub fn entries(&self, bucket: &Bucket) -> Entries<'_> {
        Entries::new(self, bucket.root.clone(), false)
    }

    /// Walks every bucket's tree once: each page belongs to one place only and lies inside the
    /// file, every element inside its page, keys ascend. Returns the entries it saw.
    pub fn check(&self) -> BoltResult<u64> {
        let mut seen = HashSet::new();
        seen.insert(self.root);
        let mut entries = 0u64;
        for (name, bucket) in self.buckets()? {
            let mut walk = self.entries(&bucket);
            walk.seen = Some(std::mem::take(&mut seen));
            while walk.next_element()?.is_some() {
                entries += 1;
            }
            seen = walk.seen.take().unwrap_or_default();
            tracing::trace!(bucket = %String::from_utf8_lossy(&name), "bucket checked");
        }
        Ok(entries)
    }
}

/// A leaf element: flags, key, value.
type Element = (u32, Vec<u8>, Vec<u8>);

/// The entries of a bucket in key order, read one leaf page at a time.
pub struct Entries<'a> {
    reader: &'a BoltReader,
    /// The pages from the root down to the current leaf, with the position in each.
    stack: Vec<(Page, usize)>,
    root: Option<Root>,
    /// With buckets: the root bucket's elements (buckets) are shown too.
    with_buckets: bool,
    last: Option<Vec<u8>>,
    /// Pages visited so far, when checking that no page is reached twice.
    seen: Option<HashSet<u64>>,
}

impl<'a> Entries<'a> {
    fn new(reader: &'a BoltReader, root: Root, with_buckets: bool) -> Self {
        Entries {
            reader,
            stack: Vec::new(),
            root: Some(root),
            with_buckets,
            last: None,
            seen: None,
        }
    }

    fn visit(&mut self, id: u64) -> BoltResult<Page> {
        if let Some(seen) = &mut self.seen
            && !seen.insert(id)
        {
            return Err(BoltError::Corrupt(format!("page {id} is reached twice")));
        }
        if self.stack.len() > 64 {
            return Err(BoltError::Corrupt("a tree deeper than 64 levels".into()));
        }
        self.reader.page(id)
    }

    /// The next element.
    fn next_element(&mut self) -> BoltResult<Option<Element>> {
        if let Some(root) = self.root.take() {
            let page = match root {
                Root::Page(id) => self.visit(id)?,
                Root::Inline(bytes) => Page { bytes },
            };
            self.stack.push((page, 0));
        }
        loop {
            let Some((page, at)) = self.stack.last_mut() else {
                return Ok(None);
            };
            let flags = page.flags()?;
            if *at >= page.count()? {
                self.stack.pop();
                continue;
            }
            let i = *at;
            *at += 1;
            if flags & BRANCH != 0 {
                let (_, child) = page.branch(i)?;
                let child = self.visit(child)?;
                self.stack.push((child, 0));
                continue;
            }
            if flags & LEAF == 0 {
                return Err(BoltError::Corrupt(format!(
                    "a page of the tree is neither branch nor leaf (flags {flags:#x})"
                )));
            }
            let (element_flags, key, value) = page.leaf(i)?;
            if element_flags & BUCKET_ELEMENT != 0 && !self.with_buckets {
                // etcd has no nested buckets; a bucket inside a bucket is skipped.
                continue;
            }
            if self.last.as_deref().is_some_and(|last| key <= last) {
                return Err(BoltError::Corrupt("keys out of order".into()));
            }
            let (key, value) = (key.to_vec(), value.to_vec());
            self.last = Some(key.clone());
            return Ok(Some((element_flags, key, value)));
        }
    }
}

impl Iterator for Entries<'_> {
    type Item = BoltResult<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_element() {
            Ok(Some((_, key, value))) => Some(Ok((key, value))),
            Ok(None) => None,
            Err(err) => {
                self.stack.clear();
                Some(Err(err))
            }
        }
    }
}
