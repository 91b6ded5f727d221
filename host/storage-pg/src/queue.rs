//! The queue service on PostgreSQL.
//!
//! Get Messages is one statement at READ COMMITTED: it picks the first visible rows in
//! `(visible_at, seq)` order `FOR UPDATE SKIP LOCKED`, gives each a new receipt, visibility and
//! dequeue count, and purges up to [`MAX_PURGE_PER_GET`] expired messages on the way. READ
//! COMMITTED re-checks a locked row's newest version, so two getters never both take a
//! message; SKIP LOCKED lets them pass each other instead of queueing. Delete and Update name
//! the receipt in their `WHERE`: a stale receipt matches no row (`MessageNotFound`).
//!
//! First delivery follows `(visible_at, seq)` within one getter. Across getters it is best
//! effort: a row another getter holds is skipped, and `seq` is insertion order, not commit
//! order, so a message whose put committed later can be handed out first.
//!
//! Put, Get and Delete are one statement and one commit each. A put locks its queue's row
//! `FOR KEY SHARE` and Delete Queue `FOR UPDATE`, so no put can land a message in a queue whose
//! delete has already removed its messages (Set Queue Metadata takes `FOR NO KEY UPDATE`,
//! which puts do not wait for).

use std::time::Duration;

use rolehost_storage::blob::AccessPolicy;
use rolehost_storage::clock::Timestamp;
use rolehost_storage::ids;
use rolehost_storage::names::{check_metadata, check_queue};
use rolehost_storage::queue::*;
use rolehost_storage::quota::{ITEM_BYTES, admit, metadata_bytes};
use rolehost_storage::{
    AccountName, Accounts, Delta, ListOptions, MAX_LIST_RESULTS, Metadata, Page, QueueError,
    Resource, Usage,
};

use crate::error::corrupt;
use crate::pool::{Conn, Session};
use crate::settings::{PolicyKind, read_policies, remove_policies, write_policies};
use crate::{PgStore, accounts, micros, timestamp};

fn encode_metadata(m: &Metadata) -> Vec<u8> {
    postcard::to_allocvec(m).unwrap_or_default()
}

fn decode_metadata(bytes: &[u8]) -> Result<Metadata, QueueError> {
    Ok(postcard::from_bytes(bytes).map_err(|e| corrupt("rh_queues", e))?)
}

/// `LIKE` pattern matching names that start with `prefix` (`\` is the escape).
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut p = String::with_capacity(prefix.len() + 1);
    for ch in prefix.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

/// The page size of a listing, as a `LIMIT` one larger (to know whether more follow).
pub(crate) fn limit_of(options: &ListOptions) -> Result<(usize, i64), &'static str> {
    let n = options.page_size()?;
    debug_assert!(n <= MAX_LIST_RESULTS as usize);
    Ok((n, n as i64 + 1))
}

/// A listing's page from rows in name order whose first column is the name, fetched with
/// [`limit_of`]'s limit: the row past the page is only the next marker.
pub(crate) fn page_of<T, E>(
    rows: &[postgres::Row],
    page: usize,
    mut item: impl FnMut(String, &postgres::Row) -> Result<T, E>,
) -> Result<Page<T>, E> {
    let mut items = Vec::with_capacity(rows.len().min(page));
    let mut next_marker = None;
    for r in rows {
        let name: String = r.get(0);
        if items.len() == page {
            next_marker = Some(name);
            break;
        }
        items.push(item(name, r)?);
    }
    Ok(Page { items, next_marker })
}

const QUEUE_EXISTS: &str = "SELECT 1 FROM rh_queues WHERE account = $1 AND name = $2";

fn queue_exists(s: &mut Session<'_>, a: &str, q: &str) -> Result<(), QueueError> {
    match s.query_opt(QUEUE_EXISTS, &[&a, &q])? {
        Some(_) => Ok(()),
        None => Err(QueueError::QueueNotFound(q.to_string())),
    }
}

/// The message sequence number `id` names in this database, if it names one at all.
fn seq_of(id: &str, salt: u64) -> Option<i64> {
    let seq = ids::seq_from_guid(id)?;
    (ids::guid(seq, salt) == id).then(|| i64::try_from(seq).ok())?
}

fn id_of(seq: i64, salt: u64) -> String {
    ids::guid(seq.max(0).unsigned_abs(), salt)
}

