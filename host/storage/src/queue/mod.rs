//! Queue service: queues of messages with visibility timeouts, pop receipts and dequeue counts.
//!
//! At-least-once is the contract: a message got with a visibility timeout comes back if it is not
//! deleted in time, with its dequeue count one higher. Delete and update need the pop receipt of
//! the latest get; a stale receipt fails with `MessageNotFound`, so a worker that lost a message
//! to a timeout can never delete or update it under the worker that holds it now.

pub(crate) mod store;

use std::time::Duration;

use crate::blob::AccessPolicy;
use crate::clock::Timestamp;
use crate::{AccountName, ListOptions, Metadata, Page, QueueError};

/// Longest visibility timeout (and visibility delay): 7 days.
pub const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default time to live of a message: 7 days.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default visibility timeout of a get.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most messages one get or peek returns.
pub const MAX_MESSAGES_PER_GET: u32 = 32;

/// How long a message lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MessageTtl {
    /// [`DEFAULT_TTL`].
    #[default]
    Default,
    /// Never expires (`messagettl=-1`).
    Never,
    /// Expires this long after insertion (at least 1 s).
    After(Duration),
}

/// Options of Put Message.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutMessageOptions {
    /// Invisible for this long after insertion (0..=7 days, less than the TTL).
    pub visibility_delay: Duration,
    /// Time to live.
    pub ttl: MessageTtl,
}

/// What Put Message returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReceipt {
    /// The message id (a GUID).
    pub id: String,
    /// When it was inserted.
    pub insertion_time: Timestamp,
    /// When it expires (`None`: never).
    pub expiration_time: Option<Timestamp>,
    /// A receipt valid until the message is first got.
    pub pop_receipt: String,
    /// When it becomes visible.
    pub time_next_visible: Timestamp,
}

/// A message handed out by Get Messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    /// The message id.
    pub id: String,
    /// When it was inserted.
    pub insertion_time: Timestamp,
    /// When it expires (`None`: never).
    pub expiration_time: Option<Timestamp>,
    /// How many times it has been got, this time included.
    pub dequeue_count: u32,
    /// The content.
    pub body: Vec<u8>,
    /// Needed to delete or update it; valid until it is got again or updated.
    pub pop_receipt: String,
    /// When it becomes visible again unless deleted or updated.
    pub time_next_visible: Timestamp,
}

/// A message seen by Peek Messages: no receipt, nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekedMessage {
    /// The message id.
    pub id: String,
    /// When it was inserted.
    pub insertion_time: Timestamp,
    /// When it expires (`None`: never).
    pub expiration_time: Option<Timestamp>,
    /// How many times it has been got.
    pub dequeue_count: u32,
    /// The content.
    pub body: Vec<u8>,
}

/// What Update Message returns: the new receipt (the old one is now stale).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateReceipt {
    /// The new pop receipt.
    pub pop_receipt: String,
    /// When the message becomes visible.
    pub time_next_visible: Timestamp,
}

/// Create Queue's two successful outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateQueueOutcome {
    /// 201.
    Created,
    /// 204: the queue was there with the same metadata.
    AlreadyExists,
}

/// A queue in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    /// Its name.
    pub name: String,
    /// Its metadata (empty unless asked for).
    pub metadata: Metadata,
}

/// Get Queue Metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProperties {
    /// The metadata.
    pub metadata: Metadata,
    /// Never lower than the true count; may include invisible and expired, not yet purged
    /// messages.
    pub approximate_message_count: u64,
}

/// Most expired messages one get purges before it returns (bounds one operation's work).
pub const MAX_PURGE_PER_GET: usize = 1024;

/// What a queue holds beside [`crate::quota::ITEM_BYTES`] ([`crate::quota`]).
pub fn queue_bytes(name: &str, metadata: &Metadata) -> u64 {
    name.len() as u64 + crate::quota::metadata_bytes(metadata)
}

// The rules every engine applies before it touches its data, so that both answer alike.

/// Checks a get's or a peek's message count (1..=[`MAX_MESSAGES_PER_GET`]).
pub fn check_count(count: u32) -> Result<(), QueueError> {
    if !(1..=MAX_MESSAGES_PER_GET).contains(&count) {
        return Err(QueueError::OutOfRangeQueryParameterValue {
            param: "numofmessages",
            reason: "must be 1..=32",
        });
    }
    Ok(())
}

