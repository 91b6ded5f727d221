//! Wake-ups across processes: a put tells every process sharing the database that its queue
//! has a message (`NOTIFY rh_put, 'account/queue'`), and each process's listener wakes its
//! waiters on that queue. A hint, not the truth: waiters poll too, a lost hint only delays a
//! message by the poll period, and a listener that reconnects has missed nothing it needed.
//!
//! NOTIFY takes a database-wide lock at commit, so a put that sent its own would serialise
//! every put's commit behind it. The put only records its queue here; one notifier thread per
//! process sends the hints in its own transactions, each queue once however many puts it got
//! meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use rolehost_storage::queue::{PutHint, PutWatch};

/// The channel hints travel on.
const CHANNEL: &str = "rh_put";

/// Most queues the notifier holds hints for: past it a hint is dropped (waiters still poll).
pub const MAX_PENDING_HINTS: usize = 4096;

/// How long the listener waits for a notification before it looks at its stop flag.
const LISTEN_TICK: Duration = Duration::from_millis(250);

/// After a failed connection, how long the notifier or the listener waits before trying again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Pending {
    queues: BTreeSet<String>,
    stop: bool,
}

/// Both threads, stopped when dropped.
pub struct Hints {
    pending: Arc<(Mutex<Pending>, Condvar)>,
    watchers: Arc<Mutex<HashMap<u64, PutHint>>>,
    next_watcher: AtomicU64,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Hints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hints").finish_non_exhaustive()
    }
}

impl Hints {
    /// Starts the notifier and the listener, each with a connection of its own.
    pub fn start(config: postgres::Config, shown: Arc<str>) -> Hints {
        let pending: Arc<(Mutex<Pending>, Condvar)> = Arc::default();
        let watchers: Arc<Mutex<HashMap<u64, PutHint>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (p, c, s) = (pending.clone(), config.clone(), shown.clone());
        if let Ok(t) = std::thread::Builder::new()
            .name("rolehost-pg-notify".into())
            .spawn(move || notifier(&p, &c, &s))
        {
            threads.push(t);
        }
        let (w, st) = (watchers.clone(), stop.clone());
        if let Ok(t) = std::thread::Builder::new()
            .name("rolehost-pg-listen".into())
            .spawn(move || listener(&w, &st, &config, &shown))
        {
            threads.push(t);
        }
        Hints {
            pending,
            watchers,
            next_watcher: AtomicU64::new(0),
            stop,
            threads,
        }
    }

    /// Records that `queue` of `account` got a message; the notifier tells the others.
    pub fn put(&self, account: &str, queue: &str) {
        let (lock, cv) = &*self.pending;
        let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
        if p.queues.len() < MAX_PENDING_HINTS {
            p.queues.insert(format!("{account}/{queue}"));
            cv.notify_one();
        }
    }

    /// Calls `hint` for every hint heard, until the watch is dropped.
    pub fn watch(&self, hint: PutHint) -> PutWatch {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, hint);
        let watchers = Arc::downgrade(&self.watchers);
        PutWatch::new(move || {
            if let Some(w) = watchers.upgrade() {
                w.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
        })
    }
}

impl Drop for Hints {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        {
            let (lock, cv) = &*self.pending;
            lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
            cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn notifier(pending: &(Mutex<Pending>, Condvar), config: &postgres::Config, shown: &str) {
    let (lock, cv) = pending;
    let mut client: Option<postgres::Client> = None;
    loop {
        let batch = {
            let mut p = lock.lock().unwrap_or_else(|e| e.into_inner());
            while p.queues.is_empty() && !p.stop {
                p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if p.stop {
                return;
            }
            std::mem::take(&mut p.queues)
        };
        if client.as_ref().is_none_or(postgres::Client::is_closed) {
            client = match config.connect(postgres::NoTls) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::debug!(database = %shown, error = %e, "queue hints not sent; waiters poll");
                    std::thread::sleep(RETRY);
                    continue;
                }
            };
        }
        let Some(c) = client.as_mut() else { continue };
        for q in batch {
            if let Err(e) = c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &q]) {
                tracing::debug!(error = %e, "a queue hint was not sent; waiters poll");
                break;
            }
        }
    }
}

fn listener(
    watchers: &Mutex<HashMap<u64, PutHint>>,
    stop: &AtomicBool,
    config: &postgres::Config,
    shown: &str,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut client = match config.connect(postgres::NoTls) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(database = %shown, error = %e, "not listening for queue hints; waiters poll");
                std::thread::sleep(RETRY);
                continue;
            }
        };
        if client.batch_execute(&format!("LISTEN {CHANNEL}")).is_err() {
            std::thread::sleep(RETRY);
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            // Each hint is handed on as it comes; the tick only bounds how long a stop waits.
            let next = client.notifications().timeout_iter(LISTEN_TICK).next();
            match next {
                Ok(Some(n)) => {
                    if let Some((account, queue)) = n.payload().split_once('/') {
                        let hints: Vec<PutHint> = watchers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .values()
                            .cloned()
                            .collect();
                        for h in &hints {
                            h(account, queue);
                        }
                    }
                }
                Ok(None) => {}
                Err(_) => break,
            }
            if client.is_closed() {
                break;
            }
        }
    }
}
