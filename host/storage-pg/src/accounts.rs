//! What each account stores, kept in the same transactions as the data it counts, and the
//! quota every growing write is admitted against ([`rolehost_storage::quota::admit`], the rule
//! the redb engine applies too).
//!
//! One row per account would be a hot row every write of the account updates, serialising
//! their commits (measured: puts fall from thousands a second to about 600). So usage is kept
//! in shards, one row per account and pool connection (`rh_usage.shard`): a connection only
//! ever updates its own row, and what an account stores is the sum of its rows. A row may go
//! negative (a message put through one connection and deleted through another); the sum is
//! exact after any crash, as every change commits with its data.
//!
//! Admission reads the sum without locking it, so writes of one account committing at the
//! same moment on different connections may together pass its quota by at most what they
//! carry: bounded by the pool sizes of the hosts sharing the database times the largest single
//! write. Deletes are never refused.

use rolehost_storage::quota::{QuotaError, admit};
use rolehost_storage::{AccountQuota, Delta, Resource, Usage};

use crate::error::PgError;
use crate::pool::Session;

const READ: &str = "SELECT coalesce(sum(bytes), 0)::bigint, coalesce(sum(containers), 0)::bigint,
    coalesce(sum(blobs), 0)::bigint, coalesce(sum(queues), 0)::bigint,
    coalesce(sum(messages), 0)::bigint, coalesce(sum(tables), 0)::bigint,
    coalesce(sum(entities), 0)::bigint
    FROM rh_usage WHERE account = $1";

const ADD: &str = "INSERT INTO rh_usage
    (account, shard, bytes, containers, blobs, queues, messages, tables, entities)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (account, shard) DO UPDATE SET
    bytes = rh_usage.bytes + EXCLUDED.bytes,
    containers = rh_usage.containers + EXCLUDED.containers,
    blobs = rh_usage.blobs + EXCLUDED.blobs,
    queues = rh_usage.queues + EXCLUDED.queues,
    messages = rh_usage.messages + EXCLUDED.messages,
    tables = rh_usage.tables + EXCLUDED.tables,
    entities = rh_usage.entities + EXCLUDED.entities";

/// What `account` stores (the sum of its shards; never below zero).
pub(crate) fn read(s: &mut Session<'_>, account: &str) -> Result<Usage, PgError> {
    let row = s.query_opt(READ, &[&account])?;
    let mut u = Usage::default();
    if let Some(row) = row {
        for (i, r) in Resource::ALL.into_iter().enumerate() {
            let v: i64 = row.get(i);
            u.set(r, v.max(0).unsigned_abs());
        }
    }
    Ok(u)
}

/// Charges `delta` to `account` on connection `shard`: refused (nothing changes) when it grows
/// a resource past `quota`. Call it after every check and before the first write, inside the
/// operation's transaction.
pub(crate) fn charge<E>(
    s: &mut Session<'_>,
    shard: i32,
    account: &str,
    delta: Delta,
    quota: &AccountQuota,
) -> Result<(), E>
where
    E: From<QuotaError> + From<PgError>,
{
    if delta == Delta::default() {
        return Ok(());
    }
    if delta.0.iter().any(|d| *d > 0) && *quota != AccountQuota::UNLIMITED {
        let used = read(s, account)?;
        admit(account, &used, &delta, quota)?;
    }
    let d = delta.0;
    s.execute(
        ADD,
        &[
            &account, &shard, &d[0], &d[1], &d[2], &d[3], &d[4], &d[5], &d[6],
        ],
    )?;
    Ok(())
}