/// Checks a visibility timeout or delay: `min..=`[`MAX_VISIBILITY_TIMEOUT`].
pub fn check_visibility(timeout: Duration, min: Duration) -> Result<(), QueueError> {
    if timeout < min || timeout > MAX_VISIBILITY_TIMEOUT {
        return Err(QueueError::OutOfRangeQueryParameterValue {
            param: "visibilitytimeout",
            reason: if min.is_zero() {
                "must be 0 s..=7 days"
            } else {
                "must be 1 s..=7 days"
            },
        });
    }
    Ok(())
}

/// Checks Put Message's body size (against the account's limit `max`) and options, and
/// returns the message's time to live (`None`: it never expires).
pub fn check_put(
    body_len: usize,
    max: usize,
    options: &PutMessageOptions,
) -> Result<Option<Duration>, QueueError> {
    if body_len > max {
        return Err(QueueError::RequestBodyTooLarge {
            size: body_len,
            max,
        });
    }
    check_visibility(options.visibility_delay, Duration::ZERO)?;
    let ttl = match options.ttl {
        MessageTtl::Default => Some(DEFAULT_TTL),
        MessageTtl::Never => None,
        MessageTtl::After(d) if d < Duration::from_secs(1) => {
            return Err(QueueError::OutOfRangeQueryParameterValue {
                param: "messagettl",
                reason: "must be at least 1 s, or never (-1)",
            });
        }
        MessageTtl::After(d) => Some(d),
    };
    if ttl.is_some_and(|ttl| options.visibility_delay >= ttl) {
        return Err(QueueError::InvalidQueryParameterValue {
            param: "visibilitytimeout",
            reason: "must be shorter than the message's time to live",
        });
    }
    Ok(ttl)
}

/// Checks Update Message's visibility timeout and new body size (`None`: the body stays).
pub fn check_update(
    visibility_timeout: Duration,
    body_len: Option<usize>,
    max: usize,
) -> Result<(), QueueError> {
    check_visibility(visibility_timeout, Duration::ZERO)?;
    match body_len {
        Some(size) if size > max => Err(QueueError::RequestBodyTooLarge { size, max }),
        _ => Ok(()),
    }
}

/// Refuses an update that would make a message visible when it has expired.
pub fn check_update_expiry(
    visible_at: Timestamp,
    expires: Option<Timestamp>,
) -> Result<(), QueueError> {
    if expires.is_some_and(|e| visible_at >= e) {
        return Err(QueueError::InvalidQueryParameterValue {
            param: "visibilitytimeout",
            reason: "would make the message visible after it expires",
        });
    }
    Ok(())
}

/// A hint an engine gives when a message was put into `queue` of `account` (the arguments, in
/// that order) by a process that shares its store: whoever waits on that queue should look
/// again. Called from the engine's own thread: it must not block.
pub type PutHint = std::sync::Arc<dyn Fn(&str, &str) + Send + Sync>;

/// A watcher's registration ([`QueueStore::watch_puts`]): hints stop when it is dropped.
pub struct PutWatch(Option<Box<dyn FnOnce() + Send + Sync>>);

impl PutWatch {
    /// A registration that nothing needs undoing for.
    pub fn none() -> PutWatch {
        PutWatch(None)
    }

    /// A registration undone by `undo` when dropped.
    pub fn new(undo: impl FnOnce() + Send + Sync + 'static) -> PutWatch {
        PutWatch(Some(Box::new(undo)))
    }
}

impl Drop for PutWatch {
    fn drop(&mut self) {
        if let Some(undo) = self.0.take() {
            undo();
        }
    }
}

impl std::fmt::Debug for PutWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutWatch").finish_non_exhaustive()
    }
}

/// How an operation answered through a callback gets its result (the `_then` methods of
/// [`QueueStore`]).
pub type Answer<T> = Box<dyn FnOnce(Result<T, QueueError>) + Send>;

