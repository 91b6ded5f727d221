//! What an account may store, what it stores, and the room the host keeps free on its disk.
//!
//! Every write that grows an account is admitted against its [`AccountQuota`] (bytes, and
//! counts of containers, blobs, queues, messages, tables and entities) and against the host's
//! headroom (free bytes on the database's disk that no write may take) before it writes
//! anything. A refusal is Azure's `InsufficientAccountPermissions` (403) for a quota and
//! `ServerBusy` (503) for a disk with no room left. Writes that shrink an account (deletes,
//! clears) are never refused, so a tenant at its quota, or a host at its headroom, can always
//! make room.
//!
//! # What counts
//! [`Usage`] is kept per account in the database, changed in the same transaction as the data
//! it counts, so it is exact after any crash. The bytes of an item are [`ITEM_BYTES`] (its
//! keys, record and index entries, roughly) plus what it holds:
//! - container, queue: its name and metadata;
//! - blob: its name, metadata, block ids and content;
//! - uncommitted block: its id and content;
//! - message: its body;
//! - table: its name;
//! - entity: its keys and stored properties.
//!
//! Content of an upload still streaming in counts from its first chunk: an upload larger than
//! the room left is refused while it streams, not after.
//!
//! The host's own account ([`crate::HOST_ACCOUNT`], snapshots) has no quota; it is held to
//! the headroom like everyone.
//!
//! # The room
//! A write may grow the data by the disk's free space less the headroom, plus what deletes
//! freed inside the database file since it last grew (redb's file never shrinks; freed pages
//! are reused). So a tenant refused at the headroom who deletes can write as much again. The
//! freed credit starts at zero when the database is opened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::HOST_ACCOUNT;

/// What every item costs beside its content: its redb keys, its record and index entries,
/// roughly. It also makes empty items cost something, so counts and bytes bound each other.
pub const ITEM_BYTES: u64 = 128;

/// What one segment of a blob's block list costs beside its block id (data id and length).
pub(crate) const SEGMENT_BYTES: u64 = 16;

/// One of the things an account's quota bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Bytes stored (see the module docs for what counts).
    Bytes,
    /// Blob containers.
    Containers,
    /// Blobs (committed; uncommitted blocks count in bytes only).
    Blobs,
    /// Queues.
    Queues,
    /// Queue messages (invisible and expired ones not yet removed included).
    Messages,
    /// Tables.
    Tables,
    /// Table entities.
    Entities,
}

