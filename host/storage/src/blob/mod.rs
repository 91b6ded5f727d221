//! Blob service: containers of block blobs with ETags, conditional writes, leases, ranged reads
//! and staged (block) uploads.
//!
//! Content streams in and out: writes take a `Read`, reads return one, and the engine stores
//! content in chunks of [`crate::CHUNK_SIZE`], so a blob larger than memory moves through a
//! bounded buffer. A read sees one consistent version of the blob even if it is overwritten
//! while being streamed.

mod conditions;
mod lease;
pub mod rules;
pub(crate) mod store;

use std::io::Read;

pub use conditions::{Conditions, Current, ETagMatch};
pub use lease::{
    LEASE_SECONDS, LeaseAction, LeaseInfo, LeaseOutcome, LeaseRecord, MAX_BREAK_PERIOD,
};

use crate::clock::Timestamp;
use crate::{AccountName, BlobError, ListOptions, Metadata, Page};

/// Largest Put Blob body: 5000 MiB.
pub const MAX_PUT_BLOB_BYTES: u64 = 5000 * 1024 * 1024;
/// Largest block: 4000 MiB.
pub const MAX_BLOCK_BYTES: u64 = 4000 * 1024 * 1024;
/// Largest block id, in bytes (before base64).
pub const MAX_BLOCK_ID_BYTES: usize = 64;
/// Most committed blocks in a blob.
pub const MAX_COMMITTED_BLOCKS: usize = 50_000;
/// Most uncommitted blocks a blob may hold.
pub const MAX_UNCOMMITTED_BLOCKS: usize = 100_000;

/// Most stored access policies a container may hold (Azure's limit).
pub const MAX_ACCESS_POLICIES: usize = 5;
/// Longest stored access policy id.
pub const MAX_POLICY_ID_CHARS: usize = 64;

/// Longest copy source URL kept with a blob: a 1,024-character blob name percent-encoded, its
/// account and container, and a SAS, with room to spare. Kept once per blob, so bounded by the
/// account's blob quota too.
pub const MAX_COPY_SOURCE_BYTES: usize = 8 * 1024;

/// Who may read a container without credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PublicAccess {
    /// Nobody (the default).
    #[default]
    Off,
    /// Anyone may read blobs (not list them).
    Blob,
    /// Anyone may read blobs and list the container.
    Container,
}

/// A stored access policy: what a service SAS naming it (`si`) grants, and when.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessPolicy {
    /// Its id (1..=64 characters), what a SAS names.
    pub id: String,
    /// Not before.
    pub start: Option<Timestamp>,
    /// Not after.
    pub expiry: Option<Timestamp>,
    /// Permission letters (`racwdl...`).
    pub permissions: String,
}

/// Azure's rules for stored access policies (of a container, queue or table): at most
/// [`MAX_ACCESS_POLICIES`], ids of 1 to [`MAX_POLICY_ID_CHARS`] characters and distinct,
/// permissions of `letters`. The error says which rule broke.
pub fn check_policies(policies: &[AccessPolicy], letters: &str) -> Result<(), String> {
    if policies.len() > MAX_ACCESS_POLICIES {
        return Err(format!(
            "{} policies, at most {MAX_ACCESS_POLICIES} are allowed",
            policies.len()
        ));
    }
    for (i, p) in policies.iter().enumerate() {
        if p.id.is_empty() || p.id.chars().count() > MAX_POLICY_ID_CHARS {
            return Err(format!(
                "policy ids are 1 to {MAX_POLICY_ID_CHARS} characters"
            ));
        }
        if policies[..i].iter().any(|q| q.id == p.id) {
            return Err(format!("the id {:?} is given twice", p.id));
        }
        if !p.permissions.chars().all(|c| letters.contains(c)) || p.permissions.len() > 16 {
            return Err(format!(
                "permissions {:?}: letters of {letters}",
                p.permissions
            ));
        }
    }
    Ok(())
}

/// A container's access control: its public access level and stored access policies.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerAcl {
    /// Who may read without credentials.
    pub public_access: PublicAccess,
    /// At most [`MAX_ACCESS_POLICIES`].
    pub policies: Vec<AccessPolicy>,
}

/// Standard HTTP properties of a blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContentSettings {
    /// `Content-Type` (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-MD5`: computed by Put Blob; given by the caller (or absent) for Put Block List.
    pub content_md5: Option<[u8; 16]>,
}