/// The queue service, as any engine offers it.
pub trait QueueStore: Send + Sync {
    /// Creates a queue. Existing with the same metadata: `AlreadyExists`; with other metadata:
    /// `QueueAlreadyExists`.
    fn create_queue(
        &self,
        account: &AccountName,
        queue: &str,
        metadata: Metadata,
    ) -> Result<CreateQueueOutcome, QueueError>;

    /// Deletes a queue and its messages. `QueueNotFound` if missing.
    fn delete_queue(&self, account: &AccountName, queue: &str) -> Result<(), QueueError>;

    /// Lists queues in name order.
    fn list_queues(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<QueueItem>, QueueError>;

    /// Metadata and approximate count.
    fn get_queue_properties(
        &self,
        account: &AccountName,
        queue: &str,
    ) -> Result<QueueProperties, QueueError>;

    /// Replaces all metadata.
    fn set_queue_metadata(
        &self,
        account: &AccountName,
        queue: &str,
        metadata: Metadata,
    ) -> Result<(), QueueError>;

    /// Adds a message. Errors: `RequestBodyTooLarge` over the size limit;
    /// `OutOfRangeQueryParameterValue` for a delay over 7 days or a TTL under 1 s;
    /// `InvalidQueryParameterValue` when the delay is not shorter than the TTL.
    fn put_message(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
    ) -> Result<PutReceipt, QueueError>;

    /// Gets up to `count` (1..=32) visible messages, making each invisible for
    /// `visibility_timeout` (1 s..=7 days), with a new pop receipt and its dequeue count + 1.
    /// First delivery is in insertion order. An empty queue gives an empty list.
    fn get_messages(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError>;

    /// [`QueueStore::put_message`], answered through `done` instead of by blocking: the
    /// operation is queued and the call returns at once; `done` is called (from the engine's
    /// own thread, so it must not block) once the commit is durable. For async callers such as
    /// the REST door, which then park no thread per operation. Must not block.
    fn put_message_then(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
        done: Answer<PutReceipt>,
    );

    /// [`QueueStore::get_messages`], answered through `done` (see
    /// [`QueueStore::put_message_then`]).
    fn get_messages_then(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
        done: Answer<Vec<QueueMessage>>,
    );

    /// [`QueueStore::delete_message`], answered through `done` (see
    /// [`QueueStore::put_message_then`]).
    fn delete_message_then(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        done: Answer<()>,
    );

    /// Up to `count` (1..=32) visible messages, changing nothing.
    fn peek_messages(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
    ) -> Result<Vec<PeekedMessage>, QueueError>;

    /// Deletes a message. `MessageNotFound` when it is gone or `pop_receipt` is stale. A receipt
    /// whose timeout passed still deletes if nobody got the message since.
    fn delete_message(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
    ) -> Result<(), QueueError>;

    /// Sets the message's visibility to now + `visibility_timeout` (0..=7 days; 0 makes it
    /// visible at once) and optionally replaces its content. The dequeue count is unchanged; the
    /// old receipt becomes stale. Errors as for delete.
    fn update_message(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility_timeout: Duration,
        body: Option<&[u8]>,
    ) -> Result<UpdateReceipt, QueueError>;

    /// Deletes every message of the queue.
    fn clear_messages(&self, account: &AccountName, queue: &str) -> Result<(), QueueError>;

    /// Calls `hint` when another process sharing this store puts a message, until the
    /// returned watch is dropped. A hint may be late, doubled or lost (waiters poll as well);
    /// it is never needed for correctness. An engine whose store one process opens has no
    /// other process to hear from: the default gives no hints.
    fn watch_puts(&self, hint: PutHint) -> PutWatch {
        drop(hint);
        PutWatch::none()
    }

    /// The queue's stored access policies (what a queue SAS naming one with `si` grants).
    fn get_queue_acl(
        &self,
        account: &AccountName,
        queue: &str,
    ) -> Result<Vec<AccessPolicy>, QueueError>;

    /// Replaces the queue's stored access policies ([`crate::blob::check_policies`] with the
    /// letters `raup`; `InvalidXmlDocument` otherwise). They go with the queue.
    fn set_queue_acl(
        &self,
        account: &AccountName,
        queue: &str,
        policies: Vec<AccessPolicy>,
    ) -> Result<(), QueueError>;
}
