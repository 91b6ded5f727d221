//! The blob service on redb.
//!
//! Content lives in [`CHUNKS`] under a data id; a blob record lists its segments (one per
//! committed block, or one for a Put Blob). Every data id is owned by exactly one place (a blob's
//! segments or one uncommitted block), so freeing is local. Bodies larger than one chunk are
//! streamed in non-durable commits under a [`PENDING`] data id, then published by the durable
//! commit of the operation itself; a crash in between leaves only pending data, removed at open.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::Arc;

use md5::{Digest, Md5};
use redb::ReadableTable;

use super::rules::{
    BlobRecord, BlockRecord, ContainerRecord, Segment, blob_bytes, blob_props, block_bytes,
    check_acl, check_blob_lease, container_bytes, container_props, decode_blob, read_full,
};
use super::*;
use crate::engine::{
    BLOBS, BLOCKS, CHUNK_SIZE, CHUNKS, CONTAINER_ACLS, CONTAINERS, PENDING, WriteCtx, decode,
    delete_data, encode, get_record,
};
use crate::names::{check_blob, check_container, check_metadata};
use crate::quota::{Delta, Resource, Usage, metadata_bytes};
use crate::{RedbStore, StorageError};

/// Chunks carried by one intermediate commit of a streamed upload (8 MiB of buffer).
const UPLOAD_BATCH_CHUNKS: usize = 8;
/// Above every block id (ids are at most 64 bytes): the end of a blob's range in [`BLOCKS`].
const BLOCK_ID_END: [u8; MAX_BLOCK_ID_BYTES + 1] = [0xFF; MAX_BLOCK_ID_BYTES + 1];

/// Frees what a blob's uncommitted blocks hold, read without changing them (they are removed
/// after the charge).
fn uncommitted_delta(ctx: &WriteCtx<'_>, a: &str, c: &str, b: &str) -> Result<Delta, BlobError> {
    let blocks = ctx.txn.open_table(BLOCKS)?;
    let mut d = Delta::default();
    for entry in blocks.range((a, c, b, &[][..])..=(a, c, b, &BLOCK_ID_END[..]))? {
        let (k, v) = entry?;
        let rec: BlockRecord = decode("blocks", v.value())?;
        d.remove_item(Resource::Bytes, block_bytes(k.value().3, &rec));
    }
    Ok(d)
}

/// Adds what blob data of `a` stores to `usage` (for [`crate::RedbStore::recount_usage`]).
pub(crate) fn count_usage(
    txn: &redb::WriteTransaction,
    usage: &mut std::collections::HashMap<String, Usage>,
) -> Result<(), StorageError> {
    let mut charge = |account: &str, r: Resource, content: u64| {
        usage
            .entry(account.to_string())
            .or_default()
            .apply(&Delta::item(r, content));
    };
    for entry in txn.open_table(CONTAINERS)?.iter()? {
        let (k, v) = entry?;
        let (a, c) = k.value();
        let rec: ContainerRecord = decode("containers", v.value())?;
        charge(a, Resource::Containers, container_bytes(c, &rec.metadata));
    }
    for entry in txn.open_table(BLOBS)?.iter()? {
        let (k, v) = entry?;
        let (a, _, b) = k.value();
        let rec = decode_blob(v.value())?;
        charge(a, Resource::Blobs, blob_bytes(b, &rec));
    }
    for entry in txn.open_table(BLOCKS)?.iter()? {
        let (k, v) = entry?;
        let (a, _, _, id) = k.value();
        let rec: BlockRecord = decode("blocks", v.value())?;
        charge(a, Resource::Bytes, block_bytes(id, &rec));
    }
    Ok(())
}

/// A request body after it has been read: small ones travel inside the final operation, large
/// ones were already streamed into pending chunks.
enum Body {
    Small(Vec<u8>),
    /// Streamed into `data_id`'s chunks and charged to `account` as they came.
    Staged {
        data_id: u64,
        account: String,
    },
}

struct Uploaded {
    body: Body,
    len: u64,
    md5: [u8; 16],
}

fn get_container(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    a: &str,
    c: &str,
) -> Result<ContainerRecord, BlobError> {
    get_record::<(&str, &str), _>(table, "containers", (a, c))?
        .ok_or_else(|| BlobError::ContainerNotFound(c.to_string()))
}

fn get_blob_record(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    a: &str,
    c: &str,
    b: &str,
) -> Result<Option<BlobRecord>, BlobError> {
    match table.get((a, c, b)).map_err(StorageError::from)? {
        Some(v) => Ok(Some(decode_blob(v.value())?)),
        None => Ok(None),
    }
}

