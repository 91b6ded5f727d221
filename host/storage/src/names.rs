//! Naming rules (storage-semantics.md §1–3), checked once at the edge of every operation.

use crate::error::{NameError, NameKind};

fn truncated(name: &str) -> String {
    name.chars().take(100).collect()
}

fn invalid(kind: NameKind, name: &str, reason: &'static str) -> NameError {
    NameError::Invalid {
        kind,
        name: truncated(name),
        reason,
    }
}

fn check_len(
    kind: NameKind,
    name: &str,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), NameError> {
    if len < min || len > max {
        return Err(NameError::OutOfRange {
            kind,
            name: truncated(name),
            len,
            min,
            max,
        });
    }
    Ok(())
}

/// The DNS-like rule shared by containers, queues and accounts: 3–63 characters of lowercase
/// letters, digits and `-`, starting and ending with a letter or digit, no `--`.
fn dns_like(kind: NameKind, name: &str) -> Result<(), NameError> {
    check_len(kind, name, name.len(), 3, 63)?;
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            kind,
            name,
            "only lowercase letters, digits and '-' are allowed",
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(
            kind,
            name,
            "must start and end with a letter or digit",
        ));
    }
    if name.contains("--") {
        return Err(invalid(
            kind,
            name,
            "'-' must be followed by a letter or digit",
        ));
    }
    Ok(())
}

/// A storage account name: one per service. rolehost relaxes Azure's 3–24 alphanumerics to the
/// container rule (3–63, with `-`) so that a service name maps to its account unchanged.
pub fn check_account(name: &str) -> Result<(), NameError> {
    dns_like(NameKind::Account, name)
}

/// A container name (plus the special `$root`, `$logs` and `$web`).
pub fn check_container(name: &str) -> Result<(), NameError> {
    if matches!(name, "$root" | "$logs" | "$web") {
        return Ok(());
    }
    dns_like(NameKind::Container, name)
}

/// A queue name.
pub fn check_queue(name: &str) -> Result<(), NameError> {
    dns_like(NameKind::Queue, name)
}

/// Maximum blob name length, in characters.
pub const MAX_BLOB_NAME_CHARS: usize = 1024;
/// Maximum number of `/`-separated segments in a blob name.
pub const MAX_BLOB_NAME_SEGMENTS: usize = 254;

/// A blob name: 1–1024 characters, at most 254 path segments. rolehost also refuses control
/// characters (U+0000–U+001F, U+007F): they cannot be URL-addressed reliably.
pub fn check_blob(name: &str) -> Result<(), NameError> {
    check_len(
        NameKind::Blob,
        name,
        name.chars().count(),
        1,
        MAX_BLOB_NAME_CHARS,
    )?;
    if name.split('/').count() > MAX_BLOB_NAME_SEGMENTS {
        return Err(invalid(NameKind::Blob, name, "more than 254 path segments"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(invalid(
            NameKind::Blob,
            name,
            "control characters are not allowed",
        ));
    }
    Ok(())
}

/// A table name: `^[A-Za-z][A-Za-z0-9]{2,62}$`, not `tables`.
pub fn check_table(name: &str) -> Result<(), NameError> {
    check_len(NameKind::Table, name, name.len(), 3, 63)?;
    let mut bytes = name.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_alphabetic()) {
        return Err(invalid(NameKind::Table, name, "must start with a letter"));
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric()) {
        return Err(invalid(
            NameKind::Table,
            name,
            "only letters and digits are allowed",
        ));
    }
    if name.eq_ignore_ascii_case("tables") {
        return Err(invalid(NameKind::Table, name, "'tables' is reserved"));
    }
    Ok(())
}

/// Is `name` a C# identifier (the rule for metadata and property names)?
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Maximum total size of metadata names and values, in bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// Metadata: C#-identifier names, unique ignoring case, names plus values at most 8 KiB.
pub fn check_metadata(metadata: &[(String, String)]) -> Result<(), NameError> {
    let mut total = 0;
    for (i, (name, value)) in metadata.iter().enumerate() {
        if !is_identifier(name) {
            return Err(invalid(
                NameKind::Metadata,
                name,
                "names must be C# identifiers",
            ));
        }
        if metadata[..i]
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return Err(invalid(
                NameKind::Metadata,
                name,
                "duplicate name (names ignore case)",
            ));
        }
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(invalid(
                NameKind::Metadata,
                name,
                "value has control characters",
            ));
        }
        total += name.len() + value.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(NameError::OutOfRange {
            kind: NameKind::Metadata,
            name: "(all metadata)".into(),
            len: total,
            min: 0,
            max: MAX_METADATA_BYTES,
        });
    }
    Ok(())
}