/// A container's properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerProperties {
    /// Its name.
    pub name: String,
    /// Its ETag.
    pub etag: String,
    /// When it last changed.
    pub last_modified: Timestamp,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its lease.
    pub lease: LeaseInfo,
}

/// A blob's properties.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobProperties {
    /// Its name.
    pub name: String,
    /// Its ETag: a new one on every write of content, metadata or properties.
    pub etag: String,
    /// When it was last written.
    pub last_modified: Timestamp,
    /// When it was created.
    pub created: Timestamp,
    /// Its size in bytes.
    pub size: u64,
    /// Its HTTP properties; `content_type` is always set.
    pub content: ContentSettings,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its lease.
    pub lease: LeaseInfo,
    /// The copy that made it, until Put Blob, Put Block List or Set Blob Properties changes it.
    pub copy: Option<CopyInfo>,
}

/// The copy (Copy Blob, Copy Blob From URL) that made a blob. Copies run within the host and
/// finish before the operation answers, so every copy recorded here succeeded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyInfo {
    /// Its id (a GUID), what Abort Copy Blob names.
    pub id: String,
    /// The source URL as the caller gave it, at most [`MAX_COPY_SOURCE_BYTES`].
    pub source: String,
    /// When it finished.
    pub completed: Timestamp,
    /// Bytes copied (all of the source).
    pub bytes: u64,
}

/// A blob named by account, container and name.
#[derive(Clone, Copy, Debug)]
pub struct BlobRef<'a> {
    /// Its account.
    pub account: &'a AccountName,
    /// Its container.
    pub container: &'a str,
    /// Its name.
    pub blob: &'a str,
}

/// Options of Copy Blob.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// The source URL, recorded with the copy (the caller has resolved and authorized it).
    pub source_url: String,
    /// The destination's metadata; `None` copies the source's.
    pub metadata: Option<Metadata>,
    /// Conditions on the source (a failure is `SourceConditionNotMet`).
    pub source_conditions: Conditions,
    /// Conditions on the destination.
    pub conditions: Conditions,
    /// The destination's lease id, required if it is leased.
    pub lease_id: Option<String>,
}

/// Options of Put Blob and Put Block List.
#[derive(Clone, Debug, Default)]
pub struct PutBlobOptions {
    /// HTTP properties (Put Blob computes `content_md5` if not given).
    pub content: ContentSettings,
    /// Metadata (replaces all of the old).
    pub metadata: Metadata,
    /// Conditions.
    pub conditions: Conditions,
    /// The lease id, required if the blob is leased.
    pub lease_id: Option<String>,
}

/// A byte range: `start..=end`, or `start..` to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive); `None` = to the end.
    pub end: Option<u64>,
}

/// Options of Get Blob.
#[derive(Clone, Debug, Default)]
pub struct GetBlobOptions {
    /// Only these bytes (206). A start past the end is `InvalidRange` (416).
    pub range: Option<ByteRange>,
    /// Conditions (a failing If-None-Match / If-Modified-Since gives `NotModified`).
    pub conditions: Conditions,
    /// A lease id: optional for reads, but a wrong one fails.
    pub lease_id: Option<String>,
}

/// An open blob read: its properties and a reader over the requested bytes.
pub struct BlobRead {
    /// The blob's properties at the version being read.
    pub properties: BlobProperties,
    /// Offset of the first byte returned.
    pub offset: u64,
    /// How many bytes the reader yields.
    pub len: u64,
    /// The content (a consistent snapshot).
    pub reader: Box<dyn Read + Send>,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("properties", &self.properties)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// An item of List Blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
// Nearly every item is a blob: boxing them would cost an allocation each to save space on the
// rare prefix.
#[allow(clippy::large_enum_variant)]
pub enum BlobListItem {
    /// A blob.
    Blob(BlobProperties),
    /// A virtual directory: names sharing this prefix up to the delimiter.
    Prefix(String),
}

/// Which block is meant in Put Block List.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockRef {
    /// A block of the committed list.
    Committed(Vec<u8>),
    /// A staged, uncommitted block.
    Uncommitted(Vec<u8>),
    /// The uncommitted block if there is one, else the committed one.
    Latest(Vec<u8>),
}

/// Which list Get Block List returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockListType {
    /// Committed blocks.
    Committed,
    /// Uncommitted blocks.
    Uncommitted,
    /// Both.
    All,
}

/// Get Block List: block ids with their sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockList {
    /// The committed blocks in blob order.
    pub committed: Vec<(Vec<u8>, u64)>,
    /// The uncommitted blocks in id order.
    pub uncommitted: Vec<(Vec<u8>, u64)>,
}