/// What Put Blob, Put Block List and Copy Blob check before they replace a blob: its container
/// exists, its lease and the conditions allow the write. The blob as it is, if it is.
fn check_overwrite(
    ctx: &WriteCtx<'_>,
    (a, c, b): (&str, &str, &str),
    options: &PutBlobOptions,
) -> Result<Option<BlobRecord>, BlobError> {
    get_container(&ctx.txn.open_table(CONTAINERS)?, a, c)?;
    let existing = get_blob_record(&ctx.txn.open_table(BLOBS)?, a, c, b)?;
    rules::check_overwrite(existing.as_ref(), b, options, ctx.now)?;
    Ok(existing)
}

/// Writes the body's chunks (small body) or claims the pending data (staged body).
fn materialize(ctx: &mut WriteCtx<'_>, body: Body) -> Result<u64, BlobError> {
    match body {
        Body::Small(bytes) => {
            let data_id = ctx.ids.next_seq();
            if !bytes.is_empty() {
                ctx.txn
                    .open_table(CHUNKS)?
                    .insert((data_id, 0), bytes.as_slice())?;
            }
            Ok(data_id)
        }
        Body::Staged { data_id, .. } => {
            ctx.txn.open_table(PENDING)?.remove(data_id)?;
            Ok(data_id)
        }
    }
}

/// Frees the data of `segments` that is not in `keep`.
fn free_segments(
    ctx: &WriteCtx<'_>,
    segments: &[Segment],
    keep: &HashSet<u64>,
) -> Result<(), BlobError> {
    let mut chunks = ctx.txn.open_table(CHUNKS)?;
    let mut freed = HashSet::new();
    for s in segments {
        if !keep.contains(&s.data_id) && freed.insert(s.data_id) {
            delete_data(&mut chunks, s.data_id)?;
        }
    }
    Ok(())
}

/// Removes a blob's uncommitted blocks, freeing their data unless it is in `keep`.
fn drop_uncommitted(
    ctx: &WriteCtx<'_>,
    a: &str,
    c: &str,
    b: &str,
    keep: &HashSet<u64>,
) -> Result<(), BlobError> {
    let mut blocks = ctx.txn.open_table(BLOCKS)?;
    let mut values = Vec::new();
    blocks.retain_in((a, c, b, &[][..])..=(a, c, b, &BLOCK_ID_END[..]), |_, v| {
        values.push(v.to_vec());
        false
    })?;
    let mut chunks = ctx.txn.open_table(CHUNKS)?;
    for v in values {
        let rec: BlockRecord = decode("blocks", &v)?;
        if !keep.contains(&rec.data_id) {
            delete_data(&mut chunks, rec.data_id)?;
        }
    }
    Ok(())
}

