//! Tables: [`Table`] with serde-typed entities, ETag concurrency, queries and transactions.
//!
//! An entity's properties come from a serde struct: strings become `Edm.String`, booleans
//! `Edm.Boolean`, integers `Edm.Int32` when they fit and `Edm.Int64` otherwise, floats
//! `Edm.Double`; a nested struct, list or map is stored as a JSON string. Reading converts back
//! (`Edm.DateTime` reads as microseconds since the epoch, `Edm.Guid` as a string, `Edm.Binary`
//! as a list of bytes). For explicit Edm types use [`Table::execute`] with [`EdmValue`]s.
//!
//! ```no_run
//! use rolehost_sdk::{Table, table::IfMatch};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Order { customer: String, total_cents: i64, shipped: bool }
//!
//! # fn main() -> rolehost_sdk::Result<()> {
//! let orders = Table::new("orders");
//! orders.create_if_not_exists()?;
//! orders.insert("customer-7", "order-42", &Order { customer: "ada".into(), total_cents: 1250, shipped: false })?;
//!
//! let mut stored = orders.get::<Order>("customer-7", "order-42")?.expect("just inserted");
//! stored.value.shipped = true;
//! // Fails with UpdateConditionNotSatisfied if someone else updated it since we read it.
//! orders.replace("customer-7", "order-42", &stored.value, IfMatch::Etag(stored.etag.clone()))?;
//!
//! let unshipped = orders.query::<Order>("PartitionKey eq 'customer-7' and shipped eq false")?;
//! # Ok(()) }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Number, Value};

use crate::bindings::rolehost::platform::table as host;
use crate::error::{Error, ErrorCode, Result};
use crate::retry::{self, CallOptions, RetryPolicy};

pub use host::{
    Continuation, DeleteEntity, EdmValue, Entity, IfMatch, Operation, Property, StoredEntity,
    UpdateEntity, UpdateMode, UpsertEntity,
};

/// An entity read back: its keys, ETag and timestamp, and its properties as `T`.
#[derive(Clone, Debug)]
pub struct Stored<T> {
    /// PartitionKey.
    pub partition_key: String,
    /// RowKey.
    pub row_key: String,
    /// The ETag of this version: pass it in [`IfMatch::Etag`] to update only this version.
    pub etag: String,
    /// When it was written (microseconds since the epoch).
    pub timestamp: u64,
    /// Its properties.
    pub value: T,
}

/// A table of the service's storage account. Holds only its name.
#[derive(Clone, Debug)]
pub struct Table {
    name: String,
    options: CallOptions,
}

impl Table {
    /// The table called `name` (3-63 letters and digits, starting with a letter).
    pub fn new(name: impl Into<String>) -> Self {
        Table {
            name: name.into(),
            options: retry::defaults(),
        }
    }

