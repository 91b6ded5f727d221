//! The queue service on redb.

use std::time::Duration;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::*;
use crate::engine::{
    MESSAGES, QUEUES, VISIBLE, WriteCtx, decode, encode, get_record, seq_from_guid,
};
use crate::names::{check_metadata, check_queue};
use crate::quota::{Delta, Resource, Usage, metadata_bytes};
use crate::{Accounts, RedbStore, StorageError, policies};

#[derive(Serialize, Deserialize, Debug, Default)]
struct QueueRecord {
    metadata: Metadata,
    /// Messages stored (including invisible and expired ones not yet purged).
    count: u64,
}

#[derive(Serialize, Deserialize, Debug)]
struct MessageRecord {
    id: String,
    inserted: Timestamp,
    expires: Option<Timestamp>,
    visible_at: Timestamp,
    dequeue_count: u32,
    receipt: String,
    body: Vec<u8>,
}

impl MessageRecord {
    fn expired(&self, now: Timestamp) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// Tallies what removed messages held, from their stored records (inside `retain_in`, which
/// cannot fail: a record that does not decode is kept as an error for after).
#[derive(Default)]
struct Freed {
    delta: Delta,
    corrupt: Option<StorageError>,
}

impl Freed {
    fn add(&mut self, stored: &[u8]) {
        match decode::<MessageRecord>("messages", stored) {
            Ok(rec) => self
                .delta
                .remove_item(Resource::Messages, rec.body.len() as u64),
            Err(e) => self.corrupt = Some(e),
        }
    }

    fn delta(self) -> Result<Delta, StorageError> {
        match self.corrupt {
            Some(e) => Err(e),
            None => Ok(self.delta),
        }
    }
}

/// Adds what queues store to `usage` (for [`crate::RedbStore::recount_usage`]).
pub(crate) fn count_usage(
    txn: &redb::WriteTransaction,
    usage: &mut std::collections::HashMap<String, Usage>,
) -> Result<(), StorageError> {
    for entry in txn.open_table(QUEUES)?.iter()? {
        let (k, v) = entry?;
        let (a, q) = k.value();
        let rec: QueueRecord = decode("queues", v.value())?;
        let item = Delta::item(Resource::Queues, queue_bytes(q, &rec.metadata));
        usage.entry(a.to_string()).or_default().apply(&item);
    }
    for entry in txn.open_table(MESSAGES)?.iter()? {
        let (k, v) = entry?;
        let rec: MessageRecord = decode("messages", v.value())?;
        let item = Delta::item(Resource::Messages, rec.body.len() as u64);
        usage
            .entry(k.value().0.to_string())
            .or_default()
            .apply(&item);
    }
    Ok(())
}

fn load_queue(ctx: &WriteCtx<'_>, a: &str, q: &str) -> Result<QueueRecord, QueueError> {
    let queues = ctx.txn.open_table(QUEUES)?;
    get_record::<(&str, &str), QueueRecord>(&queues, "queues", (a, q))?
        .ok_or_else(|| QueueError::QueueNotFound(q.to_string()))
}

fn save_queue(ctx: &WriteCtx<'_>, a: &str, q: &str, rec: &QueueRecord) -> Result<(), QueueError> {
    ctx.txn
        .open_table(QUEUES)?
        .insert((a, q), encode(rec).as_slice())?;
    Ok(())
}

/// Loads the message `id` if `receipt` is its current receipt and it has not expired.
fn held_message(
    ctx: &WriteCtx<'_>,
    a: &str,
    q: &str,
    id: &str,
    receipt: &str,
) -> Result<(u64, MessageRecord), QueueError> {
    let seq = seq_from_guid(id).ok_or(QueueError::MessageNotFound)?;
    let msgs = ctx.txn.open_table(MESSAGES)?;
    let rec: MessageRecord = get_record::<(&str, &str, u64), _>(&msgs, "messages", (a, q, seq))?
        .ok_or(QueueError::MessageNotFound)?;
    if rec.id != id || rec.receipt != receipt || rec.expired(ctx.now) {
        return Err(QueueError::MessageNotFound);
    }
    Ok((seq, rec))
}

impl QueueStore for RedbStore {
    fn create_queue(
        &self,
        account: &AccountName,
        queue: &str,
        metadata: Metadata,
    ) -> Result<CreateQueueOutcome, QueueError> {
        check_queue(queue)?;
        check_metadata(&metadata)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.engine.write(true, move |ctx| {
            let queues = ctx.txn.open_table(QUEUES)?;
            if let Some(existing) = get_record::<(&str, &str), QueueRecord>(
                &queues,
                "queues",
                (a.as_str(), q.as_str()),
            )? {
                return if existing.metadata == metadata {
                    Ok(CreateQueueOutcome::AlreadyExists)
                } else {
                    Err(QueueError::QueueAlreadyExists(q))
                };
            }
            drop(queues);
            ctx.charge::<QueueError>(
                &a,
                Delta::item(Resource::Queues, queue_bytes(&q, &metadata)),
            )?;
            let mut queues = ctx.txn.open_table(QUEUES)?;
            let rec = QueueRecord { metadata, count: 0 };
            queues.insert((a.as_str(), q.as_str()), encode(&rec).as_slice())?;
            Ok(CreateQueueOutcome::Created)
        })
    }