impl RedbStore {
    /// Reads `body` (at most `limit` bytes). Bodies up to one chunk stay in memory; larger ones
    /// are streamed into pending chunks with non-durable commits.
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
        let data_id: u64 = self.engine.write(false, |ctx| -> Result<u64, BlobError> {
            let id = ctx.ids.next_seq();
            ctx.txn.open_table(PENDING)?.insert(id, ())?;
            Ok(id)
        })?;
        let mut charged = 0;
        let result = self.stream_chunks(
            account,
            data_id,
            (first, carry),
            body,
            limit,
            &mut md5,
            &mut charged,
        );
        match result {
            Ok(len) => Ok(Uploaded {
                body: Body::Staged {
                    data_id,
                    account: account.to_string(),
                },
                len,
                md5: md5.finalize().into(),
            }),
            Err(e) => {
                self.discard_data(account, data_id, charged);
                Err(e)
            }
        }
    }

    /// Streams the rest of a body into `data_id`'s chunks, charging them to `account` as they
    /// are written (`charged` says how much, for a refund).
    ///
    /// Pipelined: while one batch is being committed, the next is read from the body, and a
    /// thread of the upload's own hashes them (MD5 costs as much CPU as all the rest), so the
    /// network, the hash and the disk work at once. At most three batches are held
    /// ([`UPLOAD_BATCH_CHUNKS`] each: one being read, one being hashed, one being committed;
    /// the hash thread takes a batch only when it is done with the last), and one is in flight
    /// at a time, so batches are written in order.
    #[allow(clippy::too_many_arguments)]
    fn stream_chunks(
        &self,
        account: &str,
        data_id: u64,
        (first, carry): (Vec<u8>, Vec<u8>),
        body: &mut dyn Read,
        limit: u64,
        md5: &mut Md5,
        charged: &mut u64,
    ) -> Result<u64, BlobError> {
        let mut in_flight: Option<InFlight> = None;
        let hasher = std::mem::replace(md5, Md5::new());
        let (result, hashed) = std::thread::scope(|scope| {
            let (to_hash, batches) = std::sync::mpsc::sync_channel::<Batch>(0);
            let hashing = scope.spawn(move || {
                let mut h = hasher;
                for batch in batches {
                    for c in batch.iter() {
                        h.update(c);
                    }
                }
                h
            });
            let result = self.stream_batches(
                account,
                data_id,
                (first, carry),
                body,
                limit,
                &to_hash,
                charged,
                &mut in_flight,
            );
            drop(to_hash);
            (result, hashing.join())
        });
        match hashed {
            Ok(h) => *md5 = h,
            Err(_) => {
                return Err(
                    StorageError::Internal("the upload's hash thread panicked".into()).into(),
                );
            }
        }
        // Whatever happened, the batch still in flight is settled before returning, so that a
        // refund (which follows it in commit order) counts exactly what was written.
        let settled = settle(&mut in_flight, charged);
        let total = result?;
        settled?;
        Ok(total)
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_batches(
        &self,
        account: &str,
        data_id: u64,
        (first, carry): (Vec<u8>, Vec<u8>),
        body: &mut dyn Read,
        limit: u64,
        to_hash: &std::sync::mpsc::SyncSender<Batch>,
        charged: &mut u64,
        in_flight: &mut Option<InFlight>,
    ) -> Result<u64, BlobError> {
        let mut next_index: u32 = 0;
        let mut total: u64 = 0;
        let mut pending_chunks = vec![first];
        let mut carry = carry;
        loop {
            // Fill the batch (while the previous one commits): the carried-over bytes start
            // the next chunk.
            let mut eof = false;
            while pending_chunks.len() < UPLOAD_BATCH_CHUNKS && !eof {
                let mut chunk = std::mem::take(&mut carry);
                let want = CHUNK_SIZE - chunk.len();
                read_full(body, &mut chunk, want)?;
                eof = chunk.len() < CHUNK_SIZE;
                if !chunk.is_empty() {
                    pending_chunks.push(chunk);
                }
            }
            total += pending_chunks.iter().map(|c| c.len() as u64).sum::<u64>();
            if total > limit {
                return Err(BlobError::RequestEntityTooLarge { size: total, limit });
            }
            let batch: Batch = Arc::new(std::mem::take(&mut pending_chunks));
            to_hash
                .send(batch.clone())
                .map_err(|_| StorageError::Internal("the upload's hash thread is gone".into()))?;
            let start = next_index;
            next_index += u32::try_from(batch.len()).unwrap_or(u32::MAX);
            let bytes: u64 = batch.iter().map(|c| c.len() as u64).sum();
            let owner = account.to_string();
            settle(in_flight, charged)?;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            self.engine.submit(
                false,
                move |ctx| -> Result<(), BlobError> {
                    let mut d = Delta::default();
                    d.add_bytes(i64::try_from(bytes).unwrap_or(i64::MAX));
                    ctx.charge::<BlobError>(&owner, d)?;
                    let mut chunks = ctx.txn.open_table(CHUNKS)?;
                    for (i, c) in batch.iter().enumerate() {
                        chunks.insert((data_id, start + i as u32), c.as_slice())?;
                    }
                    Ok(())
                },
                move |r| {
                    let _ = tx.send(r);
                },
            );
            *in_flight = Some(InFlight { bytes, answer: rx });
            if eof {
                return Ok(total);
            }
        }
    }

    /// Frees pending data after a refused or failed upload, and refunds the `charged` bytes to
    /// `account`. Non-durable: if the process dies first, the pending entry makes the next open
    /// remove it (and count usage again).
    fn discard_data(&self, account: &str, data_id: u64, charged: u64) {
        let account = account.to_string();
        let r = self
            .engine
            .write(false, move |ctx| -> Result<(), StorageError> {
                let mut refund = Delta::default();
                refund.add_bytes(-i64::try_from(charged).unwrap_or(i64::MAX));
                ctx.charge::<StorageError>(&account, refund)?;
                delete_data(&mut ctx.txn.open_table(CHUNKS)?, data_id)?;
                ctx.txn.open_table(PENDING)?.remove(data_id)?;
                Ok(())
            });
        if let Err(e) = r {
            tracing::warn!(data_id, error = %e, "could not discard upload data; it is removed at next open");
        }
    }

    /// Runs the final operation of an upload; on refusal, frees the staged data.
    fn finish_upload<R: Send + 'static>(
        &self,
        staged: Option<(String, u64, u64)>,
        op: impl FnOnce(&mut WriteCtx<'_>) -> Result<R, BlobError> + Send + 'static,
    ) -> Result<R, BlobError> {
        let r = self.engine.write(true, op);
        if let (Err(_), Some((account, data_id, len))) = (&r, staged) {
            self.discard_data(&account, data_id, len);
        }
        r
    }
}

