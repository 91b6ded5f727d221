//! [`QueueProcessor`]: the ready-made worker loop. Get a message, run the handler, delete the
//! message; extend its visibility while the handler works long; move it to `<queue>-poison`
//! when it keeps failing; return when the host asks the instance to stop.
//!
//! ```no_run
//! use std::time::Duration;
//! use rolehost_sdk::QueueProcessor;
//!
//! # fn main() -> rolehost_sdk::Result<()> {
//! let stats = QueueProcessor::new("thumbnails")
//!     .visibility_timeout(Duration::from_secs(30))
//!     .max_dequeue_count(5)
//!     .run(|job| {
//!         let name = job.body_str();
//!         // ... make the thumbnail of `name` (idempotent: same input, same output) ...
//!         Ok::<(), String>(())
//!     })?;
//! rolehost_sdk::env::info(&format!("stopping after {} messages", stats.processed));
//! # Ok(()) }
//! ```
//!
//! **At least once.** A message is deleted only after its handler returned `Ok`. If the
//! instance crashes before that, or the delete is lost, the message comes back after its
//! visibility timeout and the handler runs again, so handlers must be idempotent.
//!
//! **Long work.** The handler's message is kept invisible while it works: every SDK storage
//! call the handler makes, and every [`Job::heartbeat`], extends the visibility timeout once
//! half of it has passed. A handler that computes for longer than the timeout without
//! calling either should call [`Job::heartbeat`] now and then; otherwise another instance may
//! get the message meanwhile.
//!
//! **Poison messages.** A handler error makes the message visible again after
//! [`QueueProcessor::failure_delay`]. A message whose dequeue count reaches
//! [`QueueProcessor::max_dequeue_count`] (5 by default) and fails again, or that arrives with a
//! higher count (its handler crashed the instance), is put on `<queue>-poison` with the same
//! body and deleted from the queue, and the handler is not called again for it.

use std::cell::RefCell;
use std::fmt::Display;
use std::time::{Duration, Instant};

use crate::bindings::rolehost::platform::queue as host;
use crate::env;
use crate::error::Result;
use crate::queue::{Message, Queue};

/// The message being handled, with what is needed to keep it invisible.
struct Current {
    queue: String,
    id: String,
    pop_receipt: String,
    visibility_timeout: Duration,
    extended_at: Instant,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Extends the current message's visibility if half of its timeout has passed. Called before
/// every SDK storage call and by [`Job::heartbeat`].
pub(crate) fn heartbeat_if_due() {
    extend();
}

fn extend() -> bool {
    // Take the state out, so no RefCell borrow is held across the host call.
    let Some(mut cur) = CURRENT.with(|c| c.borrow_mut().take()) else {
        return false;
    };
    let due = cur.extended_at.elapsed() >= cur.visibility_timeout / 2;
    let mut ok = true;
    if due {
        let secs = u32::try_from(cur.visibility_timeout.as_secs()).unwrap_or(u32::MAX);
        match host::update_message(&cur.queue, &cur.id, &cur.pop_receipt, secs, None) {
            Ok(receipt) => {
                cur.pop_receipt = receipt.pop_receipt;
                cur.extended_at = Instant::now();
            }
            Err(e) => {
                ok = false;
                env::warn(&format!(
                    "could not extend the visibility of message {} on {}: {:?} {}",
                    cur.id, cur.queue, e.code, e.message
                ));
            }
        }
    }
    CURRENT.with(|c| *c.borrow_mut() = Some(cur));
    ok
}

/// The message a handler is working on.
#[derive(Debug)]
pub struct Job {
    message: Message,
}

impl Job {
    /// The message id.
    pub fn id(&self) -> &str {
        &self.message.id
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.message.body
    }

    /// The body as UTF-8 (lossy).
    pub fn body_str(&self) -> std::borrow::Cow<'_, str> {
        self.message.body_str()
    }

    /// How many times the message has been handed out, this time included. Above 1 means an
    /// earlier attempt failed, crashed, or its delete was lost.
    pub fn dequeue_count(&self) -> u32 {
        self.message.dequeue_count
    }

    /// Keeps the message invisible: extends its visibility timeout if half of it has passed
    /// (cheap otherwise, so call it often from long computations). Returns false if the
    /// extension failed: another instance may get the message, and the work may be done twice.
    pub fn heartbeat(&self) -> bool {
        extend()
    }
}

/// What a [`QueueProcessor::run`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages handled and deleted.
    pub processed: u64,
    /// Handler errors (the message was left to come back).
    pub failed: u64,
    /// Messages moved to the poison queue.
    pub poisoned: u64,
    /// Messages handled whose delete failed because another instance had got them meanwhile.
    pub lost_deletes: u64,
}

