//! The table service on redb.

use std::collections::HashMap;

use redb::ReadableTable;

use super::rules::{self, entity_bytes, table_key};
use super::*;
use crate::engine::{ENTITIES, TABLES, WriteCtx};
use crate::names::check_table;
use crate::quota::{Delta, Resource, Usage};
use crate::{RedbStore, StorageError, policies};

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

/// Applies `ops` (validated) in order, all or nothing ([`rules::plan`]); any refusal returns
/// before anything is written.
fn apply_ops(
    ctx: &mut WriteCtx<'_>,
    a: &str,
    t: &str,
    display: &str,
    ops: Vec<TableOp>,
    in_batch: bool,
) -> Result<Vec<Option<String>>, TableError> {
    ensure_table(&ctx.txn.open_table(TABLES)?, a, t, display)?;
    let mut current = HashMap::new();
    {
        let entities = ctx.txn.open_table(ENTITIES)?;
        for (pk, rk) in rules::keys_of(&ops) {
            if let Some(v) = entities.get((a, t, pk.as_str(), rk.as_str()))? {
                current.insert((pk, rk), v.value().to_vec());
            }
        }
    }
    let now = ctx.now;
    let ids = &mut ctx.ids;
    let plan = rules::plan(ops, in_batch, now, || ids.weak_etag(), &current, "entities")?;
    ctx.charge::<TableError>(a, plan.delta)?;
    // Checks done; from here on the operation only writes.
    let mut entities = ctx.txn.open_table(ENTITIES)?;
    for w in plan.writes {
        match w.bytes {
            Some(b) => {
                entities.insert((a, t, w.pk.as_str(), w.rk.as_str()), b.as_slice())?;
            }
            None => {
                entities.remove((a, t, w.pk.as_str(), w.rk.as_str()))?;
            }
        }
    }
    Ok(plan.etags)
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
        rules::validate_op(&op)?;
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
        rules::validate_batch(&ops)?;
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
        let raw = entities
            .get((a, t.as_str(), partition_key, row_key))?
            .ok_or(TableError::ResourceNotFound)?;
        let rec = rules::decode_record("entities", raw.value())?;
        Ok(rules::stored(partition_key, row_key, rec, select))
    }

    fn query_entities(
        &self,
        account: &AccountName,
        table: &str,
        query: &Query,
    ) -> Result<QueryPage, TableError> {
        check_table(table)?;
        let mut scan = rules::QueryScan::new(query)?;
        let txn = self.engine.read()?;
        let (a, t) = (account.as_str(), table_key(table));
        let t = t.as_str();
        ensure_table(&txn.open_table(TABLES)?, a, t, table)?;
        let entities = txn.open_table(ENTITIES)?;
        let (pk0, rk0) = scan.start();
        let (pk0, rk0) = (pk0.to_owned(), rk0.to_owned());
        for entry in entities.range((a, t, pk0.as_str(), rk0.as_str())..)? {
            let (k, v) = entry?;
            let (acct, tab, pk, rk) = k.value();
            if acct != a || tab != t || !scan.push(pk, rk, v.value())? {
                break;
            }
        }
        Ok(scan.finish())
    }
}
