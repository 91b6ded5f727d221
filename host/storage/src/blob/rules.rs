//! What every engine's blob service does the same way: the records it stores (so usage is
//! counted alike), the checks before a write, the range a read serves, how a block list is
//! resolved, and how a listing folds names into virtual directories ([`ListScan`]).

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::*;
use crate::StorageError;

/// A stored record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard to a Vec cannot fail for plain data.
    postcard::to_allocvec(value).unwrap_or_default()
}

/// A stored record back, `Corrupt` naming `table` if it does not decode.
pub fn decode<T: serde::de::DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        table,
        detail: e.to_string(),
    })
}
use crate::quota::{SEGMENT_BYTES, metadata_bytes};

/// The content type of a blob stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A container as every engine stores it.
#[derive(Serialize, Deserialize, Debug)]
pub struct ContainerRecord {
    /// Its ETag.
    pub etag: String,
    /// When it was last changed.
    pub last_modified: Timestamp,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its lease.
    pub lease: LeaseRecord,
}

/// One run of a blob's content: a committed block, or the whole body of a Put Blob.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Segment {
    /// The committed block id, for blobs made by Put Block List.
    pub block_id: Option<Vec<u8>>,
    /// Where its bytes are (the engine's data id).
    pub data_id: u64,
    /// How many bytes.
    pub len: u64,
}

/// A blob as every engine stores it.
#[derive(Serialize, Deserialize, Debug)]
pub struct BlobRecord {
    /// Its ETag.
    pub etag: String,
    /// When it was first created.
    pub created: Timestamp,
    /// When it was last written.
    pub last_modified: Timestamp,
    /// Its HTTP properties.
    pub content: ContentSettings,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its content, in order.
    pub segments: Vec<Segment>,
    /// Its length.
    pub size: u64,
    /// Its lease.
    pub lease: LeaseRecord,
    /// Added after the first release: records written before it end at `lease`
    /// ([`decode_blob`]).
    pub copy: Option<CopyInfo>,
}

/// A blob record as written before copies were recorded.
#[derive(Serialize, Deserialize)]
struct BlobRecordV1 {
    etag: String,
    created: Timestamp,
    last_modified: Timestamp,
    content: ContentSettings,
    metadata: Metadata,
    segments: Vec<Segment>,
    size: u64,
    lease: LeaseRecord,
}

/// Decodes a blob record of either layout. postcard is not self-describing, so a record of
/// the first layout lacks the trailing field and fails to decode as the new one; it then
/// decodes as `BlobRecordV1`, which has no copy.
pub fn decode_blob(bytes: &[u8]) -> Result<BlobRecord, StorageError> {
    match decode::<BlobRecord>("blobs", bytes) {
        Ok(r) => Ok(r),
        Err(e) => match postcard::from_bytes::<BlobRecordV1>(bytes) {
            Ok(v1) => Ok(BlobRecord {
                etag: v1.etag,
                created: v1.created,
                last_modified: v1.last_modified,
                content: v1.content,
                metadata: v1.metadata,
                segments: v1.segments,
                size: v1.size,
                lease: v1.lease,
                copy: None,
            }),
            Err(_) => Err(e),
        },
    }
}

/// An uncommitted block as every engine stores it.
#[derive(Serialize, Deserialize, Debug)]
pub struct BlockRecord {
    /// Where its bytes are.
    pub data_id: u64,
    /// How many bytes.
    pub len: u64,
}

/// What a container holds beside [`crate::quota::ITEM_BYTES`] ([`crate::quota`]).
pub fn container_bytes(name: &str, metadata: &Metadata) -> u64 {
    name.len() as u64 + metadata_bytes(metadata)
}

/// What a blob holds beside [`crate::quota::ITEM_BYTES`].
pub fn blob_bytes(name: &str, rec: &BlobRecord) -> u64 {
    let segments: u64 = rec
        .segments
        .iter()
        .map(|s| SEGMENT_BYTES + s.block_id.as_ref().map_or(0, |id| id.len() as u64))
        .sum();
    let copy = rec
        .copy
        .as_ref()
        .map_or(0, |c| (c.id.len() + c.source.len()) as u64);
    name.len() as u64 + metadata_bytes(&rec.metadata) + segments + rec.size + copy
}

