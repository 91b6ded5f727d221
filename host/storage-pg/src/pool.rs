//! A bounded pool of connections, each owned by a thread of its own: an operation is a closure
//! sent to whichever connection is free, run there, and answered to a waiting caller or to a
//! callback. The threads never block on anything but their database, so a callback (the
//! `_then` operations) costs its caller nothing.
//!
//! A connection that breaks is dropped and made again for the next operation; while the
//! database cannot be reached every operation fails at once with
//! [`StorageError::OutcomeUnknown`], and the log says so once per [`DOWN_LOG_EVERY`].

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, Statement};
use rolehost_storage::StorageError;

use crate::error::{PgError, outcome_unknown};

/// At most one log line per this period saying the database cannot be reached.
pub const DOWN_LOG_EVERY: Duration = Duration::from_secs(10);

/// After a failed connection attempt, operations fail at once for this long instead of each
/// waiting for its own attempt: a database that is down costs callers nothing but the error.
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// What runs on a connection's thread; given no connection when the pool is closed.
type Job = Box<dyn FnOnce(Option<&mut Conn>) + Send>;

/// One connection and what belongs to it.
pub struct Conn {
    config: Arc<postgres::Config>,
    client: Option<Client>,
    /// Statements prepared on this connection, by their text.
    statements: HashMap<&'static str, Statement>,
    /// This connection's row of each account's usage (see `accounts.rs`): connections never
    /// wait for each other's usage updates.
    pub shard: i32,
    /// The database as logs name it (no password).
    pub shown: Arc<str>,
    /// When a connection attempt last failed, and why.
    down: Option<(Instant, String)>,
    /// Shared among the pool's connections: when the log last said the database is down.
    logged: Arc<Mutex<Option<Instant>>>,
}

impl Conn {
    /// The connected client, connecting first if needed.
    pub fn client(&mut self) -> Result<&mut Client, StorageError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
            self.statements.clear();
        }
        if self.client.is_none() {
            if let Some((at, why)) = &self.down
                && at.elapsed() < RECONNECT_PAUSE
            {
                return Err(outcome_unknown(format!(
                    "cannot reach the storage database {}: {why}",
                    self.shown
                )));
            }
            match self.config.connect(NoTls) {
                Ok(c) => {
                    if self.down.take().is_some() {
                        tracing::info!(database = %self.shown, "the storage database is reachable again");
                    }
                    self.client = Some(c);
                }
                Err(e) => {
                    let why = e.to_string();
                    let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
                    if logged.is_none_or(|t| t.elapsed() >= DOWN_LOG_EVERY) {
                        tracing::error!(database = %self.shown, error = %why, "cannot reach the storage database; storage operations time out until it is back");
                        *logged = Some(Instant::now());
                    }
                    self.down = Some((Instant::now(), why.clone()));
                    return Err(outcome_unknown(format!(
                        "cannot reach the storage database {}: {why}",
                        self.shown
                    )));
                }
            }
        }
        self.client
            .as_mut()
            .ok_or_else(|| outcome_unknown("no connection".into()))
    }

    /// A session outside any transaction: every statement commits on its own.
    pub fn auto(&mut self) -> Result<Session<'_>, StorageError> {
        self.session(None, false)
    }

    /// A transaction at READ COMMITTED (PostgreSQL's default): committed by
    /// [`Session::commit`], rolled back when dropped.
    pub fn begin(&mut self) -> Result<Session<'_>, StorageError> {
        self.session(None, true)
    }

    /// [`Conn::begin`], holding the transaction-scoped advisory lock `key` (shared or not)
    /// from its first statement: taken in the same round trip as `BEGIN`, so the
    /// transaction's statements all run after it is granted.
    pub fn begin_locked(&mut self, key: i64, shared: bool) -> Result<Session<'_>, StorageError> {
        self.session(Some((key, shared)), true)
    }

    fn session(
        &mut self,
        lock: Option<(i64, bool)>,
        tx: bool,
    ) -> Result<Session<'_>, StorageError> {
        self.client()?;
        let Conn {
            client, statements, ..
        } = self;
        let client = client
            .as_mut()
            .ok_or_else(|| outcome_unknown("no connection".into()))?;
        if tx {
            // Integers only are formatted into the text: nothing a caller gives.
            let sql = match lock {
                Some((key, true)) => format!("BEGIN; SELECT pg_advisory_xact_lock_shared({key})"),
                Some((key, false)) => format!("BEGIN; SELECT pg_advisory_xact_lock({key})"),
                None => "BEGIN".to_string(),
            };
            client.batch_execute(&sql).map_err(PgError::from)?;
        }
        Ok(Session {
            client,
            statements,
            open: tx,
        })
    }
}

