//! The fabric: a host daemon that services are deployed to, scaled on, watched and upgraded
//! while it runs (`rolehost serve`).
//!
//! - [`Fabric`] holds the host's services, one engine for all of them (one pool of instance
//!   slots, one compile cache), one embedded storage database (an account per service) and
//!   the hub of guest output. Every change is written to the data directory first, so a
//!   restarted host brings its services back with their instance counts.
//! - [`api`] is the management API (HTTP + JSON on loopback, a bearer token) the CLI talks to.
//! - [`metrics`] renders the Prometheus text format.
//!
//! A deployment is content-addressed: component files (and TLS certificates and keys) are
//! uploaded once by their SHA-256 and kept in `<data dir>/files`; a deployment names them.
//!
//! Architecture Invariant: nothing in a deployment starts until every role's component is
//! compiled and checked against its role's world; a refused deployment changes nothing.

pub mod api;
pub mod metrics;
pub mod snapshots;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rolehost_storage::{Backend, StorageOptions};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::engine::{EngineOptions, build_engine};
use crate::guest_log::LogHub;
use crate::manifest::{ComponentSource, Manifest};
use crate::service::{Progress, Service, ServiceOptions};
use crate::worker::{InstanceStatus, Phase};

/// The file in the data directory that holds the management token.
pub const TOKEN_FILE: &str = "management.token";
/// The file in the data directory that holds the management API's address.
pub const ADDRESS_FILE: &str = "management.url";
/// The file in the data directory that holds the key snapshots are signed with, unless
/// `--snapshot-key` names another (hosts that share storage share it).
pub const SNAPSHOT_KEY_FILE: &str = "snapshot.key";
/// Default most instances a host runs (all services together): the pool's size.
pub const DEFAULT_MAX_INSTANCES: u32 = 4096;

/// What went wrong in a fabric operation.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// No such service.
    #[error("no service named {0:?} is deployed")]
    NoService(String),
    /// No such snapshot in the host's store.
    #[error("no snapshot {0:?} is kept by this host (rolehost freeze prints the ids)")]
    NoSnapshot(String),
    /// A snapshot refused as it is: unsigned, altered, foreign, too large.
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
    /// A request without what it needs.
    #[error("{0}")]
    BadRequest(String),
    /// A new service would silently take over the storage a deleted namesake left.
    #[error(
        "a service named {0} was deleted here and its storage account kept: a new {0} would get its blobs, queues and tables; deploy with --adopt-storage to take them over, or give the service another name"
    )]
    InheritsStorage(String),
    /// A deployment names a file that was not uploaded.
    #[error("{what} (sha256 {sha}) was not uploaded")]
    MissingFile {
        /// What it is.
        what: String,
        /// Its digest.
        sha: String,
    },
    /// An uploaded file does not have the digest it was sent under.
    #[error("the upload's sha256 is {actual}, not {expected}")]
    DigestMismatch {
        /// The name it was sent under.
        expected: String,
        /// What it hashes to.
        actual: String,
    },
    /// Not a SHA-256 in hex.
    #[error("{0:?} is not a sha256 (64 lowercase hex digits)")]
    BadDigest(String),
    /// The manifest is invalid.
    #[error("the manifest is invalid: {0}")]
    Manifest(#[from] crate::error::ManifestError),
    /// More instances than the host has room for.
    #[error(
        "{wanted} instances in all would exceed this host's capacity of {max} (rolehost serve --max-instances)"
    )]
    Capacity {
        /// Instances asked for, all services together.
        wanted: u64,
        /// The host's capacity.
        max: u32,
    },
    /// The instances would take more pool slots (memories, core instances, tables) than the
    /// host's pool has.
    #[error(
        "role {role}: each instance takes {per_instance} {what}; with it the host's instances would take {wanted} of the {available} its pool has (rolehost serve --max-instances)"
    )]
    Pool {
        /// The role that asks the most of that kind.
        role: String,
        /// Which kind of slot.
        what: &'static str,
        /// What one of its instances takes.
        per_instance: u64,
        /// What all instances together would take.
        wanted: u64,
        /// What the pool has.
        available: u64,
    },
    /// The service is stopped.
    #[error("service {0} is stopped (rolehost start {0})")]
    Stopped(String),
    /// The runtime refused.
    #[error(transparent)]
    Runtime(#[from] crate::error::RuntimeError),
    /// The data directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Storage.
    #[error("storage: {0}")]
    Storage(String),
}

impl FabricError {
    /// The HTTP status the management API answers with.
    pub fn status(&self) -> u16 {
        match self {
            FabricError::NoService(_) | FabricError::NoSnapshot(_) => 404,
            FabricError::Stopped(_) | FabricError::InheritsStorage(_) => 409,
            FabricError::Io { .. } | FabricError::Storage(_) => 500,
            _ => 400,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FabricError + '_ {
    move |source| FabricError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The certificate and key of one HTTPS endpoint, by digest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsDigests {
    /// The certificate chain (PEM).
    pub certificate: String,
    /// The key (PEM).
    pub key: String,
}

/// A deployment as the CLI sends it: the manifest's text and the digests of the files it
/// needs (uploaded before).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `rolehost.toml`, as written.
    pub manifest: String,
    /// Each role's component.
    pub components: BTreeMap<String, String>,
    /// Each web role's HTTPS endpoints, in the manifest's order (HTTP endpoints: `None`).
    #[serde(default)]
    pub tls: BTreeMap<String, Vec<Option<TlsDigests>>>,
}

impl Deployment {
    /// The deployment's id: the first 16 hex digits of the SHA-256 of what was deployed (the
    /// manifest and its files), so the same deployment has the same id on every host and
    /// across restarts.
    pub fn id(&self) -> String {
        let text = serde_json::to_vec(self).unwrap_or_default();
        digest(&text)[..16].to_string()
    }
}

/// What the host keeps of a service: its deployment, the instance counts it was scaled to,
/// and whether it is stopped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    deployment: Deployment,
    /// Instance counts changed by `scale` since the deployment.
    #[serde(default)]
    scaled: BTreeMap<String, u32>,
    #[serde(default)]
    stopped: bool,
    /// Instances frozen by `rolehost freeze` and not thawed since, with their snapshot ids:
    /// they stay frozen when the service starts again (a thaw brings them back).
    #[serde(default)]
    frozen: BTreeMap<String, String>,
    /// A delete in progress (written before its first step): a host that died during it
    /// finishes it when it starts again instead of bringing the service back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deleting: Option<Deleting>,
}

/// The intent of a delete.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Deleting {
    /// Its storage account is deleted too.
    purge_storage: bool,
}

