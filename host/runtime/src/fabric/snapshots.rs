//! The host's snapshot store. A snapshot holds code and memory that will run inside a service
//! with its storage account, so it lives where no guest can read, write, lease or delete it:
//! the host's own account ([`AccountName::host`], which no service or client can name),
//! container [`CONTAINER`], one blob per snapshot id. Its metadata is the host's record of
//! the snapshot (service, role, instance, deployment): a thaw by id takes its target from
//! there, and the file's signed header must agree with it.
//!
//! Hosts that share a storage database share this store, so a snapshot frozen on one thaws on
//! another (given the same snapshot key).

use std::sync::Arc;

use rolehost_storage::blob::{GetBlobOptions, PutBlobOptions};
use rolehost_storage::{AccountName, Backend, ListOptions};

use super::FabricError;
use crate::freeze::SnapshotHeader;

/// The container of the host's account that holds snapshots.
pub const CONTAINER: &str = "snapshots";
/// The container of the host's account that remembers services deleted with their storage
/// kept (a blob per name).
pub const DELETED: &str = "deleted-services";
/// Largest snapshot file a read will take: a snapshot is compressed memory (64 MiB of heap
/// packed to about 4.5 MiB), and the file's blob was written by this host; a larger one is
/// damage, refused rather than read whole into memory.
pub const MAX_SNAPSHOT_FILE: u64 = 4 << 30;

/// What the host recorded of a snapshot when it was frozen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// The service it belongs to.
    pub service: String,
    /// Its role.
    pub role: String,
    /// The instance it was.
    pub instance: String,
    /// The deployment it belongs to.
    pub deployment: String,
}

impl SnapshotRecord {
    fn of(header: &SnapshotHeader) -> SnapshotRecord {
        SnapshotRecord {
            service: header.service.clone(),
            role: header.role.clone(),
            instance: header.instance_id.clone(),
            deployment: header.deployment_id.clone(),
        }
    }

    fn metadata(&self) -> Vec<(String, String)> {
        vec![
            ("service".into(), self.service.clone()),
            ("role".into(), self.role.clone()),
            ("instance".into(), self.instance.clone()),
            ("deployment".into(), self.deployment.clone()),
        ]
    }

    fn from_metadata(m: &[(String, String)]) -> Option<SnapshotRecord> {
        let get = |k: &str| {
            m.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        Some(SnapshotRecord {
            service: get("service")?,
            role: get("role")?,
            instance: get("instance")?,
            deployment: get("deployment")?,
        })
    }

    /// Whether a (signed) header says the same as this record.
    pub fn agrees_with(&self, header: &SnapshotHeader) -> bool {
        *self == SnapshotRecord::of(header)
    }
}

/// A snapshot's id: `<service>.<instance>.<12 hex digits of its digest>`. Service names
/// have no `.`, so the service's snapshots share the prefix `<service>.`.
pub fn snapshot_id(header: &SnapshotHeader) -> String {
    // The header's shape was checked: the digest is 64 hex digits.
    let short = header.payload_blake3.get(..12).unwrap_or("");
    format!("{}.{}.{short}", header.service, header.instance_id)
}

/// The snapshot store of one storage database.
pub struct SnapshotStore {
    storage: Arc<dyn Backend>,
    account: AccountName,
}

fn storage_error(what: &str, e: impl std::fmt::Display) -> FabricError {
    FabricError::Storage(format!("{what}: {e}"))
}

impl SnapshotStore {
    /// The store in `storage`.
    pub fn new(storage: Arc<dyn Backend>) -> SnapshotStore {
        SnapshotStore {
            storage,
            account: AccountName::host(),
        }
    }

    /// Creates container `name` of the host's account unless it is there.
    fn ensure(&self, name: &str) -> Result<(), FabricError> {
        match self
            .storage
            .create_container(&self.account, name, Vec::new())
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == "ContainerAlreadyExists" => Ok(()),
            Err(e) => Err(storage_error(&format!("the host's container {name}"), e)),
        }
    }

    /// Keeps snapshot `file` (whose header is `header`) under `id`, durably, before anything
    /// records the instance as frozen.
    pub fn put(&self, id: &str, header: &SnapshotHeader, file: &[u8]) -> Result<(), FabricError> {
        self.ensure(CONTAINER)?;
        let options = PutBlobOptions {
            metadata: SnapshotRecord::of(header).metadata(),
            ..PutBlobOptions::default()
        };
        self.storage
            .put_blob(&self.account, CONTAINER, id, &mut &file[..], options)
            .map_err(|e| storage_error(&format!("keeping snapshot {id}"), e))?;
        Ok(())
    }

