//! Where a host's storage is, and the one way to open it: a redb file (a path), or a
//! PostgreSQL database (`postgres://...`) that many hosts share. Every place storage is chosen
//! (`rolehost run --storage`, `rolehost serve --storage`, `[storage] url`, `rolehost storage
//! --storage`) parses a [`StorageLocation`] and opens it through [`open`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rolehost_storage::{Backend, RedbStore, StorageError, StorageOptions};
use rolehost_storage_pg::{PgOptions, PgStore};

/// Where storage is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageLocation {
    /// The embedded engine's database file.
    File(PathBuf),
    /// A PostgreSQL database, by its connection URL.
    Postgres(String),
}

impl StorageLocation {
    /// `postgres://...` or `postgresql://...` is a database; anything else a file path
    /// (relative ones against `base`).
    pub fn parse(text: &str, base: &Path) -> StorageLocation {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            StorageLocation::Postgres(text.to_string())
        } else {
            StorageLocation::File(base.join(text))
        }
    }

    /// Whether several hosts can have it open at once.
    pub fn is_shared(&self) -> bool {
        matches!(self, StorageLocation::Postgres(_))
    }
}

impl std::fmt::Display for StorageLocation {
    /// A file's path, or a database's URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageLocation::File(p) => write!(f, "{}", p.display()),
            StorageLocation::Postgres(url) => f.write_str(&rolehost_storage_pg::shown(url)),
        }
    }
}

/// Opens the storage at `location`. `pool_size` is the PostgreSQL engine's connection count
/// (`None`: [`rolehost_storage_pg::DEFAULT_POOL_SIZE`]); redb ignores it.
pub fn open(
    location: &StorageLocation,
    options: StorageOptions,
    pool_size: Option<usize>,
) -> Result<Arc<dyn Backend>, StorageError> {
    match location {
        StorageLocation::File(path) => Ok(Arc::new(RedbStore::open(path, options)?)),
        StorageLocation::Postgres(url) => {
            let pg = PgOptions {
                pool_size: pool_size.unwrap_or(rolehost_storage_pg::DEFAULT_POOL_SIZE),
                ..PgOptions::default()
            };
            Ok(Arc::new(PgStore::open(url, &options, &pg)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_databases_and_the_rest_are_paths() {
        let base = Path::new("/svc");
        assert_eq!(
            StorageLocation::parse("postgres://u:pw@db/rh", base),
            StorageLocation::Postgres("postgres://u:pw@db/rh".into())
        );
        assert!(StorageLocation::parse("postgresql://db/rh", base).is_shared());
        assert_eq!(
            StorageLocation::parse("data/s.redb", base),
            StorageLocation::File("/svc/data/s.redb".into())
        );
        assert_eq!(
            StorageLocation::parse("postgres://u:pw@db/rh", base).to_string(),
            "postgres://u@db/rh"
        );
    }
}
