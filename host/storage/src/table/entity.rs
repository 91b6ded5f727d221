//! Entities and Edm property values, with the limits of storage-semantics.md §3.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::datetime::{MAX_DATETIME_MICROS, MIN_DATETIME_MICROS};
use crate::error::{NameError, NameKind, TableError};
use crate::names::{check_key, is_identifier};

/// Most custom properties an entity may have.
pub const MAX_PROPERTIES: usize = 252;
/// Largest String or Binary property value, in bytes (strings count UTF-16).
pub const MAX_PROPERTY_BYTES: usize = 64 * 1024;
/// Largest entity, in bytes (names and strings count UTF-16).
pub const MAX_ENTITY_BYTES: usize = 1024 * 1024;
/// Longest property name, in characters.
pub const MAX_PROPERTY_NAME: usize = 255;

/// A typed property value (the Edm types).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EdmValue {
    /// Edm.String (≤ 64 KiB as UTF-16).
    String(String),
    /// Edm.Int32.
    Int32(i32),
    /// Edm.Int64.
    Int64(i64),
    /// Edm.Double (NaN and infinities allowed).
    Double(f64),
    /// Edm.Boolean.
    Boolean(bool),
    /// Edm.DateTime: microseconds since the Unix epoch, 1601-01-01..=9999-12-31.
    DateTime(i64),
    /// Edm.Guid, lowercase `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    Guid(String),
    /// Edm.Binary (≤ 64 KiB).
    Binary(Vec<u8>),
}

impl EdmValue {
    /// The Edm type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            EdmValue::String(_) => "Edm.String",
            EdmValue::Int32(_) => "Edm.Int32",
            EdmValue::Int64(_) => "Edm.Int64",
            EdmValue::Double(_) => "Edm.Double",
            EdmValue::Boolean(_) => "Edm.Boolean",
            EdmValue::DateTime(_) => "Edm.DateTime",
            EdmValue::Guid(_) => "Edm.Guid",
            EdmValue::Binary(_) => "Edm.Binary",
        }
    }

    /// Size as Azure counts it toward the entity limit.
    fn stored_size(&self) -> usize {
        match self {
            EdmValue::String(s) => 4 + 2 * s.encode_utf16().count(),
            EdmValue::Binary(b) => 4 + b.len(),
            EdmValue::Int32(_) => 4,
            EdmValue::Boolean(_) => 1,
            EdmValue::Guid(_) => 16,
            _ => 8,
        }
    }

    /// Compares two values as `$filter` does: numbers across Int32/Int64/Double, otherwise only
    /// values of the same type. `None`: not comparable (the comparison is false).
    pub fn compare(&self, other: &EdmValue) -> Option<Ordering> {
        use EdmValue as V;
        let num = |v: &EdmValue| match v {
            V::Int32(i) => Some(f64::from(*i)),
            V::Int64(i) => Some(*i as f64),
            V::Double(d) => Some(*d),
            _ => None,
        };
        match (self, other) {
            (V::Int32(a), V::Int32(b)) => Some(a.cmp(b)),
            (V::Int64(a), V::Int64(b)) => Some(a.cmp(b)),
            (V::Int32(a), V::Int64(b)) => Some(i64::from(*a).cmp(b)),
            (V::Int64(a), V::Int32(b)) => Some(a.cmp(&i64::from(*b))),
            (V::String(a), V::String(b)) => Some(a.cmp(b)),
            (V::Boolean(a), V::Boolean(b)) => Some(a.cmp(b)),
            (V::DateTime(a), V::DateTime(b)) => Some(a.cmp(b)),
            (V::Guid(a), V::Guid(b)) => Some(a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase())),
            (V::Binary(a), V::Binary(b)) => Some(a.cmp(b)),
            _ => num(self)?.partial_cmp(&num(other)?),
        }
    }
}

/// Is `s` a GUID in the 8-4-4-4-12 hex form?
pub(crate) fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An entity as written by a client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entity {
    /// PartitionKey.
    pub partition_key: String,
    /// RowKey.
    pub row_key: String,
    /// Custom properties (PartitionKey, RowKey and Timestamp are not among them).
    pub properties: BTreeMap<String, EdmValue>,
}