/// The blob service, as any engine offers it.
pub trait BlobStore: Send + Sync {
    /// Creates a container (`ContainerAlreadyExists` if there).
    fn create_container(
        &self,
        account: &AccountName,
        container: &str,
        metadata: Metadata,
    ) -> Result<ContainerProperties, BlobError>;

    /// Deletes a container and every blob in it. Only date conditions apply; a leased container
    /// needs its lease id.
    fn delete_container(
        &self,
        account: &AccountName,
        container: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<(), BlobError>;

    /// A container's properties.
    fn get_container_properties(
        &self,
        account: &AccountName,
        container: &str,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError>;

    /// Replaces a container's metadata.
    fn set_container_metadata(
        &self,
        account: &AccountName,
        container: &str,
        metadata: Metadata,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError>;

    /// Lists containers in name order.
    fn list_containers(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<ContainerProperties>, BlobError>;

    /// A container's properties and access control.
    fn get_container_acl(
        &self,
        account: &AccountName,
        container: &str,
        lease_id: Option<&str>,
    ) -> Result<(ContainerProperties, ContainerAcl), BlobError>;

    /// Replaces a container's access control (a new ETag). More than
    /// [`MAX_ACCESS_POLICIES`] policies, or an id that is empty, too long or repeated, is
    /// `InvalidXmlDocument`. Only date conditions apply; a leased container needs its lease id.
    fn set_container_acl(
        &self,
        account: &AccountName,
        container: &str,
        acl: ContainerAcl,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError>;

    /// Acquires, renews, changes, releases or breaks a container lease.
    fn lease_container(
        &self,
        account: &AccountName,
        container: &str,
        action: LeaseAction,
    ) -> Result<LeaseOutcome, BlobError>;

    /// Put Blob: creates or replaces the blob with `body` (at most [`MAX_PUT_BLOB_BYTES`]),
    /// replacing its properties and all metadata. Uncommitted blocks are discarded.
    fn put_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        body: &mut dyn Read,
        options: PutBlobOptions,
    ) -> Result<BlobProperties, BlobError>;

    /// Copy Blob: makes `dest` a copy of `source` (its content, HTTP properties and, unless
    /// given, metadata) in one durable commit, recording the copy on it. `source` is read at
    /// one version even if it changes meanwhile; it may be `dest` itself.
    fn copy_blob(
        &self,
        source: BlobRef<'_>,
        dest: BlobRef<'_>,
        options: CopyOptions,
    ) -> Result<BlobProperties, BlobError>;

    /// Get Blob: properties and a reader over the content (or a range of it).
    fn get_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        options: &GetBlobOptions,
    ) -> Result<BlobRead, BlobError>;

    /// Get Blob Properties.
    fn get_blob_properties(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<BlobProperties, BlobError>;

    /// Set Blob Metadata: replaces all metadata; new ETag.
    fn set_blob_metadata(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        metadata: Metadata,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<BlobProperties, BlobError>;

    /// Set Blob Properties: replaces the HTTP properties (those not given are cleared); new ETag.
    fn set_blob_properties(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        content: ContentSettings,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<BlobProperties, BlobError>;

    /// Delete Blob (and its uncommitted blocks).
    fn delete_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<(), BlobError>;

    /// List Blobs in name order; with a delimiter, names that contain it after the prefix
    /// collapse into one [`BlobListItem::Prefix`] each (counted toward the page size).
    fn list_blobs(
        &self,
        account: &AccountName,
        container: &str,
        options: &ListOptions,
        delimiter: Option<&str>,
    ) -> Result<Page<BlobListItem>, BlobError>;

    /// Acquires, renews, changes, releases or breaks a blob lease (the blob must exist).
    fn lease_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        action: LeaseAction,
    ) -> Result<LeaseOutcome, BlobError>;

    /// Put Block: stages a block (id 1..=64 bytes, the same length as the blob's other blocks).
    fn put_block(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        block_id: &[u8],
        body: &mut dyn Read,
        lease_id: Option<&str>,
    ) -> Result<(), BlobError>;

    /// Put Block List: commits the blob as exactly these blocks, atomically. Blocks not listed
    /// are discarded. A block that does not exist is `InvalidBlockList`.
    fn put_block_list(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        blocks: &[BlockRef],
        options: PutBlobOptions,
    ) -> Result<BlobProperties, BlobError>;

    /// Get Block List.
    fn get_block_list(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        which: BlockListType,
    ) -> Result<BlockList, BlobError>;
}
