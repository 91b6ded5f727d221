//! rolehost's storage: Blob, Queue and Table with Azure Storage semantics, on redb.
//!
//! Roles share nothing but storage, so this crate is the ground everything else stands on. It
//! follows Azure Storage's documented semantics (names, limits, error codes) and knows nothing
//! of Wasm or async: the runtime calls it from a blocking context.
//!
//! # Layout
//! - `engine` (private): the redb tables, id generation, and the group committer.
//! - [`blob`], [`queue`], [`table`]: each service's types, its backend trait (the seam a second,
//!   distributed engine plugs into), and its redb implementation.
//! - [`clock`]: the replaceable clock all time rules read.
//! - [`error`]: one error enum per family, each carrying its Azure code and HTTP status.
//! - [`names`]: naming rules, checked at the start of every operation.
//! - [`ids`]: the shapes of ETags, message ids and receipts, from an engine's sequence numbers.
//! - [`quota`]: what each account may store and stores, and the disk room the host keeps.
//! - [`settings`]: small named values per account kept for the layers above (service properties).
//!
//! # Guarantees
//! - **Durable before acknowledged.** A write returns `Ok` only after the commit carrying it is
//!   fsync'd; after a crash of the process every acknowledged write is there and nothing
//!   half-written is visible. Throughput comes from group commit, not weaker durability.
//! - **Accounts are isolated.** Every key starts with the account name; no operation can name
//!   another account's data.
//! - **No panics on input.** Every name, limit and condition is checked and refused with a typed
//!   error.
//! - **Bounded.** Every write that grows an account is admitted against its quota and the host's
//!   headroom before it writes; deletes are always admitted. After an I/O failure the database
//!   is reopened, not left refusing every write.
//!
//! # Example
//! ```
//! use rolehost_storage::{AccountName, RedbStore, StorageOptions, queue::{QueueStore, PutMessageOptions}};
//! use std::time::Duration;
//! let dir = tempfile::tempdir().unwrap();
//! let store = RedbStore::open(dir.path().join("storage.redb"), StorageOptions::default()).unwrap();
//! let acct = AccountName::new("demo").unwrap();
//! store.create_queue(&acct, "jobs", vec![]).unwrap();
//! store.put_message(&acct, "jobs", b"resize cat.png", PutMessageOptions::default()).unwrap();
//! let msgs = store.get_messages(&acct, "jobs", 1, Duration::from_secs(30)).unwrap();
//! assert_eq!(msgs[0].body, b"resize cat.png");
//! assert_eq!(msgs[0].dequeue_count, 1);
//! store.delete_message(&acct, "jobs", &msgs[0].id, &msgs[0].pop_receipt).unwrap();
//! ```

#![deny(missing_docs)]

pub mod blob;
pub mod clock;
#[doc(hidden)]
pub mod crash_writer;
mod engine;
pub mod error;
pub mod ids;
pub mod names;
mod policies;
pub mod queue;
pub mod quota;
pub mod settings;
pub mod table;

use std::path::Path;
use std::sync::Arc;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use engine::{CHUNK_SIZE, DEFAULT_CACHE_BYTES, MAX_BATCH};
pub use error::{BlobError, NameError, QueueError, StorageError, TableError};
pub use quota::Delta;
pub use quota::{AccountQuota, DEFAULT_HEADROOM_BYTES, QuotaError, Resource, Usage};

/// User-defined metadata: name/value pairs (names are C# identifiers, compared ignoring case).
pub type Metadata = Vec<(String, String)>;

/// A validated storage account name. One account per service: the namespace of its data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    /// Validates `name` (3–63 lowercase letters, digits and `-`, see [`names::check_account`]).
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        names::check_account(&name)?;
        Ok(AccountName(name))
    }

    /// The host's own account, where it keeps what no tenant may read or change (snapshots).
    /// Its name starts with `$`, which no account name may ([`names::check_account`]): no
    /// service is named so, no client can address it, and its keys share no prefix with any
    /// tenant's.
    pub fn host() -> Self {
        AccountName(HOST_ACCOUNT.to_string())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of [`AccountName::host`].
pub const HOST_ACCOUNT: &str = "$rolehost";

impl std::fmt::Display for AccountName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A page of a listing and the marker to pass to get the next one.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The items, in name order.
    pub items: Vec<T>,
    /// `Some` when more may follow: pass it back as the marker. A page may be short (even empty)
    /// and still carry a marker; loop until it is `None`.
    pub next_marker: Option<String>,
}

/// Options of a listing (containers, blobs, queues, tables).
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Continue from a previous page's `next_marker`.
    pub marker: Option<String>,
    /// At most this many items (1..=5000, default 5000).
    pub max_results: Option<u32>,
    /// Return each item's metadata.
    pub include_metadata: bool,
}

