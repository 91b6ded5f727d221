//! Table service: entities keyed by (PartitionKey, RowKey) with typed Edm properties, ETag
//! concurrency, OData `$filter` queries served from key ranges, and entity group transactions.

pub mod datetime;
mod entity;
mod filter;
pub mod rules;
pub(crate) mod store;

pub use entity::{
    EdmValue, Entity, MAX_ENTITY_BYTES, MAX_PROPERTIES, MAX_PROPERTY_BYTES, MAX_PROPERTY_NAME,
    StoredEntity,
};
pub use filter::{CmpOp, Filter, KeyRange, MAX_COMPARISONS, MAX_FILTER_BYTES};

use crate::blob::AccessPolicy;
use crate::{AccountName, ListOptions, Page, TableError};

/// Most entities one query page returns.
pub const MAX_PAGE_ENTITIES: u32 = 1000;
/// Most entities one query page examines before it returns (possibly empty) with a continuation,
/// as Azure's 5-second page limit does: one call's work is bounded whatever the filter.
pub const MAX_SCAN_PER_PAGE: usize = 10_000;
/// Bytes of entities (as stored) after which a page ends with a continuation: 1,000 entities
/// of 1 MiB each made one query page, and so one host call, about 1 GiB. Azure bounds its
/// pages by time; a size bound is what protects a host's memory. A page is at most this plus
/// one entity.
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// Most operations in an entity group transaction.
pub const MAX_BATCH_OPERATIONS: usize = 100;

/// If-Match for updates and deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: unconditional, but the entity must exist.
    Any,
    /// Only if the entity's ETag is this one.
    ETag(String),
}

/// How an update combines with the stored entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateMode {
    /// The new entity replaces the old one whole.
    Replace,
    /// New properties overwrite same-named ones; others are kept.
    Merge,
}

/// One operation, alone or in an entity group transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum TableOp {
    /// Insert (`EntityAlreadyExists` if there).
    Insert(Entity),
    /// Update an existing entity (`ResourceNotFound` if missing, `UpdateConditionNotSatisfied`
    /// on an ETag mismatch).
    Update {
        /// The new entity.
        entity: Entity,
        /// Replace or merge.
        mode: UpdateMode,
        /// The condition.
        if_match: IfMatch,
    },
    /// Insert or replace / insert or merge (no If-Match).
    Upsert {
        /// The new entity.
        entity: Entity,
        /// Replace or merge.
        mode: UpdateMode,
    },
    /// Delete (If-Match required; `*` allowed).
    Delete {
        /// PartitionKey.
        partition_key: String,
        /// RowKey.
        row_key: String,
        /// The condition.
        if_match: IfMatch,
    },
}

impl TableOp {
    /// The (PartitionKey, RowKey) it acts on.
    pub fn keys(&self) -> (&str, &str) {
        match self {
            TableOp::Insert(e)
            | TableOp::Update { entity: e, .. }
            | TableOp::Upsert { entity: e, .. } => (&e.partition_key, &e.row_key),
            TableOp::Delete {
                partition_key,
                row_key,
                ..
            } => (partition_key, row_key),
        }
    }
}

/// A query.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// `$filter`.
    pub filter: Option<String>,
    /// `$select`: only these properties (PartitionKey, RowKey, Timestamp and the ETag are always
    /// returned).
    pub select: Option<Vec<String>>,
    /// `$top`: at most this many entities in the page (1..=1000).
    pub top: Option<u32>,
    /// The (NextPartitionKey, NextRowKey) continuation of a previous page.
    pub continuation: Option<(String, String)>,
}

/// A page of query results.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryPage {
    /// Matching entities in key order.
    pub entities: Vec<StoredEntity>,
    /// Where the next page starts (NextPartitionKey, NextRowKey). A page may be empty and still
    /// carry one; loop until it is `None`.
    pub continuation: Option<(String, String)>,
}

/// The table service, as any engine offers it.
pub trait TableStore: Send + Sync {
    /// Creates a table (names compare ignoring case; `TableAlreadyExists` if there).
    fn create_table(&self, account: &AccountName, table: &str) -> Result<(), TableError>;

    /// Deletes a table and its entities.
    fn delete_table(&self, account: &AccountName, table: &str) -> Result<(), TableError>;

    /// The table's stored access policies (what a table SAS naming one with `si` grants).
    fn get_table_acl(
        &self,
        account: &AccountName,
        table: &str,
    ) -> Result<Vec<AccessPolicy>, TableError>;

    /// Replaces the table's stored access policies ([`crate::blob::check_policies`] with the
    /// letters `raud`; `InvalidXmlDocument` otherwise). They go with the table.
    fn set_table_acl(
        &self,
        account: &AccountName,
        table: &str,
        policies: Vec<AccessPolicy>,
    ) -> Result<(), TableError>;

    /// Lists tables (names as created) in case-insensitive name order.
    fn list_tables(
        &self,
        account: &AccountName,
        options: &ListOptions,
    ) -> Result<Page<String>, TableError>;

    /// Runs one operation; returns the new ETag (`None` for a delete).
    fn execute(
        &self,
        account: &AccountName,
        table: &str,
        op: TableOp,
    ) -> Result<Option<String>, TableError>;

    /// An entity group transaction: 1..=100 operations on one PartitionKey, each entity at most
    /// once, applied in order, all or nothing. A failing operation gives
    /// `BatchOperationFailed { index, .. }` and nothing is applied.
    fn submit_transaction(
        &self,
        account: &AccountName,
        table: &str,
        ops: Vec<TableOp>,
    ) -> Result<Vec<Option<String>>, TableError>;

    /// A point read (`ResourceNotFound` if missing).
    fn get_entity(
        &self,
        account: &AccountName,
        table: &str,
        partition_key: &str,
        row_key: &str,
        select: Option<&[String]>,
    ) -> Result<StoredEntity, TableError>;

    /// A query page.
    fn query_entities(
        &self,
        account: &AccountName,
        table: &str,
        query: &Query,
    ) -> Result<QueryPage, TableError>;
}
