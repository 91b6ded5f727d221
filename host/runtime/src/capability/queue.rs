//! The `queue` capability: WIT `rolehost:platform/queue` on the storage engine's queue service,
//! plus `wait-for-messages`, the long poll a worker's loop blocks in.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rolehost_storage::queue as store;
use tokio::sync::Notify;
use wasmtime::component::{HasSelf, Linker};

use super::{invalid, list_options, to_wit_error};
use crate::bindings::queue::{self as wit, Host};
use crate::bindings::types::{ErrorCode, ListOptions, StorageError};
use crate::link::{Fault, Link};
use crate::quota::UsageCell;
use crate::stop::StopSignal;

/// Longest `wait-for-messages` a guest may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// While waiting, the queue is read again at least this often: messages also become visible
/// when a visibility timeout or delay expires, or when another process puts them, and no
/// wake-up tells of those. Puts and releases through this host wake waiters at once. (At
/// 10,000 waiting instances this is 10,000 reads a second; a shorter interval costs more.)
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Wakes instances waiting on a queue when a message is put through this host.
#[derive(Debug, Default)]
pub struct QueueWakers {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
}

impl QueueWakers {
    /// The waker of `queue`, if one was made.
    fn existing(&self, queue: &str) -> Option<Arc<Notify>> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .cloned()
    }

    fn get(&self, queue: &str) -> Arc<Notify> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(queue.to_string()).or_default().clone()
    }

    /// Wakes every instance waiting on `queue`.
    pub fn wake(&self, queue: &str) {
        if let Some(n) = self.existing(queue) {
            n.notify_waiters();
        }
    }
}

/// What the queue capability needs: the link, the service's wakers and the stop signal.
#[derive(Debug)]
pub struct QueueCtx {
    link: Link,
    wakers: Arc<QueueWakers>,
    stop: StopSignal,
    usage: Arc<UsageCell>,
}

impl QueueCtx {
    /// A context for one instance.
    pub fn new(link: Link, wakers: Arc<QueueWakers>, stop: StopSignal) -> Self {
        QueueCtx {
            link,
            wakers,
            stop,
            usage: Arc::default(),
        }
    }

    /// Counts the messages the instance processes and the redeliveries it sees in `usage`.
    pub fn counting(mut self, usage: Arc<UsageCell>) -> Self {
        self.usage = usage;
        self
    }
}

/// Adds `rolehost:platform/queue` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut QueueCtx,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<QueueCtx>>(linker, get)
}

type Reply<T> = wasmtime::Result<Result<T, StorageError>>;

