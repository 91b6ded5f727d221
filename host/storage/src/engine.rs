//! The redb engine underneath all three services: the table layout, id generation, and the group
//! committer that gives every write durability without one fsync per operation.
//!
//! # Group commit
//! redb has one writer at a time and each durable commit costs an fsync. All writes therefore go
//! through one committer thread: callers hand it a closure, it takes every closure queued at that
//! moment (up to [`MAX_BATCH`]), runs them in order in one write transaction, commits once, and
//! only then answers each caller. Under load, one fsync acknowledges many operations.
//!
//! **Invariant:** an operation closure checks everything before it writes anything. An operation
//! that refuses (returns its family error) has written nothing, so it can share a transaction with
//! operations that succeed. An engine failure (I/O, corrupt record, a panic) aborts the whole batch
//! and every caller in it gets an error: nothing unacknowledged is ever visible.
//!
//! # Usage and quotas
//! Each operation charges what it adds or frees to its account ([`WriteCtx::charge`]) after its
//! checks and before its writes; a charge past the account's quota or the host's headroom is a
//! refusal like any other. The batch keeps the accounts it touched in memory and writes them to
//! [`META`] (keys [`usage_key`]) before it commits, so usage and data move together (see
//! [`crate::quota`]).
//!
//! # I/O failures
//! After a failed write redb refuses every later one ("Previous I/O error") until the database is
//! opened again. The committer does that itself: the batch whose commit failed is answered with
//! the error, the database is reopened (redb repairs it) and the next batch goes on. Readers
//! wait while it happens. A database that cannot be reopened is named in every error until it
//! can.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::clock::{Clock, Timestamp};
use crate::error::{FamilyError, StorageError};
use crate::ids;
use crate::quota::{Delta, QuotaBook, QuotaError, Resource, Usage};

// ---- Table layout (see ARCHITECTURE.md "Storage layout"). Keys start with the account name, so
// one account's data is a contiguous key range no other account's operation can name.

/// Engine counters: `seq` (the id sequence high-water mark), `salt`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (account, container) -> ContainerRecord
pub(crate) const CONTAINERS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("containers");
/// (account, container, blob) -> BlobRecord
pub(crate) const BLOBS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("blobs");
/// (account, container, blob, block id) -> UncommittedBlock
pub(crate) const BLOCKS: TableDefinition<(&str, &str, &str, &[u8]), &[u8]> =
    TableDefinition::new("blocks");
/// (data id, chunk index) -> bytes. Blob content, in chunks of at most [`CHUNK_SIZE`].
pub(crate) const CHUNKS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("chunks");
/// data id -> (). Data being streamed in and not yet referenced; removed at open after a crash.
pub(crate) const PENDING: TableDefinition<u64, ()> = TableDefinition::new("pending_data");
/// (account, queue) -> QueueRecord
pub(crate) const QUEUES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("queues");
/// (account, queue, seq) -> MessageRecord
pub(crate) const MESSAGES: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("messages");
/// (account, queue, visible-at micros, seq) -> (). The order in which messages are handed out.
pub(crate) const VISIBLE: TableDefinition<(&str, &str, u64, u64), ()> =
    TableDefinition::new("visible");
/// (account, container) -> ContainerAcl: public access and stored access policies. Removed
/// with its container, so a new container of the same name starts private.
pub(crate) const CONTAINER_ACLS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("container_acls");
/// (account, kind, name) -> Vec<AccessPolicy>: the stored access policies of a queue
/// (`queue`, its name) or a table (`table`, its lowercase name). Removed with the queue or
/// table, so one made again under the name starts with none.
pub(crate) const SIGNED_IDENTIFIERS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("signed_identifiers");
/// (account, setting) -> bytes: an account's settings kept for the REST door (each service's
/// properties), opaque to the engine.
pub(crate) const SETTINGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("settings");
/// (account, lowercase table name) -> table name as created
pub(crate) const TABLES: TableDefinition<(&str, &str), &str> = TableDefinition::new("tables");
/// (account, lowercase table name, PartitionKey, RowKey) -> EntityRecord
pub(crate) const ENTITIES: TableDefinition<(&str, &str, &str, &str), &[u8]> =
    TableDefinition::new("entities");