/// What an uncommitted block holds beside [`crate::quota::ITEM_BYTES`].
pub fn block_bytes(id: &[u8], rec: &BlockRecord) -> u64 {
    id.len() as u64 + rec.len
}

/// Reads up to `want` more bytes of `r` into `buf` (fewer only at its end).
pub fn read_full(r: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> Result<(), StorageError> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut filled = start;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StorageError::BodyRead(e)),
        }
    }
    buf.truncate(filled);
    Ok(())
}

/// What a blob record shows as properties at `now`.
pub fn blob_props(name: &str, rec: &BlobRecord, now: Timestamp) -> BlobProperties {
    let mut content = rec.content.clone();
    if content.content_type.is_none() {
        content.content_type = Some(DEFAULT_CONTENT_TYPE.into());
    }
    BlobProperties {
        name: name.to_string(),
        etag: rec.etag.clone(),
        last_modified: rec.last_modified,
        created: rec.created,
        size: rec.size,
        content,
        metadata: rec.metadata.clone(),
        lease: rec.lease.info(now),
        copy: rec.copy.clone(),
    }
}

/// What a container record shows as properties at `now`.
pub fn container_props(name: &str, rec: &ContainerRecord, now: Timestamp) -> ContainerProperties {
    ContainerProperties {
        name: name.to_string(),
        etag: rec.etag.clone(),
        last_modified: rec.last_modified,
        metadata: rec.metadata.clone(),
        lease: rec.lease.info(now),
    }
}

/// Azure's rules for an access control list.
pub fn check_acl(acl: &ContainerAcl) -> Result<(), BlobError> {
    check_policies(&acl.policies, "racwdxltmeop").map_err(BlobError::InvalidAcl)
}

/// The lease check for a write, also when the blob does not exist yet.
pub fn check_blob_lease(
    rec: Option<&BlobRecord>,
    lease_id: Option<&str>,
    now: Timestamp,
) -> Result<(), BlobError> {
    match rec {
        Some(r) => r.lease.check_write(lease_id, now, false),
        None if lease_id.is_some() => Err(BlobError::LeaseNotPresentWithBlobOperation),
        None => Ok(()),
    }
}

/// A block id as Azure shows it in errors.
pub fn base64_id(id: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(id)
}

/// What Put Blob, Put Block List and Copy Blob check before they replace blob `name` (its
/// container exists: the caller's part): the lease and the conditions allow the write.
pub fn check_overwrite(
    existing: Option<&BlobRecord>,
    name: &str,
    options: &PutBlobOptions,
    now: Timestamp,
) -> Result<(), BlobError> {
    check_blob_lease(existing, options.lease_id.as_deref(), now)?;
    options
        .conditions
        .check_write(existing.map(|r| (r.etag.as_str(), r.last_modified)), true)
        .map_err(|e| match e {
            BlobError::BlobAlreadyExists(_) => BlobError::BlobAlreadyExists(name.to_string()),
            e => e,
        })
}

/// The bytes `[offset, end)` a Get Blob of a `size`-byte blob serves.
pub fn read_range(size: u64, range: Option<ByteRange>) -> Result<(u64, u64), BlobError> {
    match range {
        None => Ok((0, size)),
        Some(r) => {
            if r.start >= size || r.end.is_some_and(|e| e < r.start) {
                return Err(BlobError::InvalidRange(format!(
                    "bytes={}-{:?} of {size}",
                    r.start, r.end
                )));
            }
            Ok((
                r.start,
                r.end.map_or(size, |e| e.saturating_add(1).min(size)),
            ))
        }
    }
}

/// A blob's segments with where each starts in the blob.
pub fn segment_starts(segments: &[Segment]) -> Vec<(u64, Segment)> {
    let mut start = 0;
    segments
        .iter()
        .map(|s| {
            let at = start;
            start += s.len;
            (at, s.clone())
        })
        .collect()
}