fn expires_of(row: &postgres::Row, i: usize) -> Option<Timestamp> {
    row.get::<_, Option<i64>>(i).map(timestamp)
}

/// Put Message in one statement and one commit: the queue row is locked `FOR KEY SHARE` (a
/// Delete Queue, which locks it `FOR UPDATE`, waits for the put, or the put sees the queue
/// gone), and the message goes in only while the account's messages and bytes stay within
/// its quota (the rule of `quota::admit`, for the two resources a put grows; a refusal is
/// named by `admit` itself from the figures returned).
const PUT: &str = "WITH q AS (
        SELECT 1 FROM rh_queues WHERE account = $1 AND name = $2 FOR KEY SHARE),
    used AS (
        SELECT coalesce(sum(messages), 0)::bigint AS messages,
            coalesce(sum(bytes), 0)::bigint AS bytes
        FROM rh_usage WHERE account = $1),
    m AS (
        INSERT INTO rh_messages
            (account, queue, inserted, expires, visible_at, dequeue_count, receipt, body)
        SELECT $1, $2, $3, $4, $5, 0, $6, $7 FROM q, used
        WHERE used.messages + 1 <= $10 AND used.bytes + $9 <= $11
        RETURNING seq),
    u AS (
        INSERT INTO rh_usage (account, shard, bytes, messages) SELECT $1, $8, $9, 1 FROM m
        ON CONFLICT (account, shard) DO UPDATE SET
            bytes = rh_usage.bytes + EXCLUDED.bytes, messages = rh_usage.messages + 1)
    SELECT (SELECT seq FROM m), EXISTS (SELECT 1 FROM q), used.messages, used.bytes
    FROM used";

const GET: &str = "WITH q AS (SELECT 1 FROM rh_queues WHERE account = $1 AND name = $2),
    purged AS (
        DELETE FROM rh_messages WHERE account = $1 AND queue = $2 AND seq IN (
            SELECT seq FROM rh_messages WHERE account = $1 AND queue = $2 AND expires <= $3
            ORDER BY expires LIMIT 1024 FOR UPDATE SKIP LOCKED)
        RETURNING octet_length(body) AS len),
    picked AS (
        SELECT seq, visible_at FROM rh_messages
        WHERE account = $1 AND queue = $2 AND visible_at <= $3
            AND (expires IS NULL OR expires > $3) AND EXISTS (SELECT 1 FROM q)
        ORDER BY visible_at, seq LIMIT $4 FOR UPDATE SKIP LOCKED),
    got AS (
        UPDATE rh_messages m SET visible_at = $5, dequeue_count = m.dequeue_count + 1,
            receipt = $6 || to_hex(m.seq)
        FROM picked WHERE m.account = $1 AND m.queue = $2 AND m.seq = picked.seq
        RETURNING m.seq, picked.visible_at AS was, m.inserted, m.expires, m.dequeue_count,
            m.body, m.receipt),
    u AS (
        INSERT INTO rh_usage (account, shard, bytes, messages)
        SELECT $1, $7, -(count(*) * $8 + coalesce(sum(len), 0)), -count(*) FROM purged
        HAVING count(*) > 0
        ON CONFLICT (account, shard) DO UPDATE SET
            bytes = rh_usage.bytes + EXCLUDED.bytes,
            messages = rh_usage.messages + EXCLUDED.messages)
    SELECT EXISTS (SELECT 1 FROM q), got.seq, got.was, got.inserted, got.expires,
        got.dequeue_count, got.body, got.receipt
    FROM (SELECT 1) AS one LEFT JOIN got ON true";

const DELETE: &str = "WITH q AS (SELECT 1 FROM rh_queues WHERE account = $1 AND name = $2),
    d AS (
        DELETE FROM rh_messages WHERE account = $1 AND queue = $2 AND seq = $3
            AND receipt = $4 AND (expires IS NULL OR expires > $5)
        RETURNING octet_length(body) AS len),
    u AS (
        INSERT INTO rh_usage (account, shard, bytes, messages)
        SELECT $1, $6, -($7 + len), -1 FROM d
        ON CONFLICT (account, shard) DO UPDATE SET
            bytes = rh_usage.bytes + EXCLUDED.bytes,
            messages = rh_usage.messages + EXCLUDED.messages)
    SELECT EXISTS (SELECT 1 FROM q), (SELECT len FROM d)";

