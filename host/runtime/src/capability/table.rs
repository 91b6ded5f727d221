//! The `table` capability: WIT `rolehost:platform/table` on the storage engine's table service.

use std::collections::BTreeMap;

use rolehost_storage::table as store;
use wasmtime::component::{HasSelf, Linker};

use super::{invalid, list_options, to_wit_error};
use crate::bindings::table::{self as wit, Host};
use crate::bindings::types::{ErrorCode, ListOptions, StorageError};
use crate::link::Link;

/// What the table capability needs: the instance's link to storage.
#[derive(Debug)]
pub struct TableCtx {
    link: Link,
}

impl TableCtx {
    /// A context calling storage through `link`.
    pub fn new(link: Link) -> Self {
        TableCtx { link }
    }
}

/// Adds `rolehost:platform/table` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut TableCtx,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<TableCtx>>(linker, get)
}

type Reply<T> = wasmtime::Result<Result<T, StorageError>>;

fn value_from_wit(v: wit::EdmValue) -> store::EdmValue {
    match v {
        wit::EdmValue::Text(s) => store::EdmValue::String(s),
        wit::EdmValue::Int32(i) => store::EdmValue::Int32(i),
        wit::EdmValue::Int64(i) => store::EdmValue::Int64(i),
        wit::EdmValue::Double(d) => store::EdmValue::Double(d),
        wit::EdmValue::Boolean(b) => store::EdmValue::Boolean(b),
        wit::EdmValue::DateTime(t) => store::EdmValue::DateTime(t),
        wit::EdmValue::Guid(g) => store::EdmValue::Guid(g),
        wit::EdmValue::Binary(b) => store::EdmValue::Binary(b),
    }
}

fn value_to_wit(v: store::EdmValue) -> wit::EdmValue {
    match v {
        store::EdmValue::String(s) => wit::EdmValue::Text(s),
        store::EdmValue::Int32(i) => wit::EdmValue::Int32(i),
        store::EdmValue::Int64(i) => wit::EdmValue::Int64(i),
        store::EdmValue::Double(d) => wit::EdmValue::Double(d),
        store::EdmValue::Boolean(b) => wit::EdmValue::Boolean(b),
        store::EdmValue::DateTime(t) => wit::EdmValue::DateTime(t),
        store::EdmValue::Guid(g) => wit::EdmValue::Guid(g),
        store::EdmValue::Binary(b) => wit::EdmValue::Binary(b),
    }
}

/// A WIT entity to the engine's. A property named twice is refused: a map would silently keep
/// one of them.
fn entity(e: wit::Entity) -> Result<store::Entity, StorageError> {
    let mut properties = BTreeMap::new();
    for p in e.properties {
        if properties.contains_key(&p.name) {
            return Err(invalid(
                ErrorCode::InvalidInput,
                format!("property {:?} is given twice", p.name),
            ));
        }
        properties.insert(p.name, value_from_wit(p.value));
    }
    Ok(store::Entity {
        partition_key: e.partition_key,
        row_key: e.row_key,
        properties,
    })
}

fn stored(e: store::StoredEntity) -> wit::StoredEntity {
    wit::StoredEntity {
        partition_key: e.partition_key,
        row_key: e.row_key,
        timestamp: e.timestamp.as_micros(),
        etag: e.etag,
        properties: e
            .properties
            .into_iter()
            .map(|(name, v)| wit::Property {
                name,
                value: value_to_wit(v),
            })
            .collect(),
    }
}

fn if_match(m: wit::IfMatch) -> store::IfMatch {
    match m {
        wit::IfMatch::Any => store::IfMatch::Any,
        wit::IfMatch::Etag(t) => store::IfMatch::ETag(t),
    }
}

fn mode(m: wit::UpdateMode) -> store::UpdateMode {
    match m {
        wit::UpdateMode::Replace => store::UpdateMode::Replace,
        wit::UpdateMode::Merge => store::UpdateMode::Merge,
    }
}

fn operation(op: wit::Operation) -> Result<store::TableOp, StorageError> {
    Ok(match op {
        wit::Operation::Insert(e) => store::TableOp::Insert(entity(e)?),
        wit::Operation::Update(u) => store::TableOp::Update {
            entity: entity(u.entity)?,
            mode: mode(u.mode),
            if_match: if_match(u.if_match),
        },
        wit::Operation::Upsert(u) => store::TableOp::Upsert {
            entity: entity(u.entity)?,
            mode: mode(u.mode),
        },
        wit::Operation::Delete(d) => store::TableOp::Delete {
            partition_key: d.partition_key,
            row_key: d.row_key,
            if_match: if_match(d.if_match),
        },
    })
}

impl Host for TableCtx {
    async fn create_table(&mut self, table: String) -> Reply<()> {
        let target = table.clone();
        let r = self
            .link
            .call("table.create-table", &target, move |b, a| {
                b.create_table(a, &table)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn delete_table(&mut self, table: String) -> Reply<()> {
        let target = table.clone();
        let r = self
            .link
            .call("table.delete-table", &target, move |b, a| {
                b.delete_table(a, &table)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn list_tables(&mut self, options: ListOptions) -> Reply<wit::TablePage> {
        let options = list_options(options);
        let r = self
            .link
            .call("table.list-tables", "", move |b, a| {
                b.list_tables(a, &options)
            })
            .await?;
        Ok(r.map(|p| wit::TablePage {
            items: p.items,
            next_marker: p.next_marker,
        })
        .map_err(to_wit_error))
    }

    async fn execute(&mut self, table: String, op: wit::Operation) -> Reply<Option<String>> {
        let op = match operation(op) {
            Ok(op) => op,
            Err(e) => return Ok(Err(e)),
        };
        let target = table.clone();
        let r = self
            .link
            .call("table.execute", &target, move |b, a| {
                b.execute(a, &table, op)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn submit_transaction(
        &mut self,
        table: String,
        ops: Vec<wit::Operation>,
    ) -> Reply<Vec<Option<String>>> {
        let mut converted = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            match operation(op) {
                Ok(op) => converted.push(op),
                Err(mut e) => {
                    e.failed_index = u32::try_from(i).ok();
                    return Ok(Err(e));
                }
            }
        }
        let target = table.clone();
        let r = self
            .link
            .call("table.submit-transaction", &target, move |b, a| {
                b.submit_transaction(a, &table, converted)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn get_entity(
        &mut self,
        table: String,
        partition_key: String,
        row_key: String,
        select: Option<Vec<String>>,
    ) -> Reply<wit::StoredEntity> {
        let target = table.clone();
        let r = self
            .link
            .call("table.get-entity", &target, move |b, a| {
                b.get_entity(a, &table, &partition_key, &row_key, select.as_deref())
            })
            .await?;
        Ok(r.map(stored).map_err(to_wit_error))
    }

    async fn query_entities(&mut self, table: String, query: wit::Query) -> Reply<wit::QueryPage> {
        let query = store::Query {
            filter: query.filter,
            select: query.select,
            top: query.top,
            continuation: query
                .continuation
                .map(|c| (c.next_partition_key, c.next_row_key)),
        };
        let target = table.clone();
        let r = self
            .link
            .call("table.query-entities", &target, move |b, a| {
                b.query_entities(a, &table, &query)
            })
            .await?;
        Ok(r.map(|p| wit::QueryPage {
            entities: p.entities.into_iter().map(stored).collect(),
            continuation: p.continuation.map(|(pk, rk)| wit::Continuation {
                next_partition_key: pk,
                next_row_key: rk,
            }),
        })
        .map_err(to_wit_error))
    }
}