/// The segments a block list names: each id looked up among the blob's committed blocks
/// (`existing`) or its uncommitted ones (`uncommitted`, by id), as the list says.
pub fn resolve_block_list(
    blocks: &[BlockRef],
    existing: Option<&BlobRecord>,
    mut uncommitted: impl FnMut(&[u8]) -> Result<Option<BlockRecord>, BlobError>,
) -> Result<Vec<Segment>, BlobError> {
    let committed = |id: &[u8]| {
        existing.and_then(|r| {
            r.segments
                .iter()
                .find(|s| s.block_id.as_deref() == Some(id))
                .cloned()
        })
    };
    let mut staged = |id: &[u8]| -> Result<Option<Segment>, BlobError> {
        Ok(uncommitted(id)?.map(|r| Segment {
            block_id: Some(id.to_vec()),
            data_id: r.data_id,
            len: r.len,
        }))
    };
    let mut segments = Vec::with_capacity(blocks.len());
    for block in blocks {
        let found = match block {
            BlockRef::Committed(id) => committed(id),
            BlockRef::Uncommitted(id) => staged(id)?,
            BlockRef::Latest(id) => match staged(id)? {
                Some(s) => Some(s),
                None => committed(id),
            },
        };
        let id = match block {
            BlockRef::Committed(id) | BlockRef::Uncommitted(id) | BlockRef::Latest(id) => id,
        };
        segments.push(found.ok_or_else(|| {
            BlobError::InvalidBlockList(format!("block {} does not exist", base64_id(id)))
        })?);
    }
    Ok(segments)
}

/// The checks of Put Block before it reads anything: the id's length.
pub fn check_block_id(block_id: &[u8]) -> Result<(), BlobError> {
    if block_id.is_empty() || block_id.len() > MAX_BLOCK_ID_BYTES {
        return Err(BlobError::InvalidBlockId("a block id is 1..=64 bytes"));
    }
    Ok(())
}

/// Put Block's checks against what the blob has: every block id of a blob has one length
/// (`committed_len`, `uncommitted_len`: the length of one of each, if any), and a new block
/// fits under [`MAX_UNCOMMITTED_BLOCKS`].
pub fn check_new_block(
    id: &[u8],
    committed_len: Option<usize>,
    uncommitted_len: Option<usize>,
    replaces: bool,
    uncommitted_count: usize,
) -> Result<(), BlobError> {
    if committed_len
        .or(uncommitted_len)
        .is_some_and(|l| l != id.len())
    {
        return Err(BlobError::InvalidBlockId(
            "all block ids of a blob must have the same length",
        ));
    }
    if !replaces && uncommitted_count >= MAX_UNCOMMITTED_BLOCKS {
        return Err(BlobError::BlockCountExceedsLimit(
            "at most 100,000 uncommitted blocks",
        ));
    }
    Ok(())
}

/// A page of List Blobs being cut from names in order, folding names into virtual
/// directories at `delimiter`. An engine reads names from [`ListScan::cursor`] on and feeds
/// them to [`ListScan::push`]; when it says [`Step::Jump`], it reads again from the new
/// cursor (past a whole virtual directory).
#[derive(Debug)]
pub struct ListScan {
    prefix: String,
    delimiter: Option<String>,
    page_size: usize,
    include_metadata: bool,
    cursor: String,
    last_prefix: Option<String>,
    items: Vec<BlobListItem>,
    next_marker: Option<String>,
}

/// What a [`ListScan`] wants next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next name.
    Next,
    /// Read again from [`ListScan::cursor`].
    Jump,
    /// The page is complete.
    Done,
}