/// Statements run on one connection, inside a transaction or not, each prepared once per
/// connection. A transaction not committed is rolled back when its session is dropped.
pub struct Session<'a> {
    client: &'a mut Client,
    statements: &'a mut HashMap<&'static str, Statement>,
    /// A transaction is open.
    open: bool,
}

impl Session<'_> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, PgError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql, s.clone());
        Ok(s)
    }

    /// The rows `sql` returns.
    pub fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, PgError> {
        let s = self.statement(sql)?;
        Ok(self.client.query(&s, params)?)
    }

    /// The one row `sql` returns, if any.
    pub fn query_opt(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Option<postgres::Row>, PgError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The one row `sql` returns.
    pub fn query_one(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<postgres::Row, PgError> {
        let s = self.statement(sql)?;
        Ok(self.client.query_one(&s, params)?)
    }

    /// How many rows `sql` changed.
    pub fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, PgError> {
        let s = self.statement(sql)?;
        Ok(self.client.execute(&s, params)?)
    }

    /// Commits. A connection lost here leaves the outcome unknown
    /// ([`StorageError::OutcomeUnknown`]).
    pub fn commit(mut self) -> Result<(), PgError> {
        if self.open {
            self.open = false;
            self.client.batch_execute("COMMIT")?;
        }
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if self.open && !self.client.is_closed() {
            // A failed statement aborted the transaction, or the operation refused midway:
            // nothing of it may stay. A connection that cannot roll back is dropped.
            let _ = self.client.batch_execute("ROLLBACK");
        }
    }
}

/// The pool: `size` connections on `size` threads.
pub struct Pool {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    size: usize,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("size", &self.size).finish()
    }
}

impl Pool {
    /// Starts `size` threads, each connecting on its first operation.
    pub fn new(config: postgres::Config, shown: Arc<str>, size: usize) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let config = Arc::new(config);
        let logged = Arc::new(Mutex::new(None));
        let mut workers = Vec::with_capacity(size);
        for shard in 0..size {
            let rx = rx.clone();
            let mut conn = Conn {
                config: config.clone(),
                client: None,
                statements: HashMap::new(),
                shard: i32::try_from(shard).unwrap_or(i32::MAX),
                shown: shown.clone(),
                down: None,
                logged: logged.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("rolehost-pg-{shard}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        let Ok(job) = job else { break };
                        job(Some(&mut conn));
                    }
                });
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => tracing::error!(error = %e, "starting a storage connection thread"),
            }
        }
        Pool {
            jobs: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
            size,
        }
    }

    /// How many connections.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `op` on a free connection, calling `done` with its result there.
    pub fn spawn<T, E>(
        &self,
        op: impl FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
        done: impl FnOnce(Result<T, E>) + Send + 'static,
    ) where
        T: 'static,
        E: From<StorageError> + 'static,
    {
        let job: Job = Box::new(move |conn| match conn {
            Some(conn) => done(op(conn)),
            None => done(Err(E::from(StorageError::Closed))),
        });
        let sent = {
            let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
            match jobs.as_ref() {
                Some(tx) => tx.send(job).map_err(|e| e.0),
                None => Err(job),
            }
        };
        if let Err(job) = sent {
            job(None);
        }
    }

    /// Runs `op` on a free connection and waits for its result.
    pub fn run<T, E>(
        &self,
        op: impl FnOnce(&mut Conn) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.spawn(op, move |r| {
            let _ = tx.send(r);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(E::from(StorageError::Closed)))
    }

    /// Stops the threads after the operations already queued.
    pub fn close(&self) {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}
