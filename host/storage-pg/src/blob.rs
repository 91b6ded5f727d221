//! The blob service on PostgreSQL.
//!
//! Content lives in chunk rows of [`CHUNK_SIZE`] (`rh_chunks`) under a data id from a sequence;
//! a blob record lists its segments, as in redb, and its row also carries what it costs and the
//! data ids it owns, so a container's delete is counted and freed by the server without the
//! records coming to the host. No statement holds more than one chunk of a blob.
//!
//! A body larger than one chunk is streamed in batches of [`UPLOAD_BATCH_CHUNKS`], each its
//! own transaction with `synchronous_commit` off, under a pending data id (`rh_pending`) and
//! charged as it comes; the operation's own, durable commit publishes it (PostgreSQL's log is
//! one sequence: the durable commit makes the batches before it durable too). An upload whose
//! host died is found by its pending row not being touched for [`PENDING_STALE`], refunded and
//! freed by any host's reaper.
//!
//! Freed data is not deleted at once: it waits in `rh_garbage` for [`READ_GRACE`], so a read
//! that started before a blob was overwritten or deleted still finds its chunks (the redb
//! engine gets this from its read snapshot). Writes to a container's blobs hold the
//! container's advisory lock shared and Delete Container holds it exclusively, so no blob is
//! created in a container being deleted. A write that loses a race to create the same blob or
//! block runs again on what is there now.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use md5::{Digest, Md5};
use rolehost_storage::blob::rules::{
    self, BlobRecord, BlockRecord, ContainerRecord, Segment, blob_bytes, blob_props, block_bytes,
    check_acl, check_blob_lease, container_bytes, container_props, decode, decode_blob, encode,
    read_full,
};
use rolehost_storage::blob::*;
use rolehost_storage::names::{check_blob, check_container, check_metadata};
use rolehost_storage::quota::metadata_bytes;
use rolehost_storage::{
    AccountName, AccountQuota, BlobError, Delta, ListOptions, Metadata, Page, Resource,
    StorageError, Timestamp,
};

use crate::error::{PgError, corrupt, retried};
use crate::pool::{Conn, Pool, Session};
use crate::queue::{like_prefix, limit_of, page_of};
use crate::{PgStore, accounts, lock_key, micros};

/// Bytes of one chunk row. Smaller than redb's 1 MiB: every connection's client keeps buffers
/// as large as the largest message it carried, so the chunk size times the pool size bounds
/// what a host holds for blob traffic (16 connections: 8 MiB).
pub const CHUNK_SIZE: usize = 256 * 1024;

/// Chunks one intermediate commit of a streamed upload carries (4 MiB of buffer).
pub const UPLOAD_BATCH_CHUNKS: usize = 16;

/// How long freed data stays readable for reads that began before it was freed.
pub const READ_GRACE: Duration = Duration::from_secs(600);

/// An upload's pending data untouched this long belongs to a host that died: it is refunded
/// and freed.
pub const PENDING_STALE: Duration = Duration::from_secs(900);

/// Most data ids one reaper pass frees at a time.
const REAP_BATCH: i64 = 64;

/// Blob names one read of a listing brings back.
const LIST_CHUNK: i64 = 256;

type Attempt = crate::error::Attempt<BlobError>;