fn message(m: store::QueueMessage) -> wit::Message {
    wit::Message {
        id: m.id,
        insertion_time: m.insertion_time.as_micros(),
        expiration_time: m.expiration_time.map(|t| t.as_micros()),
        dequeue_count: m.dequeue_count,
        body: m.body,
        pop_receipt: m.pop_receipt,
        time_next_visible: m.time_next_visible.as_micros(),
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

impl QueueCtx {
    async fn get(&self, queue: &str, count: u32, vt: u32) -> Reply<Vec<wit::Message>> {
        let q = queue.to_string();
        let (r, fault) = self
            .link
            .call_with_fault(
                "queue.get-messages",
                queue,
                |ms: &Vec<store::QueueMessage>| Some(ms.len()),
                move |b, a| b.get_messages(a, &q, count, secs(vt)),
            )
            .await?;
        if fault == Fault::ExpireVisibility
            && let Ok(ms) = &r
        {
            let held: Vec<(String, String)> = ms
                .iter()
                .map(|m| (m.id.clone(), m.pop_receipt.clone()))
                .collect();
            self.link.expire_visibility(queue, &held);
        }
        if let Ok(ms) = &r {
            let again = ms.iter().filter(|m| m.dequeue_count > 1).count() as u64;
            self.usage.redeliveries.fetch_add(again, Ordering::Relaxed);
            if !ms.is_empty() {
                self.usage
                    .last_active_ms
                    .store(crate::quota::host_ms(), Ordering::Relaxed);
            }
        }
        // Only a read that worked names a real queue (a valid name, at most 63 bytes), and
        // only the first few are watched: the guest chooses these names.
        if r.is_ok() {
            let mut polled = self.usage.polled.lock().unwrap_or_else(|p| p.into_inner());
            if !polled.contains(queue) && polled.len() < crate::quota::MAX_POLLED_QUEUES {
                polled.insert(queue.to_string());
            }
        }
        Ok(r.map(|ms| ms.into_iter().map(message).collect())
            .map_err(to_wit_error))
    }
}

impl Host for QueueCtx {
    async fn create_queue(
        &mut self,
        queue: String,
        metadata: Vec<(String, String)>,
    ) -> Reply<wit::CreateOutcome> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.create-queue", &target, move |b, a| {
                b.create_queue(a, &queue, metadata)
            })
            .await?;
        Ok(r.map(|o| match o {
            store::CreateQueueOutcome::Created => wit::CreateOutcome::Created,
            store::CreateQueueOutcome::AlreadyExists => wit::CreateOutcome::AlreadyExists,
        })
        .map_err(to_wit_error))
    }

    async fn delete_queue(&mut self, queue: String) -> Reply<()> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.delete-queue", &target, move |b, a| {
                b.delete_queue(a, &queue)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn list_queues(&mut self, options: ListOptions) -> Reply<wit::QueuePage> {
        let options = list_options(options);
        let r = self
            .link
            .call("queue.list-queues", "", move |b, a| {
                b.list_queues(a, &options)
            })
            .await?;
        Ok(r.map(|page| wit::QueuePage {
            items: page
                .items
                .into_iter()
                .map(|q| wit::QueueItem {
                    name: q.name,
                    metadata: q.metadata,
                })
                .collect(),
            next_marker: page.next_marker,
        })
        .map_err(to_wit_error))
    }

    async fn get_queue_properties(&mut self, queue: String) -> Reply<wit::QueueProperties> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.get-queue-properties", &target, move |b, a| {
                b.get_queue_properties(a, &queue)
            })
            .await?;
        Ok(r.map(|p| wit::QueueProperties {
            metadata: p.metadata,
            approximate_message_count: p.approximate_message_count,
        })
        .map_err(to_wit_error))
    }

    async fn set_queue_metadata(
        &mut self,
        queue: String,
        metadata: Vec<(String, String)>,
    ) -> Reply<()> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.set-queue-metadata", &target, move |b, a| {
                b.set_queue_metadata(a, &queue, metadata)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn put_message(
        &mut self,
        queue: String,
        body: Vec<u8>,
        options: wit::PutOptions,
    ) -> Reply<wit::PutReceipt> {
        let options = store::PutMessageOptions {
            visibility_delay: secs(options.visibility_delay_seconds),
            ttl: match options.ttl {
                wit::MessageTtl::Standard => store::MessageTtl::Default,
                wit::MessageTtl::Never => store::MessageTtl::Never,
                wit::MessageTtl::Seconds(s) => store::MessageTtl::After(secs(s)),
            },
        };
        let q = queue.clone();
        let r = self
            .link
            .call("queue.put-message", &queue, move |b, a| {
                b.put_message(a, &q, &body, options)
            })
            .await?;
        if r.is_ok() {
            self.wakers.wake(&queue);
        }
        Ok(r.map(|p| wit::PutReceipt {
            id: p.id,
            insertion_time: p.insertion_time.as_micros(),
            expiration_time: p.expiration_time.map(|t| t.as_micros()),
            time_next_visible: p.time_next_visible.as_micros(),
        })
        .map_err(to_wit_error))
    }

    async fn get_messages(
        &mut self,
        queue: String,
        count: u32,
        visibility_timeout_seconds: u32,
    ) -> Reply<Vec<wit::Message>> {
        self.get(&queue, count, visibility_timeout_seconds).await
    }

    async fn wait_for_messages(
        &mut self,
        queue: String,
        count: u32,
        visibility_timeout_seconds: u32,
        wait_ms: u32,
    ) -> Reply<Vec<wit::Message>> {
        let wait = Duration::from_millis(u64::from(wait_ms));
        if wait > MAX_WAIT {
            return Ok(Err(invalid(
                ErrorCode::OutOfRangeQueryParameterValue,
                format!("wait-ms is {wait_ms}, at most {}", MAX_WAIT.as_millis()),
            )));
        }
        let deadline = tokio::time::Instant::now() + wait;
        // A waker is kept only for a queue seen to exist (after a read that did not fail), so
        // a guest naming queues that do not exist cannot grow the host's waker map.
        let mut notify = self.wakers.existing(&queue);
        loop {
            // Register for a wake-up before reading, so a put in between is not missed.
            let mut woken = notify.as_deref().map(|n| Box::pin(n.notified()));
            if let Some(w) = &mut woken {
                w.as_mut().enable();
            }
            match self.get(&queue, count, visibility_timeout_seconds).await? {
                Ok(ms) if ms.is_empty() => {}
                other => return Ok(other),
            }
            if woken.is_none() {
                // First wait on this queue here: register, then read once more.
                drop(woken);
                notify = Some(self.wakers.get(&queue));
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || self.stop.is_requested() {
                return Ok(Ok(Vec::new()));
            }
            let nap = (deadline - now).min(POLL_INTERVAL);
            let woken = async {
                match woken {
                    Some(w) => w.await,
                    None => std::future::pending().await,
                }
            };
            // Biased: a fixed polling order keeps simulations (`rolehost verify`) reproducible.
            tokio::select! {
                biased;
                () = self.stop.requested() => return Ok(Ok(Vec::new())),
                () = woken => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn peek_messages(&mut self, queue: String, count: u32) -> Reply<Vec<wit::PeekedMessage>> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.peek-messages", &target, move |b, a| {
                b.peek_messages(a, &queue, count)
            })
            .await?;
        Ok(r.map(|ms| {
            ms.into_iter()
                .map(|m| wit::PeekedMessage {
                    id: m.id,
                    insertion_time: m.insertion_time.as_micros(),
                    expiration_time: m.expiration_time.map(|t| t.as_micros()),
                    dequeue_count: m.dequeue_count,
                    body: m.body,
                })
                .collect()
        })
        .map_err(to_wit_error))
    }

    async fn delete_message(
        &mut self,
        queue: String,
        id: String,
        pop_receipt: String,
    ) -> Reply<()> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.delete-message", &target, move |b, a| {
                b.delete_message(a, &queue, &id, &pop_receipt)
            })
            .await?;
        if r.is_ok() {
            self.usage
                .messages_processed
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(r.map_err(to_wit_error))
    }

    async fn update_message(
        &mut self,
        queue: String,
        id: String,
        pop_receipt: String,
        visibility_timeout_seconds: u32,
        body: Option<Vec<u8>>,
    ) -> Reply<wit::UpdateReceipt> {
        let q = queue.clone();
        let r = self
            .link
            .call("queue.update-message", &queue, move |b, a| {
                b.update_message(
                    a,
                    &q,
                    &id,
                    &pop_receipt,
                    secs(visibility_timeout_seconds),
                    body.as_deref(),
                )
            })
            .await?;
        if r.is_ok() && visibility_timeout_seconds == 0 {
            self.wakers.wake(&queue);
        }
        Ok(r.map(|u| wit::UpdateReceipt {
            pop_receipt: u.pop_receipt,
            time_next_visible: u.time_next_visible.as_micros(),
        })
        .map_err(to_wit_error))
    }

    async fn clear_messages(&mut self, queue: String) -> Reply<()> {
        let target = queue.clone();
        let r = self
            .link
            .call("queue.clear-messages", &target, move |b, a| {
                b.clear_messages(a, &queue)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }
}
