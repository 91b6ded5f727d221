//! `rolehost.toml`: the service manifest (Azure's ServiceDefinition and ServiceConfiguration in
//! one file).
//!
//! ```toml
//! [service]
//! name = "demo"                 # also the storage account: 3-63 lowercase letters and digits
//!
//! [storage]
//! data-dir = ".rolehost"        # relative to this file; `rolehost run --data-dir` overrides
//! url = "postgres://..."        # storage in PostgreSQL instead of <data-dir>/storage.redb
//! pool-size = 16                # connections to it (1-64); `rolehost run --storage` overrides
//! queue-message-max-bytes = 8192 # the account's own message limit (1-65536), on any host
//!
//! [storage.quota]               # what the service's account may store; each at most (and by
//! max-mb = 10240                # default) what the host allows: `rolehost serve --account-quota`
//! max-containers = 1000
//! max-blobs = 1000000
//! max-queues = 1000
//! max-messages = 1000000
//! max-tables = 1000
//! max-entities = 1000000
//!
//! [storage.endpoints]           # `rolehost run`'s storage REST endpoints (Azure-compatible);
//! blob = "127.0.0.1:10000"      # "off" turns one off; the --blob-listen flags override
//! queue = "127.0.0.1:10001"
//! table = "127.0.0.1:10002"
//! certificate = "tls/cert.pem"  # HTTPS (both or neither)
//! key = "tls/key.pem"
//! dev-storage = false           # also serve devstoreaccount1 (loopback only)
//!
//! [roles.Counter]
//! kind = "worker"               # "worker" or "web"
//! crate = "counter"             # a guest crate to build, or: component = "counter.wasm"
//! instances = 2
//! vm-size = "Small"             # ExtraSmall, Small, Medium, Large, ExtraLarge
//! grace-period-secs = 30        # how long a stopping instance gets before it is interrupted
//! recycle-backoff-ms = 1000     # first wait before a failed instance restarts (doubles, max 60 s)
//!
//! [roles.Counter.settings]
//! queue = "increments"
//!
//! [[roles.Counter.local-resources]]
//! name = "scratch"
//! size-mb = 100
//! clean-on-recycle = true
//!
//! [roles.Web]
//! kind = "web"                  # answers HTTP: exports wasi:http/incoming-handler
//! crate = "hello-web"
//! instances = 4
//! request-timeout-ms = 30000    # a handler running longer is interrupted: 504
//! max-queued-requests = 100     # requests waiting for an idle instance; more get 503
//! max-body-bytes = 67108864     # larger request bodies get 413
//! max-header-bytes = 65536      # larger request heads get 431 (8192..=1048576)
//! max-connections = 1024        # per endpoint; at the cap the quietest idle one makes room
//! header-timeout-ms = 10000     # a request head must arrive within this of its first byte
//! idle-timeout-ms = 60000       # no byte moved while no handler runs: closed
//! handshake-timeout-ms = 10000  # a TLS handshake
//! idle-freeze-ms = 60000        # scale to zero: freeze an instance idle this long (memory
//!                               # kept warm on the host); a request (web) or a message in a
//!                               # queue it reads (worker) thaws it
//! outbound-hosts = ["api.example.com", "127.0.0.1:9000"]   # outbound HTTP; none by default
//! [[roles.Web.endpoints]]
//! port = 8080                   # 0: any free port
//! address = "127.0.0.1"         # the default
//! [[roles.Web.endpoints]]
//! protocol = "https"            # "http" (the default) or "https"
//! port = 8443
//! certificate = "tls/cert.pem"  # PEM chain, leaf first
//! key = "tls/key.pem"
//!
//! [roles.Counter.limits]        # overrides of the VM size (all optional)
//! cpu-cores = 0.5               # CPU share in reference cores (a 1.6 GHz 2008 core)
//! memory-mb = 512               # linear memory cap
//! local-storage-mb = 1024       # total the local resources may declare
//! call-fuel-budget = 5000000000 # fuel a call may use without calling the host
//! ```
//!
//! Every error names the offending key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ManifestError, RuntimeError};
use crate::quota::{Limits, REFERENCE_CORE_FUEL_PER_SEC, WASM32_MAX_MEMORY};