/// Largest and default page size of listings.
pub const MAX_LIST_RESULTS: u32 = 5000;

impl ListOptions {
    /// The page size asked for (every engine checks it the same way).
    pub fn page_size(&self) -> Result<usize, &'static str> {
        match self.max_results {
            None => Ok(MAX_LIST_RESULTS as usize),
            Some(0) => Err("maxresults must be 1..=5000"),
            Some(n) => Ok(n.min(MAX_LIST_RESULTS) as usize),
        }
    }

    /// The first name to list: the marker if given, else the prefix.
    pub fn start(&self) -> &str {
        self.marker
            .as_deref()
            .or(self.prefix.as_deref())
            .unwrap_or("")
    }
}

/// The classic 2008 queue message limit, rolehost's default.
pub const DEFAULT_QUEUE_MESSAGE_MAX_BYTES: usize = 8 * 1024;
/// The largest queue message limit that may be configured (today's Azure limit).
pub const MAX_QUEUE_MESSAGE_MAX_BYTES: usize = 64 * 1024;

/// What a host sets for one account, from its service's manifest ([`Accounts::set_account_options`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountOptions {
    /// The account's queue message size limit (1..=[`MAX_QUEUE_MESSAGE_MAX_BYTES`]).
    pub queue_message_max_bytes: usize,
}

/// How to open a [`RedbStore`].
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// redb's page cache in bytes ([`DEFAULT_CACHE_BYTES`]). Its write buffer is held to half of
    /// it, so this bounds what a large upload costs in memory.
    pub cache_bytes: usize,
    /// The queue message size limit of accounts without [`AccountOptions`] of their own
    /// ([`DEFAULT_QUEUE_MESSAGE_MAX_BYTES`], at most [`MAX_QUEUE_MESSAGE_MAX_BYTES`]).
    pub queue_message_max_bytes: usize,
    /// The clock every time rule reads ([`SystemClock`] by default).
    pub clock: Arc<dyn Clock>,
    /// Seed of the id sequence for a new database (ETags, message ids, receipts). `None` derives
    /// one from the clock; a simulation passes a fixed seed for reproducible ids.
    pub id_seed: Option<u64>,
    /// The quota of every account [`Accounts::set_quota`] was not told about
    /// ([`AccountQuota::HOST_DEFAULT`]).
    pub default_quota: AccountQuota,
    /// Bytes of the database's disk that no write may take ([`DEFAULT_HEADROOM_BYTES`]): the
    /// room that keeps deletes, the host's own records and other programs working when
    /// tenants fill the disk.
    pub headroom_bytes: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            queue_message_max_bytes: DEFAULT_QUEUE_MESSAGE_MAX_BYTES,
            clock: Arc::new(SystemClock),
            id_seed: None,
            default_quota: AccountQuota::HOST_DEFAULT,
            headroom_bytes: DEFAULT_HEADROOM_BYTES,
        }
    }
}

/// The embedded engine: all three services in one redb file.
///
/// Cheap to share: wrap it in an `Arc` (or use it as `Arc<dyn Backend>`). Dropping the last
/// handle waits for the committer to answer everything queued.
#[derive(Debug)]
pub struct RedbStore {
    engine: engine::Engine,
    options: AccountOptionsBook,
}

impl RedbStore {
    /// Opens (or creates) the database file at `path`. Data of uploads a crash interrupted is
    /// removed here.
    pub fn open(path: impl AsRef<Path>, options: StorageOptions) -> Result<Self, StorageError> {
        let account_options = AccountOptionsBook::new(options.queue_message_max_bytes)?;
        let quotas = Arc::new(quota::QuotaBook::new(
            options.default_quota,
            options.headroom_bytes,
            path.as_ref(),
        ));
        let opened = engine::Engine::open(
            path.as_ref(),
            options.cache_bytes,
            options.clock,
            options.id_seed,
            quotas,
        )?;
        let store = RedbStore {
            engine: opened.engine,
            options: account_options,
        };
        if opened.recount {
            tracing::info!(path = %path.as_ref().display(), "counting what each storage account stores");
            store.recount_usage()?;
        }
        Ok(store)
    }

    /// Counts what every account stores from the data itself and replaces the kept usage with
    /// it. The open does this for a database that needs it (made by an older rolehost, or with
    /// uploads a crash interrupted); the usage kept is exact otherwise.
    pub fn recount_usage(&self) -> Result<(), StorageError> {
        self.engine.write(true, |ctx| -> Result<(), StorageError> {
            let mut counted: std::collections::HashMap<String, Usage> = Default::default();
            blob::store::count_usage(ctx.txn, &mut counted)?;
            queue::store::count_usage(ctx.txn, &mut counted)?;
            table::store::count_usage(ctx.txn, &mut counted)?;
            let mut meta = ctx.txn.open_table(engine::META)?;
            engine::clear_usage(&mut meta)?;
            for (account, u) in &counted {
                engine::write_usage(&mut meta, account, &Usage::default(), u)?;
            }
            meta.insert(engine::USAGE_COUNTED, 1)?;
            Ok(())
        })
    }
}

