//! The table service on PostgreSQL.
//!
//! An operation or entity group transaction locks the rows it names (`FOR UPDATE`), runs the
//! rules both engines share ([`rolehost_storage::table::rules::plan`]) on what it read, and
//! writes the result, all in one transaction. A row that is missing cannot be locked: when a
//! racing writer inserts it first, our insert fails on the primary key and the whole
//! operation runs again on what is there now (at most [`crate::error::MAX_ATTEMPTS`] times), so an insert
//! racing another insert answers `EntityAlreadyExists`, and a transaction is all or nothing.
//!
//! Queries push the key range into SQL and evaluate the rest of `$filter` with the shared
//! evaluator ([`rolehost_storage::table::rules::QueryScan`]), so both engines answer alike.
//! Rows come in chunks of at most [`SCAN_CHUNK_ROWS`] and [`SCAN_CHUNK_BYTES`].

use std::collections::HashMap;

use rolehost_storage::blob::AccessPolicy;
use rolehost_storage::names::check_table;
use rolehost_storage::table::rules::{self, table_key};
use rolehost_storage::table::*;
use rolehost_storage::{AccountName, Delta, ListOptions, Page, Resource, TableError};

use crate::error::retried;
use crate::pool::{Conn, Session};
use crate::queue::{like_prefix, limit_of, page_of};
use crate::settings::{PolicyKind, read_policies, remove_policies, write_policies};
use crate::{PgStore, accounts, lock_key};

/// Most rows one read of a query scan brings back.
pub const SCAN_CHUNK_ROWS: i64 = 256;

/// Bytes of records after which one read of a query scan stops (it always brings one row):
/// what a scan holds at once, whatever size the entities are.
pub const SCAN_CHUNK_BYTES: i64 = 4 << 20;

type Attempt = crate::error::Attempt<TableError>;

const TABLE_EXISTS: &str = "SELECT 1 FROM rh_tables WHERE account = $1 AND key = $2";

fn ensure_table(s: &mut Session<'_>, a: &str, t: &str, display: &str) -> Result<(), TableError> {
    match s.query_opt(TABLE_EXISTS, &[&a, &t])? {
        Some(_) => Ok(()),
        None => Err(TableError::TableNotFound(display.to_string())),
    }
}

/// One attempt at `ops` on table `t` (validated), in one transaction.
#[allow(clippy::too_many_arguments, reason = "one operation's whole context")]
fn attempt(
    c: &mut Conn,
    a: &str,
    t: &str,
    display: &str,
    ops: &[TableOp],
    in_batch: bool,
    etags: &[String],
    now: rolehost_storage::Timestamp,
    quota: &rolehost_storage::AccountQuota,
) -> Result<Vec<Option<String>>, Attempt> {
    let shard = c.shard;
    let mut s = c.begin_locked(lock_key("table", a, t), true)?;
    ensure_table(&mut s, a, t, display)?;
    let keys = rules::keys_of(ops);
    let mut current = HashMap::new();
    // A transaction's keys share one partition (checked): lock them in one statement, in
    // the index's order, so two transactions never wait on each other crosswise.
    let pk = keys.first().map(|k| k.0.clone()).unwrap_or_default();
    let rks: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    for row in s.query(
        "SELECT rk, record FROM rh_entities
         WHERE account = $1 AND tbl = $2 AND pk = $3 AND rk = ANY($4)
         ORDER BY rk FOR UPDATE",
        &[&a, &t, &pk, &rks],
    )? {
        current.insert(
            (pk.clone(), row.get::<_, String>(0)),
            row.get::<_, Vec<u8>>(1),
        );
    }
    let mut next = etags.iter().cloned();
    let plan = rules::plan(
        ops.to_vec(),
        in_batch,
        now,
        || next.next().unwrap_or_default(),
        &current,
        "rh_entities",
    )?;
    accounts::charge::<Attempt>(&mut s, shard, a, plan.delta, quota)?;
    for w in &plan.writes {
        match (&w.bytes, w.existed) {
            (Some(b), true) => {
                s.execute(
                    "UPDATE rh_entities SET record = $5
                     WHERE account = $1 AND tbl = $2 AND pk = $3 AND rk = $4",
                    &[&a, &t, &w.pk, &w.rk, b],
                )?;
            }
            (Some(b), false) => {
                s.execute(
                    "INSERT INTO rh_entities (account, tbl, pk, rk, record)
                     VALUES ($1, $2, $3, $4, $5)",
                    &[&a, &t, &w.pk, &w.rk, b],
                )?;
            }
            (None, true) => {
                s.execute(
                    "DELETE FROM rh_entities
                     WHERE account = $1 AND tbl = $2 AND pk = $3 AND rk = $4",
                    &[&a, &t, &w.pk, &w.rk],
                )?;
            }
            (None, false) => {}
        }
    }
    s.commit()?;
    Ok(plan.etags)
}