/// Where [`META`] keeps what an account stores: `usage/<account>/<resource>` (names have no
/// `/`). In META and not a table of its own: META's page is written by nearly every commit
/// anyway (the id sequence), while a table of usage cost every commit a page more, 20% of a
/// single client's queue throughput.
pub(crate) fn usage_key(account: &str, r: Resource) -> String {
    format!("{USAGE_PREFIX}{account}/{}", r.name())
}

/// The start of every [`usage_key`]; `usage0` is past them all (`0` follows `/`).
const USAGE_PREFIX: &str = "usage/";
const USAGE_END: &str = "usage0";

/// What [`META`] says `account` stores.
pub(crate) fn read_usage(
    meta: &impl ReadableTable<&'static str, u64>,
    account: &str,
) -> Result<Usage, StorageError> {
    let mut u = Usage::default();
    for r in Resource::ALL {
        if let Some(v) = meta.get(usage_key(account, r).as_str())? {
            u.set(r, v.value());
        }
    }
    Ok(u)
}

/// Writes what changed from `old` to `new` (zeros are removed).
pub(crate) fn write_usage(
    meta: &mut redb::Table<&'static str, u64>,
    account: &str,
    old: &Usage,
    new: &Usage,
) -> Result<(), StorageError> {
    for r in Resource::ALL {
        if old.get(r) == new.get(r) {
            continue;
        }
        let key = usage_key(account, r);
        if new.get(r) == 0 {
            meta.remove(key.as_str())?;
        } else {
            meta.insert(key.as_str(), new.get(r))?;
        }
    }
    Ok(())
}

/// Removes every account's usage.
pub(crate) fn clear_usage(meta: &mut redb::Table<&'static str, u64>) -> Result<(), StorageError> {
    meta.retain_in(USAGE_PREFIX..USAGE_END, |_, _| false)?;
    Ok(())
}

/// The [`META`] key set once the usage kept counts everything in the database. A database made
/// before usage was kept lacks it and is counted at open.
pub(crate) const USAGE_COUNTED: &str = "usage_counted";

/// Attempts to reopen the database after an I/O failure while readers still hold the old one
/// open, 20 ms apart (a read transaction lasts one storage call).
const REOPEN_ATTEMPTS: u32 = 100;

/// Blob content is stored in chunks of this size, so neither writes nor reads ever hold a whole
/// large blob in memory.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Most operations one commit carries. Bounds the latency one batch adds to its last caller.
pub const MAX_BATCH: usize = 1024;

/// redb's page cache. Its write buffer is held to half of it, which bounds what a large blob
/// upload costs in memory; 32 MiB keeps a 1 GiB put under 64 MiB of process memory.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard to a Vec cannot fail for our plain data types.
    postcard::to_allocvec(value).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    bytes: &[u8],
) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// Unique ids (ETags, message ids, pop receipts, lease ids, data ids) from one persisted
/// sequence. Ids are deterministic given the database and its salt, which keeps simulations
/// reproducible, and never repeat, even under a clock that does not move.
#[derive(Debug)]
pub(crate) struct IdGen {
    next: u64,
    persisted: u64,
    salt: u64,
}

impl IdGen {
    pub(crate) fn next_seq(&mut self) -> u64 {
        let s = self.next;
        self.next += 1;
        s
    }

    /// An opaque quoted ETag in Azure's blob format (`"0x8D…"`).
    pub(crate) fn etag(&mut self) -> String {
        let s = self.next_seq();
        ids::etag(s, self.salt)
    }

    /// A weak ETag for table entities. Opaque, unique per write.
    pub(crate) fn weak_etag(&mut self) -> String {
        let s = self.next_seq();
        ids::weak_etag(s, self.salt)
    }

    /// A GUID-shaped id whose low 64 bits are the sequence number ([`ids::guid`]).
    pub(crate) fn guid_for(&self, seq: u64) -> String {
        ids::guid(seq, self.salt)
    }

    pub(crate) fn guid(&mut self) -> String {
        let s = self.next_seq();
        self.guid_for(s)
    }

    /// An opaque pop receipt.
    pub(crate) fn receipt(&mut self) -> String {
        let s = self.next_seq();
        ids::receipt(s, self.salt)
    }
}

pub(crate) use crate::ids::seq_from_guid;

/// What an operation sees while it runs inside the committer.
pub(crate) struct WriteCtx<'a> {
    pub(crate) txn: &'a WriteTransaction,
    /// The clock, read once per batch: the operations of one commit happen at the same instant.
    pub(crate) now: Timestamp,
    pub(crate) ids: &'a mut IdGen,
    pub(crate) usage: &'a mut BatchUsage,
}