/// The chunks of one batch of an upload, shared by the hash thread and the commit.
type Batch = Arc<Vec<Vec<u8>>>;

/// A batch of an upload being committed: its size, and where its answer comes.
struct InFlight {
    bytes: u64,
    answer: std::sync::mpsc::Receiver<Result<(), BlobError>>,
}

/// Waits for the batch in flight, if any; adds what it charged to `charged`.
fn settle(in_flight: &mut Option<InFlight>, charged: &mut u64) -> Result<(), BlobError> {
    let Some(f) = in_flight.take() else {
        return Ok(());
    };
    f.answer
        .recv()
        .unwrap_or(Err(BlobError::Storage(StorageError::Closed)))?;
    *charged += f.bytes;
    Ok(())
}

/// The staged data of an upload: its account, data id and the bytes charged for it.
fn staged_id(u: &Uploaded) -> Option<(String, u64, u64)> {
    match &u.body {
        Body::Staged { data_id, account } => Some((account.clone(), *data_id, u.len)),
        Body::Small(_) => None,
    }
}

/// What an upload has charged already (its streamed chunks).
fn precharged(u: &Uploaded) -> i64 {
    match u.body {
        Body::Staged { .. } => i64::try_from(u.len).unwrap_or(i64::MAX),
        Body::Small(_) => 0,
    }
}