impl ListScan {
    /// A scan of `options` (checked) with `delimiter`.
    pub fn new(options: &ListOptions, delimiter: Option<&str>) -> Result<ListScan, BlobError> {
        let page_size =
            options
                .page_size()
                .map_err(|reason| BlobError::OutOfRangeQueryParameterValue {
                    param: "maxresults",
                    reason,
                })?;
        let prefix = options.prefix.clone().unwrap_or_default();
        Ok(ListScan {
            cursor: options.start().max(prefix.as_str()).to_string(),
            prefix,
            delimiter: delimiter.filter(|d| !d.is_empty()).map(str::to_owned),
            page_size,
            include_metadata: options.include_metadata,
            last_prefix: None,
            items: Vec::new(),
            next_marker: None,
        })
    }

    /// Where to read from (inclusive).
    pub fn cursor(&self) -> &str {
        &self.cursor
    }

    /// The listing's prefix: no name without it can be listed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Takes the next blob in name order; `record` decodes it if it is listed.
    pub fn push(
        &mut self,
        name: &str,
        record: impl FnOnce() -> Result<BlobRecord, StorageError>,
        now: Timestamp,
    ) -> Result<Step, BlobError> {
        if !name.starts_with(&self.prefix) {
            return Ok(Step::Done);
        }
        if self
            .last_prefix
            .as_deref()
            .is_some_and(|p| name.starts_with(p))
        {
            return Ok(Step::Next);
        }
        let virtual_dir = self.delimiter.as_deref().and_then(|d| {
            name[self.prefix.len()..]
                .find(d)
                .map(|i| name[..self.prefix.len() + i + d.len()].to_string())
        });
        if self.items.len() == self.page_size {
            self.next_marker = Some(virtual_dir.unwrap_or_else(|| name.to_string()));
            return Ok(Step::Done);
        }
        match virtual_dir {
            Some(dir) => {
                self.items.push(BlobListItem::Prefix(dir.clone()));
                // Jump past every name in this virtual directory.
                self.cursor = format!("{dir}\u{10FFFF}");
                self.last_prefix = Some(dir);
                Ok(Step::Jump)
            }
            None => {
                let mut props = blob_props(name, &record()?, now);
                if !self.include_metadata {
                    props.metadata.clear();
                }
                self.items.push(BlobListItem::Blob(props));
                Ok(Step::Next)
            }
        }
    }

    /// The page.
    pub fn finish(self) -> Page<BlobListItem> {
        Page {
            items: self.items,
            next_marker: self.next_marker,
        }
    }
}