const CLEAR: &str = "WITH d AS (
        DELETE FROM rh_messages WHERE account = $1 AND queue = $2
        RETURNING octet_length(body) AS len)
    SELECT count(*), coalesce(sum(len), 0)::bigint FROM d";

/// What removing `count` messages holding `bytes` of bodies takes off an account.
fn removed_messages(count: i64, bytes: i64) -> Delta {
    let mut d = Delta::default();
    d.remove_items(
        Resource::Messages,
        count.max(0).unsigned_abs(),
        bytes.max(0).unsigned_abs(),
    );
    d
}

impl PgStore {
    fn put_op(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
    ) -> Result<impl FnOnce(&mut Conn) -> Result<PutReceipt, QueueError> + Send + 'static, QueueError>
    {
        check_queue(queue)?;
        let ttl = check_put(body.len(), self.queue_message_max_bytes(account), &options)?;
        let (a, q, body) = (account.as_str().to_owned(), queue.to_owned(), body.to_vec());
        let quota = self.quotas.quota(&a);
        let now = self.now();
        let receipt = self.receipt();
        let salt = self.salt;
        let limit = |r: Resource| i64::try_from(quota.get(r)).unwrap_or(i64::MAX);
        let (max_messages, max_bytes) = (limit(Resource::Messages), limit(Resource::Bytes));
        Ok(move |c: &mut Conn| {
            let shard = c.shard;
            let delta = Delta::item(Resource::Messages, body.len() as u64);
            let expires = ttl.map(|t| now.saturating_add(t));
            let visible_at = now.saturating_add(options.visibility_delay);
            let row = c.auto()?.query_one(
                PUT,
                &[
                    &a,
                    &q,
                    &micros(now),
                    &expires.map(micros),
                    &micros(visible_at),
                    &receipt,
                    &body,
                    &shard,
                    &delta.bytes(),
                    &max_messages,
                    &max_bytes,
                ],
            )?;
            let Some(seq) = row.get::<_, Option<i64>>(0) else {
                if !row.get::<_, bool>(1) {
                    return Err(QueueError::QueueNotFound(q));
                }
                let mut used = Usage::default();
                used.set(
                    Resource::Messages,
                    row.get::<_, i64>(2).max(0).unsigned_abs(),
                );
                used.set(Resource::Bytes, row.get::<_, i64>(3).max(0).unsigned_abs());
                admit(&a, &used, &delta, &quota)?;
                return Err(QueueError::Storage(
                    rolehost_storage::StorageError::Internal(
                        "the put was refused at the quota, which admits it now".into(),
                    ),
                ));
            };
            Ok(PutReceipt {
                id: id_of(seq, salt),
                insertion_time: now,
                expiration_time: expires,
                pop_receipt: receipt,
                time_next_visible: visible_at,
            })
        })
    }

    fn get_op(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
    ) -> Result<
        impl FnOnce(&mut Conn) -> Result<Vec<QueueMessage>, QueueError> + Send + 'static,
        QueueError,
    > {
        check_queue(queue)?;
        check_count(count)?;
        check_visibility(visibility_timeout, Duration::from_secs(1))?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        let now = self.now();
        let visible_at = now.saturating_add(visibility_timeout);
        let receipt = self.receipt();
        let salt = self.salt;
        Ok(move |c: &mut Conn| {
            let shard = c.shard;
            let rows = c.auto()?.query(
                GET,
                &[
                    &a,
                    &q,
                    &micros(now),
                    &i64::from(count),
                    &micros(visible_at),
                    &receipt,
                    &shard,
                    &(ITEM_BYTES as i64),
                ],
            )?;
            if !rows.first().is_some_and(|r| r.get::<_, bool>(0)) {
                return Err(QueueError::QueueNotFound(q));
            }
            let mut got: Vec<(i64, i64, QueueMessage)> = rows
                .iter()
                .filter_map(|r| {
                    let seq: i64 = r.get::<_, Option<i64>>(1)?;
                    Some((
                        r.get(2),
                        seq,
                        QueueMessage {
                            id: id_of(seq, salt),
                            insertion_time: timestamp(r.get(3)),
                            expiration_time: expires_of(r, 4),
                            dequeue_count: r.get::<_, i32>(5).max(0).unsigned_abs(),
                            body: r.get(6),
                            pop_receipt: r.get(7),
                            time_next_visible: visible_at,
                        },
                    ))
                })
                .collect();
            got.sort_by_key(|(was, seq, _)| (*was, *seq));
            Ok(got.into_iter().map(|(_, _, m)| m).collect())
        })
    }