impl Resource {
    /// Every resource, in [`Usage`]'s order.
    pub const ALL: [Resource; 7] = [
        Resource::Bytes,
        Resource::Containers,
        Resource::Blobs,
        Resource::Queues,
        Resource::Messages,
        Resource::Tables,
        Resource::Entities,
    ];

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Resource::Bytes => "bytes",
            Resource::Containers => "containers",
            Resource::Blobs => "blobs",
            Resource::Queues => "queues",
            Resource::Messages => "messages",
            Resource::Tables => "tables",
            Resource::Entities => "entities",
        }
    }

    /// Its key in a manifest's `[storage.quota]` and in `rolehost serve --account-quota`.
    pub fn quota_key(self) -> &'static str {
        match self {
            Resource::Bytes => "max-mb",
            Resource::Containers => "max-containers",
            Resource::Blobs => "max-blobs",
            Resource::Queues => "max-queues",
            Resource::Messages => "max-messages",
            Resource::Tables => "max-tables",
            Resource::Entities => "max-entities",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The most an account may store, per [`Resource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountQuota {
    limits: [u64; 7],
}

impl AccountQuota {
    /// No limit at all (the host's own account).
    pub const UNLIMITED: AccountQuota = AccountQuota {
        limits: [u64::MAX; 7],
    };

    /// What a host allows an account unless told otherwise: 10 GiB, and a million blobs,
    /// messages and entities each, a thousand containers, queues and tables each. Generous for
    /// one service, small enough that a few tenants cannot fill an ordinary disk between them
    /// with small items whose overhead the byte count alone would not see.
    pub const HOST_DEFAULT: AccountQuota = AccountQuota {
        limits: [
            10 << 30,
            1_000,
            1_000_000,
            1_000,
            1_000_000,
            1_000,
            1_000_000,
        ],
    };

    /// The limit of `r`.
    pub fn get(&self, r: Resource) -> u64 {
        self.limits[r.index()]
    }

    /// Sets the limit of `r`.
    pub fn set(&mut self, r: Resource, limit: u64) {
        self.limits[r.index()] = limit;
    }

    /// `self` with `r` set to `limit`.
    pub fn with(mut self, r: Resource, limit: u64) -> Self {
        self.set(r, limit);
        self
    }

    /// The first resource whose limit is above `ceiling`'s, with both limits.
    pub fn above(&self, ceiling: &AccountQuota) -> Option<(Resource, u64, u64)> {
        Resource::ALL
            .into_iter()
            .find(|r| self.get(*r) > ceiling.get(*r))
            .map(|r| (r, self.get(r), ceiling.get(r)))
    }
}

impl Default for AccountQuota {
    fn default() -> Self {
        AccountQuota::HOST_DEFAULT
    }
}

/// What an account stores, per [`Resource`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    counts: [u64; 7],
}

impl Usage {
    /// How much of `r`.
    pub fn get(&self, r: Resource) -> u64 {
        self.counts[r.index()]
    }

    /// Sets how much of `r` (an engine reading its stored usage).
    pub fn set(&mut self, r: Resource, v: u64) {
        self.counts[r.index()] = v;
    }

    /// Applies a change (never below zero).
    pub fn apply(&mut self, d: &Delta) {
        for (c, d) in self.counts.iter_mut().zip(d.0) {
            *c = c.saturating_add_signed(d);
        }
    }
}

/// A change of an account's [`Usage`], per [`Resource`] in [`Resource::ALL`]'s order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(pub [i64; 7]);

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Delta {
    /// One item more of `r`, holding `content` bytes (beside [`ITEM_BYTES`]).
    pub fn item(r: Resource, content: u64) -> Delta {
        let mut d = Delta::default();
        d.add_item(r, content);
        d
    }

    /// Adds one item of `r` holding `content` bytes. `r` = [`Resource::Bytes`]: bytes only (an
    /// uncommitted block).
    pub fn add_item(&mut self, r: Resource, content: u64) {
        if r != Resource::Bytes {
            self.0[r.index()] += 1;
        }
        self.add_bytes(signed(ITEM_BYTES.saturating_add(content)));
    }

    /// Removes one item of `r` holding `content` bytes.
    pub fn remove_item(&mut self, r: Resource, content: u64) {
        if r != Resource::Bytes {
            self.0[r.index()] -= 1;
        }
        self.add_bytes(-signed(ITEM_BYTES.saturating_add(content)));
    }

    /// Adds `count` items of `r` holding `content` bytes between them (what a count of stored
    /// data found).
    pub fn add_items(&mut self, r: Resource, count: u64, content: u64) {
        if r != Resource::Bytes {
            self.0[r.index()] += signed(count);
        }
        self.add_bytes(signed(
            count.saturating_mul(ITEM_BYTES).saturating_add(content),
        ));
    }

    /// Removes `count` items of `r` holding `content` bytes between them (what a bulk delete
    /// freed, summed by the database).
    pub fn remove_items(&mut self, r: Resource, count: u64, content: u64) {
        if r != Resource::Bytes {
            self.0[r.index()] -= signed(count);
        }
        self.add_bytes(-signed(
            count.saturating_mul(ITEM_BYTES).saturating_add(content),
        ));
    }

    /// Adds `n` bytes (negative: removes them).
    pub fn add_bytes(&mut self, n: i64) {
        let b = &mut self.0[Resource::Bytes.index()];
        *b = b.saturating_add(n);
    }

    /// Both changes.
    pub fn plus(mut self, other: Delta) -> Delta {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a = a.saturating_add(b);
        }
        self
    }

    /// The change of [`Resource::Bytes`].
    pub fn bytes(&self) -> i64 {
        self.0[Resource::Bytes.index()]
    }
}

/// Bytes of user metadata: names and values.
pub fn metadata_bytes(metadata: &crate::Metadata) -> u64 {
    metadata
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum()
}

/// Admits `delta` to `account`, which stores `used` under `quota`: refused when it grows a
/// resource past its limit. Shrinking never is. Every engine admits its writes through here.
pub fn admit(
    account: &str,
    used: &Usage,
    delta: &Delta,
    quota: &AccountQuota,
) -> Result<(), QuotaError> {
    for (r, d) in Resource::ALL.into_iter().zip(delta.0) {
        if d <= 0 {
            continue;
        }
        let wanted = used.get(r).saturating_add(d.unsigned_abs());
        if wanted > quota.get(r) {
            return Err(QuotaError::Account {
                account: account.to_string(),
                resource: r,
                used: used.get(r),
                wanted,
                limit: quota.get(r),
            });
        }
    }
    Ok(())
}

/// A write refused because it would grow an account past its quota, or take the host's
/// headroom. Nothing of it was written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// The account's quota of `resource` would be exceeded (403 InsufficientAccountPermissions).
    #[error(
        "write operations are not allowed: account {account} would store {wanted} {resource} \
         with this, over its quota of {limit} ({used} stored); delete some (deletes are always \
         allowed) or raise [storage.quota] {}", resource.quota_key()
    )]
    Account {
        /// The account.
        account: String,
        /// What would be exceeded.
        resource: Resource,
        /// What it stores now.
        used: u64,
        /// What it would store with this write.
        wanted: u64,
        /// Its quota.
        limit: u64,
    },
    /// The host's disk would have less than its headroom free (503 ServerBusy).
    #[error(
        "the host's disk is nearly full ({free} bytes free, {headroom} kept free, this write \
         needs {needed}): writes are refused until space is freed; deletes still work"
    )]
    HostFull {
        /// Bytes free on the database's disk.
        free: u64,
        /// Bytes the host keeps free (`rolehost serve --storage-headroom-mb`).
        headroom: u64,
        /// Bytes this write needs.
        needed: u64,
    },
}

impl QuotaError {
    /// The Azure error code.
    pub fn code(&self) -> &'static str {
        match self {
            QuotaError::Account { .. } => "InsufficientAccountPermissions",
            QuotaError::HostFull { .. } => "ServerBusy",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            QuotaError::Account { .. } => 403,
            QuotaError::HostFull { .. } => 503,
        }
    }
}

/// The host's default headroom: what it keeps free on the database's disk (1 GiB).
pub const DEFAULT_HEADROOM_BYTES: u64 = 1 << 30;

/// The quota of every account told about and the default of the others. Every engine keeps
/// one; the fabric sets it from each service's manifest at every start.
#[derive(Debug)]
pub struct QuotaTable {
    default: RwLock<AccountQuota>,
    accounts: RwLock<HashMap<String, AccountQuota>>,
}

impl QuotaTable {
    /// A table whose accounts all have `default`.
    pub fn new(default: AccountQuota) -> Self {
        QuotaTable {
            default: RwLock::new(default),
            accounts: RwLock::new(HashMap::new()),
        }
    }

    /// `account`'s quota ([`AccountQuota::UNLIMITED`] for the host's own account).
    pub fn quota(&self, account: &str) -> AccountQuota {
        if account == HOST_ACCOUNT {
            return AccountQuota::UNLIMITED;
        }
        let accounts = self.accounts.read().unwrap_or_else(|p| p.into_inner());
        match accounts.get(account) {
            Some(q) => *q,
            None => *self.default.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Sets `account`'s quota (`None`: the default again).
    pub fn set(&self, account: &str, quota: Option<AccountQuota>) {
        let mut accounts = self.accounts.write().unwrap_or_else(|p| p.into_inner());
        match quota {
            Some(q) => accounts.insert(account.to_string(), q),
            None => accounts.remove(account),
        };
    }

    /// The quota of accounts without one of their own.
    pub fn default_quota(&self) -> AccountQuota {
        *self.default.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The quotas of every account, the host's default, and its headroom. Shared by the store's
/// handle (which sets them) and the committer (which admits writes against them).
#[derive(Debug)]
pub(crate) struct QuotaBook {
    quotas: QuotaTable,
    headroom: u64,
    /// The directory whose filesystem's free space is the room.
    dir: PathBuf,
    /// Bytes freed inside the database file since it last grew: writes reuse them without
    /// taking the disk's free space (redb's file never shrinks). Zero after an open, and
    /// whenever the file grows (what was freed is then used up).
    slack: std::sync::atomic::AtomicU64,
}

impl QuotaBook {
    pub(crate) fn new(default: AccountQuota, headroom: u64, db_path: &Path) -> Self {
        let dir = db_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        QuotaBook {
            quotas: QuotaTable::new(default),
            headroom,
            dir,
            slack: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn slack(&self) -> u64 {
        self.slack.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After a commit: `freed` bytes more are free in the file and `used` of the slack were
    /// taken; a file that grew has none left.
    pub(crate) fn settle(&self, used: u64, freed: u64, file_grew: bool) {
        let next = if file_grew {
            freed
        } else {
            self.slack().saturating_sub(used).saturating_add(freed)
        };
        self.slack.store(next, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn quota(&self, account: &str) -> AccountQuota {
        self.quotas.quota(account)
    }

    pub(crate) fn set(&self, account: &str, quota: Option<AccountQuota>) {
        self.quotas.set(account, quota);
    }

    pub(crate) fn default_quota(&self) -> AccountQuota {
        self.quotas.default_quota()
    }

    pub(crate) fn headroom(&self) -> u64 {
        self.headroom
    }

    /// Bytes free on the database's disk (to an unprivileged writer). `u64::MAX` when the
    /// filesystem cannot say: the write goes ahead and the disk itself is the limit.
    pub(crate) fn free_bytes(&self) -> u64 {
        free_bytes(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the disk's free space");
            u64::MAX
        })
    }
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a plain struct statvfs fills in.
    #[allow(unsafe_code)]
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st
    };
    #[allow(clippy::unnecessary_cast)] // c_ulong / fsblkcnt_t differ between targets.
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_count_items_and_their_overhead() {
        let mut d = Delta::item(Resource::Blobs, 1000);
        assert_eq!(d.0[Resource::Blobs.index()], 1);
        assert_eq!(d.bytes(), 1128);
        d.remove_item(Resource::Blobs, 1000);
        assert_eq!(d, Delta::default());
        let mut bulk = Delta::item(Resource::Messages, 5).plus(Delta::item(Resource::Messages, 7));
        bulk.remove_items(Resource::Messages, 2, 12);
        assert_eq!(bulk, Delta::default());
        bulk.add_items(Resource::Messages, 2, 12);
        assert_eq!(
            bulk,
            Delta::item(Resource::Messages, 5).plus(Delta::item(Resource::Messages, 7))
        );
        let block = Delta::item(Resource::Bytes, 10);
        assert_eq!(block.0[1..], [0; 6], "a block is bytes only");
        let mut u = Usage::default();
        u.apply(&Delta::item(Resource::Queues, 4));
        u.apply(&Delta::default().plus({
            let mut r = Delta::default();
            r.remove_item(Resource::Queues, 4);
            r.remove_item(Resource::Queues, 4);
            r
        }));
        assert_eq!(u, Usage::default(), "usage never goes below zero");
    }

    #[test]
    fn a_quota_above_the_ceiling_is_named() {
        let ceiling = AccountQuota::HOST_DEFAULT;
        assert_eq!(ceiling.above(&ceiling), None);
        let q = ceiling.with(Resource::Tables, 5000);
        assert_eq!(q.above(&ceiling), Some((Resource::Tables, 5000, 1000)));
    }

    #[test]
    fn the_free_space_of_a_real_directory_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert!(free_bytes(Path::new("/nonexistent/dir")).is_err());
    }
}