/// Streams the bytes `[pos, end)` of a blob from its segments, one chunk at a time, from
/// wherever the engine keeps chunks: `fetch(data_id, index)` gives one chunk, and every chunk
/// but a data's last is `chunk_size` bytes.
pub struct SegmentReader<F> {
    fetch: F,
    chunk_size: u64,
    /// (start offset in the blob, segment)
    segments: Vec<(u64, Segment)>,
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<F: FnMut(u64, u32) -> io::Result<Vec<u8>>> SegmentReader<F> {
    /// A reader of `[pos, end)` of the blob made of `segments`, whose data is in chunks of
    /// `chunk_size` bytes.
    pub fn new(segments: &[Segment], pos: u64, end: u64, chunk_size: usize, fetch: F) -> Self {
        SegmentReader {
            fetch,
            chunk_size: chunk_size as u64,
            segments: segment_starts(segments),
            pos,
            end,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let chunk_size = self.chunk_size;
        let idx = self
            .segments
            .partition_point(|(start, _)| *start <= self.pos)
            .saturating_sub(1);
        let (seg_start, seg) = self
            .segments
            .get(idx)
            .ok_or_else(|| io::Error::other("read past the blob's segments"))?;
        let (seg_start, data_id) = (*seg_start, seg.data_id);
        let chunk = (self.pos - seg_start) / chunk_size;
        let chunk_idx = u32::try_from(chunk).map_err(io::Error::other)?;
        self.buf = (self.fetch)(data_id, chunk_idx)?;
        self.buf_start = seg_start + chunk * chunk_size;
        if self.buf.is_empty() {
            return Err(io::Error::other("empty chunk"));
        }
        Ok(())
    }
}

impl<F: FnMut(u64, u32) -> io::Result<Vec<u8>>> Read for SegmentReader<F> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.end || out.is_empty() {
            return Ok(0);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos >= buf_end {
            self.fill()?;
        }
        let off = (self.pos - self.buf_start) as usize;
        let avail = (self.buf.len() - off) as u64;
        let n = (out.len() as u64).min(avail).min(self.end - self.pos) as usize;
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Copy Blob's checks before it reads its source.
fn check_copy(options: &CopyOptions) -> Result<(), BlobError> {
    if options.source_url.len() > MAX_COPY_SOURCE_BYTES {
        return Err(BlobError::CopySourceTooLong(options.source_url.len()));
    }
    if let Some(md) = &options.metadata {
        crate::names::check_metadata(md)?;
    }
    Ok(())
}

/// How a failure to read a copy's source is answered: its conditions are the source's, and a
/// missing source is one the copy cannot verify (as a source it may not read is).
fn copy_source_error(e: BlobError) -> BlobError {
    match e {
        BlobError::ConditionNotMet | BlobError::NotModified => BlobError::SourceConditionNotMet,
        BlobError::BlobNotFound(_) | BlobError::ContainerNotFound(_) => {
            BlobError::CannotVerifyCopySource("the specified resource does not exist".into())
        }
        e => e,
    }
}

/// Copy Blob on any engine: `store` reads the source at one version (its conditions are the
/// source's), and `write` makes the destination from that reader with the source's HTTP
/// properties and (unless given) metadata, recording the copy's source URL.
pub fn copy_blob(
    store: &dyn BlobStore,
    source: BlobRef<'_>,
    options: CopyOptions,
    write: impl FnOnce(&mut dyn Read, PutBlobOptions, String) -> Result<BlobProperties, BlobError>,
) -> Result<BlobProperties, BlobError> {
    check_copy(&options)?;
    let read = store
        .get_blob(
            source.account,
            source.container,
            source.blob,
            &GetBlobOptions {
                range: None,
                conditions: options.source_conditions.clone(),
                lease_id: None,
            },
        )
        .map_err(copy_source_error)?;
    let BlobRead {
        properties,
        mut reader,
        ..
    } = read;
    let put = PutBlobOptions {
        content: properties.content,
        metadata: options.metadata.unwrap_or(properties.metadata),
        conditions: options.conditions,
        lease_id: options.lease_id,
    };
    write(&mut reader, put, options.source_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> BlobRecordV1 {
        BlobRecordV1 {
            etag: "\"0x8D1\"".into(),
            created: Timestamp::from_secs(1),
            last_modified: Timestamp::from_secs(2),
            content: ContentSettings {
                content_type: Some("text/plain".into()),
                ..Default::default()
            },
            metadata: vec![("k".into(), "v".into())],
            segments: vec![Segment {
                block_id: None,
                data_id: 9,
                len: 3,
            }],
            size: 3,
            lease: LeaseRecord::default(),
        }
    }

    #[test]
    fn records_of_the_first_layout_still_decode() {
        let rec = decode_blob(&encode(&v1())).unwrap();
        assert_eq!(rec.etag, "\"0x8D1\"");
        assert_eq!(rec.size, 3);
        assert_eq!(rec.segments[0].data_id, 9);
        assert_eq!(rec.metadata, vec![("k".to_string(), "v".to_string())]);
        assert!(rec.copy.is_none());
    }

    #[test]
    fn records_of_the_new_layout_keep_their_copy() {
        let old = v1();
        let rec = BlobRecord {
            etag: old.etag,
            created: old.created,
            last_modified: old.last_modified,
            content: old.content,
            metadata: old.metadata,
            segments: old.segments,
            size: old.size,
            lease: old.lease,
            copy: Some(CopyInfo {
                id: "id".into(),
                source: "http://x/a/c/b".into(),
                completed: Timestamp::from_secs(3),
                bytes: 3,
            }),
        };
        let back = decode_blob(&encode(&rec)).unwrap();
        assert_eq!(back.copy, rec.copy);
        assert!(decode_blob(b"\x01").is_err(), "garbage is still corrupt");
    }
}