/// Maximum PartitionKey/RowKey length in UTF-16 code units (1 KiB).
pub const MAX_KEY_UTF16: usize = 512;

/// A PartitionKey or RowKey: up to 1 KiB, none of `/ \ # ?` or control characters. Empty is fine.
pub fn check_key(key: &str) -> Result<(), NameError> {
    check_len(
        NameKind::Key,
        key,
        key.encode_utf16().count(),
        0,
        MAX_KEY_UTF16,
    )?;
    if key
        .chars()
        .any(|c| matches!(c, '/' | '\\' | '#' | '?') || c.is_control())
    {
        return Err(invalid(
            NameKind::Key,
            key,
            "'/', '\\', '#', '?' and control characters are not allowed",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_rules() {
        assert!(check_container("abc").is_ok());
        assert!(check_container("a-b-c1").is_ok());
        assert!(check_container("$root").is_ok());
        let codes: Vec<_> = ["ab", "Abc", "a--b", "-ab", "ab-", "a_b", &"a".repeat(64)]
            .iter()
            .map(|n| check_container(n).unwrap_err().code())
            .collect();
        assert_eq!(
            codes,
            [
                "OutOfRangeInput",
                "InvalidResourceName",
                "InvalidResourceName",
                "InvalidResourceName",
                "InvalidResourceName",
                "InvalidResourceName",
                "OutOfRangeInput"
            ]
        );
    }

    #[test]
    fn blob_rules() {
        assert!(check_blob("a/b/c.txt").is_ok());
        assert!(check_blob(&"é".repeat(1024)).is_ok());
        assert_eq!(check_blob("").unwrap_err().code(), "OutOfRangeInput");
        assert_eq!(
            check_blob(&"x".repeat(1025)).unwrap_err().code(),
            "OutOfRangeInput"
        );
        assert_eq!(
            check_blob(&"a/".repeat(254)).unwrap_err().code(),
            "InvalidResourceName"
        );
        assert_eq!(
            check_blob("a\u{0}b").unwrap_err().code(),
            "InvalidResourceName"
        );
    }

    #[test]
    fn table_rules() {
        assert!(check_table("Orders2").is_ok());
        assert_eq!(
            check_table("1abc").unwrap_err().code(),
            "InvalidResourceName"
        );
        assert_eq!(check_table("ab").unwrap_err().code(), "OutOfRangeInput");
        assert_eq!(
            check_table("Tables").unwrap_err().code(),
            "InvalidResourceName"
        );
        assert_eq!(
            check_table("a-bc").unwrap_err().code(),
            "InvalidResourceName"
        );
    }

    #[test]
    fn metadata_rules() {
        let m = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(check_metadata(&m(&[("Color", "red"), ("_size", "1")])).is_ok());
        assert_eq!(
            check_metadata(&m(&[("1x", "")])).unwrap_err().code(),
            "InvalidMetadata"
        );
        assert_eq!(
            check_metadata(&m(&[("a", ""), ("A", "")]))
                .unwrap_err()
                .code(),
            "InvalidMetadata"
        );
        let big = "v".repeat(MAX_METADATA_BYTES);
        assert_eq!(
            check_metadata(&m(&[("a", &big)])).unwrap_err().code(),
            "InvalidMetadata"
        );
    }

    #[test]
    fn key_rules() {
        assert!(check_key("").is_ok());
        assert!(check_key(&"k".repeat(512)).is_ok());
        assert_eq!(
            check_key(&"k".repeat(513)).unwrap_err().code(),
            "OutOfRangeInput"
        );
        for bad in ["a/b", "a\\b", "a#b", "a?b", "a\u{7f}"] {
            assert_eq!(
                check_key(bad).unwrap_err().code(),
                "InvalidResourceName",
                "{bad:?}"
            );
        }
    }
}
