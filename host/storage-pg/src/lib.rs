//! rolehost's storage on PostgreSQL: the same Blob, Queue and Table semantics as the embedded
//! redb engine, on a database many hosts share.
//!
//! # Layout
//! - [`pool`]: a bounded pool of connections, one thread each; operations are closures run
//!   on a free connection, answered to a waiting caller or to a callback.
//! - [`schema`]: the tables, created and migrated (versioned) when a database is opened.
//! - `accounts`: usage kept in per-connection shards, quotas admitted with the rule the redb
//!   engine uses.
//! - [`blob`], [`queue`], [`table`], `settings`: the services, one module each.
//! - [`hints`]: wake-ups across processes (LISTEN/NOTIFY), coalesced off the puts' commits.
//! - [`error`]: how the client's failures become the storage API's.
//! - [`scratch`]: throwaway databases for tests and benchmarks.
//!
//! # Guarantees
//! - **Durable before acknowledged.** Every write commits with `synchronous_commit` as the
//!   server has it (on by default): an answer comes after the commit is flushed. Throughput
//!   comes from PostgreSQL flushing concurrent commits together, so a pool of connections is
//!   the group commit.
//! - **Unknown is not "no".** A connection lost with an operation in flight gives
//!   [`StorageError::OutcomeUnknown`]: guests see `timeout`, the lose-response case
//!   `rolehost verify` models.
//! - **One clock.** Every time rule reads the store's clock, passed to each statement, and
//!   [`PgStore::open`] refuses a host whose clock is further than
//!   [`PgOptions::max_clock_skew`] from the database's, so hosts sharing a database agree on
//!   visibility and expiry to within that bound.
//! - **Byte order.** Every name is `COLLATE "C"`: listings and markers match redb's.

#![deny(missing_docs)]

mod accounts;
pub mod blob;
pub mod error;
pub mod hints;
pub mod pool;
pub mod queue;
pub mod schema;
pub mod scratch;
mod settings;
pub mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rolehost_storage::quota::QuotaTable;
use rolehost_storage::{
    AccountName, AccountOptions, AccountOptionsBook, AccountQuota, Accounts, Clock, StorageError,
    StorageOptions, Timestamp, Usage,
};

use crate::error::PgError;

/// Connections a host opens to its database unless told otherwise. Concurrency comes from
/// PostgreSQL flushing concurrent commits together; 16 connections reach most of what a
/// 2-core server gives (measured: 16 connections put 4-7k messages a second, one 400-800).
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Most connections one host may open: PostgreSQL's default `max_connections` is 100, and a
/// database is shared by several hosts.
pub const MAX_POOL_SIZE: usize = 64;

/// How far a host's clock may be from the database's by default. Visibility timeouts and
/// leases are whole seconds; a host further off would hand out messages early or late.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(1);

/// How long connecting may take before an operation fails with a timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What only the PostgreSQL engine needs to know.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Connections in the pool (1..=[`MAX_POOL_SIZE`], [`DEFAULT_POOL_SIZE`]).
    pub pool_size: usize,
    /// Refuse to open when this host's clock and the database's differ by more (`None`:
    /// do not check; for tests on a manual clock).
    pub max_clock_skew: Option<Duration>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: DEFAULT_POOL_SIZE,
            max_clock_skew: Some(DEFAULT_MAX_CLOCK_SKEW),
        }
    }
}

/// How often a host's reaper deletes freed blob data and stale uploads ([`blob::READ_GRACE`],
/// [`blob::PENDING_STALE`]).
pub const REAP_EVERY: Duration = Duration::from_secs(30);

/// The PostgreSQL engine.
#[derive(Debug)]
pub struct PgStore {
    /// Declared first: dropped (stopped) before the pool closes. Only held.
    _reaper: Reaper,
    pool: Arc<pool::Pool>,
    hints: Arc<hints::Hints>,
    clock: Arc<dyn Clock>,
    quotas: QuotaTable,
    options: AccountOptionsBook,
    /// The database's salt, which shapes its ids ([`rolehost_storage::ids`]).
    salt: u64,
    /// Ids made by this process (ETags, receipts): unique with `salt` and `process`.
    next_id: AtomicU64,
    /// This process's part of every id it makes, so two hosts never make the same one.
    process: u64,
    shown: Arc<str>,
}