impl Accounts for RedbStore {
    fn set_quota(&self, account: &AccountName, quota: Option<AccountQuota>) {
        self.engine.quotas.set(account.as_str(), quota);
    }

    fn quota(&self, account: &AccountName) -> AccountQuota {
        self.engine.quotas.quota(account.as_str())
    }

    fn default_quota(&self) -> AccountQuota {
        self.engine.quotas.default_quota()
    }

    fn usage(&self, account: &AccountName) -> Result<Usage, StorageError> {
        let txn = self.engine.read()?;
        engine::read_usage(&txn.open_table(engine::META)?, account.as_str())
    }

    fn set_account_options(
        &self,
        account: &AccountName,
        options: Option<AccountOptions>,
    ) -> Result<(), StorageError> {
        self.options.set(account, options)
    }

    fn queue_message_max_bytes(&self, account: &AccountName) -> usize {
        self.options.queue_message_max_bytes(account)
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.engine.clock
    }
}

/// What a host tells an engine about each account, and what it can ask: quotas, options,
/// usage, the clock. Every engine implements it; the fabric sets these from each service's
/// manifest.
pub trait Accounts: Send + Sync {
    /// Sets `account`'s quota (`None`: the store's default again). Writes already admitted
    /// stay; an account over a lowered quota can only shrink until it is under it.
    fn set_quota(&self, account: &AccountName, quota: Option<AccountQuota>);

    /// `account`'s quota.
    fn quota(&self, account: &AccountName) -> AccountQuota;

    /// The quota of accounts without one of their own.
    fn default_quota(&self) -> AccountQuota;

    /// What `account` stores.
    fn usage(&self, account: &AccountName) -> Result<Usage, StorageError>;

    /// Sets `account`'s own options (`None`: the store's defaults again). A queue message size
    /// limit outside 1..=[`MAX_QUEUE_MESSAGE_MAX_BYTES`] is refused and changes nothing.
    fn set_account_options(
        &self,
        account: &AccountName,
        options: Option<AccountOptions>,
    ) -> Result<(), StorageError>;

    /// `account`'s queue message size limit.
    fn queue_message_max_bytes(&self, account: &AccountName) -> usize;

    /// The clock this store reads.
    fn clock(&self) -> &Arc<dyn Clock>;
}

/// Each account's [`AccountOptions`] and the default of the others: one host serves many
/// services, each with its own. Kept in memory: the fabric sets them again at every start.
#[derive(Debug)]
pub struct AccountOptionsBook {
    default_message_max: usize,
    message_max: std::sync::RwLock<std::collections::HashMap<String, usize>>,
}

fn check_message_max(n: usize) -> Result<(), StorageError> {
    if !(1..=MAX_QUEUE_MESSAGE_MAX_BYTES).contains(&n) {
        return Err(StorageError::Internal(format!(
            "queue_message_max_bytes must be 1..={MAX_QUEUE_MESSAGE_MAX_BYTES}, got {n}"
        )));
    }
    Ok(())
}

impl AccountOptionsBook {
    /// A book whose accounts without options of their own have a `default_message_max` byte
    /// queue message limit (refused outside 1..=[`MAX_QUEUE_MESSAGE_MAX_BYTES`]).
    pub fn new(default_message_max: usize) -> Result<Self, StorageError> {
        check_message_max(default_message_max)?;
        Ok(AccountOptionsBook {
            default_message_max,
            message_max: Default::default(),
        })
    }

    /// [`Accounts::set_account_options`].
    pub fn set(
        &self,
        account: &AccountName,
        options: Option<AccountOptions>,
    ) -> Result<(), StorageError> {
        let mut map = self.message_max.write().unwrap_or_else(|p| p.into_inner());
        match options {
            Some(o) => {
                check_message_max(o.queue_message_max_bytes)?;
                map.insert(account.as_str().to_string(), o.queue_message_max_bytes);
            }
            None => {
                map.remove(account.as_str());
            }
        }
        Ok(())
    }

    /// [`Accounts::queue_message_max_bytes`].
    pub fn queue_message_max_bytes(&self, account: &AccountName) -> usize {
        self.message_max
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(account.as_str())
            .copied()
            .unwrap_or(self.default_message_max)
    }
}

/// Everything a storage engine offers: the seam the runtime calls through. A distributed engine
/// implements these three traits and nothing above it changes.
pub trait Backend:
    blob::BlobStore
    + queue::QueueStore
    + table::TableStore
    + settings::SettingsStore
    + Accounts
    + Send
    + Sync
{
}

impl Backend for RedbStore {}