/// A service's state as `rolehost status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// `running` or `stopped`.
    pub state: String,
    /// The running deployment's id (empty when stopped).
    pub deployment_id: String,
    /// Its roles.
    pub roles: Vec<RoleStatus>,
    /// Every instance.
    pub instances: Vec<InstanceView>,
}

/// A role of a service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoleStatus {
    /// Its name.
    pub name: String,
    /// `worker` or `web`.
    pub kind: String,
    /// How many instances it should have.
    pub instances: u32,
    /// Where a web role answers.
    pub endpoints: Vec<String>,
}

/// An instance, as `rolehost status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InstanceView {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// starting, running, stopping, recycling, stopped.
    pub state: String,
    /// Times it was recycled.
    pub restarts: u32,
    /// Why it was last recycled.
    pub last_recycle_reason: Option<String>,
    /// Fuel used in all.
    pub fuel: u64,
    /// Its CPU share, fuel per second.
    pub fuel_per_sec: u64,
    /// Linear memory, bytes.
    pub memory_bytes: u64,
    /// Its memory cap.
    pub memory_cap: u64,
    /// Local resources, bytes.
    pub disk_bytes: u64,
    /// Their quota.
    pub disk_quota: u64,
    /// Requests answered (web).
    pub requests: u64,
    /// Messages deleted.
    pub messages_processed: u64,
    /// Messages received again (dequeue count over 1).
    pub redeliveries: u64,
    /// A frozen instance's snapshot (`rolehost thaw` it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// The name of a phase, as status shows it.
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
        Phase::Recycling => "recycling",
        Phase::Stopped => "stopped",
        Phase::Frozen => "frozen",
    }
}

impl From<&InstanceStatus> for InstanceView {
    fn from(s: &InstanceStatus) -> Self {
        InstanceView {
            id: s.instance_id.clone(),
            role: s.role.clone(),
            state: phase_name(s.phase).to_string(),
            restarts: s.restarts,
            last_recycle_reason: s.last_recycle_reason.clone(),
            fuel: s.usage.fuel,
            fuel_per_sec: s.usage.fuel_per_sec,
            memory_bytes: s.usage.memory_bytes,
            memory_cap: s.usage.memory_cap,
            disk_bytes: s.usage.disk_bytes,
            disk_quota: s.usage.disk_quota,
            requests: s.usage.requests,
            messages_processed: s.usage.messages_processed,
            redeliveries: s.usage.redeliveries,
            snapshot: None,
        }
    }
}

/// How to run a host.
#[derive(Clone, Debug)]
pub struct FabricOptions {
    /// Where everything lives: storage, files, service records, local resources, the token.
    pub data_dir: PathBuf,
    /// The storage, when not `<data_dir>/storage.redb`: another redb file (hosts that take
    /// turns on it, one process at a time, share their services' storage, snapshots
    /// included), or a PostgreSQL database several hosts use at once.
    pub storage: Option<crate::storage_location::StorageLocation>,
    /// Connections to a PostgreSQL database (`None`: the engine's default).
    pub storage_pool_size: Option<usize>,
    /// Most instances, all services together.
    pub max_instances: u32,
    /// The snapshot key's file, when not `<data_dir>/snapshot.key`.
    pub snapshot_key: Option<PathBuf>,
    /// Every service's storage quota unless its manifest sets a lower one; no manifest may
    /// set a higher one.
    pub account_quota: rolehost_storage::AccountQuota,
    /// Bytes of the storage database's disk no write may take.
    pub storage_headroom: u64,
    /// Also serve the development account (`devstoreaccount1`, its published key) over the
    /// storage REST endpoints.
    pub dev_storage: bool,
}

/// What status reads of a service without waiting for an operation in progress.
type View = (Record, Option<Arc<Service>>);

struct Hosted {
    record: Record,
    service: Option<Arc<Service>>,
}

/// A host and its services.
pub struct Fabric {
    data_dir: PathBuf,
    engine: wasmtime::Engine,
    storage: Arc<dyn Backend>,
    /// The connections all services' web endpoints hold together.
    connections: Arc<crate::conn::HostBudget>,
    /// Each service's storage account keys, for the storage REST endpoints.
    keys: Arc<rolehost_rest::KeyFiles>,
    snapshots: snapshots::SnapshotStore,
    snapshot_key: crate::freeze::SnapshotKey,
    logs: Arc<LogHub>,
    max_instances: u32,
    /// The slots of the engine's pool ([`crate::engine::pool_totals`]).
    pool: crate::engine::PoolUse,
    /// What one instance of each uploaded component takes from the pool, by its sha.
    pool_use: std::sync::Mutex<BTreeMap<String, crate::engine::PoolUse>>,
    /// Operations on services, one at a time (a deploy may take a while; status does not wait
    /// for it: it reads `view`).
    services: tokio::sync::Mutex<BTreeMap<String, Hosted>>,
    view: std::sync::Mutex<BTreeMap<String, View>>,
}