/// The URL as logs show it: everything but the password.
pub fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme + 3], &url[at + 1..])
        }
        (Some(_), _) => url.to_string(),
        // The key=value form: every pair but the password.
        (None, _) => url
            .split_whitespace()
            .filter(|kv| !kv.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/dbname`, or
    /// PostgreSQL's `key=value` form), creating or migrating its schema.
    pub fn open(
        url: &str,
        options: &StorageOptions,
        pg: &PgOptions,
    ) -> Result<PgStore, StorageError> {
        if !(1..=MAX_POOL_SIZE).contains(&pg.pool_size) {
            return Err(StorageError::Internal(format!(
                "the storage pool size must be 1..={MAX_POOL_SIZE}, got {}",
                pg.pool_size
            )));
        }
        let account_options = AccountOptionsBook::new(options.queue_message_max_bytes)?;
        let shown: Arc<str> = shown(url).into();
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            StorageError::Internal(format!("the storage URL {shown}: {e}"))
        })?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("rolehost");
        // The synchronous client runs a runtime of its own, which cannot start on a thread
        // that drives one already (an async caller): the opening work gets a thread.
        let salt = off_runtime(|| -> Result<u64, StorageError> {
            let mut client =
                config
                    .connect(postgres::NoTls)
                    .map_err(|e| StorageError::Unavailable {
                        path: shown.to_string(),
                        detail: e.to_string(),
                    })?;
            let salt = schema::migrate(&mut client, random_u64() as i64)? as u64;
            if let Some(max) = pg.max_clock_skew {
                check_skew(&mut client, options.clock.now(), max, &shown)?;
            }
            Ok(salt)
        })?;
        let hints = Arc::new(hints::Hints::start(config.clone(), shown.clone()));
        let pool = Arc::new(pool::Pool::new(config, shown.clone(), pg.pool_size));
        Ok(PgStore {
            hints,
            _reaper: Reaper::start(pool.clone(), options.clock.clone()),
            pool,
            clock: options.clock.clone(),
            quotas: QuotaTable::new(options.default_quota),
            options: account_options,
            salt,
            next_id: AtomicU64::new(1),
            process: random_u64(),
            shown,
        })
    }

    /// What `account` stores, counted from the data itself rather than from the usage kept
    /// (which must always equal it: the conformance suite checks this after random operation
    /// sequences).
    pub fn counted_usage(&self, account: &AccountName) -> Result<Usage, StorageError> {
        use rolehost_storage::{Delta, Resource};
        let a = account.as_str().to_owned();
        self.pool.run(move |c| -> Result<Usage, StorageError> {
            let mut s = c.begin()?;
            // (resource, count, content bytes) of each kind of item, summed by the server.
            let sums: [(Resource, &'static str); 6] = [
                (Resource::Containers, "SELECT count(*), coalesce(sum(cost), 0)::bigint FROM rh_containers WHERE account = $1"),
                (Resource::Blobs, "SELECT count(*), coalesce(sum(cost), 0)::bigint FROM rh_blobs WHERE account = $1"),
                (Resource::Bytes, "SELECT count(*), coalesce(sum(octet_length(id) + len), 0)::bigint FROM rh_blocks WHERE account = $1"),
                (Resource::Messages, "SELECT count(*), coalesce(sum(octet_length(body)), 0)::bigint FROM rh_messages WHERE account = $1"),
                (Resource::Tables, "SELECT count(*), coalesce(sum(octet_length(name)), 0)::bigint FROM rh_tables WHERE account = $1"),
                (Resource::Entities, "SELECT count(*), coalesce(sum(octet_length(pk) + octet_length(rk) + octet_length(record)), 0)::bigint FROM rh_entities WHERE account = $1"),
            ];
            let mut d = Delta::default();
            for (r, sql) in sums {
                let row = s.query_one(sql, &[&a])?;
                let (n, bytes): (i64, i64) = (row.get(0), row.get(1));
                d.add_items(r, n.max(0).unsigned_abs(), bytes.max(0).unsigned_abs());
            }
            for row in s.query("SELECT name, metadata FROM rh_queues WHERE account = $1", &[&a])? {
                let name: String = row.get(0);
                let metadata: rolehost_storage::Metadata =
                    postcard::from_bytes(row.get(1)).map_err(|e| error::corrupt("rh_queues", e))?;
                d = d.plus(Delta::item(
                    Resource::Queues,
                    rolehost_storage::queue::queue_bytes(&name, &metadata),
                ));
            }
            let mut u = Usage::default();
            u.apply(&d);
            Ok(u)
        })
    }

    /// The database as logs name it (no password).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// A sequence number no other id of this database has: this process's counter mixed with
    /// its random part (an id is 64 bits; two processes meet with odds of 2^-64 per id).
    fn next_seq(&self) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        rolehost_storage::ids::mix(n ^ self.process.rotate_left(32)) ^ self.process
    }

    fn receipt(&self) -> String {
        rolehost_storage::ids::receipt(self.next_seq(), self.salt)
    }
}

/// The thread that deletes freed blob data after its read grace, and uploads whose host died.
#[derive(Debug)]
struct Reaper {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn start(pool: Arc<pool::Pool>, clock: Arc<dyn Clock>) -> Reaper {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rolehost-pg-reaper".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(REAP_EVERY)
                {
                    let now = clock.now();
                    match pool.run(move |c| blob::reap(c, now)) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(freed = n, "freed blob data deleted"),
                        Err(e) => tracing::warn!(error = %e, "reaping freed blob data failed; trying again later"),
                    }
                }
            })
            .ok();
        Reaper {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `f` on a thread of its own and waits for it: the synchronous client cannot be used on
/// a thread that drives an async runtime.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// A random 64-bit value from the standard library's per-process hasher keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one((t, std::process::id()))
}

/// Refuses a host whose clock is more than `max` from the database's.
fn check_skew(
    client: &mut postgres::Client,
    now: Timestamp,
    max: Duration,
    shown: &str,
) -> Result<(), StorageError> {
    let row = client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint",
            &[],
        )
        .map_err(PgError::from)?;
    let db: i64 = row.get(0);
    let ours = i64::try_from(now.as_micros()).unwrap_or(i64::MAX);
    let skew = Duration::from_micros(ours.abs_diff(db));
    if skew > max {
        return Err(StorageError::Internal(format!(
            "this host's clock is {:.3} s from the storage database's ({shown}), over the {:.3} s \
             hosts sharing a database may differ by: visibility timeouts and expiry would \
             disagree between hosts; synchronise the clocks (NTP)",
            skew.as_secs_f64(),
            max.as_secs_f64()
        )));
    }
    Ok(())
}

/// The advisory lock of one named thing (`kind` `queue`, ...) of an account: a stable 64-bit
/// hash (FNV-1a, then mixed) that every host computes alike. Two names sharing a key only
/// make one wait for the other.
pub(crate) fn lock_key(kind: &str, account: &str, name: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [kind, account, name] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    rolehost_storage::ids::mix(h) as i64
}

/// A timestamp as the database keeps it (microseconds since the epoch, `bigint`).
pub(crate) fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.as_micros()).unwrap_or(i64::MAX)
}

/// A timestamp from the database.
pub(crate) fn timestamp(micros: i64) -> Timestamp {
    Timestamp(micros.max(0).unsigned_abs())
}

impl rolehost_storage::Backend for PgStore {}

impl Accounts for PgStore {
    fn set_quota(&self, account: &AccountName, quota: Option<AccountQuota>) {
        self.quotas.set(account.as_str(), quota);
    }

    fn quota(&self, account: &AccountName) -> AccountQuota {
        self.quotas.quota(account.as_str())
    }

    fn default_quota(&self) -> AccountQuota {
        self.quotas.default_quota()
    }

    fn usage(&self, account: &AccountName) -> Result<Usage, StorageError> {
        let a = account.as_str().to_owned();
        self.pool.run(move |c| -> Result<Usage, StorageError> {
            let mut s = c.auto()?;
            Ok(accounts::read(&mut s, &a)?)
        })
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
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_never_show_a_password() {
        assert_eq!(
            shown("postgres://app:s3cret@db.example:5432/rh"),
            "postgres://app@db.example:5432/rh"
        );
        assert_eq!(shown("postgres://app@db/rh"), "postgres://app@db/rh");
        assert_eq!(
            shown("host=db password=s3cret user=app"),
            "host=db user=app"
        );
    }

    #[test]
    fn lock_keys_are_stable_and_tell_names_apart() {
        assert_eq!(lock_key("queue", "a", "q"), lock_key("queue", "a", "q"));
        assert_ne!(lock_key("queue", "a", "bq"), lock_key("queue", "ab", "q"));
        assert_ne!(lock_key("queue", "a", "q"), lock_key("table", "a", "q"));
    }
}