/// The file name `rolehost run <dir>` looks for.
pub const MANIFEST_FILE: &str = "rolehost.toml";
/// Default grace period of a stopping instance (Azure's 30 s).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default first backoff before a recycled instance restarts.
pub const DEFAULT_RECYCLE_BACKOFF: Duration = Duration::from_secs(1);
/// Most instances of one role on one host.
pub const MAX_INSTANCES: u32 = 10_000;
/// Longest grace period: a stop waits this long at most per instance, and durations past
/// it overflowed the host's clock arithmetic (a stop panicked at `u64::MAX` seconds).
pub const MAX_GRACE: Duration = Duration::from_secs(3600);
/// Longest first recycle backoff (backoffs double up to a minute from there).
pub const MAX_RECYCLE_BACKOFF: Duration = Duration::from_secs(600);
/// Longest request timeout of a web role.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest idle time before an idle instance is frozen.
pub const MAX_IDLE_FREEZE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most requests waiting in front of one web role: each holds a connection and its head.
pub const MAX_QUEUED_LIMIT: usize = 100_000;
/// Largest request body limit (Azure's largest single Put Blob).
pub const MAX_BODY_LIMIT: u64 = 5000 << 20;
/// Smallest request head limit: hyper's read buffer is at least 8 KiB.
pub const MIN_HEADER_LIMIT: usize = 8 << 10;
/// Largest request head limit: each connection may hold this much before its request runs.
pub const MAX_HEADER_LIMIT: usize = 1 << 20;
/// Most settings of one role; each goes into every instance's environment and snapshot.
pub const MAX_SETTINGS: usize = 256;
/// Longest setting name and value, in bytes.
pub const MAX_SETTING_BYTES: usize = 64 << 10;
/// Most local resources of one role.
pub const MAX_LOCAL_RESOURCES: usize = 64;
/// Most endpoints of one web role.
pub const MAX_ENDPOINTS: usize = 16;
/// Most entries of a role's outbound allow-list.
pub const MAX_OUTBOUND_HOSTS: usize = 256;
/// Largest local storage override, in MB (1 TiB).
pub const MAX_LOCAL_STORAGE_MB: u64 = 1 << 20;

/// Refuses `value` (at `key`) outside `range`, naming both.
fn within<T: PartialOrd + std::fmt::Display>(
    key: String,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ManifestError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ManifestError::invalid(
            key,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ))
    }
}

/// A parsed, validated manifest with paths resolved against its directory.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Where the file is.
    pub path: PathBuf,
    /// The service name (and storage account).
    pub service: String,
    /// Storage settings.
    pub storage: StorageSettings,
    /// The roles, by name.
    pub roles: BTreeMap<String, RoleSpec>,
}

/// `[storage]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageSettings {
    /// The data directory (database, local resources, compile cache).
    pub data_dir: PathBuf,
    /// The queue message size limit.
    pub queue_message_max_bytes: usize,
    /// `[storage] url`: where the storage is, when not `<data_dir>/storage.redb`.
    pub url: Option<crate::storage_location::StorageLocation>,
    /// `[storage] pool-size`: connections to a PostgreSQL database.
    pub pool_size: Option<usize>,
    /// `[storage.quota]`: the limits the manifest sets (the host's for the others).
    pub quota: QuotaSettings,
    /// `[storage.endpoints]`: where `rolehost run` serves storage over REST.
    pub endpoints: crate::storage_rest::EndpointSettings,
}

/// `[storage.quota]`: the limits a service sets for its account; the others are the host's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaSettings {
    limits: Vec<(rolehost_storage::Resource, u64)>,
}

impl QuotaSettings {
    /// The manifest's key of a resource.
    pub fn key(r: rolehost_storage::Resource) -> &'static str {
        use rolehost_storage::Resource as R;
        match r {
            R::Bytes => "storage.quota.max-mb",
            R::Containers => "storage.quota.max-containers",
            R::Blobs => "storage.quota.max-blobs",
            R::Queues => "storage.quota.max-queues",
            R::Messages => "storage.quota.max-messages",
            R::Tables => "storage.quota.max-tables",
            R::Entities => "storage.quota.max-entities",
        }
    }

    /// The account's quota: the host's `ceiling` with the manifest's limits applied, or the
    /// first limit above the ceiling (its key, the limit asked for and the host's, in the
    /// manifest's unit).
    pub fn apply(
        &self,
        ceiling: rolehost_storage::AccountQuota,
    ) -> Result<rolehost_storage::AccountQuota, ManifestError> {
        let mut q = ceiling;
        for (r, limit) in &self.limits {
            if *limit > ceiling.get(*r) {
                let shown = |n: u64| match r {
                    rolehost_storage::Resource::Bytes => format!("{} MB", n >> 20),
                    _ => n.to_string(),
                };
                return Err(ManifestError::invalid(
                    Self::key(*r),
                    format!(
                        "{} is more than this host allows ({})",
                        shown(*limit),
                        shown(ceiling.get(*r))
                    ),
                ));
            }
            q.set(*r, *limit);
        }
        Ok(q)
    }
}

/// Worker or web.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleKind {
    /// A background loop (exports the worker lifecycle).
    Worker,
    /// An HTTP endpoint (exports `wasi:http/incoming-handler`).
    Web,
}