impl BlobStore for RedbStore {
    fn create_container(
        &self,
        account: &AccountName,
        container: &str,
        metadata: Metadata,
    ) -> Result<ContainerProperties, BlobError> {
        check_container(container)?;
        check_metadata(&metadata)?;
        let (a, c) = (account.as_str().to_owned(), container.to_owned());
        self.engine.write(true, move |ctx| {
            let containers = ctx.txn.open_table(CONTAINERS)?;
            if containers.get((a.as_str(), c.as_str()))?.is_some() {
                return Err(BlobError::ContainerAlreadyExists(c));
            }
            drop(containers);
            let item = Delta::item(Resource::Containers, container_bytes(&c, &metadata));
            ctx.charge::<BlobError>(&a, item)?;
            let mut containers = ctx.txn.open_table(CONTAINERS)?;
            let rec = ContainerRecord {
                etag: ctx.ids.etag(),
                last_modified: ctx.now,
                metadata,
                lease: LeaseRecord::Available,
            };
            containers.insert((a.as_str(), c.as_str()), encode(&rec).as_slice())?;
            Ok(container_props(&c, &rec, ctx.now))
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
        self.engine.write(true, move |ctx| {
            let (a, c) = (a.as_str(), c.as_str());
            let mut containers = ctx.txn.open_table(CONTAINERS)?;
            let rec = get_container(&containers, a, c)?;
            rec.lease.check_write(lease_id.as_deref(), ctx.now, true)?;
            conditions.check_container(rec.last_modified)?;
            containers.remove((a, c))?;
            drop(containers);
            ctx.txn.open_table(CONTAINER_ACLS)?.remove((a, c))?;
            let mut freed_usage = Delta::default();
            freed_usage.remove_item(Resource::Containers, container_bytes(c, &rec.metadata));
            // Names cannot contain NUL, so "c\0" bounds exactly the keys of container c.
            let end = format!("{c}\0");
            let mut blob_values = Vec::new();
            ctx.txn
                .open_table(BLOBS)?
                .retain_in((a, c, "")..(a, end.as_str(), ""), |k, v| {
                    blob_values.push((k.2.to_string(), v.to_vec()));
                    false
                })?;
            let mut block_values = Vec::new();
            ctx.txn.open_table(BLOCKS)?.retain_in(
                (a, c, "", &[][..])..(a, end.as_str(), "", &[][..]),
                |k, v| {
                    block_values.push((k.3.to_vec(), v.to_vec()));
                    false
                },
            )?;
            let mut chunks = ctx.txn.open_table(CHUNKS)?;
            let mut freed = HashSet::new();
            for (name, v) in blob_values {
                let rec = decode_blob(&v)?;
                freed_usage.remove_item(Resource::Blobs, blob_bytes(&name, &rec));
                for s in rec.segments {
                    if freed.insert(s.data_id) {
                        delete_data(&mut chunks, s.data_id)?;
                    }
                }
            }
            for (id, v) in block_values {
                let rec: BlockRecord = decode("blocks", &v)?;
                freed_usage.remove_item(Resource::Bytes, block_bytes(&id, &rec));
                delete_data(&mut chunks, rec.data_id)?;
            }
            drop(chunks);
            // Only frees: never refused.
            ctx.charge::<BlobError>(a, freed_usage)
        })
    }

    fn get_container_properties(
        &self,
        account: &AccountName,
        container: &str,
        lease_id: Option<&str>,
    ) -> Result<ContainerProperties, BlobError> {
        check_container(container)?;
        let now = self.engine.now();
        let txn = self.engine.read()?;
        let rec = get_container(&txn.open_table(CONTAINERS)?, account.as_str(), container)?;
        rec.lease.check_read(lease_id, now, true)?;
        Ok(container_props(container, &rec, now))
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
        self.engine.write(true, move |ctx| {
            let containers = ctx.txn.open_table(CONTAINERS)?;
            let mut rec = get_container(&containers, &a, &c)?;
            rec.lease.check_read(lease_id.as_deref(), ctx.now, true)?;
            drop(containers);
            let mut d = Delta::default();
            d.add_bytes(metadata_bytes(&metadata) as i64 - metadata_bytes(&rec.metadata) as i64);
            ctx.charge::<BlobError>(&a, d)?;
            let mut containers = ctx.txn.open_table(CONTAINERS)?;
            rec.metadata = metadata;
            rec.etag = ctx.ids.etag();
            rec.last_modified = ctx.now;
            containers.insert((a.as_str(), c.as_str()), encode(&rec).as_slice())?;
            Ok(container_props(&c, &rec, ctx.now))
        })
    }

    fn list_containers(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<ContainerProperties>, BlobError> {
        let page_size =
            options
                .page_size()
                .map_err(|reason| BlobError::OutOfRangeQueryParameterValue {
                    param: "maxresults",
                    reason,
                })?;
        let now = self.engine.now();
        let txn = self.engine.read()?;
        let containers = txn.open_table(CONTAINERS)?;
        let a = account.as_str();
        let prefix = options.prefix.as_deref().unwrap_or("");
        let mut items = Vec::new();
        let mut next_marker = None;
        for entry in containers.range((a, options.start())..)? {
            let (k, v) = entry?;
            let (acct, name) = k.value();
            if acct != a || !name.starts_with(prefix) {
                break;
            }
            if items.len() == page_size {
                next_marker = Some(name.to_string());
                break;
            }
            let mut props = container_props(name, &decode("containers", v.value())?, now);
            if !options.include_metadata {
                props.metadata.clear();
            }
            items.push(props);
        }
        Ok(Page { items, next_marker })
    }

    fn get_container_acl(
        &self,
        account: &AccountName,
        container: &str,
        lease_id: Option<&str>,
    ) -> Result<(ContainerProperties, ContainerAcl), BlobError> {
        check_container(container)?;
        let now = self.engine.now();
        let txn = self.engine.read()?;
        let a = account.as_str();
        let rec = get_container(&txn.open_table(CONTAINERS)?, a, container)?;
        rec.lease.check_read(lease_id, now, true)?;
        let acl = get_record::<(&str, &str), ContainerAcl>(
            &txn.open_table(CONTAINER_ACLS)?,
            "container_acls",
            (a, container),
        )?
        .unwrap_or_default();
        Ok((container_props(container, &rec, now), acl))
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
        self.engine.write(true, move |ctx| {
            let mut containers = ctx.txn.open_table(CONTAINERS)?;
            let mut rec = get_container(&containers, &a, &c)?;
            rec.lease.check_read(lease_id.as_deref(), ctx.now, true)?;
            conditions.check_container(rec.last_modified)?;
            rec.etag = ctx.ids.etag();
            rec.last_modified = ctx.now;
            containers.insert((a.as_str(), c.as_str()), encode(&rec).as_slice())?;
            drop(containers);
            // Bounded by MAX_ACCESS_POLICIES of bounded size: not charged to the quota.
            let mut acls = ctx.txn.open_table(CONTAINER_ACLS)?;
            if acl == ContainerAcl::default() {
                acls.remove((a.as_str(), c.as_str()))?;
            } else {
                acls.insert((a.as_str(), c.as_str()), encode(&acl).as_slice())?;
            }
            Ok(container_props(&c, &rec, ctx.now))
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
        self.engine.write(true, move |ctx| {
            let mut containers = ctx.txn.open_table(CONTAINERS)?;
            let mut rec = get_container(&containers, &a, &c)?;
            let (lease, outcome) = rec.lease.apply(&action, ctx.now, || ctx.ids.guid())?;
            rec.lease = lease;
            containers.insert((a.as_str(), c.as_str()), encode(&rec).as_slice())?;
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
        // The source at one version: its read transaction keeps that version's chunks while
        // the destination is written, even when the destination is the source itself.
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
        let now = self.engine.now();
        let txn = self.engine.read()?;
        let (a, c) = (account.as_str(), container);
        get_container(&txn.open_table(CONTAINERS)?, a, c)?;
        let rec = get_blob_record(&txn.open_table(BLOBS)?, a, c, blob)?
            .ok_or_else(|| BlobError::BlobNotFound(blob.to_string()))?;
        rec.lease
            .check_read(options.lease_id.as_deref(), now, false)?;
        options
            .conditions
            .check_read(&rec.etag, rec.last_modified)?;
        let (offset, end) = rules::read_range(rec.size, options.range)?;
        let chunks = txn.open_table(CHUNKS)?;
        let reader = rules::SegmentReader::new(
            &rec.segments,
            offset,
            end,
            CHUNK_SIZE,
            move |data_id, idx| {
                let value = chunks
                    .get((data_id, idx))
                    .map_err(io::Error::other)?
                    .ok_or_else(|| {
                        io::Error::other(format!("missing chunk {idx} of data {data_id}"))
                    })?;
                Ok(value.value().to_vec())
            },
        );
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
        let now = self.engine.now();
        let txn = self.engine.read()?;
        get_container(&txn.open_table(CONTAINERS)?, account.as_str(), container)?;
        let rec = get_blob_record(&txn.open_table(BLOBS)?, account.as_str(), container, blob)?
            .ok_or_else(|| BlobError::BlobNotFound(blob.to_string()))?;
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
        self.engine.write(true, move |ctx| {
            let (ak, ck, bk) = (a.as_str(), c.as_str(), b.as_str());
            get_container(&ctx.txn.open_table(CONTAINERS)?, ak, ck)?;
            let blobs = ctx.txn.open_table(BLOBS)?;
            let rec = get_blob_record(&blobs, ak, ck, bk)?
                .ok_or_else(|| BlobError::BlobNotFound(b.clone()))?;
            rec.lease.check_write(lease_id.as_deref(), ctx.now, false)?;
            conditions.check_write(Some((&rec.etag, rec.last_modified)), false)?;
            drop(blobs);
            let mut d = uncommitted_delta(ctx, ak, ck, bk)?;
            d.remove_item(Resource::Blobs, blob_bytes(bk, &rec));
            ctx.charge::<BlobError>(ak, d)?;
            ctx.txn.open_table(BLOBS)?.remove((ak, ck, bk))?;
            free_segments(ctx, &rec.segments, &HashSet::new())?;
            drop_uncommitted(ctx, ak, ck, bk, &HashSet::new())
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
        let now = self.engine.now();
        let txn = self.engine.read()?;
        let (a, c) = (account.as_str(), container);
        get_container(&txn.open_table(CONTAINERS)?, a, c)?;
        let blobs = txn.open_table(BLOBS)?;
        'scan: loop {
            let cursor = scan.cursor().to_string();
            for entry in blobs.range((a, c, cursor.as_str())..)? {
                let (k, v) = entry?;
                let (acct, cont, name) = k.value();
                if acct != a || cont != c {
                    break 'scan;
                }
                match scan.push(name, || decode_blob(v.value()), now)? {
                    rules::Step::Next => {}
                    rules::Step::Jump => continue 'scan,
                    rules::Step::Done => break 'scan,
                }
            }
            break;
        }
        Ok(scan.finish())
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
        self.engine.write(true, move |ctx| {
            get_container(&ctx.txn.open_table(CONTAINERS)?, &a, &c)?;
            let mut blobs = ctx.txn.open_table(BLOBS)?;
            let mut rec = get_blob_record(&blobs, &a, &c, &b)?
                .ok_or_else(|| BlobError::BlobNotFound(b.clone()))?;
            let (lease, outcome) = rec.lease.apply(&action, ctx.now, || ctx.ids.guid())?;
            rec.lease = lease;
            blobs.insert(
                (a.as_str(), c.as_str(), b.as_str()),
                encode(&rec).as_slice(),
            )?;
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
        let uploaded = self.upload(account.as_str(), body, MAX_BLOCK_BYTES)?;
        let staged = staged_id(&uploaded);
        let (a, c, b, id) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
            block_id.to_vec(),
        );
        let lease_id = lease_id.map(str::to_owned);
        self.finish_upload(staged, move |ctx| {
            let (ak, ck, bk) = (a.as_str(), c.as_str(), b.as_str());
            get_container(&ctx.txn.open_table(CONTAINERS)?, ak, ck)?;
            let existing = get_blob_record(&ctx.txn.open_table(BLOBS)?, ak, ck, bk)?;
            check_blob_lease(existing.as_ref(), lease_id.as_deref(), ctx.now)?;
            let committed_len = existing.as_ref().and_then(|r| {
                r.segments
                    .iter()
                    .find_map(|s| s.block_id.as_ref().map(Vec::len))
            });
            let blocks = ctx.txn.open_table(BLOCKS)?;
            let range = (ak, ck, bk, &[][..])..=(ak, ck, bk, &BLOCK_ID_END[..]);
            let uncommitted_len = match blocks.range(range.clone())?.next() {
                Some(entry) => Some(entry?.0.value().3.len()),
                None => None,
            };
            let replaced: Option<BlockRecord> = get_record::<(&str, &str, &str, &[u8]), _>(
                &blocks,
                "blocks",
                (ak, ck, bk, id.as_slice()),
            )?;
            let count = if replaced.is_none() {
                blocks.range(range)?.count()
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
            drop(blocks);
            let precharged = precharged(&uploaded);
            let Uploaded { body, len, .. } = uploaded;
            let mut d = Delta::item(
                Resource::Bytes,
                block_bytes(&id, &BlockRecord { data_id: 0, len }),
            );
            if let Some(old) = &replaced {
                d.remove_item(Resource::Bytes, block_bytes(&id, old));
            }
            d.add_bytes(-precharged);
            ctx.charge::<BlobError>(ak, d)?;
            let data_id = materialize(ctx, body)?;
            if let Some(old) = replaced {
                delete_data(&mut ctx.txn.open_table(CHUNKS)?, old.data_id)?;
            }
            let rec = BlockRecord { data_id, len };
            ctx.txn
                .open_table(BLOCKS)?
                .insert((ak, ck, bk, id.as_slice()), encode(&rec).as_slice())?;
            Ok(())
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
        self.engine.write(true, move |ctx| {
            let (ak, ck, bk) = (a.as_str(), c.as_str(), b.as_str());
            let existing = check_overwrite(ctx, (ak, ck, bk), &options)?;
            let staged_table = ctx.txn.open_table(BLOCKS)?;
            let segments = rules::resolve_block_list(&blocks, existing.as_ref(), |id| {
                Ok(get_record::<(&str, &str, &str, &[u8]), _>(
                    &staged_table,
                    "blocks",
                    (ak, ck, bk, id),
                )?)
            })?;
            drop(staged_table);
            let size = segments.iter().map(|s| s.len).sum();
            let rec = BlobRecord {
                etag: String::new(),
                created: existing.as_ref().map_or(ctx.now, |r| r.created),
                last_modified: ctx.now,
                content: options.content,
                metadata: options.metadata,
                segments,
                size,
                lease: LeaseRecord::default(),
                copy: None,
            };
            let mut d = Delta::item(Resource::Blobs, blob_bytes(bk, &rec));
            if let Some(old) = &existing {
                d.remove_item(Resource::Blobs, blob_bytes(bk, old));
            }
            // Every uncommitted block goes: into the blob, or freed.
            d = d.plus(uncommitted_delta(ctx, ak, ck, bk)?);
            ctx.charge::<BlobError>(ak, d)?;
            // Checks done; from here on the operation only writes.
            let BlobRecord {
                content,
                metadata,
                segments,
                created,
                ..
            } = rec;
            let keep: HashSet<u64> = segments.iter().map(|s| s.data_id).collect();
            if let Some(old) = &existing {
                free_segments(ctx, &old.segments, &keep)?;
            }
            drop_uncommitted(ctx, ak, ck, bk, &keep)?;
            let rec = BlobRecord {
                etag: ctx.ids.etag(),
                created,
                last_modified: ctx.now,
                content,
                metadata,
                segments,
                size,
                lease: existing.map(|r| r.lease).unwrap_or_default(),
                copy: None,
            };
            ctx.txn
                .open_table(BLOBS)?
                .insert((ak, ck, bk), encode(&rec).as_slice())?;
            Ok(blob_props(bk, &rec, ctx.now))
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
        let txn = self.engine.read()?;
        let (a, c) = (account.as_str(), container);
        get_container(&txn.open_table(CONTAINERS)?, a, c)?;
        let existing = get_blob_record(&txn.open_table(BLOBS)?, a, c, blob)?;
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
        let blocks = txn.open_table(BLOCKS)?;
        let mut any_uncommitted = false;
        for entry in blocks.range((a, c, blob, &[][..])..=(a, c, blob, &BLOCK_ID_END[..]))? {
            let (k, v) = entry?;
            any_uncommitted = true;
            if which == BlockListType::Committed {
                break;
            }
            let rec: BlockRecord = decode("blocks", v.value())?;
            list.uncommitted.push((k.value().3.to_vec(), rec.len));
        }
        if existing.is_none() && !any_uncommitted {
            return Err(BlobError::BlobNotFound(blob.to_string()));
        }
        Ok(list)
    }
}

impl RedbStore {
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
        let uploaded = self.upload(account.as_str(), body, MAX_PUT_BLOB_BYTES)?;
        let staged = staged_id(&uploaded);
        let (a, c, b) = (
            account.as_str().to_owned(),
            container.to_owned(),
            blob.to_owned(),
        );
        self.finish_upload(staged, move |ctx| {
            let (ak, ck, bk) = (a.as_str(), c.as_str(), b.as_str());
            let existing = check_overwrite(ctx, (ak, ck, bk), &options)?;
            let precharged = precharged(&uploaded);
            let Uploaded { body, len, md5 } = uploaded;
            let mut content = options.content;
            if content.content_md5.is_none() {
                content.content_md5 = Some(md5);
            }
            let mut rec = BlobRecord {
                etag: String::new(),
                created: existing.as_ref().map_or(ctx.now, |r| r.created),
                last_modified: ctx.now,
                content,
                metadata: options.metadata,
                segments: if len > 0 {
                    vec![Segment {
                        block_id: None,
                        data_id: 0,
                        len,
                    }]
                } else {
                    vec![]
                },
                size: len,
                lease: LeaseRecord::default(),
                copy: copy_source.map(|source| CopyInfo {
                    id: String::new(),
                    source,
                    completed: ctx.now,
                    bytes: len,
                }),
            };
            let mut d = Delta::item(Resource::Blobs, blob_bytes(bk, &rec));
            if let Some(old) = &existing {
                d.remove_item(Resource::Blobs, blob_bytes(bk, old));
            }
            d = d.plus(uncommitted_delta(ctx, ak, ck, bk)?);
            d.add_bytes(-precharged);
            ctx.charge::<BlobError>(ak, d)?;
            // Checks done; from here on the operation only writes.
            let data_id = materialize(ctx, body)?;
            if let Some(old) = &existing {
                free_segments(ctx, &old.segments, &HashSet::new())?;
            }
            drop_uncommitted(ctx, ak, ck, bk, &HashSet::new())?;
            rec.etag = ctx.ids.etag();
            if let Some(copy) = &mut rec.copy {
                copy.id = ctx.ids.guid();
            }
            for s in &mut rec.segments {
                s.data_id = data_id;
            }
            rec.lease = existing.map(|r| r.lease).unwrap_or_default();
            ctx.txn
                .open_table(BLOBS)?
                .insert((ak, ck, bk), encode(&rec).as_slice())?;
            Ok(blob_props(bk, &rec, ctx.now))
        })
    }

    /// A metadata or properties write: conditions and lease checked, new ETag and Last-Modified.
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
        self.engine.write(true, move |ctx| {
            get_container(&ctx.txn.open_table(CONTAINERS)?, &a, &c)?;
            let blobs = ctx.txn.open_table(BLOBS)?;
            let mut rec = get_blob_record(&blobs, &a, &c, &b)?
                .ok_or_else(|| BlobError::BlobNotFound(b.clone()))?;
            rec.lease.check_write(lease_id.as_deref(), ctx.now, false)?;
            conditions.check_write(Some((&rec.etag, rec.last_modified)), false)?;
            let before = blob_bytes(&b, &rec);
            change(&mut rec);
            drop(blobs);
            let mut d = Delta::default();
            d.add_bytes(blob_bytes(&b, &rec) as i64 - before as i64);
            ctx.charge::<BlobError>(&a, d)?;
            let mut blobs = ctx.txn.open_table(BLOBS)?;
            rec.etag = ctx.ids.etag();
            rec.last_modified = ctx.now;
            blobs.insert(
                (a.as_str(), c.as_str(), b.as_str()),
                encode(&rec).as_slice(),
            )?;
            Ok(blob_props(&b, &rec, ctx.now))
        })
    }
}