    fn delete_queue(&self, account: &AccountName, queue: &str) -> Result<(), QueueError> {
        check_queue(queue)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.engine.write(true, move |ctx| {
            let rec = load_queue(ctx, &a, &q)?;
            ctx.txn
                .open_table(QUEUES)?
                .remove((a.as_str(), q.as_str()))?;
            let (a, q) = (a.as_str(), q.as_str());
            let mut freed = Freed::default();
            ctx.txn
                .open_table(MESSAGES)?
                .retain_in((a, q, 0)..=(a, q, u64::MAX), |_, v| {
                    freed.add(v);
                    false
                })?;
            ctx.txn
                .open_table(VISIBLE)?
                .retain_in((a, q, 0, 0)..=(a, q, u64::MAX, u64::MAX), |_, _| false)?;
            let mut d = freed.delta()?;
            d.remove_item(Resource::Queues, queue_bytes(q, &rec.metadata));
            ctx.charge::<QueueError>(a, d)?;
            policies::remove(ctx, a, policies::Kind::Queue, q)?;
            Ok(())
        })
    }

    fn get_queue_acl(
        &self,
        account: &AccountName,
        queue: &str,
    ) -> Result<Vec<AccessPolicy>, QueueError> {
        check_queue(queue)?;
        let txn = self.engine.read()?;
        let a = account.as_str();
        get_record::<(&str, &str), QueueRecord>(
            &txn.open_table(QUEUES).map_err(StorageError::from)?,
            "queues",
            (a, queue),
        )?
        .ok_or_else(|| QueueError::QueueNotFound(queue.to_string()))?;
        Ok(policies::read(&txn, a, policies::Kind::Queue, queue)?)
    }

    fn set_queue_acl(
        &self,
        account: &AccountName,
        queue: &str,
        list: Vec<AccessPolicy>,
    ) -> Result<(), QueueError> {
        check_queue(queue)?;
        crate::blob::check_policies(&list, "raup").map_err(QueueError::InvalidAcl)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.engine.write(true, move |ctx| {
            load_queue(ctx, &a, &q)?;
            policies::write(ctx, &a, policies::Kind::Queue, &q, &list)?;
            Ok(())
        })
    }