    fn delete_op(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
    ) -> Result<impl FnOnce(&mut Conn) -> Result<(), QueueError> + Send + 'static, QueueError> {
        check_queue(queue)?;
        let (a, q, receipt) = (
            account.as_str().to_owned(),
            queue.to_owned(),
            pop_receipt.to_owned(),
        );
        let seq = seq_of(id, self.salt);
        let now = self.now();
        Ok(move |c: &mut Conn| {
            let shard = c.shard;
            // An id this database never made names no message: -1 matches no row.
            let seq = seq.unwrap_or(-1);
            let row = c.auto()?.query_one(
                DELETE,
                &[
                    &a,
                    &q,
                    &seq,
                    &receipt,
                    &micros(now),
                    &shard,
                    &(ITEM_BYTES as i32),
                ],
            )?;
            if !row.get::<_, bool>(0) {
                return Err(QueueError::QueueNotFound(q));
            }
            match row.get::<_, Option<i32>>(1) {
                Some(_) => Ok(()),
                None => Err(QueueError::MessageNotFound),
            }
        })
    }
}

impl QueueStore for PgStore {
    fn create_queue(
        &self,
        account: &AccountName,
        queue: &str,
        metadata: Metadata,
    ) -> Result<CreateQueueOutcome, QueueError> {
        check_queue(queue)?;
        check_metadata(&metadata)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            // Twice at most: a create racing ours may insert between our look and our insert.
            for _ in 0..2 {
                let shard = c.shard;
                let mut s = c.begin()?;
                if let Some(row) = s.query_opt(
                    "SELECT metadata FROM rh_queues WHERE account = $1 AND name = $2",
                    &[&a, &q],
                )? {
                    let existing = decode_metadata(row.get(0))?;
                    return if existing == metadata {
                        Ok(CreateQueueOutcome::AlreadyExists)
                    } else {
                        Err(QueueError::QueueAlreadyExists(q))
                    };
                }
                accounts::charge::<QueueError>(
                    &mut s,
                    shard,
                    &a,
                    Delta::item(Resource::Queues, queue_bytes(&q, &metadata)),
                    &quota,
                )?;
                let inserted = s.execute(
                    "INSERT INTO rh_queues (account, name, metadata) VALUES ($1, $2, $3)
                     ON CONFLICT (account, name) DO NOTHING",
                    &[&a, &q, &encode_metadata(&metadata)],
                )?;
                if inserted == 1 {
                    s.commit()?;
                    return Ok(CreateQueueOutcome::Created);
                }
            }
            Err(QueueError::QueueAlreadyExists(q))
        })
    }

    fn delete_queue(&self, account: &AccountName, queue: &str) -> Result<(), QueueError> {
        check_queue(queue)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            let shard = c.shard;
            let mut s = c.begin()?;
            let row = s
                .query_opt(
                    "SELECT metadata FROM rh_queues WHERE account = $1 AND name = $2 FOR UPDATE",
                    &[&a, &q],
                )?
                .ok_or_else(|| QueueError::QueueNotFound(q.clone()))?;
            let metadata = decode_metadata(row.get(0))?;
            let cleared = s.query_one(CLEAR, &[&a, &q])?;
            let mut d = removed_messages(cleared.get(0), cleared.get(1));
            d.remove_item(Resource::Queues, queue_bytes(&q, &metadata));
            s.execute(
                "DELETE FROM rh_queues WHERE account = $1 AND name = $2",
                &[&a, &q],
            )?;
            accounts::charge::<QueueError>(&mut s, shard, &a, d, &quota)?;
            remove_policies(&mut s, &a, PolicyKind::Queue, &q)?;
            s.commit()?;
            Ok(())
        })
    }

    fn list_queues(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<QueueItem>, QueueError> {
        let (page, limit) =
            limit_of(options).map_err(|reason| QueueError::OutOfRangeQueryParameterValue {
                param: "maxresults",
                reason,
            })?;
        let a = account.as_str().to_owned();
        let start = options.start().to_owned();
        let like = like_prefix(options.prefix.as_deref().unwrap_or(""));
        let include_metadata = options.include_metadata;
        self.pool.run(move |c| {
            let rows = c.auto()?.query(
                "SELECT name, metadata FROM rh_queues
                 WHERE account = $1 AND name >= $2 AND name LIKE $3
                 ORDER BY name LIMIT $4",
                &[&a, &start, &like, &limit],
            )?;
            page_of(&rows, page, |name, r| {
                let metadata = if include_metadata {
                    decode_metadata(r.get(1))?
                } else {
                    Vec::new()
                };
                Ok(QueueItem { name, metadata })
            })
        })
    }

    fn get_queue_properties(
        &self,
        account: &AccountName,
        queue: &str,
    ) -> Result<QueueProperties, QueueError> {
        check_queue(queue)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.pool.run(move |c| {
            let row = c
                .auto()?
                .query_opt(
                    "SELECT metadata,
                        (SELECT count(*) FROM rh_messages WHERE account = $1 AND queue = $2)
                     FROM rh_queues WHERE account = $1 AND name = $2",
                    &[&a, &q],
                )?
                .ok_or_else(|| QueueError::QueueNotFound(q.clone()))?;
            Ok(QueueProperties {
                metadata: decode_metadata(row.get(0))?,
                approximate_message_count: row.get::<_, i64>(1).max(0).unsigned_abs(),
            })
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
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            let shard = c.shard;
            let mut s = c.begin()?;
            let row = s
                .query_opt(
                    "SELECT metadata FROM rh_queues WHERE account = $1 AND name = $2
                     FOR NO KEY UPDATE",
                    &[&a, &q],
                )?
                .ok_or_else(|| QueueError::QueueNotFound(q.clone()))?;
            let old = decode_metadata(row.get(0))?;
            let mut d = Delta::default();
            d.add_bytes(metadata_bytes(&metadata) as i64 - metadata_bytes(&old) as i64);
            accounts::charge::<QueueError>(&mut s, shard, &a, d, &quota)?;
            s.execute(
                "UPDATE rh_queues SET metadata = $3 WHERE account = $1 AND name = $2",
                &[&a, &q, &encode_metadata(&metadata)],
            )?;
            s.commit()?;
            Ok(())
        })
    }

    fn put_message(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
    ) -> Result<PutReceipt, QueueError> {
        let op = self.put_op(account, queue, body, options)?;
        let r = self.pool.run(op);
        if r.is_ok() {
            self.hints.put(account.as_str(), queue);
        }
        r
    }

    fn get_messages(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        let op = self.get_op(account, queue, count, visibility_timeout)?;
        self.pool.run(op)
    }

    fn put_message_then(
        &self,
        account: &AccountName,
        queue: &str,
        body: &[u8],
        options: PutMessageOptions,
        done: Answer<PutReceipt>,
    ) {
        match self.put_op(account, queue, body, options) {
            Ok(op) => {
                let (hints, a, q) = (
                    self.hints.clone(),
                    account.as_str().to_owned(),
                    queue.to_owned(),
                );
                self.pool.spawn(op, move |r| {
                    if r.is_ok() {
                        hints.put(&a, &q);
                    }
                    done(r)
                })
            }
            Err(e) => done(Err(e)),
        }
    }

    fn get_messages_then(
        &self,
        account: &AccountName,
        queue: &str,
        count: u32,
        visibility_timeout: Duration,
        done: Answer<Vec<QueueMessage>>,
    ) {
        match self.get_op(account, queue, count, visibility_timeout) {
            Ok(op) => self.pool.spawn(op, done),
            Err(e) => done(Err(e)),
        }
    }

    fn delete_message_then(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        done: Answer<()>,
    ) {
        match self.delete_op(account, queue, id, pop_receipt) {
            Ok(op) => self.pool.spawn(op, done),
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
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        let now = self.now();
        let salt = self.salt;
        self.pool.run(move |c| {
            let mut s = c.auto()?;
            queue_exists(&mut s, &a, &q)?;
            let rows = s.query(
                "SELECT seq, inserted, expires, dequeue_count, body FROM rh_messages
                 WHERE account = $1 AND queue = $2 AND visible_at <= $3
                    AND (expires IS NULL OR expires > $3)
                 ORDER BY visible_at, seq LIMIT $4",
                &[&a, &q, &micros(now), &i64::from(count)],
            )?;
            Ok(rows
                .iter()
                .map(|r| PeekedMessage {
                    id: id_of(r.get(0), salt),
                    insertion_time: timestamp(r.get(1)),
                    expiration_time: expires_of(r, 2),
                    dequeue_count: r.get::<_, i32>(3).max(0).unsigned_abs(),
                    body: r.get(4),
                })
                .collect())
        })
    }

    fn delete_message(
        &self,
        account: &AccountName,
        queue: &str,
        id: &str,
        pop_receipt: &str,
    ) -> Result<(), QueueError> {
        let op = self.delete_op(account, queue, id, pop_receipt)?;
        self.pool.run(op)
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
        let (a, q, old_receipt) = (
            account.as_str().to_owned(),
            queue.to_owned(),
            pop_receipt.to_owned(),
        );
        let body = body.map(<[u8]>::to_vec);
        let seq = seq_of(id, self.salt);
        let now = self.now();
        let visible_at = now.saturating_add(visibility_timeout);
        let receipt = self.receipt();
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            let shard = c.shard;
            let mut s = c.begin()?;
            queue_exists(&mut s, &a, &q)?;
            let seq = seq.ok_or(QueueError::MessageNotFound)?;
            let row = s
                .query_opt(
                    "SELECT expires, octet_length(body) FROM rh_messages
                     WHERE account = $1 AND queue = $2 AND seq = $3 AND receipt = $4
                        AND (expires IS NULL OR expires > $5)
                     FOR UPDATE",
                    &[&a, &q, &seq, &old_receipt, &micros(now)],
                )?
                .ok_or(QueueError::MessageNotFound)?;
            check_update_expiry(visible_at, expires_of(&row, 0))?;
            if let Some(b) = &body {
                let mut d = Delta::default();
                d.add_bytes(b.len() as i64 - i64::from(row.get::<_, i32>(1)));
                accounts::charge::<QueueError>(&mut s, shard, &a, d, &quota)?;
            }
            s.execute(
                "UPDATE rh_messages SET visible_at = $4, receipt = $5, body = coalesce($6, body)
                 WHERE account = $1 AND queue = $2 AND seq = $3",
                &[&a, &q, &seq, &micros(visible_at), &receipt, &body],
            )?;
            s.commit()?;
            Ok(UpdateReceipt {
                pop_receipt: receipt,
                time_next_visible: visible_at,
            })
        })
    }

    fn clear_messages(&self, account: &AccountName, queue: &str) -> Result<(), QueueError> {
        check_queue(queue)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            let shard = c.shard;
            let mut s = c.begin()?;
            queue_exists(&mut s, &a, &q)?;
            let cleared = s.query_one(CLEAR, &[&a, &q])?;
            let d = removed_messages(cleared.get(0), cleared.get(1));
            accounts::charge::<QueueError>(&mut s, shard, &a, d, &quota)?;
            s.commit()?;
            Ok(())
        })
    }

    fn watch_puts(&self, hint: PutHint) -> PutWatch {
        self.hints.watch(hint)
    }

    fn get_queue_acl(
        &self,
        account: &AccountName,
        queue: &str,
    ) -> Result<Vec<AccessPolicy>, QueueError> {
        check_queue(queue)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.pool.run(move |c| {
            let mut s = c.begin()?;
            queue_exists(&mut s, &a, &q)?;
            Ok(read_policies(&mut s, &a, PolicyKind::Queue, &q)?)
        })
    }

    fn set_queue_acl(
        &self,
        account: &AccountName,
        queue: &str,
        list: Vec<AccessPolicy>,
    ) -> Result<(), QueueError> {
        check_queue(queue)?;
        rolehost_storage::blob::check_policies(&list, "raup").map_err(QueueError::InvalidAcl)?;
        let (a, q) = (account.as_str().to_owned(), queue.to_owned());
        self.pool.run(move |c| {
            let mut s = c.begin()?;
            s.query_opt(
                "SELECT 1 FROM rh_queues WHERE account = $1 AND name = $2 FOR SHARE",
                &[&a, &q],
            )?
            .ok_or_else(|| QueueError::QueueNotFound(q.clone()))?;
            write_policies(&mut s, &a, PolicyKind::Queue, &q, &list)?;
            s.commit()?;
            Ok(())
        })
    }
}