/// Where a role's component comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentSource {
    /// A component file.
    File(PathBuf),
    /// A guest crate to build for wasm32-wasip2.
    Crate(PathBuf),
}

/// An Azure VM size: one name for all of an instance's limits (enforced by the quotas layer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VmSize {
    /// A fraction of a core, 768 MB.
    ExtraSmall,
    /// One core, 1.7 GB (the 2008 VM).
    #[default]
    Small,
    /// Two cores, 3.5 GB.
    Medium,
    /// Four cores, 7 GB.
    Large,
    /// Eight cores, 14 GB.
    ExtraLarge,
}

impl VmSize {
    /// Parses a size name, ignoring case, dashes and underscores (`extra-small` = `ExtraSmall`).
    pub fn parse(s: &str) -> Option<Self> {
        let key: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Some(match key.as_str() {
            "extrasmall" => VmSize::ExtraSmall,
            "small" => VmSize::Small,
            "medium" => VmSize::Medium,
            "large" => VmSize::Large,
            "extralarge" => VmSize::ExtraLarge,
            _ => return None,
        })
    }
}

/// A local resource of a role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResourceSpec {
    /// Its name; the guest sees it at `/local/<name>`.
    pub name: String,
    /// Its quota in bytes.
    pub size_bytes: u64,
    /// Wipe it when the instance is recycled (it is always wiped when the instance stops).
    pub clean_on_recycle: bool,
}

/// An HTTP endpoint of a web role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Where to listen (port 0: any free port).
    pub address: std::net::SocketAddr,
    /// For HTTPS: the certificate chain and private key files (PEM).
    pub tls: Option<TlsFiles>,
}

/// The PEM files of an HTTPS endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub certificate: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How a web role takes requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebSpec {
    /// Its endpoints.
    pub endpoints: Vec<EndpointSpec>,
    /// A handler running longer is interrupted (504); also the longest wait for an idle
    /// instance.
    pub request_timeout: Duration,
    /// Requests that may wait for an idle instance; more get 503.
    pub max_queued_requests: usize,
    /// Largest request body; a larger one gets 413 (streamed bodies are cut off there).
    pub max_body_bytes: u64,
    /// Largest request head (request line and headers); a larger one gets 431.
    pub max_header_bytes: usize,
    /// Each endpoint's connection cap and deadlines (`max-connections`,
    /// `header-timeout-ms`, `idle-timeout-ms`, `handshake-timeout-ms`).
    pub connections: crate::conn::ConnLimits,
}

/// Default request timeout of web roles.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound of the queue in front of a web role.
pub const DEFAULT_MAX_QUEUED: usize = 100;
/// Default request body limit of web roles (the 2008 blob limit).
pub const DEFAULT_MAX_BODY: u64 = 64 << 20;
/// Default request head limit of web roles.
pub const DEFAULT_MAX_HEADER: usize = 64 << 10;

/// One role.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleSpec {
    /// Its name.
    pub name: String,
    /// Worker or web.
    pub kind: RoleKind,
    /// Its component.
    pub source: ComponentSource,
    /// How many instances.
    pub instances: u32,
    /// Its VM size.
    pub vm_size: VmSize,
    /// The limits of its instances: the VM size's, with the manifest's overrides.
    pub limits: Limits,
    /// Grace period of a stopping instance.
    pub grace_period: Duration,
    /// First backoff before a recycled instance restarts.
    pub recycle_backoff: Duration,
    /// Configuration settings, sorted by name.
    pub settings: Vec<(String, String)>,
    /// Local resources.
    pub local_resources: Vec<LocalResourceSpec>,
    /// Web role settings (empty for workers).
    pub web: WebSpec,
    /// Scale to zero with warm memory: an instance idle this long (a web instance without a
    /// request, a worker without a queue message) is frozen, its memory kept on the host,
    /// compiled; demand (a request; a message in a queue it polls) thaws it.
    pub idle_freeze: Option<Duration>,
    /// Hosts (`host` or `host:port`) its instances may send HTTP requests to; none by default.
    pub outbound_hosts: Vec<String>,
}