    fn list_queues(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<QueueItem>, QueueError> {
        let page_size =
            options
                .page_size()
                .map_err(|reason| QueueError::OutOfRangeQueryParameterValue {
                    param: "maxresults",
                    reason,
                })?;
        let txn = self.engine.read()?;
        let queues = txn.open_table(QUEUES).map_err(StorageError::from)?;
        let a = account.as_str();
        let prefix = options.prefix.as_deref().unwrap_or("");
        let mut items = Vec::new();
        let mut next_marker = None;
        for entry in queues.range((a, options.start())..)? {
            let (k, v) = entry?;
            let (acct, name) = k.value();
            if acct != a || !name.starts_with(prefix) {
                break;
            }
            if items.len() == page_size {
                next_marker = Some(name.to_string());
                break;
            }
            let metadata = if options.include_metadata {
                decode::<QueueRecord>("queues", v.value())?.metadata
            } else {
                Vec::new()
            };
            items.push(QueueItem {
                name: name.to_string(),
                metadata,
            });
        }
        Ok(Page { items, next_marker })
    }

    fn get_queue_properties(
        &self,
        account: &AccountName,
        queue: &str,
    ) -> Result<QueueProperties, QueueError> {
        check_queue(queue)?;
        let txn = self.engine.read()?;
        let queues = txn.open_table(QUEUES).map_err(StorageError::from)?;
        let rec: QueueRecord =
            get_record::<(&str, &str), _>(&queues, "queues", (account.as_str(), queue))?
                .ok_or_else(|| QueueError::QueueNotFound(queue.to_string()))?;
        Ok(QueueProperties {
            metadata: rec.metadata,
            approximate_message_count: rec.count,
        })
    }

    fn set_queue_metadata(
        &self,
        account: &AccountName,
        queue: &str,
        metadata: Metadata,
    ) -> Result<(), QueueError> {
        check_queue(queue)?;
        check_metadata(&metadata)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.engine.write(true, move |ctx| {
            let mut rec = load_queue(ctx, &a, &q)?;
            let mut d = Delta::default();
            d.add_bytes(metadata_bytes(&metadata) as i64 - metadata_bytes(&rec.metadata) as i64);
            ctx.charge::<QueueError>(&a, d)?;
            rec.metadata = metadata;
            save_queue(ctx, &a, &q, &rec)
        })
    }

    fn put_message(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
    ) -> Result<PutReceipt, QueueError> {
        let op = self.put_message_op(account, queue, body, options)?;
        self.engine.write(true, op)
    }

    fn put_message_then(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
        done: Answer<PutReceipt>,
    ) {
        match self.put_message_op(account, queue, body, options) {
            Ok(op) => self.engine.submit(true, op, done),
            Err(e) => done(Err(e)),
        }
    }

    fn get_messages(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        let op = self.get_messages_op(account, queue, count, visibility_timeout)?;
        self.engine.write(true, op)
    }

    fn get_messages_then(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
        done: Answer<Vec<QueueMessage>>,
    ) {
        match self.get_messages_op(account, queue, count, visibility_timeout) {
            Ok(op) => self.engine.submit(true, op, done),
            Err(e) => done(Err(e)),
        }
    }

    fn peek_messages(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
    ) -> Result<Vec<PeekedMessage>, QueueError> {
        check_queue(queue)?;
        check_count(count)?;
        let now = self.engine.now();
        let txn = self.engine.read()?;
        let (a, q) = (account.as_str(), queue);
        let queues = txn.open_table(QUEUES).map_err(StorageError::from)?;
        if queues.get((a, q))?.is_none() {
            return Err(QueueError::QueueNotFound(q.to_string()));
        }
        let visible = txn.open_table(VISIBLE).map_err(StorageError::from)?;
        let msgs = txn.open_table(MESSAGES).map_err(StorageError::from)?;
        let mut out = Vec::new();
        for entry in visible.range((a, q, 0, 0)..=(a, q, now.as_micros(), u64::MAX))? {
            let (k, _) = entry?;
            let seq = k.value().3;
            let Some(rec) =
                get_record::<(&str, &str, u64), MessageRecord>(&msgs, "messages", (a, q, seq))?
            else {
                continue;
            };
            if rec.expired(now) {
                continue;
            }
            out.push(PeekedMessage {
                id: rec.id,
                insertion_time: rec.inserted,
                expiration_time: rec.expires,
                dequeue_count: rec.dequeue_count,
                body: rec.body,
            });
            if out.len() == count as usize {
                break;
            }
        }
        Ok(out)
    }

    fn delete_message(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
    ) -> Result<(), QueueError> {
        let op = self.delete_message_op(account, queue, id, pop_receipt)?;
        self.engine.write(true, op)
    }

    fn delete_message_then(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        done: Answer<()>,
    ) {
        match self.delete_message_op(account, queue, id, pop_receipt) {
            Ok(op) => self.engine.submit(true, op, done),
            Err(e) => done(Err(e)),
        }
    }

    fn update_message(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        visibility_timeout: Duration,
        body: Option<&[u8]>,
    ) -> Result<UpdateReceipt, QueueError> {
        check_queue(queue)?;
        check_update(
            visibility_timeout,
            body.map(<[u8]>::len),
            self.queue_message_max_bytes(account),
        )?;
        let (a, q, id, receipt) = (
            account.as_str().to_owned(),
            queue.to_owned(),
            id.to_owned(),
            pop_receipt.to_owned(),
        );
        let body = body.map(<[u8]>::to_vec);
        self.engine.write(true, move |ctx| {
            load_queue(ctx, &a, &q)?;
            let (seq, mut rec) = held_message(ctx, &a, &q, &id, &receipt)?;
            let visible_at = ctx.now.saturating_add(visibility_timeout);
            check_update_expiry(visible_at, rec.expires)?;
            if let Some(b) = &body {
                let mut d = Delta::default();
                d.add_bytes(b.len() as i64 - rec.body.len() as i64);
                ctx.charge::<QueueError>(&a, d)?;
            }
            let (ak, qk) = (a.as_str(), q.as_str());
            let mut visible = ctx.txn.open_table(VISIBLE)?;
            visible.remove((ak, qk, rec.visible_at.as_micros(), seq))?;
            rec.visible_at = visible_at;
            rec.receipt = ctx.ids.receipt();
            if let Some(b) = body {
                rec.body = b;
            }
            visible.insert((ak, qk, rec.visible_at.as_micros(), seq), ())?;
            ctx.txn
                .open_table(MESSAGES)?
                .insert((ak, qk, seq), encode(&rec).as_slice())?;
            Ok(UpdateReceipt {
                pop_receipt: rec.receipt,
                time_next_visible: rec.visible_at,
            })
        })
    }

    fn clear_messages(&self, account: &AccountName, queue: &str) -> Result<(), QueueError> {
        check_queue(queue)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.engine.write(true, move |ctx| {
            let mut qrec = load_queue(ctx, &a, &q)?;
            let (ak, qk) = (a.as_str(), q.as_str());
            let mut freed = Freed::default();
            ctx.txn
                .open_table(MESSAGES)?
                .retain_in((ak, qk, 0)..=(ak, qk, u64::MAX), |_, v| {
                    freed.add(v);
                    false
                })?;
            ctx.charge::<QueueError>(ak, freed.delta()?)?;
            ctx.txn
                .open_table(VISIBLE)?
                .retain_in((ak, qk, 0, 0)..=(ak, qk, u64::MAX, u64::MAX), |_, _| false)?;
            qrec.count = 0;
            save_queue(ctx, &a, &q, &qrec)
        })
    }
}

impl RedbStore {
    /// What [`QueueStore::put_message`] runs in the group commit, after the checks it makes first.
    fn put_message_op(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
    ) -> Result<
        impl FnOnce(&mut WriteCtx<'_>) -> Result<PutReceipt, QueueError> + Send + 'static,
        QueueError,
    > {
        check_queue(queue)?;
        let ttl = check_put(body.len(), self.queue_message_max_bytes(account), &options)?;
        let (a, q, body) = (account.as_str().to_owned(), queue.to_owned(), body.to_vec());
        Ok(move |ctx: &mut WriteCtx<'_>| {
            let mut qrec = load_queue(ctx, &a, &q)?;
            ctx.charge::<QueueError>(&a, Delta::item(Resource::Messages, body.len() as u64))?;
            let seq = ctx.ids.next_seq();
            let rec = MessageRecord {
                id: ctx.ids.guid_for(seq),
                inserted: ctx.now,
                expires: ttl.map(|t| ctx.now.saturating_add(t)),
                visible_at: ctx.now.saturating_add(options.visibility_delay),
                dequeue_count: 0,
                receipt: ctx.ids.receipt(),
                body,
            };
            let (ak, qk) = (a.as_str(), q.as_str());
            ctx.txn
                .open_table(MESSAGES)?
                .insert((ak, qk, seq), encode(&rec).as_slice())?;
            ctx.txn
                .open_table(VISIBLE)?
                .insert((ak, qk, rec.visible_at.as_micros(), seq), ())?;
            qrec.count += 1;
            save_queue(ctx, &a, &q, &qrec)?;
            Ok(PutReceipt {
                id: rec.id,
                insertion_time: rec.inserted,
                expiration_time: rec.expires,
                pop_receipt: rec.receipt,
                time_next_visible: rec.visible_at,
            })
        })
    }