/// Makes `dir` readable by its owner only (0700).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Makes `file` readable by its owner only (0600).
fn private_file(file: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Makes a rename or removal in `file`'s directory durable.
fn sync_dir(file: &Path) -> Result<(), FabricError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Removes the temporary files of uploads a crash interrupted ([`Fabric::upload_path`]):
/// nothing else would, and each can be as large as a component.
fn remove_interrupted_uploads(files: &Path) {
    let Ok(entries) = std::fs::read_dir(files) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".upload-") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed an interrupted upload")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "could not remove an interrupted upload")
                }
            }
        }
    }
}

/// Is `s` a SHA-256 in lowercase hex?
pub fn valid_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The SHA-256 of `bytes`, in lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

impl Fabric {
    /// Opens the host's data directory (creating it), and brings back the services that were
    /// running when the host last stopped.
    pub async fn open(
        options: FabricOptions,
        progress: Progress<'_>,
    ) -> Result<Arc<Fabric>, FabricError> {
        let data_dir = std::path::absolute(&options.data_dir).map_err(io(&options.data_dir))?;
        for sub in ["files", "services"] {
            let d = data_dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        // Tokens, keys, uploaded TLS keys and every tenant's data live here: the owner's only.
        private_dir(&data_dir).map_err(io(&data_dir))?;
        remove_interrupted_uploads(&data_dir.join("files"));
        let location = options.storage.clone().unwrap_or_else(|| {
            crate::storage_location::StorageLocation::File(
                data_dir.join(crate::service::DATABASE_FILE),
            )
        });
        let storage_options = StorageOptions {
            default_quota: options.account_quota,
            headroom_bytes: options.storage_headroom,
            ..StorageOptions::default()
        };
        let storage =
            crate::storage_location::open(&location, storage_options, options.storage_pool_size)
                .map_err(|e| match e {
                    // These name the file themselves.
                    rolehost_storage::StorageError::InUse(_)
                    | rolehost_storage::StorageError::Damaged { .. } => {
                        FabricError::Storage(e.to_string())
                    }
                    e => FabricError::Storage(format!("{location}: {e}")),
                })?;
        if let crate::storage_location::StorageLocation::File(db) = &location {
            private_file(db).map_err(io(db))?;
        }
        let key_path = options
            .snapshot_key
            .clone()
            .unwrap_or_else(|| data_dir.join(SNAPSHOT_KEY_FILE));
        let pool_capacity = options
            .max_instances
            .saturating_add(options.max_instances / 8 + 16);
        let snapshot_key = crate::freeze::SnapshotKey::open(&key_path)
            .map_err(|e| FabricError::Storage(format!("the snapshot key: {e}")))?;
        let engine = build_engine(&EngineOptions {
            cache_dir: Some(data_dir.join("cache")),
            metering: true,
            // Headroom for upgrades: an upgraded web instance's replacement starts while the
            // old one finishes its request.
            pool_capacity: Some(pool_capacity),
        })
        .map_err(|e| crate::error::RuntimeError::Engine(format!("{e:#}")))?;
        let keys_dir = data_dir.join(crate::storage_rest::KEYS_DIR);
        let keys = rolehost_rest::KeyFiles::open(&keys_dir, options.dev_storage)
            .map_err(|e| FabricError::Storage(format!("the storage keys: {e}")))?;
        let fabric = Arc::new(Fabric {
            keys,
            data_dir,
            engine,
            snapshots: snapshots::SnapshotStore::new(storage.clone()),
            snapshot_key,
            connections: crate::conn::HostBudget::from_fd_limit(),
            storage,
            logs: Arc::new(LogHub::default()),
            max_instances: options.max_instances,
            pool: crate::engine::pool_totals(pool_capacity),
            pool_use: std::sync::Mutex::new(BTreeMap::new()),
            services: tokio::sync::Mutex::new(BTreeMap::new()),
            view: std::sync::Mutex::new(BTreeMap::new()),
        });
        fabric.restore(progress).await?;
        Ok(fabric)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The hub of guest output.
    pub fn logs(&self) -> &Arc<LogHub> {
        &self.logs
    }

    /// The storage accounts' keys.
    pub fn storage_keys(&self) -> &Arc<rolehost_rest::KeyFiles> {
        &self.keys
    }

    /// Wakes the instances of the service owning `account` that wait on `queue` (a message
    /// was put over REST).
    pub fn wake_queue(&self, account: &rolehost_storage::AccountName, queue: &str) {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, Some(service))) = view.get(account.as_str()) {
            service.wake_queue(queue);
        }
    }

    /// The host's storage.
    pub fn storage(&self) -> Arc<dyn Backend> {
        self.storage.clone()
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.data_dir.join("services").join(format!("{name}.json"))
    }

    /// Where the file with `sha` is kept.
    pub fn file_path(&self, sha: &str) -> PathBuf {
        self.data_dir.join("files").join(sha)
    }

    /// Whether the file with `sha` was uploaded.
    pub fn has_file(&self, sha: &str) -> bool {
        valid_digest(sha) && self.file_path(sha).is_file()
    }

    /// Keeps an uploaded file, written to `tmp` (in the data directory) already, if it hashes
    /// to `sha`.
    pub fn keep_file(&self, sha: &str, tmp: &Path, actual: &str) -> Result<(), FabricError> {
        if !valid_digest(sha) {
            let _ = std::fs::remove_file(tmp);
            return Err(FabricError::BadDigest(sha.to_string()));
        }
        if actual != sha {
            let _ = std::fs::remove_file(tmp);
            return Err(FabricError::DigestMismatch {
                expected: sha.to_string(),
                actual: actual.to_string(),
            });
        }
        let path = self.file_path(sha);
        // Uploaded files include TLS private keys.
        private_file(tmp).map_err(io(tmp))?;
        std::fs::rename(tmp, &path).map_err(io(&path))
    }