    /// Whether snapshot `id` is kept.
    pub fn contains(&self, id: &str) -> bool {
        self.storage
            .get_blob_properties(&self.account, CONTAINER, id, &Default::default(), None)
            .is_ok()
    }

    /// Snapshot `id`: the host's record of it and the file.
    pub fn get(&self, id: &str) -> Result<(SnapshotRecord, Vec<u8>), FabricError> {
        let read =
            match self
                .storage
                .get_blob(&self.account, CONTAINER, id, &GetBlobOptions::default())
            {
                Ok(r) => r,
                Err(e) if matches!(e.code(), "BlobNotFound" | "ContainerNotFound") => {
                    return Err(FabricError::NoSnapshot(id.to_string()));
                }
                Err(e) => return Err(storage_error(&format!("snapshot {id}"), e)),
            };
        let record = SnapshotRecord::from_metadata(&read.properties.metadata).ok_or_else(|| {
            FabricError::Storage(format!("snapshot {id} has no record of what it is"))
        })?;
        if read.properties.size > MAX_SNAPSHOT_FILE {
            return Err(FabricError::Storage(format!(
                "snapshot {id} is {} bytes, more than any snapshot ({MAX_SNAPSHOT_FILE})",
                read.properties.size
            )));
        }
        let mut file = Vec::with_capacity(usize::try_from(read.properties.size).unwrap_or(0));
        std::io::Read::read_to_end(
            &mut std::io::Read::take(read.reader, MAX_SNAPSHOT_FILE),
            &mut file,
        )
        .map_err(|e| storage_error(&format!("snapshot {id}"), e))?;
        Ok((record, file))
    }

    /// Remembers that service `name` was deleted and its storage account kept.
    pub fn note_deleted(&self, name: &str) -> Result<(), FabricError> {
        self.ensure(DELETED)?;
        self.storage
            .put_blob(
                &self.account,
                DELETED,
                name,
                &mut &b""[..],
                PutBlobOptions::default(),
            )
            .map_err(|e| storage_error(&format!("noting {name} deleted"), e))?;
        Ok(())
    }

    /// Whether service `name` was deleted with its storage kept.
    pub fn is_deleted(&self, name: &str) -> bool {
        self.storage
            .get_blob_properties(&self.account, DELETED, name, &Default::default(), None)
            .is_ok()
    }

    /// Forgets that `name` was deleted (its storage was purged or adopted).
    pub fn forget_deleted(&self, name: &str) -> Result<(), FabricError> {
        match self
            .storage
            .delete_blob(&self.account, DELETED, name, &Default::default(), None)
        {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.code(), "BlobNotFound" | "ContainerNotFound") => Ok(()),
            Err(e) => Err(storage_error(&format!("forgetting {name} deleted"), e)),
        }
    }

    /// Deletes every snapshot of service `service` (it is being deleted).
    pub fn delete_service(&self, service: &str) -> Result<usize, FabricError> {
        let prefix = format!("{service}.");
        let mut deleted = 0;
        loop {
            let options = ListOptions {
                prefix: Some(prefix.clone()),
                ..ListOptions::default()
            };
            let page = match self
                .storage
                .list_blobs(&self.account, CONTAINER, &options, None)
            {
                Ok(p) => p,
                Err(e) if e.code() == "ContainerNotFound" => return Ok(deleted),
                Err(e) => return Err(storage_error("listing snapshots", e)),
            };
            let names: Vec<String> = page
                .items
                .into_iter()
                .filter_map(|i| match i {
                    rolehost_storage::blob::BlobListItem::Blob(b) => Some(b.name),
                    rolehost_storage::blob::BlobListItem::Prefix(_) => None,
                })
                .collect();
            if names.is_empty() {
                return Ok(deleted);
            }
            for name in names {
                self.storage
                    .delete_blob(&self.account, CONTAINER, &name, &Default::default(), None)
                    .map_err(|e| storage_error(&format!("deleting snapshot {name}"), e))?;
                deleted += 1;
            }
        }
    }
}