    /// What [`QueueStore::get_messages`] runs in the group commit, after the checks it makes first.
    fn get_messages_op(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
    ) -> Result<
        impl FnOnce(&mut WriteCtx<'_>) -> Result<Vec<QueueMessage>, QueueError> + Send + 'static,
        QueueError,
    > {
        check_queue(queue)?;
        check_count(count)?;
        check_visibility(visibility_timeout, Duration::from_secs(1))?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        Ok(move |ctx: &mut WriteCtx<'_>| {
            let mut qrec = load_queue(ctx, &a, &q)?;
            let (ak, qk) = (a.as_str(), q.as_str());
            let now = ctx.now;
            let mut visible = ctx.txn.open_table(VISIBLE)?;
            let mut msgs = ctx.txn.open_table(MESSAGES)?;
            // Collect first: redb tables cannot be changed while a range over them is open.
            let mut take = Vec::new();
            let mut purge = Vec::new();
            for entry in visible.range((ak, qk, 0, 0)..=(ak, qk, now.as_micros(), u64::MAX))? {
                let (k, _) = entry?;
                let (_, _, vis, seq) = k.value();
                let rec: MessageRecord =
                    get_record::<(&str, &str, u64), _>(&msgs, "messages", (ak, qk, seq))?
                        .ok_or_else(|| StorageError::Corrupt {
                            table: "visible",
                            detail: format!("index names missing message {seq}"),
                        })?;
                if rec.expired(now) {
                    purge.push((vis, seq, rec.body.len() as u64));
                    if purge.len() >= MAX_PURGE_PER_GET {
                        break;
                    }
                } else {
                    take.push((vis, seq, rec));
                    if take.len() == count as usize {
                        break;
                    }
                }
            }
            let mut purged = Delta::default();
            for (vis, seq, body_len) in &purge {
                visible.remove((ak, qk, *vis, *seq))?;
                msgs.remove((ak, qk, *seq))?;
                purged.remove_item(Resource::Messages, *body_len);
            }
            qrec.count = qrec.count.saturating_sub(purge.len() as u64);
            let mut out = Vec::with_capacity(take.len());
            for (vis, seq, mut rec) in take {
                visible.remove((ak, qk, vis, seq))?;
                rec.visible_at = now.saturating_add(visibility_timeout);
                rec.dequeue_count = rec.dequeue_count.saturating_add(1);
                rec.receipt = ctx.ids.receipt();
                visible.insert((ak, qk, rec.visible_at.as_micros(), seq), ())?;
                msgs.insert((ak, qk, seq), encode(&rec).as_slice())?;
                out.push(QueueMessage {
                    id: rec.id,
                    insertion_time: rec.inserted,
                    expiration_time: rec.expires,
                    dequeue_count: rec.dequeue_count,
                    body: rec.body,
                    pop_receipt: rec.receipt,
                    time_next_visible: rec.visible_at,
                });
            }
            drop((visible, msgs));
            if !purge.is_empty() {
                ctx.charge::<QueueError>(&a, purged)?;
                save_queue(ctx, &a, &q, &qrec)?;
            }
            Ok(out)
        })
    }

    /// What [`QueueStore::delete_message`] runs in the group commit, after the checks it makes first.
    fn delete_message_op(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
    ) -> Result<impl FnOnce(&mut WriteCtx<'_>) -> Result<(), QueueError> + Send + 'static, QueueError>
    {
        check_queue(queue)?;
        let (a, q, id, receipt) = (
            account.as_str().to_owned(),
            queue.to_owned(),
            id.to_owned(),
            pop_receipt.to_owned(),
        );
        Ok(move |ctx: &mut WriteCtx<'_>| {
            let mut qrec = load_queue(ctx, &a, &q)?;
            let (seq, rec) = held_message(ctx, &a, &q, &id, &receipt)?;
            let mut d = Delta::default();
            d.remove_item(Resource::Messages, rec.body.len() as u64);
            ctx.charge::<QueueError>(&a, d)?;
            let (ak, qk) = (a.as_str(), q.as_str());
            ctx.txn.open_table(MESSAGES)?.remove((ak, qk, seq))?;
            ctx.txn
                .open_table(VISIBLE)?
                .remove((ak, qk, rec.visible_at.as_micros(), seq))?;
            qrec.count = qrec.count.saturating_sub(1);
            save_queue(ctx, &a, &q, &qrec)
        })
    }
}