    /// A temporary file for an upload.
    pub fn upload_path(&self) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.data_dir
            .join("files")
            .join(format!(".upload-{}-{n}", std::process::id()))
    }

    /// Writes a record atomically and durably: a crash, of the process or the machine,
    /// leaves the old one or the new one, and the new one once this returns.
    fn save(&self, name: &str, record: &Record) -> Result<(), FabricError> {
        use std::io::Write;
        let path = self.record_path(name);
        let tmp = path.with_extension("json.tmp");
        let text =
            serde_json::to_vec_pretty(record).map_err(|e| FabricError::Storage(e.to_string()))?;
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&text).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&path)
    }

    /// Removes a record durably.
    fn remove_record(&self, name: &str) -> Result<(), FabricError> {
        let path = self.record_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Turns a deployment into a manifest whose files are the uploaded ones, applying the
    /// instance counts in `scaled`.
    fn resolve(
        &self,
        deployment: &Deployment,
        scaled: &BTreeMap<String, u32>,
    ) -> Result<(Manifest, BTreeMap<String, PathBuf>), FabricError> {
        let base = self.data_dir.join("services").join("rolehost.toml");
        let mut manifest = Manifest::parse(&deployment.manifest, &base)?;
        let mut components = BTreeMap::new();
        for (name, spec) in manifest.roles.iter_mut() {
            let sha = deployment
                .components
                .get(name)
                .ok_or_else(|| FabricError::MissingFile {
                    what: format!("the component of role {name}"),
                    sha: "(none given)".into(),
                })?;
            if !self.has_file(sha) {
                return Err(FabricError::MissingFile {
                    what: format!("the component of role {name}"),
                    sha: sha.clone(),
                });
            }
            let path = self.file_path(sha);
            spec.source = ComponentSource::File(path.clone());
            components.insert(name.clone(), path);
            let tls = deployment.tls.get(name);
            for (i, e) in spec.web.endpoints.iter_mut().enumerate() {
                if let Some(files) = &mut e.tls {
                    let d = tls
                        .and_then(|t| t.get(i))
                        .and_then(Option::as_ref)
                        .ok_or_else(|| FabricError::MissingFile {
                            what: format!(
                                "the certificate of role {name}'s endpoint {}",
                                e.address
                            ),
                            sha: "(none given)".into(),
                        })?;
                    for (what, sha) in [("certificate", &d.certificate), ("key", &d.key)] {
                        if !self.has_file(sha) {
                            return Err(FabricError::MissingFile {
                                what: format!("the {what} of role {name}'s endpoint {}", e.address),
                                sha: sha.clone(),
                            });
                        }
                    }
                    files.certificate = self.file_path(&d.certificate);
                    files.key = self.file_path(&d.key);
                }
            }
            if let Some(n) = scaled.get(name) {
                spec.instances = *n;
            }
        }
        Ok((manifest, components))
    }

    /// Instances of every service but `except`.
    fn instances_besides(services: &BTreeMap<String, Hosted>, except: &str) -> u64 {
        services
            .iter()
            .filter(|(n, h)| n.as_str() != except && h.service.is_some())
            .map(|(_, h)| {
                h.service.as_ref().map_or(0, |s| {
                    s.instance_counts().values().map(|n| u64::from(*n)).sum()
                })
            })
            .sum()
    }

    fn check_capacity(
        &self,
        services: &BTreeMap<String, Hosted>,
        name: &str,
        wanted: u64,
    ) -> Result<(), FabricError> {
        let total = Self::instances_besides(services, name) + wanted;
        if total > u64::from(self.max_instances) {
            return Err(FabricError::Capacity {
                wanted: total,
                max: self.max_instances,
            });
        }
        Ok(())
    }

    /// What one instance of each role of `deployment` takes from the pool (measured once per
    /// uploaded component).
    fn role_pool_use(&self, deployment: &Deployment) -> BTreeMap<String, crate::engine::PoolUse> {
        let mut cache = self.pool_use.lock().unwrap_or_else(|p| p.into_inner());
        deployment
            .components
            .iter()
            .map(|(role, sha)| {
                let u = *cache.entry(sha.clone()).or_insert_with(|| {
                    // Unreadable: counted as nothing here; its compile refuses it by name.
                    std::fs::read(self.file_path(sha))
                        .ok()
                        .and_then(|bytes| crate::engine::pool_use(&bytes))
                        .unwrap_or_default()
                });
                (role.clone(), u)
            })
            .collect()
    }

    /// Refuses `counts` (instances by role) of service `name` (deployment `deployment`) when
    /// with every other service's instances they would take more of the pool than it has:
    /// a component that takes many memories or core instances is admitted by what it takes,
    /// so it cannot stop other tenants' instances from starting.
    fn check_pool(
        &self,
        services: &BTreeMap<String, Hosted>,
        name: &str,
        deployment: &Deployment,
        counts: &BTreeMap<String, u32>,
    ) -> Result<(), FabricError> {
        use crate::engine::PoolUse;
        let mut total = PoolUse::default();
        for (other, h) in services {
            if other == name {
                continue;
            }
            if let Some(s) = &h.service {
                let uses = self.role_pool_use(&h.record.deployment);
                for (role, n) in s.instance_counts() {
                    let u = uses.get(&role).copied().unwrap_or_default();
                    total = total.plus(u.times(u64::from(n)));
                }
            }
        }
        let uses = self.role_pool_use(deployment);
        for (role, n) in counts {
            let u = uses.get(role).copied().unwrap_or_default();
            total = total.plus(u.times(u64::from(*n)));
        }
        if let Some((what, wanted, available)) = total.exceeds(self.pool) {
            let per = |u: &PoolUse| match what {
                "memories" => u.memories,
                "tables" => u.tables,
                _ => u.core_instances,
            };
            let (role, per_instance) = uses
                .iter()
                .filter(|(r, _)| counts.get(*r).is_some_and(|n| *n > 0))
                .map(|(r, u)| (r.clone(), per(u)))
                .max_by_key(|(_, p)| *p)
                .unwrap_or_default();
            return Err(FabricError::Pool {
                role,
                what,
                per_instance,
                wanted,
                available,
            });
        }
        Ok(())
    }

    fn publish(&self, services: &BTreeMap<String, Hosted>) {
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        *view = services
            .iter()
            .map(|(n, h)| (n.clone(), (h.record.clone(), h.service.clone())))
            .collect();
    }

    /// Deploys a service: a new one starts; a running one is upgraded in place, rolling.
    /// Everything is checked before anything changes. Returns the service's name.
    pub async fn deploy(
        &self,
        deployment: Deployment,
        progress: Progress<'_>,
    ) -> Result<String, FabricError> {
        self.deploy_adopting(deployment, false, progress).await
    }

    /// [`Fabric::deploy`]; a new service whose name a service deleted here without purging
    /// its storage had is refused unless `adopt` says to take that storage over.
    pub async fn deploy_adopting(
        &self,
        deployment: Deployment,
        adopt: bool,
        progress: Progress<'_>,
    ) -> Result<String, FabricError> {
        let (manifest, components) = self.resolve(&deployment, &BTreeMap::new())?;
        let name = manifest.service.clone();
        // Refused here, before anything changes, when it asks for more than the host allows.
        self.account_quota(&manifest)?;
        let known = self
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&name);
        if !known && self.snapshots.is_deleted(&name) {
            if !adopt {
                return Err(FabricError::InheritsStorage(name));
            }
            self.snapshots.forget_deleted(&name)?;
        }
        let wanted: u64 = manifest
            .roles
            .values()
            .map(|r| u64::from(r.instances))
            .sum();
        let mut services = self.services.lock().await;
        self.check_capacity(&services, &name, wanted)?;
        let counts = manifest
            .roles
            .iter()
            .map(|(r, spec)| (r.clone(), spec.instances))
            .collect();
        self.check_pool(&services, &name, &deployment, &counts)?;
        let running = services.get(&name).and_then(|h| h.service.clone());
        let previous = services.get(&name).map(|h| h.record.clone());
        // A new deployment: snapshots of the old one cannot be thawed into it.
        let record = Record {
            deployment,
            scaled: BTreeMap::new(),
            stopped: false,
            frozen: BTreeMap::new(),
            deleting: None,
        };
        // The intent, written before anything changes: a host that dies from here on comes
        // back on the new deployment, whole (never on the old one with some new instances).
        self.save(&name, &record)?;
        crate::crash::point("deploy.recorded");
        // Undoes the intent of a deployment that failed: the host goes on as before it.
        let undo = |e: FabricError| {
            let undone = match &previous {
                Some(old) => self.save(&name, old),
                None => self.remove_record(&name),
            };
            if let Err(u) = undone {
                tracing::error!(service = %name, error = %u, "the record of a failed deployment could not be undone");
            }
            e
        };
        match running {
            Some(service) => {
                progress(format!("upgrading service {name} in place"));
                self.set_account_quota(&manifest).map_err(undo)?;
                let id = record.deployment.id();
                service
                    .upgrade(&manifest, &components, Some(id), progress)
                    .await
                    .map_err(|e| undo(e.into()))?;
                crate::crash::point("deploy.done");
                services.insert(
                    name.clone(),
                    Hosted {
                        record,
                        service: Some(service),
                    },
                );
            }
            None => {
                progress(format!("starting service {name}"));
                let service = self
                    .start_service(&record, &manifest, &components, progress)
                    .await
                    .map_err(undo)?;
                crate::crash::point("deploy.done");
                services.insert(
                    name.clone(),
                    Hosted {
                        record,
                        service: Some(Arc::new(service)),
                    },
                );
            }
        }
        self.publish(&services);
        progress(format!("service {name} is running"));
        Ok(name)
    }

    /// The storage quota of `manifest`'s service: the host's, lowered where the manifest says.
    fn account_quota(
        &self,
        manifest: &Manifest,
    ) -> Result<rolehost_storage::AccountQuota, FabricError> {
        Ok(manifest.storage.quota.apply(self.storage.default_quota())?)
    }

    /// Holds the service's account to its quota and its manifest's storage options (the queue
    /// message size limit) from now on.
    fn set_account_quota(&self, manifest: &Manifest) -> Result<(), FabricError> {
        let quota = self.account_quota(manifest)?;
        let account = rolehost_storage::AccountName::new(manifest.service.clone())
            .map_err(|e| FabricError::BadRequest(e.to_string()))?;
        self.storage
            .set_account_options(
                &account,
                Some(rolehost_storage::AccountOptions {
                    queue_message_max_bytes: manifest.storage.queue_message_max_bytes,
                }),
            )
            .map_err(|e| FabricError::BadRequest(e.to_string()))?;
        self.storage.set_quota(&account, Some(quota));
        Ok(())
    }

    async fn start_service(
        &self,
        record: &Record,
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        progress: Progress<'_>,
    ) -> Result<Service, FabricError> {
        self.set_account_quota(manifest)?;
        self.keys.ensure(&manifest.service).map_err(|e| {
            FabricError::Storage(format!("the storage keys of {}: {e}", manifest.service))
        })?;
        let options = ServiceOptions {
            deployment_id: Some(record.deployment.id()),
            frozen: record.frozen.keys().cloned().collect(),
            data_dir: self.data_dir.join("services").join(&manifest.service),
            engine: Some(self.engine.clone()),
            logs: Some(self.logs.clone()),
            snapshot_key: Some(self.snapshot_key.clone()),
            connections: Some(self.connections.clone()),
            ..ServiceOptions::default()
        };
        Ok(Service::start_with_progress(
            manifest,
            components,
            self.storage.clone(),
            options,
            progress,
        )
        .await?)
    }

    /// Brings back every service that was running when the host stopped.
    async fn restore(&self, progress: Progress<'_>) -> Result<(), FabricError> {
        let dir = self.data_dir.join("services");
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read(&path).map_err(io(&path))?;
                match serde_json::from_slice::<Record>(&text) {
                    Ok(r) => records.push(r),
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "unreadable service record; skipped")
                    }
                }
            }
        }
        let mut services = self.services.lock().await;
        for mut record in records {
            if let Some(d) = record.deleting {
                let Ok(m) = Manifest::parse(
                    &record.deployment.manifest,
                    &self.data_dir.join("services").join("rolehost.toml"),
                ) else {
                    tracing::error!(
                        "an unreadable record of a service being deleted; left as it is"
                    );
                    continue;
                };
                tracing::info!(service = %m.service, "finishing the delete a crash interrupted");
                if let Err(e) = self.finish_delete(&m.service, d.purge_storage) {
                    tracing::error!(service = %m.service, error = %e, "could not finish deleting a service");
                }
                continue;
            }
            // Snapshots are kept in the host's own store; one it does not have (kept where
            // its guest could change it, by an earlier rolehost) is not trusted: the instance
            // starts afresh rather than staying frozen for ever.
            let missing: Vec<(String, String)> = record
                .frozen
                .iter()
                .filter(|(_, id)| !self.snapshots.contains(id))
                .map(|(i, id)| (i.clone(), id.clone()))
                .collect();
            for (instance, id) in missing {
                tracing::warn!(
                    instance = %instance, snapshot = %id,
                    "the host's snapshot store has no snapshot of this frozen instance; it starts afresh"
                );
                record.frozen.remove(&instance);
            }
            let (manifest, components) = match self.resolve(&record.deployment, &record.scaled) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "a deployed service cannot be brought back");
                    continue;
                }
            };
            let name = manifest.service.clone();
            let service = if record.stopped {
                None
            } else {
                progress(format!("bringing back service {name}"));
                match self
                    .start_service(&record, &manifest, &components, progress)
                    .await
                {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        tracing::error!(service = %name, error = %e, "could not start a deployed service");
                        None
                    }
                }
            };
            services.insert(name, Hosted { record, service });
        }
        self.publish(&services);
        Ok(())
    }

    /// Sets the instance count of a role of a running service.
    pub async fn scale(&self, name: &str, role: &str, n: u32) -> Result<(), FabricError> {
        let mut services = self.services.lock().await;
        let hosted = services
            .get(name)
            .ok_or_else(|| FabricError::NoService(name.to_string()))?;
        let service = hosted
            .service
            .clone()
            .ok_or_else(|| FabricError::Stopped(name.to_string()))?;
        let mut counts = service.instance_counts();
        if !counts.contains_key(role) {
            // Let the service name the roles it has.
            service.scale(role, n).await?;
        }
        counts.insert(role.to_string(), n);
        let wanted: u64 = counts.values().map(|n| u64::from(*n)).sum();
        self.check_capacity(&services, name, wanted)?;
        self.check_pool(&services, name, &hosted.record.deployment, &counts)?;
        let mut record = hosted.record.clone();
        record.scaled.insert(role.to_string(), n);
        // Written first: a host that dies mid-scale comes back at the new count.
        self.save(name, &record)?;
        crate::crash::point("scale.recorded");
        service.scale(role, n).await?;
        if let Some(h) = services.get_mut(name) {
            h.record = record;
        }
        self.publish(&services);
        Ok(())
    }

    /// Stops every instance of a service; it stays deployed (and stopped across restarts).
    /// The stop never depends on the record: when it cannot be written (a full or failing
    /// disk) the instances stop all the same, and the returned warning says the service will
    /// run again when the host restarts.
    pub async fn stop(&self, name: &str) -> Result<Option<String>, FabricError> {
        let mut services = self.services.lock().await;
        let hosted = services
            .get_mut(name)
            .ok_or_else(|| FabricError::NoService(name.to_string()))?;
        let mut record = hosted.record.clone();
        record.stopped = true;
        let warning = match self.save(name, &record) {
            Ok(()) => None,
            Err(e) => {
                tracing::error!(service = name, error = %e, "the record of a stop could not be written; stopping all the same");
                Some(format!(
                    "the service is stopped, but its record could not be written ({e}): it runs \
                     again when the host restarts"
                ))
            }
        };
        hosted.record = record;
        if let Some(service) = hosted.service.take() {
            service.stop().await;
        }
        self.publish(&services);
        Ok(warning)
    }

    /// Starts a stopped service again, with the instance counts it had.
    pub async fn start(&self, name: &str, progress: Progress<'_>) -> Result<(), FabricError> {
        let mut services = self.services.lock().await;
        let hosted = services
            .get(name)
            .ok_or_else(|| FabricError::NoService(name.to_string()))?;
        if hosted.service.is_some() {
            return Ok(());
        }
        let mut record = hosted.record.clone();
        let (manifest, components) = self.resolve(&record.deployment, &record.scaled)?;
        let wanted: u64 = manifest
            .roles
            .values()
            .map(|r| u64::from(r.instances))
            .sum();
        self.check_capacity(&services, name, wanted)?;
        let counts = manifest
            .roles
            .iter()
            .map(|(r, spec)| (r.clone(), spec.instances))
            .collect();
        self.check_pool(&services, name, &record.deployment, &counts)?;
        let service = self
            .start_service(&record, &manifest, &components, progress)
            .await?;
        record.stopped = false;
        self.save(name, &record)?;
        services.insert(
            name.to_string(),
            Hosted {
                record,
                service: Some(Arc::new(service)),
            },
        );
        self.publish(&services);
        Ok(())
    }

    /// Stops and forgets a service. Its storage account (blobs, queues, tables) is deleted
    /// only when `purge_storage` says so.
    /// The intent is written first; a host that dies during the delete finishes it when it
    /// starts again (every step can be done twice).
    pub async fn delete(&self, name: &str, purge_storage: bool) -> Result<(), FabricError> {
        let mut services = self.services.lock().await;
        let hosted = services
            .get_mut(name)
            .ok_or_else(|| FabricError::NoService(name.to_string()))?;
        let mut record = hosted.record.clone();
        record.deleting = Some(Deleting { purge_storage });
        self.save(name, &record)?;
        crate::crash::point("delete.recorded");
        let hosted = services.remove(name);
        if let Some(service) = hosted.and_then(|h| h.service) {
            service.stop().await;
        }
        self.publish(&services);
        self.finish_delete(name, purge_storage)
    }

    /// The steps of a delete after its instances stopped, each safe to do again: what the
    /// account keeps is remembered (or purged), snapshots and local resources go, and the
    /// record last.
    fn finish_delete(&self, name: &str, purge_storage: bool) -> Result<(), FabricError> {
        // Kept storage is remembered, so a new service of this name does not get it silently.
        if purge_storage {
            self.snapshots.forget_deleted(name)?;
        } else {
            self.snapshots.note_deleted(name)?;
        }
        let deleted = self.snapshots.delete_service(name)?;
        if deleted > 0 {
            tracing::info!(service = name, snapshots = deleted, "snapshots deleted");
        }
        if purge_storage {
            purge_account(&*self.storage, name)?;
            self.keys
                .remove(name)
                .map_err(|e| FabricError::Storage(format!("the storage keys of {name}: {e}")))?;
        }
        crate::crash::point("delete.storage");
        let local = self.data_dir.join("services").join(name);
        if local.exists() {
            crate::worker::remove_tree_later(&local).map_err(io(&local))?;
        }
        if let Ok(account) = rolehost_storage::AccountName::new(name) {
            self.storage.set_quota(&account, None);
            let _ = self.storage.set_account_options(&account, None);
        }
        self.remove_record(name)
    }

    /// Freezes `instance` of service `name` and keeps the snapshot in the host's snapshot
    /// store ([`snapshots`]), where any host sharing this storage (and the snapshot key) can
    /// thaw it; the instance is recorded frozen only once its snapshot is kept. Returns the
    /// snapshot's id and the file. `wait` bounds the wait for a busy web instance
    /// ([`Service::freeze_within`]).
    pub async fn freeze(
        &self,
        name: &str,
        instance: &str,
        wait: Option<Duration>,
    ) -> Result<(String, Vec<u8>), FabricError> {
        let service = self.running_service(name)?;
        let file = service.freeze_within(instance, wait).await?;
        let (header, _) =
            crate::freeze::header(&file).map_err(|e| FabricError::Storage(e.to_string()))?;
        let id = snapshots::snapshot_id(&header);
        let kept = {
            let (store, id, file, header) = (
                snapshots::SnapshotStore::new(self.storage.clone()),
                id.clone(),
                file.clone(),
                header.clone(),
            );
            tokio::task::spawn_blocking(move || store.put(&id, &header, &file))
                .await
                .map_err(|e| FabricError::Storage(e.to_string()))?
        };
        kept?;
        crate::crash::point("freeze.stored");
        self.note_frozen(name, &header.deployment_id, instance, &id)
            .await?;
        crate::crash::point("freeze.recorded");
        tracing::info!(service = name, instance, snapshot = %id, bytes = file.len(), "frozen");
        Ok((id, file))
    }

    /// Thaws a snapshot, given whole (`file`, trusted only when its signature checks) or by
    /// id (from the host's snapshot store, whose record names the service it thaws into).
    /// A thaw is admitted like a start: within the host's capacity, into a slot the host
    /// chooses. Returns the instance's id.
    pub async fn thaw(
        &self,
        id: Option<&str>,
        file: Option<Vec<u8>>,
    ) -> Result<String, FabricError> {
        let (file, id, record) = match (file, id) {
            (Some(f), _) => {
                // Routing only: the service's check below authenticates it.
                let (h, _) = crate::freeze::header(&f).map_err(refused)?;
                (f, snapshots::snapshot_id(&h), None)
            }
            (None, Some(id)) => {
                let store = snapshots::SnapshotStore::new(self.storage.clone());
                let wanted = id.to_string();
                let (record, f) = tokio::task::spawn_blocking(move || store.get(&wanted))
                    .await
                    .map_err(|e| FabricError::Storage(e.to_string()))??;
                (f, id.to_string(), Some(record))
            }
            (None, None) => {
                return Err(FabricError::BadRequest(
                    "a thaw needs a snapshot id or file".into(),
                ));
            }
        };
        let target = match &record {
            Some(r) => r.service.clone(),
            None => crate::freeze::header(&file).map_err(refused)?.0.service,
        };
        let mut services = self.services.lock().await;
        let service = services
            .get(&target)
            .ok_or_else(|| FabricError::NoService(target.clone()))?
            .service
            .clone()
            .ok_or_else(|| FabricError::Stopped(target.clone()))?;
        let header = service.check_snapshot(&file)?;
        if let Some(r) = &record
            && !r.agrees_with(&header)
        {
            return Err(FabricError::SnapshotRefused(format!(
                "snapshot {id} does not match the host's record of it (the record says {}/{} of \
                 deployment {}); it is damaged",
                r.service, r.instance, r.deployment
            )));
        }
        // One instance more runs, whichever slot it takes.
        let running: u64 = service
            .instance_counts()
            .values()
            .map(|n| u64::from(*n))
            .sum();
        self.check_capacity(&services, &target, running + 1)?;
        let mut counts = service.instance_counts();
        *counts.entry(header.role.clone()).or_insert(0) += 1;
        if let Some(h) = services.get(&target) {
            self.check_pool(&services, &target, &h.record.deployment, &counts)?;
        }
        let grows = !service.has_frozen_slot(&header.role);
        let instance = service.thaw_checked(&header, &file, &id).await?;
        if let Some(hosted) = services.get_mut(&target)
            && hosted.record.deployment.id() == header.deployment_id
        {
            let mut record = hosted.record.clone();
            record.frozen.remove(&instance);
            if grows {
                // The new instance stays across a restart.
                let n = service.slot_count(&header.role);
                record.scaled.insert(header.role.clone(), n);
            }
            self.save(&target, &record)?;
            hosted.record = record;
        }
        self.publish(&services);
        Ok(instance)
    }

    /// Records that `instance` of service `name` (running deployment `deployment`) is frozen
    /// in snapshot `snapshot`.
    async fn note_frozen(
        &self,
        name: &str,
        deployment: &str,
        instance: &str,
        snapshot: &str,
    ) -> Result<(), FabricError> {
        let mut services = self.services.lock().await;
        let Some(hosted) = services.get_mut(name) else {
            return Ok(());
        };
        if hosted.record.deployment.id() != deployment {
            return Ok(());
        }
        let mut record = hosted.record.clone();
        record
            .frozen
            .insert(instance.to_string(), snapshot.to_string());
        self.save(name, &record)?;
        hosted.record = record;
        self.publish(&services);
        Ok(())
    }

    fn running_service(&self, name: &str) -> Result<Arc<Service>, FabricError> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        match view.get(name) {
            None => Err(FabricError::NoService(name.to_string())),
            Some((_, None)) => Err(FabricError::Stopped(name.to_string())),
            Some((_, Some(s))) => Ok(s.clone()),
        }
    }

    /// Every service's status.
    pub fn status(&self) -> Vec<ServiceStatus> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner()).clone();
        view.into_iter()
            .map(|(name, (record, service))| {
                let parsed = self.resolve(&record.deployment, &record.scaled).ok();
                let (state, deployment_id, instances, counts, endpoints) = match &service {
                    Some(s) => (
                        "running",
                        s.deployment_id(),
                        s.status()
                            .iter()
                            .map(|i| InstanceView {
                                snapshot: record.frozen.get(&i.instance_id).cloned(),
                                ..InstanceView::from(i)
                            })
                            .collect(),
                        s.instance_counts(),
                        s.endpoints(),
                    ),
                    None => (
                        "stopped",
                        String::new(),
                        Vec::new(),
                        BTreeMap::new(),
                        Vec::new(),
                    ),
                };
                let roles = parsed
                    .map(|(m, _)| {
                        m.roles
                            .values()
                            .map(|r| RoleStatus {
                                name: r.name.clone(),
                                kind: match r.kind {
                                    crate::manifest::RoleKind::Worker => "worker".into(),
                                    crate::manifest::RoleKind::Web => "web".into(),
                                },
                                instances: counts.get(&r.name).copied().unwrap_or(r.instances),
                                endpoints: endpoints
                                    .iter()
                                    .filter(|(role, _)| *role == r.name)
                                    .map(|(_, a)| a.to_string())
                                    .collect(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ServiceStatus {
                    name,
                    state: state.into(),
                    deployment_id,
                    roles,
                    instances,
                }
            })
            .collect()
    }

    /// The running services.
    pub fn running(&self) -> Vec<Arc<Service>> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        view.values().filter_map(|(_, s)| s.clone()).collect()
    }

    /// Stops every service (the host is shutting down); their records stay, so they come
    /// back when the host starts again.
    pub async fn shutdown(&self) {
        let mut services = self.services.lock().await;
        for (name, h) in services.iter_mut() {
            if let Some(s) = h.service.take() {
                tracing::info!(service = %name, "stopping");
                s.stop().await;
            }
        }
        self.publish(&services);
    }
}

/// A snapshot refused as it is (bad input: a 400).
fn refused(e: crate::freeze::FreezeError) -> FabricError {
    FabricError::SnapshotRefused(e.to_string())
}

/// Deletes every container, queue and table of account `name`.
fn purge_account(storage: &dyn Backend, name: &str) -> Result<(), FabricError> {
    use rolehost_storage::ListOptions;
    let account = rolehost_storage::AccountName::new(name.to_string())
        .map_err(|e| FabricError::Storage(e.to_string()))?;
    let all = ListOptions::default();
    let err =
        |e: &dyn std::fmt::Display| FabricError::Storage(format!("purging account {name}: {e}"));
    // Each pass deletes what one listing shows, until a listing is empty.
    let drain = |list: &dyn Fn() -> Result<Vec<String>, FabricError>,
                 delete: &dyn Fn(&str) -> Result<(), FabricError>| loop {
        let names = list()?;
        if names.is_empty() {
            return Ok::<(), FabricError>(());
        }
        for n in &names {
            delete(n)?;
        }
    };
    drain(
        &|| {
            let page = storage
                .list_containers(&account, &all)
                .map_err(|e| err(&e))?;
            Ok(page.items.into_iter().map(|c| c.name).collect())
        },
        &|c| {
            storage
                .delete_container(&account, c, &Default::default(), None)
                .map_err(|e| err(&e))
        },
    )?;
    drain(
        &|| {
            let page = storage.list_queues(&account, &all).map_err(|e| err(&e))?;
            Ok(page.items.into_iter().map(|q| q.name).collect())
        },
        &|q| storage.delete_queue(&account, q).map_err(|e| err(&e)),
    )?;
    drain(
        &|| {
            Ok(storage
                .list_tables(&account, &all)
                .map_err(|e| err(&e))?
                .items)
        },
        &|t| storage.delete_table(&account, t).map_err(|e| err(&e)),
    )?;
    storage.clear_settings(&account).map_err(|e| err(&e))
}