impl WriteCtx<'_> {
    /// Charges `delta` to `account`: refused (nothing changes) when it grows a resource past
    /// the account's quota or takes the host's headroom. Call it after every check and before
    /// the first write: a refusal must leave nothing written.
    pub(crate) fn charge<E>(&mut self, account: &str, delta: Delta) -> Result<(), E>
    where
        E: From<QuotaError> + From<StorageError>,
    {
        self.usage.charge(self.txn, account, delta)
    }
}

/// The usage of the accounts a batch touched, and the disk room left to it.
pub(crate) struct BatchUsage {
    book: Arc<QuotaBook>,
    /// Each touched account's usage as stored, and as it is now.
    accounts: HashMap<String, (Usage, Usage)>,
    /// Bytes the batch may still add before the disk's free space reaches the headroom; read
    /// from the filesystem at the batch's first growth, with the file's slack.
    room: Option<u64>,
    /// Bytes added in this batch.
    added: u64,
    /// Bytes freed in this batch.
    freed: u64,
}

impl BatchUsage {
    fn new(book: Arc<QuotaBook>) -> Self {
        BatchUsage {
            book,
            accounts: HashMap::new(),
            room: None,
            added: 0,
            freed: 0,
        }
    }

    fn load(&mut self, txn: &WriteTransaction, account: &str) -> Result<Usage, StorageError> {
        if let Some((_, now)) = self.accounts.get(account) {
            return Ok(*now);
        }
        let stored = read_usage(&txn.open_table(META)?, account)?;
        self.accounts.insert(account.to_string(), (stored, stored));
        Ok(stored)
    }

    fn charge<E>(&mut self, txn: &WriteTransaction, account: &str, delta: Delta) -> Result<(), E>
    where
        E: From<QuotaError> + From<StorageError>,
    {
        if delta == Delta::default() {
            return Ok(());
        }
        let mut used = self.load(txn, account)?;
        crate::quota::admit(account, &used, &delta, &self.book.quota(account))?;
        let grows = delta.bytes().max(0).unsigned_abs();
        if grows > 0 {
            let book = &self.book;
            let room = *self.room.get_or_insert_with(|| {
                book.free_bytes()
                    .saturating_sub(book.headroom())
                    .saturating_add(book.slack())
            });
            if grows > room {
                return Err(QuotaError::HostFull {
                    free: self.book.free_bytes(),
                    headroom: self.book.headroom(),
                    needed: grows,
                }
                .into());
            }
            self.room = Some(room - grows);
            self.added = self.added.saturating_add(grows);
        } else {
            self.freed = self.freed.saturating_add(delta.bytes().unsigned_abs());
        }
        used.apply(&delta);
        if let Some((_, now)) = self.accounts.get_mut(account) {
            *now = used;
        }
        Ok(())
    }

    /// Writes the touched accounts' usage into the batch's transaction.
    fn flush(&self, txn: &WriteTransaction) -> Result<(), StorageError> {
        if self.accounts.is_empty() {
            return Ok(());
        }
        let mut meta = txn.open_table(META)?;
        for (account, (stored, now)) in &self.accounts {
            write_usage(&mut meta, account, stored, now)?;
        }
        Ok(())
    }
}

type Completion = Box<dyn FnOnce(Result<(), Arc<StorageError>>) + Send>;
/// A caller's answer, taken by whichever path answers first.
type OnceAnswer<T> = Arc<Mutex<Option<Box<dyn FnOnce(T) + Send>>>>;
type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> (bool, Completion) + Send>;

struct Request {
    job: Job,
    /// Answers the caller when the batch fails before its job could run.
    abandon: Box<dyn FnOnce(Arc<StorageError>) + Send>,
    durable: bool,
}

/// The engine: a redb database, its committer thread, and the clock.
pub(crate) struct Engine {
    db: Arc<DbSlot>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) quotas: Arc<QuotaBook>,
    sender: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.db.path)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// The open database, which the committer replaces after an I/O failure.
