//! Blob storage: [`Container`] and [`Blob`], with conditional writes and streaming.
//!
//! ```no_run
//! use rolehost_sdk::{Container, Conditions, ErrorCode};
//!
//! # fn main() -> rolehost_sdk::Result<()> {
//! let counters = Container::new("counters");
//! counters.create_if_not_exists()?;
//! let blob = counters.blob("total");
//!
//! // Optimistic concurrency: read, compute, write only if nobody wrote in between.
//! loop {
//!     let (value, etag) = match blob.get() {
//!         Ok((bytes, props)) => (String::from_utf8_lossy(&bytes).parse::<u64>().unwrap_or(0), Some(props.etag)),
//!         Err(e) if e.code == ErrorCode::BlobNotFound => (0, None),
//!         Err(e) => return Err(e),
//!     };
//!     let conditions = match etag {
//!         Some(etag) => Conditions::if_match(etag),
//!         None => Conditions::create_only(),
//!     };
//!     match blob.put_with(format!("{}", value + 1).as_bytes(), &blob.put_options().conditions(conditions)) {
//!         Ok(_) => break,
//!         Err(e) if e.is_conflict() => continue, // someone else won the race: read again
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Large blobs stream: [`Blob::reader`] reads in chunks of one version (a concurrent write makes
//! the next read fail rather than mix versions), [`Blob::writer`] uploads blocks and commits
//! them atomically on [`BlobWriter::finish`]. Neither holds more than one chunk in memory.

use std::io;

use crate::bindings::rolehost::platform::blob as host;
use crate::bindings::rolehost::platform::types::EtagMatch;
use crate::error::{Error, ErrorCode, Result};
use crate::retry::{self, CallOptions, RetryPolicy};

pub use crate::bindings::rolehost::platform::types::{Conditions, ListOptions};
pub use host::{
    BlobProperties, ContainerProperties, ContentSettings, LeaseInfo, LeaseOutcome, LeaseState,
};

/// Most bytes one call moves: the size of a read chunk and of an uploaded block.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Largest blob [`Blob::put`] writes in one call; larger ones go through [`Blob::writer`].
pub const MAX_PUT_BYTES: usize = 64 * 1024 * 1024;

impl Conditions {
    /// No conditions.
    pub fn none() -> Self {
        Conditions {
            if_match: None,
            if_none_match: None,
            if_modified_since: None,
            if_unmodified_since: None,
        }
    }

    /// Only if the current ETag is `etag` (compare-and-swap).
    pub fn if_match(etag: impl Into<String>) -> Self {
        Conditions {
            if_match: Some(EtagMatch::Tag(etag.into())),
            ..Self::none()
        }
    }

    /// Only if the current ETag is not `etag` (for reads: "only if changed").
    pub fn if_none_match(etag: impl Into<String>) -> Self {
        Conditions {
            if_none_match: Some(EtagMatch::Tag(etag.into())),
            ..Self::none()
        }
    }

    /// Only if the blob does not exist yet (`If-None-Match: *`).
    pub fn create_only() -> Self {
        Conditions {
            if_none_match: Some(EtagMatch::Any),
            ..Self::none()
        }
    }
}

impl Default for Conditions {
    fn default() -> Self {
        Self::none()
    }
}

impl ListOptions {
    /// Names starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        ListOptions {
            prefix: Some(prefix.into()),
            ..Self::default()
        }
    }
}

impl Default for ListOptions {
    fn default() -> Self {
        ListOptions {
            prefix: None,
            marker: None,
            max_results: None,
            include_metadata: false,
        }
    }
}

impl Default for ContentSettings {
    fn default() -> Self {
        ContentSettings {
            content_type: None,
            content_encoding: None,
            content_language: None,
            content_disposition: None,
            cache_control: None,
            content_md5: None,
        }
    }
}

/// Options of a blob write: conditions, properties, metadata, lease.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    conditions: Conditions,
    content: ContentSettings,
    metadata: Vec<(String, String)>,
    lease_id: Option<String>,
}

impl PutOptions {
    /// Write only if these conditions hold.
    pub fn conditions(mut self, conditions: Conditions) -> Self {
        self.conditions = conditions;
        self
    }