/// Processes a queue with a handler until the host asks the instance to stop.
#[derive(Clone, Debug)]
pub struct QueueProcessor {
    queue: Queue,
    poison: Queue,
    visibility_timeout: Duration,
    max_dequeue_count: u32,
    poll_wait: Duration,
    failure_delay: Duration,
}

impl QueueProcessor {
    /// Processes the queue called `queue` (created if missing when `run` starts).
    pub fn new(queue: &str) -> Self {
        QueueProcessor {
            queue: Queue::new(queue),
            poison: Queue::new(format!("{queue}-poison")),
            visibility_timeout: Duration::from_secs(30),
            max_dequeue_count: 5,
            poll_wait: Duration::from_secs(10),
            failure_delay: Duration::from_secs(1),
        }
    }

    /// How long a message stays invisible per get or extension (default 30 s, at least 1 s).
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// Attempts before a message is moved to `<queue>-poison` (default 5, at least 1).
    pub fn max_dequeue_count(mut self, count: u32) -> Self {
        self.max_dequeue_count = count.max(1);
        self
    }

    /// How long one wait for messages lasts before the loop looks around (default 10 s).
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// How soon a message whose handler failed becomes visible again (default 1 s).
    pub fn failure_delay(mut self, delay: Duration) -> Self {
        self.failure_delay = delay;
        self
    }

    /// The poison queue's name.
    pub fn poison_queue(&self) -> &str {
        self.poison.name()
    }

    /// Runs the loop until a stop is requested. A handler error is logged and counted; a
    /// storage failure the retry policy could not mend ends the loop with that error.
    pub fn run<E: Display>(&self, mut handler: impl FnMut(&Job) -> Result<(), E>) -> Result<Stats> {
        self.queue.create_if_not_exists()?;
        let mut stats = Stats::default();
        while !env::stop_requested() {
            let messages = self
                .queue
                .wait(1, self.visibility_timeout, self.poll_wait)?;
            for message in messages {
                self.handle(message, &mut handler, &mut stats)?;
            }
        }
        Ok(stats)
    }

    fn handle<E: Display>(
        &self,
        message: Message,
        handler: &mut impl FnMut(&Job) -> Result<(), E>,
        stats: &mut Stats,
    ) -> Result<()> {
        if message.dequeue_count > self.max_dequeue_count {
            // It came back more often than allowed: an earlier attempt crashed the instance.
            return self.poison(message, "a previous attempt did not finish", stats);
        }
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Current {
                queue: self.queue.name().to_string(),
                id: message.id.clone(),
                pop_receipt: message.pop_receipt.clone(),
                visibility_timeout: self.visibility_timeout,
                extended_at: Instant::now(),
            })
        });
        let job = Job { message };
        let outcome = handler(&job);
        // The receipt may have changed with heartbeats.
        let current = CURRENT.with(|c| c.borrow_mut().take());
        let mut message = job.message;
        if let Some(cur) = current {
            message.pop_receipt = cur.pop_receipt;
        }
        match outcome {
            Ok(()) => match self.queue.delete(&message) {
                Ok(()) => stats.processed += 1,
                Err(e) if e.is_not_found() => {
                    stats.processed += 1;
                    stats.lost_deletes += 1;
                    env::warn(&format!(
                        "message {} was handled but another instance got it meanwhile ({e}); \
                         it will be handled again",
                        message.id
                    ));
                }
                Err(e) => return Err(e),
            },
            Err(err) if message.dequeue_count >= self.max_dequeue_count => {
                stats.failed += 1;
                return self.poison(message, &err.to_string(), stats);
            }
            Err(err) => {
                stats.failed += 1;
                env::warn(&format!(
                    "handler failed on message {} (attempt {} of {}): {err}",
                    message.id, message.dequeue_count, self.max_dequeue_count
                ));
                match self.queue.update(&mut message, self.failure_delay, None) {
                    Ok(()) => {}
                    // Someone else has it now; it comes back to them.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    fn poison(&self, message: Message, reason: &str, stats: &mut Stats) -> Result<()> {
        env::error(&format!(
            "moving message {} to {} after {} attempts: {reason}",
            message.id,
            self.poison.name(),
            message.dequeue_count
        ));
        match self.poison.put(&message.body) {
            Ok(_) => {}
            Err(e) if Queue::is_missing(&e) => {
                self.poison.create_if_not_exists()?;
                self.poison.put(&message.body)?;
            }
            Err(e) => return Err(e),
        }
        match self.queue.delete(&message) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        stats.poisoned += 1;
        Ok(())
    }
}