struct DbSlot {
    /// `None` while it is reopened, or when reopening failed (`failure` says why).
    db: RwLock<Option<Arc<Database>>>,
    failure: Mutex<Option<String>>,
    path: PathBuf,
    cache_bytes: usize,
    /// The file's length after the last commit that changed usage: a longer one means the
    /// file grew (see [`QuotaBook::settle`]).
    file_len: std::sync::atomic::AtomicU64,
}

impl DbSlot {
    fn current(&self) -> Result<Arc<Database>, StorageError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        match db.as_ref() {
            Some(db) => Ok(db.clone()),
            None => Err(StorageError::Unavailable {
                path: self.path.display().to_string(),
                detail: self
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_else(|| "it is being reopened".into()),
            }),
        }
    }

    /// Closes the database and opens it again (redb repairs what the failed write left).
    fn reopen(&self) -> Result<(), StorageError> {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        slot.take();
        let mut last = None;
        for _ in 0..REOPEN_ATTEMPTS {
            match open_database(&self.path, self.cache_bytes) {
                Ok(db) => {
                    *slot = Some(Arc::new(db));
                    *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::warn!(path = %self.path.display(), "storage database reopened after an I/O failure");
                    return Ok(());
                }
                // A reader still has the old one open.
                Err(e @ StorageError::InUse(_)) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let e = last.unwrap_or(StorageError::Closed);
        tracing::error!(path = %self.path.display(), error = %e, "the storage database cannot be reopened; every storage call fails until it can (is the disk full or failing?)");
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        Err(e)
    }
}

/// Is `e` an I/O failure after which redb refuses every write until the database is reopened?
fn is_io_failure(e: &StorageError) -> bool {
    match e {
        StorageError::Database { io, .. } => *io,
        StorageError::CommitFailed(e) => is_io_failure(e),
        _ => false,
    }
}

/// Opens (or creates) the database, naming a damaged or busy file.
fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StorageError> {
    let shown = path.display().to_string();
    // redb panics on some garbage (unreachable code while it reads its own header): a damaged
    // file is named and refused, never a host panic.
    let opened = catch_unwind(AssertUnwindSafe(|| {
        Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StorageError::InUse(shown.clone()),
                redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
                    StorageError::Damaged {
                        path: shown.clone(),
                        detail,
                    }
                }
                // "Not a redb database", and other data redb cannot read.
                redb::DatabaseError::Storage(redb::StorageError::Io(e))
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    StorageError::Damaged {
                        path: shown.clone(),
                        detail: e.to_string(),
                    }
                }
                e => StorageError::from(e),
            })
    }));
    match opened {
        Ok(r) => r,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb panicked reading it".into());
            Err(StorageError::Damaged {
                path: shown,
                detail,
            })
        }
    }
}

/// What [`Engine::open`] found.
pub(crate) struct Opened {
    pub(crate) engine: Engine,
    /// The usage kept does not count everything (a database made before it was kept, or data of
    /// interrupted uploads removed): count it with [`crate::RedbStore::recount_usage`].
    pub(crate) recount: bool,
}

impl Engine {
    pub(crate) fn open(
        path: &Path,
        cache_bytes: usize,
        clock: Arc<dyn Clock>,
        id_seed: Option<u64>,
        quotas: Arc<QuotaBook>,
    ) -> Result<Opened, StorageError> {
        let db = open_database(path, cache_bytes)?;
        let prepared = catch_unwind(AssertUnwindSafe(|| Self::prepare(&db, &*clock, id_seed)))
            .map_err(|_| StorageError::Damaged {
                path: path.display().to_string(),
                detail: "redb panicked reading it".into(),
            })?;
        let (ids, recount) = prepared?;
        let slot = Arc::new(DbSlot {
            db: RwLock::new(Some(Arc::new(db))),
            failure: Mutex::new(None),
            path: path.to_path_buf(),
            cache_bytes,
            file_len: std::sync::atomic::AtomicU64::new(
                std::fs::metadata(path).map_or(0, |m| m.len()),
            ),
        });
        let (sender, receiver) = mpsc::channel::<Request>();
        let thread_slot = slot.clone();
        let thread_clock = clock.clone();
        let thread_quotas = quotas.clone();
        let thread = std::thread::Builder::new()
            .name("rolehost-storage-commit".into())
            .spawn(move || {
                committer_loop(&thread_slot, &*thread_clock, &thread_quotas, ids, &receiver)
            })
            .map_err(|e| StorageError::Internal(format!("cannot start the committer: {e}")))?;
        Ok(Opened {
            engine: Engine {
                db: slot,
                clock,
                quotas,
                sender: Mutex::new(Some(sender)),
                thread: Mutex::new(Some(thread)),
            },
            recount,
        })
    }