    /// Uses this retry policy for this table's calls.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table unless it exists; true if it was created.
    pub fn create_if_not_exists(&self) -> Result<bool> {
        match retry::call(&self.options, || host::create_table(&self.name)) {
            Ok(()) => Ok(true),
            Err(e) if e.code == ErrorCode::TableAlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the table and its entities. Errors: `TableNotFound`.
    pub fn delete_table(&self) -> Result<()> {
        retry::call(&self.options, || host::delete_table(&self.name))
    }

    /// Runs one operation with explicit Edm values; returns the new ETag (`None` for a delete).
    pub fn execute(&self, op: &Operation) -> Result<Option<String>> {
        retry::call(&self.options, || host::execute(&self.name, op))
    }

    /// Runs operations on one partition all or nothing. On failure, `Error::failed_index`
    /// names the operation that failed and nothing was applied.
    pub fn transaction(&self, ops: &[Operation]) -> Result<Vec<Option<String>>> {
        retry::call(&self.options, || host::submit_transaction(&self.name, ops))
    }

    /// Inserts an entity; returns its ETag. Errors: `EntityAlreadyExists`.
    pub fn insert<T: Serialize>(&self, pk: &str, rk: &str, value: &T) -> Result<String> {
        let op = Operation::Insert(to_entity(pk, rk, value)?);
        self.execute(&op).map(Option::unwrap_or_default)
    }

    /// Inserts or replaces an entity, unconditionally; returns its ETag.
    pub fn upsert<T: Serialize>(&self, pk: &str, rk: &str, value: &T) -> Result<String> {
        let op = Operation::Upsert(host::UpsertEntity {
            entity: to_entity(pk, rk, value)?,
            mode: UpdateMode::Replace,
        });
        self.execute(&op).map(Option::unwrap_or_default)
    }

    /// Replaces an existing entity if `if_match` holds; returns the new ETag. Errors:
    /// `ResourceNotFound`, `UpdateConditionNotSatisfied` (someone else updated it since).
    pub fn replace<T: Serialize>(
        &self,
        pk: &str,
        rk: &str,
        value: &T,
        if_match: IfMatch,
    ) -> Result<String> {
        self.update(pk, rk, value, UpdateMode::Replace, if_match)
    }

    /// Merges properties into an existing entity if `if_match` holds; returns the new ETag.
    pub fn merge<T: Serialize>(
        &self,
        pk: &str,
        rk: &str,
        value: &T,
        if_match: IfMatch,
    ) -> Result<String> {
        self.update(pk, rk, value, UpdateMode::Merge, if_match)
    }

    fn update<T: Serialize>(
        &self,
        pk: &str,
        rk: &str,
        value: &T,
        mode: UpdateMode,
        if_match: IfMatch,
    ) -> Result<String> {
        let op = Operation::Update(host::UpdateEntity {
            entity: to_entity(pk, rk, value)?,
            mode,
            if_match,
        });
        self.execute(&op).map(Option::unwrap_or_default)
    }

    /// Deletes an entity if `if_match` holds. Errors: `ResourceNotFound`,
    /// `UpdateConditionNotSatisfied`.
    pub fn delete(&self, pk: &str, rk: &str, if_match: IfMatch) -> Result<()> {
        let op = Operation::Delete(host::DeleteEntity {
            partition_key: pk.to_string(),
            row_key: rk.to_string(),
            if_match,
        });
        self.execute(&op).map(drop)
    }

    /// Reads an entity, or `None` if it does not exist.
    pub fn get<T: DeserializeOwned>(&self, pk: &str, rk: &str) -> Result<Option<Stored<T>>> {
        match retry::call(&self.options, || host::get_entity(&self.name, pk, rk, None)) {
            Ok(e) => from_stored(e).map(Some),
            Err(e) if e.code == ErrorCode::ResourceNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of an OData query (`filter` as in `PartitionKey eq 'a' and Price gt 10`).
    pub fn query_page(&self, query: &host::Query) -> Result<host::QueryPage> {
        retry::call(&self.options, || host::query_entities(&self.name, query))
    }

    /// Every entity matching `filter` (all pages), as `T`.
    pub fn query<T: DeserializeOwned>(&self, filter: &str) -> Result<Vec<Stored<T>>> {
        let mut query = host::Query {
            filter: (!filter.is_empty()).then(|| filter.to_string()),
            select: None,
            top: None,
            continuation: None,
        };
        let mut all = Vec::new();
        loop {
            let page = self.query_page(&query)?;
            for e in page.entities {
                all.push(from_stored(e)?);
            }
            match page.continuation {
                Some(c) => query.continuation = Some(c),
                None => return Ok(all),
            }
        }
    }
}

/// Converts a serde value into an entity with these keys.
pub fn to_entity<T: Serialize>(pk: &str, rk: &str, value: &T) -> Result<Entity> {
    let json = serde_json::to_value(value).map_err(|e| invalid(format!("entity: {e}")))?;
    let Value::Object(map) = json else {
        return Err(invalid("an entity must serialize to a struct or map"));
    };
    let mut properties = Vec::with_capacity(map.len());
    for (name, v) in map {
        let value = match v {
            Value::Null => continue,
            Value::Bool(b) => EdmValue::Boolean(b),
            Value::String(s) => EdmValue::Text(s),
            Value::Number(n) => number_to_edm(&n),
            nested @ (Value::Array(_) | Value::Object(_)) => EdmValue::Text(nested.to_string()),
        };
        properties.push(Property { name, value });
    }
    Ok(Entity {
        partition_key: pk.to_string(),
        row_key: rk.to_string(),
        properties,
    })
}

fn number_to_edm(n: &Number) -> EdmValue {
    if let Some(i) = n.as_i64() {
        match i32::try_from(i) {
            Ok(small) => EdmValue::Int32(small),
            Err(_) => EdmValue::Int64(i),
        }
    } else if let Some(u) = n.as_u64() {
        // Above i64::MAX: keep every bit, reinterpreted (documented as Int64).
        EdmValue::Int64(u as i64)
    } else {
        EdmValue::Double(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Converts a stored entity's properties into `T`.
pub fn from_stored<T: DeserializeOwned>(e: StoredEntity) -> Result<Stored<T>> {
    let mut map = Map::new();
    for p in e.properties {
        let v = match p.value {
            EdmValue::Text(s) => match serde_json::from_str::<Value>(&s) {
                // Nested values were stored as JSON text; plain strings stay strings.
                Ok(nested @ (Value::Array(_) | Value::Object(_))) => nested,
                _ => Value::String(s),
            },
            EdmValue::Int32(i) => Value::from(i),
            EdmValue::Int64(i) => Value::from(i),
            EdmValue::Double(d) => Number::from_f64(d).map_or(Value::Null, Value::Number),
            EdmValue::Boolean(b) => Value::Bool(b),
            EdmValue::DateTime(t) => Value::from(t),
            EdmValue::Guid(g) => Value::String(g),
            EdmValue::Binary(b) => Value::from(b),
        };
        map.insert(p.name, v);
    }
    let value = serde_json::from_value(Value::Object(map)).map_err(|err| {
        invalid(format!(
            "entity ({}, {}) does not fit the type: {err}",
            e.partition_key, e.row_key
        ))
    })?;
    Ok(Stored {
        partition_key: e.partition_key,
        row_key: e.row_key,
        etag: e.etag,
        timestamp: e.timestamp,
        value,
    })
}

fn invalid(message: impl Into<String>) -> Error {
    Error::local(ErrorCode::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Sample {
        name: String,
        small: i32,
        big: i64,
        ratio: f64,
        ok: bool,
        tags: Vec<String>,
        missing: Option<u8>,
    }

    #[test]
    fn serde_round_trip_through_edm_values() {
        let v = Sample {
            name: "[not json".into(),
            small: 7,
            big: 1 << 40,
            ratio: 0.5,
            ok: true,
            tags: vec!["a".into(), "b".into()],
            missing: None,
        };
        let e = to_entity("p", "r", &v).unwrap();
        let by_name = |n: &str| {
            e.properties
                .iter()
                .find(|p| p.name == n)
                .map(|p| p.value.clone())
        };
        assert!(matches!(by_name("small"), Some(EdmValue::Int32(7))));
        assert!(matches!(by_name("big"), Some(EdmValue::Int64(x)) if x == 1 << 40));
        assert!(matches!(by_name("tags"), Some(EdmValue::Text(ref s)) if s == r#"["a","b"]"#));
        assert!(by_name("missing").is_none());
        let stored = StoredEntity {
            partition_key: "p".into(),
            row_key: "r".into(),
            timestamp: 1,
            etag: "W/1".into(),
            properties: e.properties,
        };
        let back: Stored<Sample> = from_stored(stored).unwrap();
        assert_eq!(back.value, v);
        assert_eq!(back.etag, "W/1");
    }

    #[test]
    fn non_struct_is_refused() {
        let err = to_entity("p", "r", &5).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidInput);
    }
}
