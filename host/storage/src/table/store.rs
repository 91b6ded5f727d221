//! The table service on redb.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::*;
use crate::engine::{ENTITIES, TABLES, WriteCtx, decode, encode, get_record};
use crate::names::check_table;
use crate::quota::{Delta, Resource, Usage};
use crate::{RedbStore, StorageError, Timestamp, policies};

#[derive(Serialize, Deserialize, Debug, Clone)]
struct EntityRecord {
    timestamp: Timestamp,
    etag: String,
    properties: Vec<(String, EdmValue)>,
}

fn stored(pk: &str, rk: &str, rec: EntityRecord, select: Option<&[String]>) -> StoredEntity {
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
fn entity_bytes(pk: &str, rk: &str, stored_len: usize) -> u64 {
    (pk.len() + rk.len() + stored_len) as u64
}

/// Adds what tables store to `usage` (for [`crate::RedbStore::recount_usage`]).
pub(crate) fn count_usage(
    txn: &redb::WriteTransaction,
    usage: &mut HashMap<String, Usage>,
) -> Result<(), StorageError> {
    for entry in txn.open_table(TABLES)?.iter()? {
        let (k, v) = entry?;
        let item = Delta::item(Resource::Tables, v.value().len() as u64);
        usage
            .entry(k.value().0.to_string())
            .or_default()
            .apply(&item);
    }
    for entry in txn.open_table(ENTITIES)?.iter()? {
        let (k, v) = entry?;
        let (a, _, pk, rk) = k.value();
        let item = Delta::item(Resource::Entities, entity_bytes(pk, rk, v.value().len()));
        usage.entry(a.to_string()).or_default().apply(&item);
    }
    Ok(())
}

fn table_key(table: &str) -> String {
    table.to_ascii_lowercase()
}

/// `TableNotFound` unless the table exists (`t` is the lowercase key, `display` the caller's name).
fn ensure_table(
    tables: &impl ReadableTable<(&'static str, &'static str), &'static str>,
    a: &str,
    t: &str,
    display: &str,
) -> Result<(), TableError> {
    if tables.get((a, t))?.is_none() {
        return Err(TableError::TableNotFound(display.to_string()));
    }
    Ok(())
}

fn check_etag(rec: &EntityRecord, if_match: &IfMatch) -> Result<(), TableError> {
    match if_match {
        IfMatch::Any => Ok(()),
        IfMatch::ETag(t) if *t == rec.etag => Ok(()),
        IfMatch::ETag(_) => Err(TableError::UpdateConditionNotSatisfied),
    }
}

/// Applies `ops` (validated) in order against a staged view, then writes the result. Any refusal
/// returns before anything is written.
fn apply_ops(
    ctx: &mut WriteCtx<'_>,
    a: &str,
    t: &str,
    display: &str,
    ops: Vec<TableOp>,
    in_batch: bool,
) -> Result<Vec<Option<String>>, TableError> {
    ensure_table(&ctx.txn.open_table(TABLES)?, a, t, display)?;
    let entities = ctx.txn.open_table(ENTITIES)?;
    // (pk, rk) -> state after the operations so far (None = deleted).
    let mut staged: HashMap<(String, String), Option<EntityRecord>> = HashMap::new();
    // (pk, rk) -> the stored record's length before the operations (None: there was none).
    let mut stored_len: HashMap<(String, String), Option<usize>> = HashMap::new();
    let mut etags = Vec::with_capacity(ops.len());
    for (index, op) in ops.into_iter().enumerate() {
        let (pk, rk) = op.keys();
        let key = (pk.to_string(), rk.to_string());
        let current = match staged.get(&key) {
            Some(s) => s.clone(),
            None => {
                let raw = entities.get((a, t, pk, rk))?;
                stored_len.insert(key.clone(), raw.as_ref().map(|v| v.value().len()));
                match raw {
                    Some(v) => Some(decode::<EntityRecord>("entities", v.value())?),
                    None => None,
                }
            }
        };
        let now = ctx.now;
        let mut fresh = |props: BTreeMap<String, EdmValue>| EntityRecord {
            timestamp: now,
            etag: ctx.ids.weak_etag(),
            properties: props.into_iter().collect(),
        };
        let merged = |old: &EntityRecord, new: BTreeMap<String, EdmValue>| {
            let mut m: BTreeMap<String, EdmValue> = old.properties.iter().cloned().collect();
            m.extend(new);
            m
        };
        let next: Result<Option<EntityRecord>, TableError> = match (op, current) {
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
    drop(entities);
    let mut writes = Vec::with_capacity(staged.len());
    let mut delta = Delta::default();
    for ((pk, rk), state) in staged {
        if let Some(Some(len)) = stored_len.get(&(pk.clone(), rk.clone())) {
            delta.remove_item(Resource::Entities, entity_bytes(&pk, &rk, *len));
        }
        let bytes = state.map(|rec| encode(&rec));
        if let Some(b) = &bytes {
            delta.add_item(Resource::Entities, entity_bytes(&pk, &rk, b.len()));
        }
        writes.push((pk, rk, bytes));
    }
    ctx.charge::<TableError>(a, delta)?;
    // Checks done; from here on the operation only writes.
    let mut entities = ctx.txn.open_table(ENTITIES)?;
    for (pk, rk, bytes) in writes {
        match bytes {
            Some(b) => {
                entities.insert((a, t, pk.as_str(), rk.as_str()), b.as_slice())?;
            }
            None => {
                entities.remove((a, t, pk.as_str(), rk.as_str()))?;
            }
        }
    }
    Ok(etags)
}

fn validate_op(op: &TableOp) -> Result<(), TableError> {
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

impl RedbStore {
    fn run_ops(
        &self,
        account: &AccountName,
        table: &str,
        ops: Vec<TableOp>,
        in_batch: bool,
    ) -> Result<Vec<Option<String>>, TableError> {
        check_table(table)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.engine.write(true, move |ctx| {
            apply_ops(ctx, &a, &t, &display, ops, in_batch)
        })
    }
}

impl TableStore for RedbStore {
    fn create_table(&self, account: &AccountName, table: &str) -> Result<(), TableError> {
        check_table(table)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.engine.write(true, move |ctx| {
            let tables = ctx.txn.open_table(TABLES)?;
            if tables.get((a.as_str(), t.as_str()))?.is_some() {
                return Err(TableError::TableAlreadyExists(display));
            }
            drop(tables);
            let item = Delta::item(Resource::Tables, display.len() as u64);
            ctx.charge::<TableError>(&a, item)?;
            let mut tables = ctx.txn.open_table(TABLES)?;
            tables.insert((a.as_str(), t.as_str()), display.as_str())?;
            Ok(())
        })
    }

    fn delete_table(&self, account: &AccountName, table: &str) -> Result<(), TableError> {
        check_table(table)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.engine.write(true, move |ctx| {
            let (a, t) = (a.as_str(), t.as_str());
            let Some(name_len) = ctx
                .txn
                .open_table(TABLES)?
                .remove((a, t))?
                .map(|v| v.value().len())
            else {
                return Err(TableError::TableNotFound(display));
            };
            let mut freed = Delta::default();
            freed.remove_item(Resource::Tables, name_len as u64);
            // Table names cannot contain NUL, so "t\0" bounds exactly the keys of table t.
            let end = format!("{t}\0");
            ctx.txn.open_table(ENTITIES)?.retain_in(
                (a, t, "", "")..(a, end.as_str(), "", ""),
                |k, v| {
                    freed.remove_item(Resource::Entities, entity_bytes(k.2, k.3, v.len()));
                    false
                },
            )?;
            ctx.charge::<TableError>(a, freed)?;
            policies::remove(ctx, a, policies::Kind::Table, t)?;
            Ok(())
        })
    }

    fn get_table_acl(
        &self,
        account: &AccountName,
        table: &str,
    ) -> Result<Vec<AccessPolicy>, TableError> {
        check_table(table)?;
        let txn = self.engine.read()?;
        let (a, t) = (account.as_str(), table_key(table));
        if txn
            .open_table(TABLES)
            .map_err(StorageError::from)?
            .get((a, t.as_str()))
            .map_err(StorageError::from)?
            .is_none()
        {
            return Err(TableError::TableNotFound(table.to_string()));
        }
        Ok(policies::read(&txn, a, policies::Kind::Table, &t)?)
    }

    fn set_table_acl(
        &self,
        account: &AccountName,
        table: &str,
        list: Vec<AccessPolicy>,
    ) -> Result<(), TableError> {
        check_table(table)?;
        crate::blob::check_policies(&list, "raud").map_err(TableError::InvalidAcl)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.engine.write(true, move |ctx| {
            if ctx
                .txn
                .open_table(TABLES)?
                .get((a.as_str(), t.as_str()))?
                .is_none()
            {
                return Err(TableError::TableNotFound(display));
            }
            policies::write(ctx, &a, policies::Kind::Table, &t, &list)?;
            Ok(())
        })
    }

    fn list_tables(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<String>, TableError> {
        let page_size = options
            .page_size()
            .map_err(|r| TableError::InvalidQuery(r.into()))?;
        let txn = self.engine.read()?;
        let tables = txn.open_table(TABLES).map_err(StorageError::from)?;
        let a = account.as_str();
        let prefix = table_key(options.prefix.as_deref().unwrap_or(""));
        let start = table_key(options.start()).max(prefix.clone());
        let mut items = Vec::new();
        let mut next_marker = None;
        for entry in tables.range((a, start.as_str())..)? {
            let (k, v) = entry?;
            let (acct, key) = k.value();
            if acct != a || !key.starts_with(&prefix) {
                break;
            }
            if items.len() == page_size {
                next_marker = Some(v.value().to_string());
                break;
            }
            items.push(v.value().to_string());
        }
        Ok(Page { items, next_marker })
    }

    fn execute(
        &self,
        account: &AccountName,
        table: &str,
        op: TableOp,
    ) -> Result<Option<String>, TableError> {
        validate_op(&op)?;
        Ok(self
            .run_ops(account, table, vec![op], false)?
            .pop()
            .flatten())
    }

    fn submit_transaction(
        &self,
        account: &AccountName,
        table: &str,
        ops: Vec<TableOp>,
    ) -> Result<Vec<Option<String>>, TableError> {
        if ops.is_empty() || ops.len() > MAX_BATCH_OPERATIONS {
            return Err(TableError::InvalidBatchSize(ops.len()));
        }
        let pk = ops[0].keys().0.to_string();
        let mut rows = HashSet::new();
        for (index, op) in ops.iter().enumerate() {
            let (p, r) = op.keys();
            if p != pk {
                return Err(TableError::CommandsInBatchActOnDifferentPartitions);
            }
            if !rows.insert(r.to_string()) {
                return Err(TableError::InvalidDuplicateRow(r.to_string()));
            }
            validate_op(op).map_err(|e| TableError::BatchOperationFailed {
                index,
                source: Box::new(e),
            })?;
        }
        self.run_ops(account, table, ops, true)
    }

    fn get_entity(
        &self,
        account: &AccountName,
        table: &str,
        partition_key: &str,
        row_key: &str,
        select: Option<&[String]>,
    ) -> Result<StoredEntity, TableError> {
        check_table(table)?;
        let txn = self.engine.read()?;
        let (a, t) = (account.as_str(), table_key(table));
        ensure_table(&txn.open_table(TABLES)?, a, &t, table)?;
        let entities = txn.open_table(ENTITIES)?;
        let rec: EntityRecord = get_record::<(&str, &str, &str, &str), _>(
            &entities,
            "entities",
            (a, t.as_str(), partition_key, row_key),
        )?
        .ok_or(TableError::ResourceNotFound)?;
        Ok(stored(partition_key, row_key, rec, select))
    }

    fn query_entities(
        &self,
        account: &AccountName,
        table: &str,
        query: &Query,
    ) -> Result<QueryPage, TableError> {
        check_table(table)?;
        let top = match query.top {
            None => MAX_PAGE_ENTITIES as usize,
            Some(n) if (1..=MAX_PAGE_ENTITIES).contains(&n) => n as usize,
            Some(n) => {
                return Err(TableError::InvalidQuery(format!(
                    "$top must be 1..=1000, got {n}"
                )));
            }
        };
        let filter = query.filter.as_deref().map(Filter::parse).transpose()?;
        let range = filter.as_ref().map(Filter::key_range).unwrap_or_default();
        let txn = self.engine.read()?;
        let (a, t) = (account.as_str(), table_key(table));
        let t = t.as_str();
        ensure_table(&txn.open_table(TABLES)?, a, t, table)?;
        let entities = txn.open_table(ENTITIES)?;

        // Where the scan starts: the key range's lower end, or the continuation if later.
        let bound_str = |b: &Bound<String>| match b {
            Bound::Included(s) | Bound::Excluded(s) => s.clone(),
            Bound::Unbounded => String::new(),
        };
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
        let past_hi = |b: &Bound<String>, v: &str| match b {
            Bound::Included(h) => v > h.as_str(),
            Bound::Excluded(h) => v >= h.as_str(),
            Bound::Unbounded => false,
        };
        let mut out = Vec::new();
        let mut out_bytes = 0usize;
        let mut continuation = None;
        let rows = entities.range((a, t, start.0.as_str(), start.1.as_str())..)?;
        for (scanned, entry) in rows.enumerate() {
            let (k, v) = entry?;
            let (acct, tab, pk, rk) = k.value();
            if acct != a || tab != t || past_hi(&range.pk_hi, pk) {
                break;
            }
            if fixed.is_some() && past_hi(&range.rk_hi, rk) {
                break;
            }
            if out.len() == top || scanned == MAX_SCAN_PER_PAGE || out_bytes >= MAX_PAGE_BYTES {
                continuation = Some((pk.to_string(), rk.to_string()));
                break;
            }
            let rec: EntityRecord = decode("entities", v.value())?;
            let e = stored(pk, rk, rec, None);
            if filter.as_ref().is_none_or(|f| f.matches(&e)) {
                let e = match &query.select {
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
                out_bytes += v.value().len();
                out.push(e);
            }
        }
        Ok(QueryPage {
            entities: out,
            continuation,
        })
    }
}