impl PgStore {
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
        let etags: Vec<String> = ops
            .iter()
            .map(|_| rolehost_storage::ids::weak_etag(self.next_seq(), self.salt))
            .collect();
        let now = self.now();
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            retried(&format!("the entities of table {display}"), || {
                attempt(c, &a, &t, &display, &ops, in_batch, &etags, now, &quota)
            })
        })
    }
}

impl TableStore for PgStore {
    fn create_table(&self, account: &AccountName, table: &str) -> Result<(), TableError> {
        check_table(table)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            let shard = c.shard;
            let mut s = c.begin()?;
            if s.query_opt(TABLE_EXISTS, &[&a, &t])?.is_some() {
                return Err(TableError::TableAlreadyExists(display));
            }
            let item = Delta::item(Resource::Tables, display.len() as u64);
            accounts::charge::<TableError>(&mut s, shard, &a, item, &quota)?;
            let inserted = s.execute(
                "INSERT INTO rh_tables (account, key, name) VALUES ($1, $2, $3)
                 ON CONFLICT (account, key) DO NOTHING",
                &[&a, &t, &display],
            )?;
            if inserted == 0 {
                return Err(TableError::TableAlreadyExists(display));
            }
            s.commit()?;
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
        let quota = self.quotas.quota(&a);
        self.pool.run(move |c| {
            let shard = c.shard;
            let mut s = c.begin_locked(lock_key("table", &a, &t), false)?;
            let name: String = s
                .query_opt(
                    "DELETE FROM rh_tables WHERE account = $1 AND key = $2 RETURNING name",
                    &[&a, &t],
                )?
                .ok_or(TableError::TableNotFound(display))?
                .get(0);
            let removed = s.query_one(
                "WITH d AS (
                    DELETE FROM rh_entities WHERE account = $1 AND tbl = $2
                    RETURNING octet_length(pk) + octet_length(rk) + octet_length(record) AS n)
                 SELECT count(*), coalesce(sum(n), 0)::bigint FROM d",
                &[&a, &t],
            )?;
            let (count, bytes): (i64, i64) = (removed.get(0), removed.get(1));
            let mut freed = Delta::default();
            freed.remove_item(Resource::Tables, name.len() as u64);
            freed.remove_items(
                Resource::Entities,
                count.max(0).unsigned_abs(),
                bytes.max(0).unsigned_abs(),
            );
            accounts::charge::<TableError>(&mut s, shard, &a, freed, &quota)?;
            remove_policies(&mut s, &a, PolicyKind::Table, &t)?;
            s.commit()?;
            Ok(())
        })
    }

    fn get_table_acl(
        &self,
        account: &AccountName,
        table: &str,
    ) -> Result<Vec<AccessPolicy>, TableError> {
        check_table(table)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.pool.run(move |c| {
            let mut s = c.begin()?;
            ensure_table(&mut s, &a, &t, &display)?;
            Ok(read_policies(&mut s, &a, PolicyKind::Table, &t)?)
        })
    }

    fn set_table_acl(
        &self,
        account: &AccountName,
        table: &str,
        list: Vec<AccessPolicy>,
    ) -> Result<(), TableError> {
        check_table(table)?;
        rolehost_storage::blob::check_policies(&list, "raud").map_err(TableError::InvalidAcl)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.pool.run(move |c| {
            let mut s = c.begin()?;
            s.query_opt(
                "SELECT 1 FROM rh_tables WHERE account = $1 AND key = $2 FOR SHARE",
                &[&a, &t],
            )?
            .ok_or(TableError::TableNotFound(display))?;
            write_policies(&mut s, &a, PolicyKind::Table, &t, &list)?;
            s.commit()?;
            Ok(())
        })
    }

    fn list_tables(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<String>, TableError> {
        let (page, limit) = limit_of(options).map_err(|r| TableError::InvalidQuery(r.into()))?;
        let a = account.as_str().to_owned();
        let prefix = table_key(options.prefix.as_deref().unwrap_or(""));
        let start = table_key(options.start()).max(prefix.clone());
        let like = like_prefix(&prefix);
        self.pool.run(move |c| {
            let rows = c.auto()?.query(
                "SELECT name FROM rh_tables WHERE account = $1 AND key >= $2 AND key LIKE $3
                 ORDER BY key LIMIT $4",
                &[&a, &start, &like, &limit],
            )?;
            page_of(&rows, page, |name, _| Ok::<_, TableError>(name))
        })
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
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        let (pk, rk) = (partition_key.to_owned(), row_key.to_owned());
        let select = select.map(<[String]>::to_vec);
        self.pool.run(move |c| {
            // One round trip: whether the table exists, and the record.
            let row = c.auto()?.query_one(
                "SELECT (SELECT true FROM rh_tables WHERE account = $1 AND key = $2),
                    (SELECT record FROM rh_entities
                     WHERE account = $1 AND tbl = $2 AND pk = $3 AND rk = $4)",
                &[&a, &t, &pk, &rk],
            )?;
            if row.get::<_, Option<bool>>(0).is_none() {
                return Err(TableError::TableNotFound(display));
            }
            let bytes: Vec<u8> = row
                .get::<_, Option<Vec<u8>>>(1)
                .ok_or(TableError::ResourceNotFound)?;
            let rec = rules::decode_record("rh_entities", &bytes)?;
            Ok(rules::stored(&pk, &rk, rec, select.as_deref()))
        })
    }

    fn query_entities(
        &self,
        account: &AccountName,
        table: &str,
        query: &Query,
    ) -> Result<QueryPage, TableError> {
        check_table(table)?;
        let mut scan = rules::QueryScan::new(query)?;
        let (a, t, display) = (
            account.as_str().to_owned(),
            table_key(table),
            table.to_owned(),
        );
        self.pool.run(move |c| {
            let mut s = c.auto()?;
            ensure_table(&mut s, &a, &t, &display)?;
            let (pk0, rk0) = scan.start();
            let (mut pk, mut rk) = (pk0.to_owned(), rk0.to_owned());
            let pk_hi = scan.pk_upper().map(str::to_owned);
            let rk_hi = scan.rk_upper().map(str::to_owned);
            let mut first = true;
            let mut read = 0usize;
            'scan: loop {
                // Keyset reads: from the start inclusive, then after the last row read.
                let rows = s.query(
                    "SELECT pk, rk, record FROM (
                        SELECT pk, rk, record, octet_length(record) AS len,
                            sum(octet_length(record)) OVER (ORDER BY pk, rk) AS run
                        FROM (SELECT pk, rk, record FROM rh_entities
                              WHERE account = $1 AND tbl = $2
                                AND ((pk, rk) > ($3, $4) OR ($5 AND pk = $3 AND rk = $4))
                                AND ($6::text IS NULL OR pk <= $6)
                                AND ($7::text IS NULL OR rk <= $7)
                              ORDER BY pk, rk LIMIT $8) AS chunk) AS sized
                     WHERE run - len < $9 ORDER BY pk, rk",
                    &[
                        &a,
                        &t,
                        &pk,
                        &rk,
                        &first,
                        &pk_hi,
                        &rk_hi,
                        &SCAN_CHUNK_ROWS,
                        &SCAN_CHUNK_BYTES,
                    ],
                )?;
                first = false;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    let (rpk, rrk, bytes): (&str, &str, &[u8]) = (r.get(0), r.get(1), r.get(2));
                    read += 1;
                    if !scan.push(rpk, rrk, bytes)? || read >= scan.max_rows() {
                        break 'scan;
                    }
                    pk = rpk.to_owned();
                    rk = rrk.to_owned();
                }
            }
            Ok(scan.finish())
        })
    }
}