impl RoleSpec {
    /// The local resources' quotas together.
    pub fn local_resource_bytes(&self) -> u64 {
        self.local_resources.iter().map(|r| r.size_bytes).sum()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    service: ServiceSection,
    #[serde(default)]
    storage: StorageSection,
    #[serde(default)]
    roles: BTreeMap<String, RoleSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ServiceSection {
    name: String,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct StorageSection {
    data_dir: Option<PathBuf>,
    url: Option<String>,
    pool_size: Option<usize>,
    queue_message_max_bytes: Option<usize>,
    #[serde(default)]
    quota: QuotaSection,
    #[serde(default)]
    endpoints: EndpointsSection,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EndpointsSection {
    blob: Option<String>,
    queue: Option<String>,
    table: Option<String>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
    dev_storage: Option<bool>,
}

impl EndpointsSection {
    fn settings(self, base: &Path) -> Result<crate::storage_rest::EndpointSettings, ManifestError> {
        use crate::storage_rest as r;
        let addr = |key: &'static str, v: Option<String>, default| match v {
            None => Ok(Some(default)),
            Some(v) => r::parse_listen(&v).map_err(|e| ManifestError::invalid(key, e)),
        };
        let tls = match (self.certificate, self.key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some(TlsFiles {
                certificate: base.join(c),
                key: base.join(k),
            }),
            _ => {
                return Err(ManifestError::invalid(
                    "storage.endpoints.certificate",
                    "certificate and key go together",
                ));
            }
        };
        Ok(r::EndpointSettings {
            blob: addr("storage.endpoints.blob", self.blob, r::DEFAULT_BLOB)?,
            queue: addr("storage.endpoints.queue", self.queue, r::DEFAULT_QUEUE)?,
            table: addr("storage.endpoints.table", self.table, r::DEFAULT_TABLE)?,
            tls,
            dev_storage: self.dev_storage.unwrap_or(false),
            limits: crate::conn::ConnLimits::default(),
        })
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct QuotaSection {
    max_mb: Option<u64>,
    max_containers: Option<u64>,
    max_blobs: Option<u64>,
    max_queues: Option<u64>,
    max_messages: Option<u64>,
    max_tables: Option<u64>,
    max_entities: Option<u64>,
}

/// Largest `storage.quota.max-mb`: 1 PiB (Azure's largest accounts hold 5).
pub const MAX_QUOTA_MB: u64 = 1 << 30;

impl QuotaSection {
    fn settings(&self) -> Result<QuotaSettings, ManifestError> {
        use rolehost_storage::Resource as R;
        let mut limits = Vec::new();
        if let Some(mb) = self.max_mb {
            let mb = within(QuotaSettings::key(R::Bytes).into(), mb, 0..=MAX_QUOTA_MB)?;
            limits.push((R::Bytes, mb << 20));
        }
        for (r, v) in [
            (R::Containers, self.max_containers),
            (R::Blobs, self.max_blobs),
            (R::Queues, self.max_queues),
            (R::Messages, self.max_messages),
            (R::Tables, self.max_tables),
            (R::Entities, self.max_entities),
        ] {
            if let Some(n) = v {
                limits.push((
                    r,
                    within(QuotaSettings::key(r).into(), n, 0..=u64::from(u32::MAX))?,
                ));
            }
        }
        Ok(QuotaSettings { limits })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RoleSection {
    kind: RoleKind,
    component: Option<PathBuf>,
    #[serde(rename = "crate")]
    krate: Option<PathBuf>,
    #[serde(default = "one")]
    instances: u32,
    vm_size: Option<String>,
    grace_period_secs: Option<u64>,
    recycle_backoff_ms: Option<u64>,
    #[serde(default)]
    settings: BTreeMap<String, toml::Value>,
    #[serde(default)]
    local_resources: Vec<LocalResourceSection>,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    endpoints: Vec<EndpointSection>,
    request_timeout_ms: Option<u64>,
    max_queued_requests: Option<usize>,
    max_body_bytes: Option<u64>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_freeze_ms: Option<u64>,
    #[serde(default)]
    outbound_hosts: Vec<String>,
}

/// `[[roles.<name>.endpoints]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct EndpointSection {
    port: u16,
    #[serde(default = "loopback")]
    address: std::net::IpAddr,
    #[serde(default = "http")]
    protocol: String,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
}

fn loopback() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

fn http() -> String {
    "http".into()
}

/// `[roles.<name>.limits]`: overrides of the VM size's limits.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LimitsSection {
    cpu_cores: Option<f64>,
    memory_mb: Option<u64>,
    local_storage_mb: Option<u64>,
    call_fuel_budget: Option<u64>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LocalResourceSection {
    name: String,
    size_mb: u64,
    #[serde(default = "yes")]
    clean_on_recycle: bool,
}

fn yes() -> bool {
    true
}

impl Manifest {
    /// Reads the manifest at `path`, or `<path>/rolehost.toml` when `path` is a directory.
    pub fn load(path: &Path) -> Result<Manifest, RuntimeError> {
        let file = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        // Absolute, so paths resolved against it stay right whatever the working directory.
        let file = std::path::absolute(&file).map_err(|source| RuntimeError::Io {
            path: file.clone(),
            source,
        })?;
        let text = std::fs::read_to_string(&file).map_err(|source| RuntimeError::Io {
            path: file.clone(),
            source,
        })?;
        Manifest::parse(&text, &file)
            .map_err(|source| RuntimeError::Manifest { path: file, source })
    }

    /// Parses manifest text; relative paths resolve against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let file: File = toml::from_str(text)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let service = file.service.name;
        rolehost_storage::AccountName::new(service.clone())
            .map_err(|e| ManifestError::invalid("service.name", e.to_string()))?;
        let queue_message_max_bytes = file
            .storage
            .queue_message_max_bytes
            .unwrap_or(rolehost_storage::DEFAULT_QUEUE_MESSAGE_MAX_BYTES);
        if !(1..=rolehost_storage::MAX_QUEUE_MESSAGE_MAX_BYTES).contains(&queue_message_max_bytes) {
            return Err(ManifestError::invalid(
                "storage.queue-message-max-bytes",
                format!(
                    "{queue_message_max_bytes} is out of range 1..={}",
                    rolehost_storage::MAX_QUEUE_MESSAGE_MAX_BYTES
                ),
            ));
        }
        if let Some(n) = file.storage.pool_size
            && !(1..=rolehost_storage_pg::MAX_POOL_SIZE).contains(&n)
        {
            return Err(ManifestError::invalid(
                "storage.pool-size",
                format!(
                    "{n} is out of range 1..={}",
                    rolehost_storage_pg::MAX_POOL_SIZE
                ),
            ));
        }
        let url = file
            .storage
            .url
            .as_deref()
            .map(|u| crate::storage_location::StorageLocation::parse(u, &base));
        let storage = StorageSettings {
            url,
            pool_size: file.storage.pool_size,
            quota: file.storage.quota.settings()?,
            endpoints: file.storage.endpoints.settings(&base)?,
            data_dir: base.join(file.storage.data_dir.unwrap_or_else(|| ".rolehost".into())),
            queue_message_max_bytes,
        };
        let mut roles = BTreeMap::new();
        for (name, role) in file.roles {
            let spec = role_spec(&base, &name, role)?;
            roles.insert(name, spec);
        }
        if roles.is_empty() {
            return Err(ManifestError::invalid("roles", "the service has no roles"));
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            service,
            storage,
            roles,
        })
    }
}

pub(crate) fn valid_role_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.len() <= 64
}

fn role_spec(base: &Path, name: &str, role: RoleSection) -> Result<RoleSpec, ManifestError> {
    let key = |k: &str| format!("roles.{name}.{k}");
    if !valid_role_name(name) {
        return Err(ManifestError::invalid(
            format!("roles.{name}"),
            "a role name is 1-64 ASCII letters, digits, `-` and `_`, starting with a letter",
        ));
    }
    let source = match (role.component, role.krate) {
        (Some(c), None) => ComponentSource::File(base.join(c)),
        (None, Some(k)) => ComponentSource::Crate(base.join(k)),
        (Some(_), Some(_)) => {
            return Err(ManifestError::invalid(
                format!("roles.{name}"),
                "give either `component` or `crate`, not both",
            ));
        }
        (None, None) => {
            return Err(ManifestError::invalid(
                format!("roles.{name}"),
                "give `component` (a .wasm file) or `crate` (a guest crate to build)",
            ));
        }
    };
    if role.instances > MAX_INSTANCES {
        return Err(ManifestError::invalid(
            key("instances"),
            format!("{} is more than {MAX_INSTANCES}", role.instances),
        ));
    }
    let vm_size = match role.vm_size {
        None => VmSize::default(),
        Some(s) => VmSize::parse(&s).ok_or_else(|| {
            ManifestError::invalid(
                key("vm-size"),
                format!("{s:?} is not one of ExtraSmall, Small, Medium, Large, ExtraLarge"),
            )
        })?,
    };
    within(key("settings"), role.settings.len(), 0..=MAX_SETTINGS)?;
    within(
        key("local-resources"),
        role.local_resources.len(),
        0..=MAX_LOCAL_RESOURCES,
    )?;
    within(key("endpoints"), role.endpoints.len(), 0..=MAX_ENDPOINTS)?;
    within(
        key("outbound-hosts"),
        role.outbound_hosts.len(),
        0..=MAX_OUTBOUND_HOSTS,
    )?;
    let mut settings = Vec::with_capacity(role.settings.len());
    for (k, v) in role.settings {
        let value = match v {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(ManifestError::invalid(
                    format!("roles.{name}.settings.{k}"),
                    format!(
                        "a setting is a string, number or boolean, not a {}",
                        other.type_str()
                    ),
                ));
            }
        };
        if k.len() > MAX_SETTING_BYTES || value.len() > MAX_SETTING_BYTES {
            return Err(ManifestError::invalid(
                format!("roles.{name}.settings.{k:.64}"),
                format!("a setting's name and value are at most {MAX_SETTING_BYTES} bytes each"),
            ));
        }
        settings.push((k, value));
    }
    let mut limits = Limits::of(vm_size);
    if let Some(cores) = role.limits.cpu_cores {
        if !(cores.is_finite() && (0.01..=64.0).contains(&cores)) {
            return Err(ManifestError::invalid(
                key("limits.cpu-cores"),
                format!("{cores} is outside 0.01..=64"),
            ));
        }
        limits.fuel_per_sec = (cores * REFERENCE_CORE_FUEL_PER_SEC as f64) as u64;
    }
    if let Some(mb) = role.limits.memory_mb {
        if mb == 0 || mb > WASM32_MAX_MEMORY >> 20 {
            return Err(ManifestError::invalid(
                key("limits.memory-mb"),
                format!(
                    "{mb} is outside 1..={} (a wasm32 instance addresses at most 4 GiB)",
                    WASM32_MAX_MEMORY >> 20
                ),
            ));
        }
        limits.memory_bytes = mb << 20;
    }
    if let Some(mb) = role.limits.local_storage_mb {
        let mb = within(key("limits.local-storage-mb"), mb, 1..=MAX_LOCAL_STORAGE_MB)?;
        limits.local_storage_bytes = mb << 20;
    }
    if let Some(budget) = role.limits.call_fuel_budget {
        if budget == 0 {
            return Err(ManifestError::invalid(
                key("limits.call-fuel-budget"),
                "must be at least 1",
            ));
        }
        limits.call_budget = Some(budget);
    }
    let mut local_resources: Vec<LocalResourceSpec> = Vec::new();
    let mut total_mb = 0u64;
    for (i, r) in role.local_resources.into_iter().enumerate() {
        let rkey = format!("roles.{name}.local-resources[{i}]");
        let ok_name = !r.name.is_empty()
            && r.name.len() <= 64
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok_name {
            return Err(ManifestError::invalid(
                format!("{rkey}.name"),
                format!("{:?}: 1-64 ASCII letters, digits, `-` and `_`", r.name),
            ));
        }
        if local_resources.iter().any(|l| l.name == r.name) {
            return Err(ManifestError::invalid(
                format!("{rkey}.name"),
                format!("{:?} is declared twice", r.name),
            ));
        }
        if r.size_mb == 0 {
            return Err(ManifestError::invalid(
                format!("{rkey}.size-mb"),
                "must be at least 1",
            ));
        }
        total_mb = total_mb.saturating_add(r.size_mb);
        local_resources.push(LocalResourceSpec {
            name: r.name,
            size_bytes: r.size_mb.saturating_mul(1024 * 1024),
            clean_on_recycle: r.clean_on_recycle,
        });
    }
    if total_mb.saturating_mul(1 << 20) > limits.local_storage_bytes {
        return Err(ManifestError::invalid(
            key("local-resources"),
            format!(
                "{total_mb} MB in all, more than the {} MB of local storage of this role ({vm_size:?})",
                limits.local_storage_bytes >> 20
            ),
        ));
    }
    let mut endpoints = Vec::new();
    for (i, e) in role.endpoints.into_iter().enumerate() {
        let ekey = |k: &str| format!("roles.{name}.endpoints[{i}].{k}");
        let tls = match (e.protocol.as_str(), e.certificate, e.key) {
            ("http", None, None) => None,
            ("http", _, _) => {
                return Err(ManifestError::invalid(
                    ekey("protocol"),
                    "certificate and key are for protocol = \"https\"",
                ));
            }
            ("https", Some(c), Some(k)) => Some(TlsFiles {
                certificate: base.join(c),
                key: base.join(k),
            }),
            ("https", _, _) => {
                return Err(ManifestError::invalid(
                    ekey("certificate"),
                    "an https endpoint needs `certificate` and `key` (PEM files)",
                ));
            }
            (other, _, _) => {
                return Err(ManifestError::invalid(
                    ekey("protocol"),
                    format!("{other:?} is not \"http\" or \"https\""),
                ));
            }
        };
        endpoints.push(EndpointSpec {
            address: std::net::SocketAddr::new(e.address, e.port),
            tls,
        });
    }
    match role.kind {
        RoleKind::Web if endpoints.is_empty() => {
            return Err(ManifestError::invalid(
                format!("roles.{name}.endpoints"),
                "a web role needs at least one endpoint",
            ));
        }
        RoleKind::Worker if !endpoints.is_empty() => {
            return Err(ManifestError::invalid(
                format!("roles.{name}.endpoints"),
                "a worker role has no endpoints (kind = \"web\" serves HTTP)",
            ));
        }
        _ => {}
    }
    if role.idle_freeze_ms == Some(0) {
        return Err(ManifestError::invalid(
            format!("roles.{name}.idle-freeze-ms"),
            "must be over 0 (leave it out to keep idle instances running)",
        ));
    }
    let millis = |k: &str, v: Option<u64>, max: Duration| {
        v.map(|ms| within(key(k), ms, 1..=max.as_millis() as u64).map(Duration::from_millis))
            .transpose()
    };
    let web = WebSpec {
        endpoints,
        request_timeout: millis(
            "request-timeout-ms",
            role.request_timeout_ms,
            MAX_REQUEST_TIMEOUT,
        )?
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        max_queued_requests: within(
            key("max-queued-requests"),
            role.max_queued_requests.unwrap_or(DEFAULT_MAX_QUEUED),
            0..=MAX_QUEUED_LIMIT,
        )?,
        max_body_bytes: within(
            key("max-body-bytes"),
            role.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY),
            0..=MAX_BODY_LIMIT,
        )?,
        max_header_bytes: within(
            key("max-header-bytes"),
            role.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER),
            MIN_HEADER_LIMIT..=MAX_HEADER_LIMIT,
        )?,
        connections: {
            use crate::conn;
            let limit = conn::MAX_CONN_TIMEOUT;
            conn::ConnLimits {
                max_connections: within(
                    key("max-connections"),
                    role.max_connections
                        .unwrap_or(conn::DEFAULT_MAX_CONNECTIONS),
                    1..=conn::MAX_CONNECTIONS_LIMIT,
                )?,
                header_timeout: millis("header-timeout-ms", role.header_timeout_ms, limit)?
                    .unwrap_or(conn::DEFAULT_HEADER_TIMEOUT),
                idle_timeout: millis("idle-timeout-ms", role.idle_timeout_ms, limit)?
                    .unwrap_or(conn::DEFAULT_IDLE_TIMEOUT),
                handshake_timeout: millis(
                    "handshake-timeout-ms",
                    role.handshake_timeout_ms,
                    limit,
                )?
                .unwrap_or(conn::DEFAULT_HANDSHAKE_TIMEOUT),
            }
        },
    };
    let idle_freeze = millis("idle-freeze-ms", role.idle_freeze_ms, MAX_IDLE_FREEZE)?;
    let grace_period = match role.grace_period_secs {
        None => DEFAULT_GRACE,
        Some(s) => Duration::from_secs(within(
            key("grace-period-secs"),
            s,
            0..=MAX_GRACE.as_secs(),
        )?),
    };
    let recycle_backoff = match role.recycle_backoff_ms {
        None => DEFAULT_RECYCLE_BACKOFF,
        Some(ms) => Duration::from_millis(within(
            key("recycle-backoff-ms"),
            ms,
            0..=MAX_RECYCLE_BACKOFF.as_millis() as u64,
        )?),
    };
    for (i, h) in role.outbound_hosts.iter().enumerate() {
        if h.is_empty() || h.contains('/') || h.contains(char::is_whitespace) {
            return Err(ManifestError::invalid(
                format!("roles.{name}.outbound-hosts[{i}]"),
                format!("{h:?}: give a host or host:port, not a URL"),
            ));
        }
    }
    Ok(RoleSpec {
        outbound_hosts: role.outbound_hosts,
        idle_freeze,
        web,
        name: name.to_string(),
        kind: role.kind,
        source,
        instances: role.instances,
        vm_size,
        limits,
        grace_period,
        recycle_backoff,
        settings,
        local_resources,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/svc/rolehost.toml"))
    }

    #[test]
    fn a_storage_quota_lowers_the_hosts_and_may_not_raise_it() {
        use rolehost_storage::{AccountQuota, Resource};
        let role = "[roles.W]\nkind = \"worker\"\ncomponent = \"w.wasm\"\n";
        let m = parse(&format!(
            "[service]\nname = \"demo\"\n[storage.quota]\nmax-mb = 5\nmax-entities = 7\n{role}"
        ))
        .unwrap();
        let host = AccountQuota::HOST_DEFAULT;
        let q = m.storage.quota.apply(host).unwrap();
        assert_eq!(q.get(Resource::Bytes), 5 << 20);
        assert_eq!(q.get(Resource::Entities), 7);
        assert_eq!(q.get(Resource::Blobs), host.get(Resource::Blobs));
        let small = host.with(Resource::Bytes, 4 << 20);
        let e = m.storage.quota.apply(small).unwrap_err().to_string();
        assert!(
            e.contains("storage.quota.max-mb")
                && e.contains("5 MB is more than this host allows (4 MB)"),
            "{e}"
        );
        let e = parse(&format!(
            "[service]\nname = \"demo\"\n[storage.quota]\nmax-mb = 99999999999\n{role}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("storage.quota.max-mb"), "{e}");
        let e = parse(&format!(
            "[service]\nname = \"demo\"\n[storage.quota]\nmax-bytes = 1\n{role}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("max-bytes"), "{e}");
    }

    #[test]
    fn full_manifest_resolves_paths_and_defaults() {
        let m = parse(
            r#"
            [service]
            name = "demo"
            [roles.Counter]
            kind = "worker"
            crate = "guests/counter"
            instances = 4
            vm-size = "extra-small"
            [roles.Counter.settings]
            queue = "increments"
            batch = 3
            [[roles.Counter.local-resources]]
            name = "scratch"
            size-mb = 10
            [roles.Thumbs]
            kind = "worker"
            component = "thumb.wasm"
            "#,
        )
        .unwrap();
        assert_eq!(m.service, "demo");
        assert_eq!(m.storage.data_dir, Path::new("/svc/.rolehost"));
        let c = &m.roles["Counter"];
        assert_eq!(
            c.source,
            ComponentSource::Crate("/svc/guests/counter".into())
        );
        assert_eq!(c.instances, 4);
        assert_eq!(c.vm_size, VmSize::ExtraSmall);
        assert_eq!(c.grace_period, DEFAULT_GRACE);
        assert_eq!(
            c.settings,
            vec![
                ("batch".into(), "3".into()),
                ("queue".into(), "increments".into())
            ]
        );
        assert_eq!(c.local_resources[0].size_bytes, 10 << 20);
        assert!(c.local_resources[0].clean_on_recycle);
        assert_eq!(c.limits, Limits::of(VmSize::ExtraSmall));
        let t = &m.roles["Thumbs"];
        assert_eq!(t.instances, 1);
        assert_eq!(t.source, ComponentSource::File("/svc/thumb.wasm".into()));
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_offending_key() {
        let head = "[service]\nname = \"demo\"\n";
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a.wasm\"\ninstancs = 2\n"
        ));
        assert!(e.contains("instancs"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a.wasm\"\ninstances = \"two\"\n"
        ));
        assert!(e.contains("instances"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a.wasm\"\nvm-size = \"Huge\"\n"
        ));
        assert!(e.contains("roles.A.vm-size") && e.contains("Huge"), "{e}");
        let e = error_of(&format!("{head}[roles.A]\nkind = \"worker\"\n"));
        assert!(e.contains("roles.A") && e.contains("component"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"robot\"\ncomponent = \"a.wasm\"\n"
        ));
        assert!(e.contains("robot"), "{e}");
        let e = error_of(
            "[service]\nname = \"Bad_Name\"\n[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n",
        );
        assert!(e.contains("service.name"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n[roles.A.settings]\nx = [1]\n"
        ));
        assert!(e.contains("roles.A.settings.x"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n[[roles.A.local-resources]]\nname = \"s\"\nsize-mb = 0\n"
        ));
        assert!(e.contains("roles.A.local-resources[0].size-mb"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n[[roles.A.local-resources]]\nname = \"s\"\nsize-mb = 999999999\n"
        ));
        assert!(
            e.contains("roles.A.local-resources") && e.contains("Small"),
            "{e}"
        );
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\nidle-freeze-ms = 0\n"
        ));
        assert!(
            e.contains("roles.A.idle-freeze-ms") && e.contains("over 0"),
            "{e}"
        );
        let e = error_of(head);
        assert!(e.contains("roles"), "{e}");
        let web = format!("{head}[roles.W]\nkind = \"web\"\ncomponent = \"w\"\n");
        let e = error_of(&web);
        assert!(
            e.contains("roles.W.endpoints") && e.contains("at least one"),
            "{e}"
        );
        let e = error_of(&format!(
            "{web}[[roles.W.endpoints]]\nport = 1\nprotocol = \"https\"\n"
        ));
        assert!(e.contains("roles.W.endpoints[0].certificate"), "{e}");
        let e = error_of(&format!(
            "{web}[[roles.W.endpoints]]\nport = 1\nprotocol = \"gopher\"\n"
        ));
        assert!(
            e.contains("roles.W.endpoints[0].protocol") && e.contains("gopher"),
            "{e}"
        );
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\noutbound-hosts = [\"http://x/\"]\n"
        ));
        assert!(e.contains("roles.A.outbound-hosts[0]"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n[roles.A.limits]\nmemory-mb = 5000\n"
        ));
        assert!(e.contains("roles.A.limits.memory-mb"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n[roles.A.limits]\ncpu-cores = -1\n"
        ));
        assert!(e.contains("roles.A.limits.cpu-cores"), "{e}");
        let e = error_of(&format!(
            "{head}[roles.A]\nkind = \"worker\"\ncomponent = \"a\"\n[roles.A.limits]\ncpu = 1\n"
        ));
        assert!(e.contains("cpu"), "{e}");
    }
}
