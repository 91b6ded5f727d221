//! Queues: [`Queue`] with put, get, delete and update (to keep a message while working long).
//!
//! For a worker's main loop, prefer [`crate::QueueProcessor`], which does the get / handle /
//! delete protocol, keeps long messages invisible, and moves poison messages aside.
//!
//! ```no_run
//! use std::time::Duration;
//! use rolehost_sdk::Queue;
//!
//! # fn main() -> rolehost_sdk::Result<()> {
//! let q = Queue::new("orders");
//! q.create_if_not_exists()?;
//! q.put(b"order 42")?;
//! for msg in q.get(1, Duration::from_secs(30))? {
//!     // ... work ...
//!     q.delete(&msg)?; // if this is lost, the message comes back: the work must be idempotent
//! }
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::bindings::rolehost::platform::queue as host;
use crate::error::{ErrorCode, Result};
use crate::retry::{self, CallOptions, RetryPolicy};

pub use host::{Message, MessageTtl, PeekedMessage, PutReceipt, QueueProperties};

impl Message {
    /// The body as UTF-8 (lossy).
    pub fn body_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// A queue of the service's storage account. Holds only its name.
#[derive(Clone, Debug)]
pub struct Queue {
    name: String,
    options: CallOptions,
}

impl Queue {
    /// The queue called `name` (3-63 characters: lowercase letters, digits, dashes).
    pub fn new(name: impl Into<String>) -> Self {
        Queue {
            name: name.into(),
            options: retry::defaults(),
        }
    }

    /// Uses this retry policy for this queue's calls.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Gives up on a call (retries included) after `timeout`.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the queue unless it exists; true if it was created. Errors: a bad name.
    pub fn create_if_not_exists(&self) -> Result<bool> {
        let outcome = retry::call(&self.options, || host::create_queue(&self.name, &[]))?;
        Ok(outcome == host::CreateOutcome::Created)
    }

    /// Deletes the queue and its messages. Errors: `QueueNotFound`.
    pub fn delete_queue(&self) -> Result<()> {
        retry::call(&self.options, || host::delete_queue(&self.name))
    }

    /// Metadata and approximate message count. Errors: `QueueNotFound`.
    pub fn properties(&self) -> Result<QueueProperties> {
        retry::call(&self.options, || host::get_queue_properties(&self.name))
    }

    /// Puts a message (visible at once, standard TTL of 7 days). Errors: `QueueNotFound`,
    /// `RequestBodyTooLarge`.
    pub fn put(&self, body: &[u8]) -> Result<PutReceipt> {
        self.put_with(body, Duration::ZERO, MessageTtl::Standard)
    }

    /// Puts a message invisible for `delay`, living `ttl`.
    pub fn put_with(&self, body: &[u8], delay: Duration, ttl: MessageTtl) -> Result<PutReceipt> {
        let options = host::PutOptions {
            visibility_delay_seconds: secs(delay),
            ttl,
        };
        retry::call(&self.options, || {
            host::put_message(&self.name, body, options)
        })
    }

    /// Gets up to `count` (1..=32) messages, each invisible for `visibility_timeout`; returns at
    /// once (possibly empty).
    pub fn get(&self, count: u32, visibility_timeout: Duration) -> Result<Vec<Message>> {
        retry::call(&self.options, || {
            host::get_messages(&self.name, count, secs(visibility_timeout))
        })
    }

    /// As [`Queue::get`], but waits up to `wait` (at most 60 s) for a message; returns early
    /// (possibly empty) when the host asks the instance to stop.
    pub fn wait(
        &self,
        count: u32,
        visibility_timeout: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        retry::call(&self.options, || {
            host::wait_for_messages(&self.name, count, secs(visibility_timeout), wait_ms)
        })
    }

    /// Up to `count` visible messages, changing nothing.
    pub fn peek(&self, count: u32) -> Result<Vec<PeekedMessage>> {
        retry::call(&self.options, || host::peek_messages(&self.name, count))
    }

    /// Deletes a message got earlier. Errors: `MessageNotFound` when its receipt is stale
    /// (its visibility timeout passed and another instance got it: that one owns it now).
    pub fn delete(&self, message: &Message) -> Result<()> {
        retry::call(&self.options, || {
            host::delete_message(&self.name, &message.id, &message.pop_receipt)
        })
    }

    /// Keeps a message invisible for `visibility_timeout` more from now (and replaces its body
    /// when `body` is given). Updates `message`'s receipt in place: the old one is stale.
    /// Errors: as for [`Queue::delete`].
    pub fn update(
        &self,
        message: &mut Message,
        visibility_timeout: Duration,
        body: Option<&[u8]>,
    ) -> Result<()> {
        let receipt = retry::call(&self.options, || {
            host::update_message(
                &self.name,
                &message.id,
                &message.pop_receipt,
                secs(visibility_timeout),
                body,
            )
        })?;
        message.pop_receipt = receipt.pop_receipt;
        message.time_next_visible = receipt.time_next_visible;
        if let Some(body) = body {
            message.body = body.to_vec();
        }
        Ok(())
    }

    /// Deletes every message.
    pub fn clear(&self) -> Result<()> {
        retry::call(&self.options, || host::clear_messages(&self.name))
    }

    /// Whether an error means "this queue is not there".
    pub(crate) fn is_missing(e: &crate::Error) -> bool {
        e.code == ErrorCode::QueueNotFound
    }
}