    /// Creates the tables, loads the id sequence, and removes data left by uploads that a crash
    /// interrupted (their chunks are in [`PENDING`] and nothing references them). Says whether
    /// the usage kept must be counted again.
    fn prepare(
        db: &Database,
        clock: &dyn Clock,
        id_seed: Option<u64>,
    ) -> Result<(IdGen, bool), StorageError> {
        let txn = db.begin_write()?;
        let ids;
        let recount;
        {
            let mut meta = txn.open_table(META)?;
            let next = meta.get("seq")?.map(|v| v.value()).unwrap_or(1);
            let stored_salt = meta.get("salt")?.map(|v| v.value());
            let counted = meta.get(USAGE_COUNTED)?.is_some();
            let salt = match stored_salt {
                Some(s) => s,
                None => {
                    let s = id_seed.unwrap_or_else(|| {
                        ids::mix(clock.now().as_micros() ^ u64::from(std::process::id()))
                    });
                    meta.insert("salt", s)?;
                    s
                }
            };
            // A new database counts from nothing: its usage is complete from the start.
            let new = stored_salt.is_none();
            if new {
                meta.insert(USAGE_COUNTED, 1)?;
            }
            ids = IdGen {
                next,
                persisted: next,
                salt,
            };
            txn.open_table(CONTAINERS)?;
            txn.open_table(CONTAINER_ACLS)?;
            txn.open_table(SETTINGS)?;
            txn.open_table(SIGNED_IDENTIFIERS)?;
            txn.open_table(BLOBS)?;
            txn.open_table(BLOCKS)?;
            txn.open_table(QUEUES)?;
            txn.open_table(MESSAGES)?;
            txn.open_table(VISIBLE)?;
            txn.open_table(TABLES)?;
            txn.open_table(ENTITIES)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut chunks = txn.open_table(CHUNKS)?;
            let orphans: Vec<u64> = pending
                .iter()?
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            for data_id in &orphans {
                delete_data(&mut chunks, *data_id)?;
                pending.remove(*data_id)?;
            }
            if !orphans.is_empty() {
                tracing::info!(
                    count = orphans.len(),
                    "removed data of uploads interrupted by a crash"
                );
            }
            // Streamed chunks are charged as they arrive; those of interrupted uploads were
            // charged and are gone now.
            recount = !(new || counted && orphans.is_empty());
        }
        txn.commit()?;
        Ok((ids, recount))
    }

    /// Runs `op` in the next group commit and returns its result once the commit is durable
    /// (`durable = true`) or at least visible to readers (`durable = false`, used only for the
    /// intermediate chunks of large uploads, which a later durable commit publishes).
    pub(crate) fn write<R, E>(
        &self,
        durable: bool,
        op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static,
    ) -> Result<R, E>
    where
        R: Send + 'static,
        E: FamilyError,
    {
        let (reply_tx, reply_rx) = mpsc::sync_channel::<Result<R, E>>(1);
        let abandon_tx = reply_tx.clone();
        let sent = self.enqueue(
            durable,
            op,
            move |r| {
                let _ = reply_tx.send(r);
            },
            move |r| {
                let _ = abandon_tx.send(r);
            },
        );
        if !sent {
            return Err(E::from(StorageError::Closed));
        }
        reply_rx
            .recv()
            .unwrap_or_else(|_| Err(E::from(StorageError::Closed)))
    }

    /// [`Engine::write`] without waiting: queues `op` for the next group commit and returns at
    /// once; `done` gets the result on the committer's thread once the commit is durable (or
    /// failed). An async caller hands `done` a waker (a oneshot sender) and parks no thread of
    /// its own: one wakeup per operation instead of two. `done` must not block.
    pub(crate) fn submit<R, E>(
        &self,
        durable: bool,
        op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static,
        done: impl FnOnce(Result<R, E>) + Send + 'static,
    ) where
        R: Send + 'static,
        E: FamilyError,
    {
        // Answered exactly once: by the completion, or when the batch failed before the job
        // ran, or here when the committer is gone.
        let done: OnceAnswer<Result<R, E>> = Arc::new(Mutex::new(Some(Box::new(done))));
        let answer = |done: &OnceAnswer<Result<R, E>>, r: Result<R, E>| {
            let f = done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(f) = f {
                f(r);
            }
        };
        let (job_done, abandon_done) = (done.clone(), done.clone());
        let sent = self.enqueue(
            durable,
            op,
            move |r| answer(&job_done, r),
            move |r| answer(&abandon_done, r),
        );
        if !sent {
            answer(&done, Err(E::from(StorageError::Closed)));
        }
    }

