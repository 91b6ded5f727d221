//! What every engine's table service does the same way: the stored record, the checks, how a
//! list of operations becomes writes ([`plan`]), and how a query page is cut from rows in key
//! order ([`QueryScan`]). An engine only reads and writes records by key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::*;
use crate::quota::{Delta, Resource};
use crate::{StorageError, Timestamp};

/// An entity as every engine stores it (postcard-encoded): the same bytes count against the
/// quota on either engine.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct EntityRecord {
    /// When it was last written.
    pub timestamp: Timestamp,
    /// Its ETag.
    pub etag: String,
    /// Its properties, in name order.
    pub properties: Vec<(String, EdmValue)>,
}

/// The stored form of a record.
pub fn encode_record(rec: &EntityRecord) -> Vec<u8> {
    // postcard to a Vec cannot fail for plain data.
    postcard::to_allocvec(rec).unwrap_or_default()
}

/// A record from its stored form.
pub fn decode_record(table: &'static str, bytes: &[u8]) -> Result<EntityRecord, StorageError> {
    postcard::from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// The entity a record holds, with only the `select`ed properties (all when `None`).
pub fn stored(pk: &str, rk: &str, rec: EntityRecord, select: Option<&[String]>) -> StoredEntity {
    let properties = rec
        .properties
        .into_iter()
        .filter(|(name, _)| select.is_none_or(|s| s.iter().any(|x| x == name)))
        .collect();
    StoredEntity {
        partition_key: pk.into(),
        row_key: rk.into(),
        timestamp: rec.timestamp,
        etag: rec.etag,
        properties,
    }
}

/// What an entity holds beside [`crate::quota::ITEM_BYTES`] ([`crate::quota`]): its keys and
/// its stored record.
pub fn entity_bytes(pk: &str, rk: &str, stored_len: usize) -> u64 {
    (pk.len() + rk.len() + stored_len) as u64
}

/// The key a table is kept under: table names compare ignoring case.
pub fn table_key(table: &str) -> String {
    table.to_ascii_lowercase()
}

fn check_etag(rec: &EntityRecord, if_match: &IfMatch) -> Result<(), TableError> {
    match if_match {
        IfMatch::Any => Ok(()),
        IfMatch::ETag(t) if *t == rec.etag => Ok(()),
        IfMatch::ETag(_) => Err(TableError::UpdateConditionNotSatisfied),
    }
}

/// Checks one operation's entity or keys.
pub fn validate_op(op: &TableOp) -> Result<(), TableError> {
    match op {
        TableOp::Insert(e)
        | TableOp::Update { entity: e, .. }
        | TableOp::Upsert { entity: e, .. } => e.validate(),
        TableOp::Delete {
            partition_key,
            row_key,
            ..
        } => {
            crate::names::check_key(partition_key)?;
            crate::names::check_key(row_key)?;
            Ok(())
        }
    }
}

/// Checks an entity group transaction before anything is read: its size, one partition, each
/// row once, each operation valid.
pub fn validate_batch(ops: &[TableOp]) -> Result<(), TableError> {
    if ops.is_empty() || ops.len() > MAX_BATCH_OPERATIONS {
        return Err(TableError::InvalidBatchSize(ops.len()));
    }
    let pk = ops[0].keys().0;
    let mut rows = HashSet::new();
    for (index, op) in ops.iter().enumerate() {
        let (p, r) = op.keys();
        if p != pk {
            return Err(TableError::CommandsInBatchActOnDifferentPartitions);
        }
        if !rows.insert(r) {
            return Err(TableError::InvalidDuplicateRow(r.to_string()));
        }
        validate_op(op).map_err(|e| TableError::BatchOperationFailed {
            index,
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// The keys every operation of `ops` touches, in order, each once.
pub fn keys_of(ops: &[TableOp]) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for op in ops {
        let (pk, rk) = op.keys();
        if seen.insert((pk, rk)) {
            keys.push((pk.to_string(), rk.to_string()));
        }
    }
    keys
}

/// What a list of operations comes to: the writes to make and what they change in usage.
#[derive(Debug)]
pub struct Plan {
    /// Each operation's new ETag (`None` for a delete).
    pub etags: Vec<Option<String>>,
    /// Each touched entity's new stored form (`None`: deleted), and whether it existed.
    pub writes: Vec<Write>,
    /// The usage change, to charge before writing.
    pub delta: Delta,
}

/// One entity's change.
#[derive(Debug)]
pub struct Write {
    /// PartitionKey.
    pub pk: String,
    /// RowKey.
    pub rk: String,
    /// Its new stored form (`None`: deleted, or never there).
    pub bytes: Option<Vec<u8>>,
    /// Whether it was stored before.
    pub existed: bool,
}

/// Applies `ops` (validated) in order against the records `current` gives (the stored form of
/// each key, `None` if missing), giving each write a fresh ETag from `etag`. A refusal returns
/// before anything is planned; in a batch it names the failing operation.
pub fn plan(
    ops: Vec<TableOp>,
    in_batch: bool,
    now: Timestamp,
    mut etag: impl FnMut() -> String,
    current: &HashMap<(String, String), Vec<u8>>,
    table: &'static str,
) -> Result<Plan, TableError> {
    // (pk, rk) -> state after the operations so far (None = deleted).
    let mut staged: HashMap<(String, String), Option<EntityRecord>> = HashMap::new();
    let mut order = Vec::new();
    let mut etags = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let (pk, rk) = op.keys();
        let key = (pk.to_string(), rk.to_string());
        let now_state = match staged.get(&key) {
            Some(s) => s.clone(),
            None => {
                order.push(key.clone());
                match current.get(&key) {
                    Some(bytes) => Some(decode_record(table, bytes)?),
                    None => None,
                }
            }
        };
        let mut fresh = |props: BTreeMap<String, EdmValue>| EntityRecord {
            timestamp: now,
            etag: etag(),
            properties: props.into_iter().collect(),
        };
        let merged = |old: &EntityRecord, new: BTreeMap<String, EdmValue>| {
            let mut m: BTreeMap<String, EdmValue> = old.properties.iter().cloned().collect();
            m.extend(new);
            m
        };
        let next: Result<Option<EntityRecord>, TableError> = match (op, now_state) {
            (TableOp::Insert(_), Some(_)) => Err(TableError::EntityAlreadyExists),
            (TableOp::Insert(e), None) => Ok(Some(fresh(e.properties))),
            (TableOp::Update { .. }, None) | (TableOp::Delete { .. }, None) => {
                Err(TableError::ResourceNotFound)
            }
            (
                TableOp::Update {
                    entity,
                    mode,
                    if_match,
                },
                Some(old),
            ) => check_etag(&old, &if_match).map(|()| {
                Some(match mode {
                    UpdateMode::Replace => fresh(entity.properties),
                    UpdateMode::Merge => fresh(merged(&old, entity.properties)),
                })
            }),
            (TableOp::Upsert { entity, mode }, old) => Ok(Some(match (mode, old) {
                (UpdateMode::Merge, Some(old)) => fresh(merged(&old, entity.properties)),
                _ => fresh(entity.properties),
            })),
            (TableOp::Delete { if_match, .. }, Some(old)) => {
                check_etag(&old, &if_match).map(|()| None)
            }
        };
        let next = match next {
            Ok(n) => n,
            Err(e) if in_batch => {
                return Err(TableError::BatchOperationFailed {
                    index,
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        };
        etags.push(next.as_ref().map(|r| r.etag.clone()));
        staged.insert(key, next);
    }
    let mut writes = Vec::with_capacity(order.len());
    let mut delta = Delta::default();
    for key in order {
        let state = staged.remove(&key).flatten();
        let (pk, rk) = key;
        let before = current.get(&(pk.clone(), rk.clone())).map(Vec::len);
        if let Some(len) = before {
            delta.remove_item(Resource::Entities, entity_bytes(&pk, &rk, len));
        }
        let bytes = state.map(|rec| encode_record(&rec));
        if let Some(b) = &bytes {
            delta.add_item(Resource::Entities, entity_bytes(&pk, &rk, b.len()));
        }
        writes.push(Write {
            pk,
            rk,
            bytes,
            existed: before.is_some(),
        });
    }
    Ok(Plan {
        etags,
        writes,
        delta,
    })
}

/// `$top` checked: how many entities a page may hold.
pub fn page_top(query: &Query) -> Result<usize, TableError> {
    match query.top {
        None => Ok(MAX_PAGE_ENTITIES as usize),
        Some(n) if (1..=MAX_PAGE_ENTITIES).contains(&n) => Ok(n as usize),
        Some(n) => Err(TableError::InvalidQuery(format!(
            "$top must be 1..=1000, got {n}"
        ))),
    }
}

/// A query page being cut from rows in key order: where the scan starts, where it may stop,
/// and which rows it keeps. An engine reads rows from [`QueryScan::start`] on (and not past
/// [`QueryScan::pk_upper`], for those that can) and feeds them to [`QueryScan::push`] until it
/// says stop.
#[derive(Debug)]
pub struct QueryScan {
    filter: Option<Filter>,
    range: KeyRange,
    fixed: Option<String>,
    select: Option<Vec<String>>,
    top: usize,
    start: (String, String),
    scanned: usize,
    bytes: usize,
    out: Vec<StoredEntity>,
    continuation: Option<(String, String)>,
}

fn bound_str(b: &Bound<String>) -> String {
    match b {
        Bound::Included(s) | Bound::Excluded(s) => s.clone(),
        Bound::Unbounded => String::new(),
    }
}

fn past_hi(b: &Bound<String>, v: &str) -> bool {
    match b {
        Bound::Included(h) => v > h.as_str(),
        Bound::Excluded(h) => v >= h.as_str(),
        Bound::Unbounded => false,
    }
}

impl QueryScan {
    /// Parses and checks `query`.
    pub fn new(query: &Query) -> Result<QueryScan, TableError> {
        let top = page_top(query)?;
        let filter = query.filter.as_deref().map(Filter::parse).transpose()?;
        let range = filter.as_ref().map(Filter::key_range).unwrap_or_default();
        let fixed = range.fixed_partition().map(str::to_owned);
        let mut start = match &fixed {
            Some(pk) => (pk.clone(), bound_str(&range.rk_lo)),
            None => (bound_str(&range.pk_lo), String::new()),
        };
        if let Some(c) = &query.continuation {
            crate::names::check_key(&c.0)
                .map_err(|e| TableError::InvalidQuery(format!("continuation: {e}")))?;
            if *c > start {
                start = c.clone();
            }
        }
        Ok(QueryScan {
            filter,
            range,
            fixed,
            select: query.select.clone(),
            top,
            start,
            scanned: 0,
            bytes: 0,
            out: Vec::new(),
            continuation: None,
        })
    }

    /// The first key to read: (PartitionKey, RowKey), inclusive.
    pub fn start(&self) -> (&str, &str) {
        (&self.start.0, &self.start.1)
    }

    /// The highest PartitionKey that can match (inclusive), if the filter bounds it.
    pub fn pk_upper(&self) -> Option<&str> {
        match &self.range.pk_hi {
            Bound::Included(h) | Bound::Excluded(h) => Some(h),
            Bound::Unbounded => None,
        }
    }

    /// The highest RowKey that can match (inclusive) when the filter fixes the partition.
    pub fn rk_upper(&self) -> Option<&str> {
        match (&self.fixed, &self.range.rk_hi) {
            (Some(_), Bound::Included(h) | Bound::Excluded(h)) => Some(h),
            _ => None,
        }
    }

    /// Most rows a page reads before it ends (its last read only tells where the next starts).
    pub fn max_rows(&self) -> usize {
        MAX_SCAN_PER_PAGE + 1
    }

    /// Takes the next row in key order; `Ok(false)` when the page is complete (read no more).
    pub fn push(&mut self, pk: &str, rk: &str, bytes: &[u8]) -> Result<bool, TableError> {
        if past_hi(&self.range.pk_hi, pk)
            || (self.fixed.is_some() && past_hi(&self.range.rk_hi, rk))
        {
            return Ok(false);
        }
        if self.out.len() == self.top
            || self.scanned == MAX_SCAN_PER_PAGE
            || self.bytes >= MAX_PAGE_BYTES
        {
            self.continuation = Some((pk.to_string(), rk.to_string()));
            return Ok(false);
        }
        self.scanned += 1;
        let rec = decode_record("entities", bytes)?;
        let e = stored(pk, rk, rec, None);
        if self.filter.as_ref().is_none_or(|f| f.matches(&e)) {
            let e = match &self.select {
                Some(sel) => StoredEntity {
                    properties: e
                        .properties
                        .into_iter()
                        .filter(|(n, _)| sel.contains(n))
                        .collect(),
                    ..e
                },
                None => e,
            };
            self.bytes += bytes.len();
            self.out.push(e);
        }
        Ok(true)
    }

    /// The page.
    pub fn finish(self) -> QueryPage {
        QueryPage {
            entities: self.out,
            continuation: self.continuation,
        }
    }
}