    /// Write only if the blob's ETag is still `etag`.
    pub fn if_match(self, etag: impl Into<String>) -> Self {
        self.conditions(Conditions::if_match(etag))
    }

    /// Write only if the blob does not exist.
    pub fn create_only(self) -> Self {
        self.conditions(Conditions::create_only())
    }

    /// The `Content-Type`.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content.content_type = Some(content_type.into());
        self
    }

    /// Adds a metadata pair.
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((name.into(), value.into()));
        self
    }

    /// The lease id (needed when the blob is leased).
    pub fn lease_id(mut self, lease_id: impl Into<String>) -> Self {
        self.lease_id = Some(lease_id.into());
        self
    }

    fn to_host(&self) -> host::PutOptions {
        host::PutOptions {
            content: self.content.clone(),
            metadata: self.metadata.clone(),
            conditions: self.conditions.clone(),
            lease_id: self.lease_id.clone(),
        }
    }
}

/// A blob container of the service's storage account. Holds only its name: cheap to make and
/// safe to keep across a freeze.
#[derive(Clone, Debug)]
pub struct Container {
    name: String,
    options: CallOptions,
}

impl Container {
    /// The container called `name` (3-63 characters: lowercase letters, digits, dashes).
    pub fn new(name: impl Into<String>) -> Self {
        Container {
            name: name.into(),
            options: retry::defaults(),
        }
    }

    /// Uses this retry policy for calls on this container and its blobs.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Gives up on a call (retries included) after `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the container. Errors: `ContainerAlreadyExists`, a bad name.
    pub fn create(&self) -> Result<ContainerProperties> {
        retry::call(&self.options, || host::create_container(&self.name, &[]))
    }