fn data_id(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn container_key(a: &str, c: &str) -> i64 {
    lock_key("container", a, c)
}

fn get_container(
    s: &mut Session<'_>,
    a: &str,
    c: &str,
    lock: bool,
) -> Result<ContainerRecord, BlobError> {
    let sql = if lock {
        "SELECT record FROM rh_containers WHERE account = $1 AND name = $2 FOR UPDATE"
    } else {
        "SELECT record FROM rh_containers WHERE account = $1 AND name = $2"
    };
    let row = s
        .query_opt(sql, &[&a, &c])?
        .ok_or_else(|| BlobError::ContainerNotFound(c.to_string()))?;
    Ok(decode("rh_containers", row.get(0))?)
}

fn save_container(
    s: &mut Session<'_>,
    a: &str,
    c: &str,
    rec: &ContainerRecord,
) -> Result<(), PgError> {
    let cost = container_bytes(c, &rec.metadata) as i64;
    s.execute(
        "UPDATE rh_containers SET record = $3, cost = $4 WHERE account = $1 AND name = $2",
        &[&a, &c, &encode(rec), &cost],
    )?;
    Ok(())
}

fn get_blob_record(
    s: &mut Session<'_>,
    (a, c, b): (&str, &str, &str),
    lock: bool,
) -> Result<Option<BlobRecord>, BlobError> {
    let sql = if lock {
        "SELECT record FROM rh_blobs WHERE account = $1 AND container = $2 AND name = $3
         FOR UPDATE"
    } else {
        "SELECT record FROM rh_blobs WHERE account = $1 AND container = $2 AND name = $3"
    };
    match s.query_opt(sql, &[&a, &c, &b])? {
        Some(row) => Ok(Some(decode_blob(row.get(0))?)),
        None => Ok(None),
    }
}

/// Writes a blob's row: an update if it `existed` (its row is locked), else an insert that
/// fails on a racing create (the operation then runs again).
fn save_blob(
    s: &mut Session<'_>,
    (a, c, b): (&str, &str, &str),
    rec: &BlobRecord,
    existed: bool,
) -> Result<(), PgError> {
    let cost = blob_bytes(b, rec) as i64;
    let ids: Vec<i64> = rec
        .segments
        .iter()
        .map(|s| data_id(s.data_id))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let bytes = encode(rec);
    if existed {
        s.execute(
            "UPDATE rh_blobs SET record = $4, cost = $5, data_ids = $6
             WHERE account = $1 AND container = $2 AND name = $3",
            &[&a, &c, &b, &bytes, &cost, &ids],
        )?;
    } else {
        s.execute(
            "INSERT INTO rh_blobs (account, container, name, record, cost, data_ids)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&a, &c, &b, &bytes, &cost, &ids],
        )?;
    }
    Ok(())
}

/// Hands data ids to the reaper (they are read for [`READ_GRACE`] more).
fn free_data(s: &mut Session<'_>, ids: &[i64], now: Timestamp) -> Result<(), PgError> {
    if ids.is_empty() {
        return Ok(());
    }
    s.execute(
        "INSERT INTO rh_garbage (data_id, freed) SELECT unnest($1::bigint[]), $2
         ON CONFLICT (data_id) DO NOTHING",
        &[&ids, &micros(now)],
    )?;
    Ok(())
}

/// Removes a blob's uncommitted blocks; frees their data unless it is in `keep`; what they
/// held comes off the account.
fn drop_uncommitted(
    s: &mut Session<'_>,
    (a, c, b): (&str, &str, &str),
    keep: &HashSet<u64>,
    now: Timestamp,
) -> Result<Delta, PgError> {
    let rows = s.query(
        "DELETE FROM rh_blocks WHERE account = $1 AND container = $2 AND blob = $3
         RETURNING id, data_id, len",
        &[&a, &c, &b],
    )?;
    let mut d = Delta::default();
    let mut free = Vec::new();
    for r in &rows {
        let id: Vec<u8> = r.get(0);
        let rec = BlockRecord {
            data_id: r.get::<_, i64>(1).max(0).unsigned_abs(),
            len: r.get::<_, i64>(2).max(0).unsigned_abs(),
        };
        d.remove_item(Resource::Bytes, block_bytes(&id, &rec));
        if !keep.contains(&rec.data_id) {
            free.push(data_id(rec.data_id));
        }
    }
    free_data(s, &free, now)?;
    Ok(d)
}

/// A request body after it has been read: small ones travel inside the final operation,
/// large ones were streamed into pending chunks already.
enum Body {
    Small(Vec<u8>),
    /// Streamed into this data id's chunks, charged to the account as they came.
    Staged(i64),
}

struct Uploaded {
    body: Body,
    len: u64,
    md5: [u8; 16],
}

impl Uploaded {
    /// What the upload charged already (its streamed chunks).
    fn precharged(&self) -> i64 {
        match self.body {
            Body::Staged(_) => i64::try_from(self.len).unwrap_or(i64::MAX),
            Body::Small(_) => 0,
        }
    }

    /// The data id of the body, writing a small one's chunk now (inside the operation's
    /// transaction) or claiming a staged one's pending data.
    fn materialize(&self, s: &mut Session<'_>) -> Result<i64, PgError> {
        match &self.body {
            Body::Small(bytes) => {
                let id: i64 = s.query_one("SELECT nextval('rh_data_ids')", &[])?.get(0);
                if !bytes.is_empty() {
                    s.execute(
                        "INSERT INTO rh_chunks (data_id, idx, bytes) VALUES ($1, 0, $2)",
                        &[&id, bytes],
                    )?;
                }
                Ok(id)
            }
            Body::Staged(id) => {
                s.execute("DELETE FROM rh_pending WHERE data_id = $1", &[id])?;
                Ok(*id)
            }
        }
    }
}

impl PgStore {
    fn etag(&self) -> String {
        rolehost_storage::ids::etag(self.next_seq(), self.salt)
    }

    fn guid(&self) -> String {
        rolehost_storage::ids::guid(self.next_seq(), self.salt)
    }

    /// Reads `body` (at most `limit` bytes): up to one chunk in memory, more streamed into
    /// pending chunks.
    fn upload(
        &self,
        account: &str,
        body: &mut dyn Read,
        limit: u64,
    ) -> Result<Uploaded, BlobError> {
        let mut md5 = Md5::new();
        let mut first = Vec::with_capacity(CHUNK_SIZE.min(64 * 1024));
        // One byte more than a chunk tells "fits in one chunk" from "more follows".
        read_full(body, &mut first, CHUNK_SIZE + 1)?;
        if first.len() <= CHUNK_SIZE {
            let len = first.len() as u64;
            if len > limit {
                return Err(BlobError::RequestEntityTooLarge { size: len, limit });
            }
            md5.update(&first);
            return Ok(Uploaded {
                body: Body::Small(first),
                len,
                md5: md5.finalize().into(),
            });
        }
        let carry = first.split_off(CHUNK_SIZE);
        let (a, now) = (account.to_owned(), self.now());
        let id: i64 = self.pool.run(move |c| -> Result<i64, BlobError> {
            let row = c.auto()?.query_one(
                "INSERT INTO rh_pending (data_id, account, charged, touched)
                 VALUES (nextval('rh_data_ids'), $1, 0, $2) RETURNING data_id",
                &[&a, &micros(now)],
            )?;
            Ok(row.get(0))
        })?;
        match self.stream_chunks(account, id, first, carry, body, limit, &mut md5) {
            Ok(len) => Ok(Uploaded {
                body: Body::Staged(id),
                len,
                md5: md5.finalize().into(),
            }),
            Err(e) => {
                self.discard(id);
                Err(e)
            }
        }
    }

    /// Streams the rest of a body into `id`'s chunks, a batch per transaction, each charged
    /// to `account` as it is written (refused at the quota while streaming, not after).
    #[allow(clippy::too_many_arguments, reason = "one upload's whole state")]
    fn stream_chunks(
        &self,
        account: &str,
        id: i64,
        first: Vec<u8>,
        mut carry: Vec<u8>,
        body: &mut dyn Read,
        limit: u64,
        md5: &mut Md5,
    ) -> Result<u64, BlobError> {
        let quota = self.quotas.quota(account);
        let mut next_index: i32 = 0;
        let mut total: u64 = 0;
        let mut batch = vec![first];
        loop {
            let mut eof = false;
            while batch.len() < UPLOAD_BATCH_CHUNKS && !eof {
                let mut chunk = std::mem::take(&mut carry);
                let want = CHUNK_SIZE - chunk.len();
                read_full(body, &mut chunk, want)?;
                eof = chunk.len() < CHUNK_SIZE;
                if !chunk.is_empty() {
                    batch.push(chunk);
                }
            }
            let bytes: u64 = batch.iter().map(|c| c.len() as u64).sum();
            total += bytes;
            if total > limit {
                return Err(BlobError::RequestEntityTooLarge { size: total, limit });
            }
            for c in &batch {
                md5.update(c);
            }
            let chunks = std::mem::take(&mut batch);
            let start = next_index;
            next_index += i32::try_from(chunks.len()).unwrap_or(i32::MAX);
            let (a, now) = (account.to_owned(), self.now());
            self.pool.run(move |c| -> Result<(), BlobError> {
                let shard = c.shard;
                let mut s = c.begin()?;
                // The operation's own commit is durable; this one only has to be in order.
                s.execute("SET LOCAL synchronous_commit = off", &[])?;
                let mut d = Delta::default();
                d.add_bytes(i64::try_from(bytes).unwrap_or(i64::MAX));
                accounts::charge::<BlobError>(&mut s, shard, &a, d, &quota)?;
                for (i, chunk) in chunks.iter().enumerate() {
                    let idx = start + i32::try_from(i).unwrap_or(i32::MAX);
                    s.execute(
                        "INSERT INTO rh_chunks (data_id, idx, bytes) VALUES ($1, $2, $3)",
                        &[&id, &idx, chunk],
                    )?;
                }
                s.execute(
                    "UPDATE rh_pending SET charged = charged + $2, touched = $3
                     WHERE data_id = $1",
                    &[&id, &i64::try_from(bytes).unwrap_or(i64::MAX), &micros(now)],
                )?;
                s.commit()?;
                Ok(())
            })?;
            if eof {
                return Ok(total);
            }
        }
    }

    /// Frees the pending data of a refused or failed upload and refunds what it charged. If
    /// this fails too, the reaper does it once the pending row goes stale.
    fn discard(&self, id: i64) {
        let now = self.now();
        let r = self.pool.run(move |c| -> Result<(), BlobError> {
            let shard = c.shard;
            let mut s = c.begin()?;
            reap_pending(&mut s, shard, id, now)?;
            s.commit()?;
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(data_id = id, error = %e, "could not discard upload data; the reaper frees it later");
        }
    }

    /// Runs an upload's final operation; on refusal, frees the staged data.
    fn finish_upload<T: Send + 'static>(
        &self,
        uploaded: &Arc<Uploaded>,
        op: impl FnOnce(&mut Conn) -> Result<T, BlobError> + Send + 'static,
    ) -> Result<T, BlobError> {
        let r = self.pool.run(op);
        if let (Err(_), Body::Staged(id)) = (&r, &uploaded.body) {
            self.discard(*id);
        }
        r
    }

    /// Put Blob, and Copy Blob's write: `copy_source` records the copy on the new blob.
    fn write_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        body: &mut dyn Read,
        options: PutBlobOptions,
        copy_source: Option<String>,
    ) -> Result<BlobProperties, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        check_metadata(&options.metadata)?;
        let uploaded = Arc::new(self.upload(account.as_str(), body, MAX_PUT_BLOB_BYTES)?);
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let (etag, copy_id, now) = (self.etag(), self.guid(), self.now());
        let quota = self.quotas.quota(&a);
        let up = uploaded.clone();
        self.finish_upload(&uploaded, move |conn| {
            retried("the blob", || {
                let shard = conn.shard;
                let mut s = conn.begin_locked(container_key(&a, &c), true)?;
                get_container(&mut s, &a, &c, false)?;
                let key = (a.as_str(), c.as_str(), b.as_str());
                let existing = get_blob_record(&mut s, key, true)?;
                rules::check_overwrite(existing.as_ref(), &b, &options, now)?;
                let mut content = options.content.clone();
                if content.content_md5.is_none() {
                    content.content_md5 = Some(up.md5);
                }
                let data = up.materialize(&mut s)?;
                let rec = BlobRecord {
                    etag: etag.clone(),
                    created: existing.as_ref().map_or(now, |r| r.created),
                    last_modified: now,
                    content,
                    metadata: options.metadata.clone(),
                    segments: if up.len > 0 {
                        vec![Segment {
                            block_id: None,
                            data_id: data.max(0).unsigned_abs(),
                            len: up.len,
                        }]
                    } else {
                        vec![]
                    },
                    size: up.len,
                    lease: existing
                        .as_ref()
                        .map(|r| r.lease.clone())
                        .unwrap_or_default(),
                    copy: copy_source.clone().map(|source| CopyInfo {
                        id: copy_id.clone(),
                        source,
                        completed: now,
                        bytes: up.len,
                    }),
                };
                let mut d = Delta::item(Resource::Blobs, blob_bytes(&b, &rec));
                if let Some(old) = &existing {
                    d.remove_item(Resource::Blobs, blob_bytes(&b, old));
                    let old_ids: Vec<i64> =
                        old.segments.iter().map(|s| data_id(s.data_id)).collect();
                    free_data(&mut s, &old_ids, now)?;
                }
                d = d.plus(drop_uncommitted(&mut s, key, &HashSet::new(), now)?);
                d.add_bytes(-up.precharged());
                accounts::charge::<Attempt>(&mut s, shard, &a, d, &quota)?;
                save_blob(&mut s, key, &rec, existing.is_some())?;
                s.commit()?;
                Ok(blob_props(&b, &rec, now))
            })
        })
    }

    /// The record of blob `b` of container `c` (`ContainerNotFound`, `BlobNotFound` if
    /// missing), read without a lock: what Get Blob and Get Blob Properties check.
    fn stored_blob(&self, a: String, c: String, b: String) -> Result<BlobRecord, BlobError> {
        self.pool.run(move |conn| {
            let mut s = conn.auto()?;
            get_container(&mut s, &a, &c, false)?;
            get_blob_record(&mut s, (&a, &c, &b), false)?.ok_or(BlobError::BlobNotFound(b))
        })
    }

    /// A metadata or properties write: conditions and lease checked, new ETag and
    /// Last-Modified.
    fn modify_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
        change: impl FnOnce(&mut BlobRecord) + Send + 'static,
    ) -> Result<BlobProperties, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let (conditions, lease_id) = (conditions.clone(), lease_id.map(str::to_owned));
        let (etag, now, quota) = (self.etag(), self.now(), self.quotas.quota(&a));
        self.pool.run(move |conn| {
            let shard = conn.shard;
            let mut s = conn.begin()?;
            get_container(&mut s, &a, &c, false)?;
            let key = (a.as_str(), c.as_str(), b.as_str());
            let mut rec = get_blob_record(&mut s, key, true)?
                .ok_or_else(|| BlobError::BlobNotFound(b.clone()))?;
            rec.lease.check_write(lease_id.as_deref(), now, false)?;
            conditions.check_write(Some((&rec.etag, rec.last_modified)), false)?;
            let before = blob_bytes(&b, &rec);
            change(&mut rec);
            let mut d = Delta::default();
            d.add_bytes(blob_bytes(&b, &rec) as i64 - before as i64);
            accounts::charge::<BlobError>(&mut s, shard, &a, d, &quota)?;
            rec.etag = etag;
            rec.last_modified = now;
            save_blob(&mut s, key, &rec, true)?;
            s.commit()?;
            Ok(blob_props(&b, &rec, now))
        })
    }
}