    /// Hands `op` to the committer: `answer` gets its result after the commit, `abandoned` an
    /// error if the batch failed before the job ran (exactly one of them is called). False
    /// when the committer is gone (neither is called).
    fn enqueue<R, E>(
        &self,
        durable: bool,
        op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, E> + Send + 'static,
        answer: impl FnOnce(Result<R, E>) + Send + 'static,
        abandoned: impl FnOnce(Result<R, E>) + Send + 'static,
    ) -> bool
    where
        R: Send + 'static,
        E: FamilyError,
    {
        let abandon = Box::new(move |err: Arc<StorageError>| {
            abandoned(Err(E::from(StorageError::CommitFailed(err))));
        });
        let job: Job = Box::new(move |ctx| {
            let result = op(ctx);
            let engine_failure = matches!(&result, Err(e) if e.is_engine_failure());
            let completion: Completion = Box::new(move |commit| {
                answer(match (result, commit) {
                    // A refused operation wrote nothing: its own error is the truth.
                    (Err(e), _) => Err(e),
                    (Ok(r), Ok(())) => Ok(r),
                    (Ok(_), Err(commit_err)) => {
                        Err(E::from(StorageError::CommitFailed(commit_err)))
                    }
                });
            });
            (engine_failure, completion)
        });
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        sender.as_ref().is_some_and(|sender| {
            sender
                .send(Request {
                    job,
                    abandon,
                    durable,
                })
                .is_ok()
        })
    }

    /// A consistent read snapshot.
    pub(crate) fn read(&self) -> Result<ReadTransaction, StorageError> {
        let db = self.db.current()?;
        match db.begin_read() {
            Ok(t) => Ok(t),
            Err(e) => {
                let e = StorageError::from(e);
                if is_io_failure(&e) {
                    // The committer reopens it at its next batch; say so rather than redb's
                    // bare "previous I/O error".
                    return Err(StorageError::Unavailable {
                        path: self.db.path.display().to_string(),
                        detail: e.to_string(),
                    });
                }
                Err(e)
            }
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel ends the committer after it has answered everything queued.
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

fn committer_loop(
    slot: &DbSlot,
    clock: &dyn Clock,
    quotas: &Arc<QuotaBook>,
    mut ids: IdGen,
    rx: &mpsc::Receiver<Request>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|r| r.durable);
        // Ids handed out in an aborted batch were never visible. They are skipped, not reused:
        // `ids.next` only moves forward.
        let failed = run_batch(slot, clock, quotas, &mut ids, batch, durable);
        if failed {
            let _ = slot.reopen();
        }
    }
}

/// The database to write to: reopened first when an earlier failure left none, or when it
/// refuses writes after an I/O failure.
fn begin(slot: &DbSlot) -> Result<WriteTransaction, StorageError> {
    let db = match slot.current() {
        Ok(db) => db,
        Err(_) => {
            slot.reopen()?;
            slot.current()?
        }
    };
    match db.begin_write() {
        Ok(t) => Ok(t),
        Err(e) => {
            let e = StorageError::from(e);
            if !is_io_failure(&e) {
                return Err(e);
            }
            drop(db);
            slot.reopen()?;
            Ok(slot.current()?.begin_write()?)
        }
    }
}

/// Runs one batch; says whether it failed on I/O (the database must be reopened).
fn run_batch(
    slot: &DbSlot,
    clock: &dyn Clock,
    quotas: &Arc<QuotaBook>,
    ids: &mut IdGen,
    batch: Vec<Request>,
    durable: bool,
) -> bool {
    // The operations never ran: answer each caller with the cause.
    let fail_all = |batch: Vec<Request>, err: StorageError| {
        tracing::error!(error = %err, "storage batch could not start");
        let err = Arc::new(err);
        for r in batch {
            (r.abandon)(err.clone());
        }
    };
    let mut txn = match begin(slot) {
        Ok(t) => t,
        Err(e) => {
            fail_all(batch, e);
            return false;
        }
    };
    if !durable && let Err(e) = txn.set_durability(Durability::None) {
        fail_all(batch, e.into());
        return false;
    }
    let now = clock.now();
    let mut usage = BatchUsage::new(quotas.clone());
    let mut completions = Vec::with_capacity(batch.len());
    let mut failure: Option<StorageError> = None;
    for request in batch {
        let mut ctx = WriteCtx {
            txn: &txn,
            now,
            ids: &mut *ids,
            usage: &mut usage,
        };
        let Request { job, abandon, .. } = request;
        match catch_unwind(AssertUnwindSafe(|| job(&mut ctx))) {
            Ok((engine_failure, completion)) => {
                if engine_failure && failure.is_none() {
                    failure = Some(StorageError::Internal(
                        "an operation in the batch failed".into(),
                    ));
                }
                completions.push(completion);
            }
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(panic = %msg, "a storage operation panicked; aborting its batch");
                let err = StorageError::Internal(format!("operation panicked: {msg}"));
                abandon(Arc::new(StorageError::Internal(err.to_string())));
                failure = Some(err);
            }
        }
    }
    let outcome: Result<(), StorageError> = match failure {
        Some(e) => {
            let _ = txn.abort();
            Err(e)
        }
        None => usage
            .flush(&txn)
            .and_then(|()| persist_seq(&txn, ids))
            .and_then(|()| txn.commit().map_err(StorageError::from)),
    };
    let io_failed = outcome.as_ref().is_err_and(is_io_failure);
    let outcome = outcome.map_err(Arc::new);
    if let Err(e) = &outcome {
        tracing::error!(error = %e, "storage batch aborted");
    } else {
        ids.persisted = ids.next;
        if usage.added > 0 || usage.freed > 0 {
            let len = std::fs::metadata(&slot.path).map_or(0, |m| m.len());
            let grew = len
                > slot
                    .file_len
                    .swap(len, std::sync::atomic::Ordering::Relaxed);
            quotas.settle(usage.added, usage.freed, grew);
        }
    }
    for c in completions {
        c(outcome.clone());
    }
    // An operation's own I/O error aborts the batch as "an operation failed"; the database
    // then refuses writes, which the next batch's `begin` sees and repairs.
    io_failed
}