impl Entity {
    /// An entity with no properties yet.
    pub fn new(partition_key: impl Into<String>, row_key: impl Into<String>) -> Self {
        Entity {
            partition_key: partition_key.into(),
            row_key: row_key.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Adds a property (builder style).
    pub fn with(mut self, name: impl Into<String>, value: EdmValue) -> Self {
        self.properties.insert(name.into(), value);
        self
    }

    /// Checks keys, names, value limits and the entity size.
    pub fn validate(&self) -> Result<(), TableError> {
        check_key(&self.partition_key)?;
        check_key(&self.row_key)?;
        if self.properties.len() > MAX_PROPERTIES {
            return Err(TableError::TooManyProperties(self.properties.len()));
        }
        let mut size = 4 + 2
            * (self.partition_key.encode_utf16().count() + self.row_key.encode_utf16().count());
        for (name, value) in &self.properties {
            check_property_name(name)?;
            match value {
                EdmValue::String(s) if 2 * s.encode_utf16().count() > MAX_PROPERTY_BYTES => {
                    return Err(TableError::PropertyValueTooLarge(name.clone()));
                }
                EdmValue::Binary(b) if b.len() > MAX_PROPERTY_BYTES => {
                    return Err(TableError::PropertyValueTooLarge(name.clone()));
                }
                EdmValue::DateTime(t)
                    if !(MIN_DATETIME_MICROS..=MAX_DATETIME_MICROS).contains(t) =>
                {
                    return Err(TableError::InvalidValue(format!(
                        "{name}: DateTime outside 1601-01-01..9999-12-31"
                    )));
                }
                EdmValue::Guid(g) if !is_guid(g) => {
                    return Err(TableError::InvalidValue(format!(
                        "{name}: {g:?} is not a GUID"
                    )));
                }
                _ => {}
            }
            size += 8 + 2 * name.encode_utf16().count() + value.stored_size();
        }
        if size > MAX_ENTITY_BYTES {
            return Err(TableError::EntityTooLarge(size));
        }
        Ok(())
    }
}

fn check_property_name(name: &str) -> Result<(), TableError> {
    let invalid = |reason| NameError::Invalid {
        kind: NameKind::Property,
        name: name.chars().take(100).collect(),
        reason,
    };
    if name.chars().count() > MAX_PROPERTY_NAME {
        return Err(NameError::OutOfRange {
            kind: NameKind::Property,
            name: name.chars().take(100).collect(),
            len: name.chars().count(),
            min: 1,
            max: MAX_PROPERTY_NAME,
        }
        .into());
    }
    if !is_identifier(name) {
        return Err(invalid("property names must be C# identifiers").into());
    }
    if matches!(name, "PartitionKey" | "RowKey" | "Timestamp") {
        return Err(invalid("PartitionKey, RowKey and Timestamp are system properties").into());
    }
    Ok(())
}

/// An entity as stored: with its server-set Timestamp and ETag.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntity {
    /// PartitionKey.
    pub partition_key: String,
    /// RowKey.
    pub row_key: String,
    /// Set by the server on every write.
    pub timestamp: crate::Timestamp,
    /// Opaque, new on every write.
    pub etag: String,
    /// Custom properties.
    pub properties: BTreeMap<String, EdmValue>,
}

impl StoredEntity {
    /// A property by name, including the system ones (PartitionKey, RowKey, Timestamp).
    pub fn get(&self, name: &str) -> Option<EdmValue> {
        match name {
            "PartitionKey" => Some(EdmValue::String(self.partition_key.clone())),
            "RowKey" => Some(EdmValue::String(self.row_key.clone())),
            "Timestamp" => Some(EdmValue::DateTime(
                i64::try_from(self.timestamp.as_micros()).unwrap_or(i64::MAX),
            )),
            _ => self.properties.get(name).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        let ok = Entity::new("p", "r").with("Name", EdmValue::String("x".into()));
        assert!(ok.validate().is_ok());
        let code = |e: Entity| e.validate().unwrap_err().code();
        assert_eq!(
            code(Entity::new("p", "r").with("RowKey", EdmValue::Int32(1))),
            "PropertyNameInvalid"
        );
        assert_eq!(
            code(Entity::new("p", "r").with("1a", EdmValue::Int32(1))),
            "PropertyNameInvalid"
        );
        assert_eq!(
            code(Entity::new("p", "r").with("s", EdmValue::String("x".repeat(32 * 1024 + 1)))),
            "PropertyValueTooLarge"
        );
        assert_eq!(
            code(Entity::new("p", "r").with("b", EdmValue::Binary(vec![0; 64 * 1024 + 1]))),
            "PropertyValueTooLarge"
        );
        assert_eq!(
            code(Entity::new("p", "r").with("d", EdmValue::DateTime(MIN_DATETIME_MICROS - 1))),
            "InvalidInput"
        );
        assert_eq!(
            code(Entity::new("p", "r").with("g", EdmValue::Guid("nope".into()))),
            "InvalidInput"
        );
        assert_eq!(code(Entity::new("p/x", "r")), "InvalidResourceName");
        let mut many = Entity::new("p", "r");
        for i in 0..253 {
            many.properties.insert(format!("p{i}"), EdmValue::Int32(i));
        }
        assert_eq!(code(many), "TooManyProperties");
        let mut big = Entity::new("p", "r");
        for i in 0..20 {
            big.properties
                .insert(format!("s{i}"), EdmValue::String("y".repeat(32 * 1024)));
        }
        assert_eq!(code(big), "EntityTooLarge");
    }

    #[test]
    fn comparisons() {
        use EdmValue as V;
        assert_eq!(V::Int32(3).compare(&V::Int64(3)), Some(Ordering::Equal));
        assert_eq!(V::Int64(2).compare(&V::Double(2.5)), Some(Ordering::Less));
        assert_eq!(V::String("a".into()).compare(&V::Int32(1)), None);
        assert_eq!(V::Double(f64::NAN).compare(&V::Double(1.0)), None);
    }
}