/// Frees one upload's pending data and refunds what it charged (its upload failed, or its
/// host died).
fn reap_pending(s: &mut Session<'_>, shard: i32, id: i64, now: Timestamp) -> Result<(), BlobError> {
    let Some(row) = s.query_opt(
        "DELETE FROM rh_pending WHERE data_id = $1 RETURNING account, charged",
        &[&id],
    )?
    else {
        return Ok(());
    };
    let (account, charged): (String, i64) = (row.get(0), row.get(1));
    let mut refund = Delta::default();
    refund.add_bytes(-charged);
    accounts::charge::<BlobError>(s, shard, &account, refund, &AccountQuota::UNLIMITED)?;
    free_data(s, &[id], now)?;
    Ok(())
}

/// One pass of the reaper: deletes the chunks of data freed more than [`READ_GRACE`] ago,
/// and reaps uploads whose pending data went stale. Any host may run it; rows another host's
/// reaper holds are skipped.
pub(crate) fn reap(c: &mut Conn, now: Timestamp) -> Result<u64, StorageError> {
    let shard = c.shard;
    let mut freed = 0u64;
    let before = micros(now).saturating_sub(READ_GRACE.as_micros() as i64);
    loop {
        let mut s = c.begin()?;
        let ids: Vec<i64> = s
            .query(
                "DELETE FROM rh_garbage WHERE data_id IN (
                    SELECT data_id FROM rh_garbage WHERE freed < $1
                    LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING data_id",
                &[&before, &REAP_BATCH],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids.is_empty() {
            break;
        }
        s.execute("DELETE FROM rh_chunks WHERE data_id = ANY($1)", &[&ids])?;
        s.commit()?;
        freed += ids.len() as u64;
    }
    let stale = micros(now).saturating_sub(PENDING_STALE.as_micros() as i64);
    let mut s = c.begin()?;
    let ids: Vec<i64> = s
        .query(
            "SELECT data_id FROM rh_pending WHERE touched < $1
             LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&stale, &REAP_BATCH],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &ids {
        reap_pending(&mut s, shard, *id, now).map_err(|e| match e {
            BlobError::Storage(e) => e,
            e => StorageError::Internal(e.to_string()),
        })?;
    }
    s.commit()?;
    Ok(freed)
}

/// Chunks one read of a blob's content brings back at once (1 MiB): a quarter of the round
/// trips, and what a reader holds ahead of its position.
pub const READ_AHEAD_CHUNKS: i32 = 4;

/// A blob reader's chunks read ahead of it: those of one data id, from one index on.
#[derive(Default)]
struct ReadAhead {
    data: i64,
    chunks: std::collections::VecDeque<(i32, Vec<u8>)>,
}

impl ReadAhead {
    /// Chunk `idx` of `data`, from those read ahead or with the next few through the pool.
    fn fetch(&mut self, pool: &Pool, data: u64, idx: u32) -> io::Result<Vec<u8>> {
        let (id, idx) = (data_id(data), i32::try_from(idx).unwrap_or(i32::MAX));
        if self.data == id {
            while let Some((i, _)) = self.chunks.front() {
                if *i < idx {
                    self.chunks.pop_front();
                } else {
                    break;
                }
            }
            if let Some((i, _)) = self.chunks.front()
                && *i == idx
            {
                return Ok(self.chunks.pop_front().map(|(_, c)| c).unwrap_or_default());
            }
        }
        let rows = pool
            .run(move |c| -> Result<Vec<(i32, Vec<u8>)>, StorageError> {
                let rows = c.auto()?.query(
                    "SELECT idx, bytes FROM rh_chunks
                     WHERE data_id = $1 AND idx >= $2 AND idx < $2 + $3 ORDER BY idx",
                    &[&id, &idx, &READ_AHEAD_CHUNKS],
                )?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            })
            .map_err(io::Error::other)?;
        self.data = id;
        self.chunks = rows.into();
        match self.chunks.pop_front() {
            Some((i, c)) if i == idx => Ok(c),
            _ => Err(io::Error::other(corrupt(
                "rh_chunks",
                format!(
                    "missing chunk {idx} of data {id} (read longer than the read grace after the blob changed?)"
                ),
            ))),
        }
    }
}

impl BlobStore for PgStore {
    fn create_container(
        &self,
        account: &AccountName,
        container: &str,
        metadata: Metadata,
    ) -> Result<ContainerProperties, BlobError> {
        check_container(container)?;
        check_metadata(&metadata)?;
        let (a, c) = (account.as_str().to_owned(), container.to_owned());
        let (etag, now, quota) = (self.etag(), self.now(), self.quotas.quota(&a));
        self.pool.run(move |conn| {
            let shard = conn.shard;
            let mut s = conn.begin()?;
            if s.query_opt(
                "SELECT 1 FROM rh_containers WHERE account = $1 AND name = $2",
                &[&a, &c],
            )?
            .is_some()
            {
                return Err(BlobError::ContainerAlreadyExists(c));
            }
            let cost = container_bytes(&c, &metadata);
            accounts::charge::<BlobError>(
                &mut s,
                shard,
                &a,
                Delta::item(Resource::Containers, cost),
                &quota,
            )?;
            let rec = ContainerRecord {
                etag,
                last_modified: now,
                metadata,
                lease: LeaseRecord::Available,
            };
            let inserted = s.execute(
                "INSERT INTO rh_containers (account, name, record, cost) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account, name) DO NOTHING",
                &[&a, &c, &encode(&rec), &(cost as i64)],
            )?;
            if inserted == 0 {
                return Err(BlobError::ContainerAlreadyExists(c));
            }
            s.commit()?;
            Ok(container_props(&c, &rec, now))
        })
    }

    fn delete_container(
        &self,
        account: &AccountName,
        container: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<(), BlobError> {
        check_container(container)?;
        let (a, c) = (account.as_str().to_owned(), container.to_owned());
        let (conditions, lease_id) = (conditions.clone(), lease_id.map(str::to_owned));
        let now = self.now();
        self.pool.run(move |conn| {
            let shard = conn.shard;
            let mut s = conn.begin_locked(container_key(&a, &c), false)?;
            let rec = get_container(&mut s, &a, &c, true)?;
            rec.lease.check_write(lease_id.as_deref(), now, true)?;
            conditions.check_container(rec.last_modified)?;
            s.execute(
                "DELETE FROM rh_containers WHERE account = $1 AND name = $2",
                &[&a, &c],
            )?;
            s.execute(
                "DELETE FROM rh_container_acls WHERE account = $1 AND name = $2",
                &[&a, &c],
            )?;
            let mut freed = Delta::default();
            freed.remove_item(Resource::Containers, container_bytes(&c, &rec.metadata));
            // Counted and freed by the server: a container's blobs never come to the host.
            let blobs = s.query_one(
                "WITH d AS (
                    DELETE FROM rh_blobs WHERE account = $1 AND container = $2
                    RETURNING cost, data_ids),
                 g AS (
                    INSERT INTO rh_garbage (data_id, freed)
                    SELECT DISTINCT unnest(data_ids), $3::bigint FROM d
                    ON CONFLICT (data_id) DO NOTHING)
                 SELECT count(*), coalesce(sum(cost), 0)::bigint FROM d",
                &[&a, &c, &micros(now)],
            )?;
            freed.remove_items(
                Resource::Blobs,
                blobs.get::<_, i64>(0).max(0).unsigned_abs(),
                blobs.get::<_, i64>(1).max(0).unsigned_abs(),
            );
            let blocks = s.query_one(
                "WITH d AS (
                    DELETE FROM rh_blocks WHERE account = $1 AND container = $2
                    RETURNING data_id, octet_length(id) + len AS n),
                 g AS (
                    INSERT INTO rh_garbage (data_id, freed) SELECT data_id, $3::bigint FROM d
                    ON CONFLICT (data_id) DO NOTHING)
                 SELECT count(*), coalesce(sum(n), 0)::bigint FROM d",
                &[&a, &c, &micros(now)],
            )?;
            freed.remove_items(
                Resource::Bytes,
                blocks.get::<_, i64>(0).max(0).unsigned_abs(),
                blocks.get::<_, i64>(1).max(0).unsigned_abs(),
            );
            // Only frees: never refused.
            accounts::charge::<BlobError>(&mut s, shard, &a, freed, &AccountQuota::UNLIMITED)?;
            s.commit()?;
            Ok(())
        })
    }

    fn get_container_properties(
        &self,
        account: &AccountName,
        container: &str,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError> {
        check_container(container)?;
        let (a, c, lease_id) = (
            account.as_str().to_owned(),
            container.to_owned(),
            lease_id.map(str::to_owned),
        );
        let now = self.now();
        self.pool.run(move |conn| {
            let rec = get_container(&mut conn.auto()?, &a, &c, false)?;
            rec.lease.check_read(lease_id.as_deref(), now, true)?;
            Ok(container_props(&c, &rec, now))
        })
    }

    fn set_container_metadata(
        &self,
        account: &AccountName,
        container: &str,
        metadata: Metadata,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError> {
        check_container(container)?;
        check_metadata(&metadata)?;
        let (a, c, lease_id) = (
            account.as_str().to_owned(),
            container.to_owned(),
            lease_id.map(str::to_owned),
        );
        let (etag, now, quota) = (self.etag(), self.now(), self.quotas.quota(&a));
        self.pool.run(move |conn| {
            let shard = conn.shard;
            let mut s = conn.begin()?;
            let mut rec = get_container(&mut s, &a, &c, true)?;
            rec.lease.check_read(lease_id.as_deref(), now, true)?;
            let mut d = Delta::default();
            d.add_bytes(metadata_bytes(&metadata) as i64 - metadata_bytes(&rec.metadata) as i64);
            accounts::charge::<BlobError>(&mut s, shard, &a, d, &quota)?;
            rec.metadata = metadata;
            rec.etag = etag;
            rec.last_modified = now;
            save_container(&mut s, &a, &c, &rec)?;
            s.commit()?;
            Ok(container_props(&c, &rec, now))
        })
    }

    fn list_containers(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<ContainerProperties>, BlobError> {
        let (page, limit) =
            limit_of(options).map_err(|reason| BlobError::OutOfRangeQueryParameterValue {
                param: "maxresults",
                reason,
            })?;
        let a = account.as_str().to_owned();
        let start = options.start().to_owned();
        let like = like_prefix(options.prefix.as_deref().unwrap_or(""));
        let include_metadata = options.include_metadata;
        let now = self.now();
        self.pool.run(move |conn| {
            let rows = conn.auto()?.query(
                "SELECT name, record FROM rh_containers
                 WHERE account = $1 AND name >= $2 AND name LIKE $3
                 ORDER BY name LIMIT $4",
                &[&a, &start, &like, &limit],
            )?;
            page_of(&rows, page, |name, r| {
                let rec: ContainerRecord = decode("rh_containers", r.get(1))?;
                let mut props = container_props(&name, &rec, now);
                if !include_metadata {
                    props.metadata.clear();
                }
                Ok(props)
            })
        })
    }

    fn get_container_acl(
        &self,
        account: &AccountName,
        container: &str,
        lease_id: Option<&str>,
    ) -> Result<(ContainerProperties, ContainerAcl), BlobError> {
        check_container(container)?;
        let (a, c, lease_id) = (
            account.as_str().to_owned(),
            container.to_owned(),
            lease_id.map(str::to_owned),
        );
        let now = self.now();
        self.pool.run(move |conn| {
            let mut s = conn.begin()?;
            let rec = get_container(&mut s, &a, &c, false)?;
            rec.lease.check_read(lease_id.as_deref(), now, true)?;
            let acl = match s.query_opt(
                "SELECT acl FROM rh_container_acls WHERE account = $1 AND name = $2",
                &[&a, &c],
            )? {
                Some(r) => decode("rh_container_acls", r.get(0))?,
                None => ContainerAcl::default(),
            };
            Ok((container_props(&c, &rec, now), acl))
        })
    }

    fn set_container_acl(
        &self,
        account: &AccountName,
        container: &str,
        acl: ContainerAcl,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError> {
        check_container(container)?;
        check_acl(&acl)?;
        let (a, c) = (account.as_str().to_owned(), container.to_owned());
        let (conditions, lease_id) = (conditions.clone(), lease_id.map(str::to_owned));
        let (etag, now) = (self.etag(), self.now());
        self.pool.run(move |conn| {
            let mut s = conn.begin()?;
            let mut rec = get_container(&mut s, &a, &c, true)?;
            rec.lease.check_read(lease_id.as_deref(), now, true)?;
            conditions.check_container(rec.last_modified)?;
            rec.etag = etag;
            rec.last_modified = now;
            save_container(&mut s, &a, &c, &rec)?;
            // Bounded by MAX_ACCESS_POLICIES of bounded size: not charged to the quota.
            if acl == ContainerAcl::default() {
                s.execute(
                    "DELETE FROM rh_container_acls WHERE account = $1 AND name = $2",
                    &[&a, &c],
                )?;
            } else {
                s.execute(
                    "INSERT INTO rh_container_acls (account, name, acl) VALUES ($1, $2, $3)
                     ON CONFLICT (account, name) DO UPDATE SET acl = EXCLUDED.acl",
                    &[&a, &c, &encode(&acl)],
                )?;
            }
            s.commit()?;
            Ok(container_props(&c, &rec, now))
        })
    }

    fn lease_container(
        &self,
        account: &AccountName,
        container: &str,
        action: LeaseAction,
    ) -> Result<LeaseOutcome, BlobError> {
        check_container(container)?;
        let (a, c) = (account.as_str().to_owned(), container.to_owned());
        let (id, now) = (self.guid(), self.now());
        self.pool.run(move |conn| {
            let mut s = conn.begin()?;
            let mut rec = get_container(&mut s, &a, &c, true)?;
            let (lease, outcome) = rec.lease.apply(&action, now, || id)?;
            rec.lease = lease;
            save_container(&mut s, &a, &c, &rec)?;
            s.commit()?;
            Ok(outcome)
        })
    }

    fn put_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        body: &mut dyn Read,
        options: PutBlobOptions,
    ) -> Result<BlobProperties, BlobError> {
        self.write_blob(account, container, blob, body, options, None)
    }

    fn copy_blob(
        &self,
        source: BlobRef<'_>,
        dest: BlobRef<'_>,
        options: CopyOptions,
    ) -> Result<BlobProperties, BlobError> {
        // The source's chunks stay readable for the read grace even if the destination is
        // the source itself and its old data is freed by this very write.
        rules::copy_blob(self, source, options, |reader, put, source_url| {
            self.write_blob(
                dest.account,
                dest.container,
                dest.blob,
                reader,
                put,
                Some(source_url),
            )
        })
    }

    fn get_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        options: &GetBlobOptions,
    ) -> Result<BlobRead, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let now = self.now();
        let rec = self.stored_blob(a, c, b)?;
        rec.lease
            .check_read(options.lease_id.as_deref(), now, false)?;
        options
            .conditions
            .check_read(&rec.etag, rec.last_modified)?;
        let (offset, end) = rules::read_range(rec.size, options.range)?;
        let pool = self.pool.clone();
        let mut ahead = ReadAhead::default();
        let reader =
            rules::SegmentReader::new(&rec.segments, offset, end, CHUNK_SIZE, move |data, idx| {
                ahead.fetch(&pool, data, idx)
            });
        Ok(BlobRead {
            properties: blob_props(blob, &rec, now),
            offset,
            len: end - offset,
            reader: Box::new(reader),
        })
    }

    fn get_blob_properties(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<BlobProperties, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let now = self.now();
        let rec = self.stored_blob(a, c, b)?;
        rec.lease.check_read(lease_id, now, false)?;
        conditions.check_read(&rec.etag, rec.last_modified)?;
        Ok(blob_props(blob, &rec, now))
    }

    fn set_blob_metadata(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        metadata: Metadata,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<BlobProperties, BlobError> {
        check_metadata(&metadata)?;
        self.modify_blob(account, container, blob, conditions, lease_id, move |rec| {
            rec.metadata = metadata
        })
    }

    fn set_blob_properties(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        content: ContentSettings,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<BlobProperties, BlobError> {
        // Azure forgets a concluded copy once the blob's properties are set.
        self.modify_blob(account, container, blob, conditions, lease_id, move |rec| {
            rec.content = content;
            rec.copy = None;
        })
    }

    fn delete_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        conditions: &Conditions,
        lease_id: Option<&str>,
    ) -> Result<(), BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let (conditions, lease_id) = (conditions.clone(), lease_id.map(str::to_owned));
        let now = self.now();
        self.pool.run(move |conn| {
            let shard = conn.shard;
            let mut s = conn.begin()?;
            get_container(&mut s, &a, &c, false)?;
            let key = (a.as_str(), c.as_str(), b.as_str());
            let rec = get_blob_record(&mut s, key, true)?
                .ok_or_else(|| BlobError::BlobNotFound(b.clone()))?;
            rec.lease.check_write(lease_id.as_deref(), now, false)?;
            conditions.check_write(Some((&rec.etag, rec.last_modified)), false)?;
            let mut d = drop_uncommitted(&mut s, key, &HashSet::new(), now)?;
            d.remove_item(Resource::Blobs, blob_bytes(&b, &rec));
            accounts::charge::<BlobError>(&mut s, shard, &a, d, &AccountQuota::UNLIMITED)?;
            s.execute(
                "DELETE FROM rh_blobs WHERE account = $1 AND container = $2 AND name = $3",
                &[&a, &c, &b],
            )?;
            let ids: Vec<i64> = rec.segments.iter().map(|s| data_id(s.data_id)).collect();
            free_data(&mut s, &ids, now)?;
            s.commit()?;
            Ok(())
        })
    }

    fn list_blobs(
        &self,
        account: &AccountName,
        container: &str,
        options: &ListOptions,
        delimiter: Option<&str>,
    ) -> Result<Page<BlobListItem>, BlobError> {
        check_container(container)?;
        let mut scan = rules::ListScan::new(options, delimiter)?;
        let (a, c) = (account.as_str().to_owned(), container.to_owned());
        let now = self.now();
        self.pool.run(move |conn| {
            let mut s = conn.auto()?;
            get_container(&mut s, &a, &c, false)?;
            let like = like_prefix(scan.prefix());
            // Keyset reads from the cursor (inclusive), then after the last name read.
            let (mut from, mut inclusive) = (scan.cursor().to_owned(), true);
            'scan: loop {
                let rows = s.query(
                    "SELECT name, record FROM rh_blobs
                     WHERE account = $1 AND container = $2 AND name LIKE $3
                        AND (name > $4 OR ($5 AND name = $4))
                     ORDER BY name LIMIT $6",
                    &[&a, &c, &like, &from, &inclusive, &LIST_CHUNK],
                )?;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    let name: &str = r.get(0);
                    let bytes: &[u8] = r.get(1);
                    match scan.push(name, || decode_blob(bytes), now)? {
                        rules::Step::Next => {
                            from = name.to_owned();
                            inclusive = false;
                        }
                        rules::Step::Jump => {
                            from = scan.cursor().to_owned();
                            inclusive = true;
                            continue 'scan;
                        }
                        rules::Step::Done => break 'scan,
                    }
                }
            }
            Ok(scan.finish())
        })
    }

    fn lease_blob(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        action: LeaseAction,
    ) -> Result<LeaseOutcome, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let (id, now) = (self.guid(), self.now());
        self.pool.run(move |conn| {
            let mut s = conn.begin()?;
            get_container(&mut s, &a, &c, false)?;
            let key = (a.as_str(), c.as_str(), b.as_str());
            let mut rec = get_blob_record(&mut s, key, true)?
                .ok_or_else(|| BlobError::BlobNotFound(b.clone()))?;
            let (lease, outcome) = rec.lease.apply(&action, now, || id)?;
            rec.lease = lease;
            save_blob(&mut s, key, &rec, true)?;
            s.commit()?;
            Ok(outcome)
        })
    }

    fn put_block(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        block_id: &[u8],
        body: &mut dyn Read,
        lease_id: Option<&str>,
    ) -> Result<(), BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        rules::check_block_id(block_id)?;
        let uploaded = Arc::new(self.upload(account.as_str(), body, MAX_BLOCK_BYTES)?);
        let (a, c, b, id) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
            block_id.to_vec(),
        );
        let lease_id = lease_id.map(str::to_owned);
        let (now, quota) = (self.now(), self.quotas.quota(&a));
        let up = uploaded.clone();
        self.finish_upload(&uploaded, move |conn| {
            retried("the block", || {
                let shard = conn.shard;
                let mut s = conn.begin_locked(container_key(&a, &c), true)?;
                get_container(&mut s, &a, &c, false)?;
                let key = (a.as_str(), c.as_str(), b.as_str());
                let existing = get_blob_record(&mut s, key, true)?;
                check_blob_lease(existing.as_ref(), lease_id.as_deref(), now)?;
                let committed_len = existing.as_ref().and_then(|r| {
                    r.segments
                        .iter()
                        .find_map(|s| s.block_id.as_ref().map(Vec::len))
                });
                let uncommitted_len = s
                    .query_opt(
                        "SELECT octet_length(id) FROM rh_blocks
                         WHERE account = $1 AND container = $2 AND blob = $3 LIMIT 1",
                        &[&a, &c, &b],
                    )?
                    .map(|r| r.get::<_, i32>(0).max(0).unsigned_abs() as usize);
                let replaced = s
                    .query_opt(
                        "SELECT data_id, len FROM rh_blocks
                         WHERE account = $1 AND container = $2 AND blob = $3 AND id = $4
                         FOR UPDATE",
                        &[&a, &c, &b, &id],
                    )?
                    .map(|r| BlockRecord {
                        data_id: r.get::<_, i64>(0).max(0).unsigned_abs(),
                        len: r.get::<_, i64>(1).max(0).unsigned_abs(),
                    });
                let count = if replaced.is_none() {
                    let n: i64 = s
                        .query_one(
                            "SELECT count(*) FROM rh_blocks
                             WHERE account = $1 AND container = $2 AND blob = $3",
                            &[&a, &c, &b],
                        )?
                        .get(0);
                    n.max(0).unsigned_abs() as usize
                } else {
                    0
                };
                rules::check_new_block(
                    &id,
                    committed_len,
                    uncommitted_len,
                    replaced.is_some(),
                    count,
                )?;
                let mut d = Delta::item(
                    Resource::Bytes,
                    block_bytes(
                        &id,
                        &BlockRecord {
                            data_id: 0,
                            len: up.len,
                        },
                    ),
                );
                if let Some(old) = &replaced {
                    d.remove_item(Resource::Bytes, block_bytes(&id, old));
                    free_data(&mut s, &[data_id(old.data_id)], now)?;
                }
                d.add_bytes(-up.precharged());
                accounts::charge::<Attempt>(&mut s, shard, &a, d, &quota)?;
                let data = up.materialize(&mut s)?;
                let len = i64::try_from(up.len).unwrap_or(i64::MAX);
                if replaced.is_some() {
                    s.execute(
                        "UPDATE rh_blocks SET data_id = $5, len = $6
                         WHERE account = $1 AND container = $2 AND blob = $3 AND id = $4",
                        &[&a, &c, &b, &id, &data, &len],
                    )?;
                } else {
                    s.execute(
                        "INSERT INTO rh_blocks (account, container, blob, id, data_id, len)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&a, &c, &b, &id, &data, &len],
                    )?;
                }
                s.commit()?;
                Ok(())
            })
        })
    }

    fn put_block_list(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        blocks: &[BlockRef],
        options: PutBlobOptions,
    ) -> Result<BlobProperties, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        check_metadata(&options.metadata)?;
        if blocks.len() > MAX_COMMITTED_BLOCKS {
            return Err(BlobError::BlockCountExceedsLimit(
                "at most 50,000 committed blocks",
            ));
        }
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        let blocks = blocks.to_vec();
        let (etag, now, quota) = (self.etag(), self.now(), self.quotas.quota(&a));
        self.pool.run(move |conn| {
            retried("the blob", || {
                let shard = conn.shard;
                let mut s = conn.begin_locked(container_key(&a, &c), true)?;
                get_container(&mut s, &a, &c, false)?;
                let key = (a.as_str(), c.as_str(), b.as_str());
                let existing = get_blob_record(&mut s, key, true)?;
                rules::check_overwrite(existing.as_ref(), &b, &options, now)?;
                let mut staged: HashMap<Vec<u8>, BlockRecord> = HashMap::new();
                for r in s.query(
                    "SELECT id, data_id, len FROM rh_blocks
                     WHERE account = $1 AND container = $2 AND blob = $3 FOR UPDATE",
                    &[&a, &c, &b],
                )? {
                    staged.insert(
                        r.get(0),
                        BlockRecord {
                            data_id: r.get::<_, i64>(1).max(0).unsigned_abs(),
                            len: r.get::<_, i64>(2).max(0).unsigned_abs(),
                        },
                    );
                }
                let segments = rules::resolve_block_list(&blocks, existing.as_ref(), |id| {
                    Ok(staged.get(id).map(|r| BlockRecord {
                        data_id: r.data_id,
                        len: r.len,
                    }))
                })?;
                let size = segments.iter().map(|s| s.len).sum();
                let keep: HashSet<u64> = segments.iter().map(|s| s.data_id).collect();
                let rec = BlobRecord {
                    etag: etag.clone(),
                    created: existing.as_ref().map_or(now, |r| r.created),
                    last_modified: now,
                    content: options.content.clone(),
                    metadata: options.metadata.clone(),
                    segments,
                    size,
                    lease: existing
                        .as_ref()
                        .map(|r| r.lease.clone())
                        .unwrap_or_default(),
                    copy: None,
                };
                let mut d = Delta::item(Resource::Blobs, blob_bytes(&b, &rec));
                if let Some(old) = &existing {
                    d.remove_item(Resource::Blobs, blob_bytes(&b, old));
                    let old_ids: Vec<i64> = old
                        .segments
                        .iter()
                        .filter(|s| !keep.contains(&s.data_id))
                        .map(|s| data_id(s.data_id))
                        .collect();
                    free_data(&mut s, &old_ids, now)?;
                }
                // Every uncommitted block goes: into the blob, or freed.
                d = d.plus(drop_uncommitted(&mut s, key, &keep, now)?);
                accounts::charge::<Attempt>(&mut s, shard, &a, d, &quota)?;
                save_blob(&mut s, key, &rec, existing.is_some())?;
                s.commit()?;
                Ok(blob_props(&b, &rec, now))
            })
        })
    }

    fn get_block_list(
        &self,
        account: &AccountName,
        container: &str,
        blob: &str,
        which: BlockListType,
    ) -> Result<BlockList, BlobError> {
        check_container(container)?;
        check_blob(blob)?;
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        self.pool.run(move |conn| {
            let mut s = conn.begin()?;
            get_container(&mut s, &a, &c, false)?;
            let existing = get_blob_record(&mut s, (&a, &c, &b), false)?;
            let mut list = BlockList::default();
            if which != BlockListType::Uncommitted
                && let Some(r) = &existing
            {
                list.committed = r
                    .segments
                    .iter()
                    .filter_map(|s| s.block_id.clone().map(|id| (id, s.len)))
                    .collect();
            }
            let rows = if which == BlockListType::Committed {
                s.query(
                    "SELECT id, len FROM rh_blocks
                     WHERE account = $1 AND container = $2 AND blob = $3 LIMIT 1",
                    &[&a, &c, &b],
                )?
            } else {
                s.query(
                    "SELECT id, len FROM rh_blocks
                     WHERE account = $1 AND container = $2 AND blob = $3 ORDER BY id",
                    &[&a, &c, &b],
                )?
            };
            let any_uncommitted = !rows.is_empty();
            if which != BlockListType::Committed {
                list.uncommitted = rows
                    .iter()
                    .map(|r| (r.get(0), r.get::<_, i64>(1).max(0).unsigned_abs()))
                    .collect();
            }
            if existing.is_none() && !any_uncommitted {
                return Err(BlobError::BlobNotFound(b));
            }
            Ok(list)
        })
    }
}