fn persist_seq(txn: &WriteTransaction, ids: &IdGen) -> Result<(), StorageError> {
    if ids.next != ids.persisted {
        txn.open_table(META)?.insert("seq", ids.next)?;
    }
    Ok(())
}

/// Deletes every chunk of a data object.
pub(crate) fn delete_data(
    chunks: &mut redb::Table<(u64, u32), &[u8]>,
    data_id: u64,
) -> Result<(), redb::StorageError> {
    chunks.retain_in((data_id, 0)..=(data_id, u32::MAX), |_, _| false)?;
    Ok(())
}

/// Reads one record and decodes it.
pub(crate) fn get_record<'a, K, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    name: &'static str,
    key: impl std::borrow::Borrow<K::SelfType<'a>>,
) -> Result<Option<T>, StorageError>
where
    K: redb::Key + 'static,
    T: DeserializeOwned,
{
    match table.get(key)? {
        Some(v) => Ok(Some(decode(name, v.value())?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_round_trips_the_sequence() {
        let ids = IdGen {
            next: 1,
            persisted: 1,
            salt: 42,
        };
        for seq in [0, 1, 12345, u64::MAX >> 1, u64::MAX] {
            let g = ids.guid_for(seq);
            assert_eq!(g.len(), 36, "{g}");
            assert_eq!(seq_from_guid(&g), Some(seq));
        }
        assert_eq!(seq_from_guid("not-a-guid"), None);
        assert_eq!(seq_from_guid("a-b-c-zzzz-000000000001"), None);
    }

    #[test]
    fn etags_are_unique_and_well_formed() {
        let mut ids = IdGen {
            next: 1,
            persisted: 1,
            salt: 7,
        };
        let tags: std::collections::HashSet<String> = (0..10_000).map(|_| ids.etag()).collect();
        assert_eq!(tags.len(), 10_000);
        for t in tags.iter().take(10) {
            assert!(
                t.starts_with("\"0x8D") && t.ends_with('"') && t.len() == 22,
                "{t}"
            );
        }
    }
}