    /// Creates the container unless it exists; true if it was created.
    pub fn create_if_not_exists(&self) -> Result<bool> {
        match self.create() {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::ContainerAlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the container and all its blobs. Errors: `ContainerNotFound`.
    pub fn delete(&self) -> Result<()> {
        retry::call(&self.options, || {
            host::delete_container(&self.name, &Conditions::none(), None)
        })
    }

    /// The container's properties. Errors: `ContainerNotFound`.
    pub fn properties(&self) -> Result<ContainerProperties> {
        retry::call(&self.options, || {
            host::get_container_properties(&self.name, None)
        })
    }

    /// One page of the container's blobs (no delimiter). Pass the page's `next_marker` back in
    /// `options.marker` for the next one; or use [`Container::blobs`].
    pub fn list_page(
        &self,
        options: &ListOptions,
    ) -> Result<(Vec<BlobProperties>, Option<String>)> {
        let page = retry::call(&self.options, || {
            host::list_blobs(&self.name, options, None)
        })?;
        let blobs = page
            .items
            .into_iter()
            .filter_map(|item| match item {
                host::BlobListItem::Blob(p) => Some(p),
                host::BlobListItem::Prefix(_) => None,
            })
            .collect();
        Ok((blobs, page.next_marker))
    }

    /// Every blob whose name starts with `prefix`, page by page.
    pub fn blobs(&self, prefix: &str) -> Result<Vec<BlobProperties>> {
        let mut options = ListOptions::prefix(prefix);
        let mut all = Vec::new();
        loop {
            let (page, next) = self.list_page(&options)?;
            all.extend(page);
            match next {
                Some(marker) => options.marker = Some(marker),
                None => return Ok(all),
            }
        }
    }

    /// The blob called `name` in this container (nothing is checked until it is used).
    pub fn blob(&self, name: impl Into<String>) -> Blob {
        Blob {
            container: self.name.clone(),
            name: name.into(),
            options: self.options,
        }
    }
}

/// A blob: a container name and a blob name. Holds no handle.
#[derive(Clone, Debug)]
pub struct Blob {
    container: String,
    name: String,
    options: CallOptions,
}

impl Blob {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Default options for [`Blob::put_with`].
    pub fn put_options(&self) -> PutOptions {
        PutOptions::default()
    }

    /// Creates or replaces the blob with `data` (at most [`MAX_PUT_BYTES`]; use
    /// [`Blob::writer`] beyond). Errors: `ContainerNotFound`, `RequestBodyTooLarge`.
    pub fn put(&self, data: &[u8]) -> Result<BlobProperties> {
        self.put_with(data, &PutOptions::default())
    }

    /// Writes the blob if `options`' conditions hold. Errors: `ConditionNotMet` when an
    /// `if_match` ETag is stale, `BlobAlreadyExists` for a create-only write that found the blob.
    pub fn put_with(&self, data: &[u8], options: &PutOptions) -> Result<BlobProperties> {
        let options = options.to_host();
        retry::call(&self.options, || {
            host::put_blob(&self.container, &self.name, data, &options)
        })
    }

    /// Reads the whole blob, chunk by chunk, all from one version. Errors: `BlobNotFound`.
    pub fn get(&self) -> Result<(Vec<u8>, BlobProperties)> {
        let mut reader = self.reader()?;
        let mut data = Vec::with_capacity(usize::try_from(reader.size()).unwrap_or(0));
        io::Read::read_to_end(&mut reader, &mut data).map_err(|e| into_storage_error(&e))?;
        Ok((data, reader.properties))
    }

    /// The blob's content, or `None` if it does not exist.
    pub fn get_if_exists(&self) -> Result<Option<(Vec<u8>, BlobProperties)>> {
        match self.get() {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.code == ErrorCode::BlobNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Its properties and metadata. Errors: `BlobNotFound`.
    pub fn properties(&self) -> Result<BlobProperties> {
        retry::call(&self.options, || {
            host::get_blob_properties(&self.container, &self.name, &Conditions::none(), None)
        })
    }

    /// Whether it exists.
    pub fn exists(&self) -> Result<bool> {
        match self.properties() {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::BlobNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes it if `conditions` hold. Errors: `BlobNotFound`, `ConditionNotMet`.
    pub fn delete_with(&self, conditions: &Conditions) -> Result<()> {
        retry::call(&self.options, || {
            host::delete_blob(&self.container, &self.name, conditions, None)
        })
    }

    /// Deletes it; true if it was there. Idempotent, so safe to retry.
    pub fn delete_if_exists(&self) -> Result<bool> {
        match self.delete_with(&Conditions::none()) {
            Ok(()) => Ok(true),
            Err(e) if e.code == ErrorCode::BlobNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces its metadata if `conditions` hold; returns the new properties.
    pub fn set_metadata(
        &self,
        metadata: &[(String, String)],
        conditions: &Conditions,
    ) -> Result<BlobProperties> {
        retry::call(&self.options, || {
            host::set_blob_metadata(&self.container, &self.name, metadata, conditions, None)
        })
    }

    /// Takes a lease for `seconds` (15..=60) or forever (`None`); returns the lease id, which
    /// writes must then carry ([`PutOptions::lease_id`]). Errors: `LeaseAlreadyPresent`.
    pub fn acquire_lease(&self, seconds: Option<u32>) -> Result<String> {
        let action = host::LeaseAction::Acquire(host::AcquireLease {
            duration_seconds: seconds,
            proposed_id: None,
        });
        let outcome = self.lease(&action)?;
        outcome
            .lease_id
            .ok_or_else(|| Error::local(ErrorCode::InternalError, "acquire returned no lease id"))
    }

    /// Renews a lease.
    pub fn renew_lease(&self, lease_id: &str) -> Result<()> {
        self.lease(&host::LeaseAction::Renew(lease_id.to_string()))
            .map(drop)
    }

    /// Releases a lease.
    pub fn release_lease(&self, lease_id: &str) -> Result<()> {
        self.lease(&host::LeaseAction::Release(lease_id.to_string()))
            .map(drop)
    }

    /// Breaks the lease (whoever holds it) after `seconds`.
    pub fn break_lease(&self, seconds: Option<u32>) -> Result<()> {
        self.lease(&host::LeaseAction::Break(seconds)).map(drop)
    }

    fn lease(&self, action: &host::LeaseAction) -> Result<LeaseOutcome> {
        retry::call(&self.options, || {
            host::lease_blob(&self.container, &self.name, action)
        })
    }

    /// A reader over the blob's current version. The first chunk is read now (so a missing
    /// blob fails here); the rest are read on demand with `If-Match` on that version's ETag.
    pub fn reader(&self) -> Result<BlobReader> {
        let first = retry::call(&self.options, || {
            host::read_blob(
                &self.container,
                &self.name,
                0,
                CHUNK_BYTES as u64,
                &Conditions::none(),
                None,
            )
        })?;
        Ok(BlobReader {
            blob: self.clone(),
            properties: first.properties,
            next_offset: first.data.len() as u64,
            chunk: first.data,
            pos: 0,
        })
    }

    /// A writer that uploads blocks of [`CHUNK_BYTES`] as they fill and commits them on
    /// [`BlobWriter::finish`]. Until then readers see the old content; if the writer is
    /// dropped unfinished, the blob is unchanged.
    pub fn writer(&self) -> BlobWriter {
        self.writer_with(PutOptions::default())
    }

    /// [`Blob::writer`] with options applied at commit (conditions, properties, metadata).
    pub fn writer_with(&self, options: PutOptions) -> BlobWriter {
        BlobWriter {
            blob: self.clone(),
            options,
            buffer: Vec::new(),
            blocks: Vec::new(),
        }
    }
}

/// Reads a blob chunk by chunk (`std::io::Read`), all chunks from one version.
#[derive(Debug)]
pub struct BlobReader {
    blob: Blob,
    /// The version being read.
    pub properties: BlobProperties,
    chunk: Vec<u8>,
    pos: usize,
    next_offset: u64,
}

impl BlobReader {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.properties.size
    }

    fn fill(&mut self) -> Result<()> {
        let conditions = Conditions::if_match(self.properties.etag.clone());
        let chunk = retry::call(&self.blob.options, || {
            host::read_blob(
                &self.blob.container,
                &self.blob.name,
                self.next_offset,
                CHUNK_BYTES as u64,
                &conditions,
                None,
            )
        })?;
        self.next_offset += chunk.data.len() as u64;
        self.chunk = chunk.data;
        self.pos = 0;
        Ok(())
    }
}

impl io::Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            if self.next_offset >= self.properties.size {
                return Ok(0);
            }
            self.fill().map_err(io::Error::other)?;
            if self.chunk.is_empty() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes a blob in blocks (`std::io::Write`); nothing is visible until [`BlobWriter::finish`].
#[derive(Debug)]
pub struct BlobWriter {
    blob: Blob,
    options: PutOptions,
    buffer: Vec<u8>,
    blocks: Vec<Vec<u8>>,
}

impl BlobWriter {
    fn put_block(&mut self) -> Result<()> {
        // Ids of one blob must all have the same length: a fixed-width counter.
        let id = format!("block-{:010}", self.blocks.len()).into_bytes();
        let data = std::mem::take(&mut self.buffer);
        let lease = self.options.lease_id.clone();
        retry::call(&self.blob.options, || {
            host::put_block(
                &self.blob.container,
                &self.blob.name,
                &id,
                &data,
                lease.as_deref(),
            )
        })?;
        self.blocks.push(id);
        Ok(())
    }

    /// Uploads what is left and commits the blob atomically; returns its properties. A small
    /// blob (one chunk or less) is written with a single put.
    pub fn finish(mut self) -> Result<BlobProperties> {
        if self.blocks.is_empty() {
            return self.blob.put_with(&self.buffer, &self.options);
        }
        if !self.buffer.is_empty() {
            self.put_block()?;
        }
        let refs: Vec<host::BlockRef> = self
            .blocks
            .iter()
            .map(|id| host::BlockRef::Uncommitted(id.clone()))
            .collect();
        let options = self.options.to_host();
        retry::call(&self.blob.options, || {
            host::put_block_list(&self.blob.container, &self.blob.name, &refs, &options)
        })
    }
}

impl io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let n = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..n]);
        if self.buffer.len() == CHUNK_BYTES {
            self.put_block().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Recovers the storage error carried by an `io::Error` from a reader or writer.
pub fn into_storage_error(e: &io::Error) -> Error {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
        .cloned()
        .unwrap_or_else(|| Error::local(ErrorCode::InvalidInput, e.to_string()))
}
