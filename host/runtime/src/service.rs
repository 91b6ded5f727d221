//! A running service: its storage, engine, compiled roles and instance supervisors. A
//! service changes while it runs: roles are scaled ([`Service::scale`]) and upgraded in place,
//! a few instances at a time ([`Service::upgrade`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rolehost_storage::{AccountName, Backend, Clock, StorageOptions};
use tokio::task::JoinHandle;
use wasmtime::component::Component;

use crate::bindings::WorkerRolePre;
use crate::capability::environment::Topology;
use crate::capability::queue::QueueWakers;
use crate::engine::{EngineOptions, build_engine};
use crate::error::RuntimeError;
use crate::guest_log::LogHub;
use crate::instance::{InstanceState, linker};
use crate::link::FaultPlan;
use crate::manifest::{ComponentSource, Manifest, RoleKind};
use crate::quota::Usage;
use crate::quota::UsageCell;
use crate::stop::{StopHandle, StopSignal, stop_signal};
use crate::web::{WebRole, WebVersion};
use crate::worker::{InstanceStatus, Phase, RolePre, RoleRuntime};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "storage.redb";

/// Opens (or creates) a service's storage: `location` if given, else the manifest's
/// `[storage] url`, else the embedded database of the data directory.
pub fn open_storage(
    data_dir: &Path,
    manifest: &Manifest,
    location: Option<&crate::storage_location::StorageLocation>,
    clock: Option<Arc<dyn Clock>>,
) -> Result<Arc<dyn Backend>, RuntimeError> {
    std::fs::create_dir_all(data_dir).map_err(|source| RuntimeError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let location = location
        .or(manifest.storage.url.as_ref())
        .cloned()
        .unwrap_or_else(|| {
            crate::storage_location::StorageLocation::File(data_dir.join(DATABASE_FILE))
        });
    let mut options = StorageOptions {
        queue_message_max_bytes: manifest.storage.queue_message_max_bytes,
        ..StorageOptions::default()
    };
    if let Some(clock) = clock {
        options.clock = clock;
    }
    let store = crate::storage_location::open(&location, options, manifest.storage.pool_size)
        .map_err(|source| RuntimeError::Storage {
            location: location.to_string(),
            source,
        })?;
    let quota = manifest
        .storage
        .quota
        .apply(store.default_quota())
        .map_err(|source| RuntimeError::Manifest {
            path: manifest.path.clone(),
            source,
        })?;
    if let Ok(account) = rolehost_storage::AccountName::new(manifest.service.clone()) {
        store.set_quota(&account, Some(quota));
    }
    Ok(store)
}

/// Builds the guest crate `dir` and returns its component (a crate that is a workspace may
/// build several: the one named like the crate).
pub fn component_of_crate(dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let built = crate::build::build_crate(dir, target_dir)?;
    let stem = dir
        .file_name()
        .map(|s| s.to_string_lossy().replace('-', "_"));
    let found = built
        .iter()
        .find(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()) == stem)
        .or(built.first())
        .cloned();
    Ok(found.ok_or_else(|| crate::error::BuildError::NoComponent {
        crate_dir: dir.to_path_buf(),
    })?)
}

/// Builds the roles given as crates; returns each role's component file.
pub fn resolve_components(
    manifest: &Manifest,
    target_dir: Option<&Path>,
) -> Result<BTreeMap<String, PathBuf>, RuntimeError> {
    let mut out = BTreeMap::new();
    for (name, role) in &manifest.roles {
        let path = match &role.source {
            ComponentSource::File(p) => p.clone(),
            ComponentSource::Crate(dir) => component_of_crate(dir, target_dir)?,
        };
        out.insert(name.clone(), path);
    }
    Ok(out)
}

/// Compiles a role's component (on a blocking thread) and checks it against its kind's world
/// (`worker-role`, or `web-role`: `wasi:http/incoming-handler`). The error says what is wrong:
/// not a component, an import the host does not provide, or a missing export.
pub async fn prepare_role(
    engine: &wasmtime::Engine,
    linker: &wasmtime::component::Linker<InstanceState>,
    bytes: Vec<u8>,
    kind: RoleKind,
) -> Result<RolePre, String> {
    let compile_engine = engine.clone();
    let component = tokio::task::spawn_blocking(move || Component::new(&compile_engine, &bytes))
        .await
        .map_err(|e| format!("compilation panicked: {e}"))?
        .map_err(|e| format!("not a valid component: {e:#}"))?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| format!("imports something the host does not provide: {e:#}"))?;
    match kind {
        RoleKind::Worker => WorkerRolePre::new(pre)
            .map(RolePre::Worker)
            .map_err(|e| format!("is not a worker role (rolehost:platform/worker-role): {e:#}")),
        RoleKind::Web => ProxyPre::new(pre).map(RolePre::Web).map_err(|e| {
            format!("is not a web role (it must export wasi:http/incoming-handler): {e:#}")
        }),
    }
}

/// Reads role `role`'s component from `path` and prepares it ([`prepare_role`]); errors name
/// the role and the file. With `freezable` (worker roles), its instances run an instrumented
/// copy, so any of them can be frozen, and the component as given is returned too; a
/// component wizer cannot instrument still runs, it just cannot be frozen.
pub async fn load_role(
    engine: &wasmtime::Engine,
    linker: &wasmtime::component::Linker<InstanceState>,
    role: &str,
    path: &Path,
    kind: RoleKind,
    freezable: bool,
) -> Result<(RolePre, Option<Arc<Vec<u8>>>), RuntimeError> {
    let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let (runs, source) = if freezable {
        match crate::freeze::instrument(&bytes) {
            Ok(instrumented) => (instrumented, Some(Arc::new(bytes))),
            Err(e) => {
                tracing::warn!(role, error = %e, "its instances cannot be frozen");
                (bytes, None)
            }
        }
    } else {
        (bytes, None)
    };
    let pre = prepare_role(engine, linker, runs, kind)
        .await
        .map_err(|detail| RuntimeError::Component {
            role: role.to_string(),
            path: path.to_path_buf(),
            detail,
        })?;
    Ok((pre, source))
}

/// [`prepare_role`] for a worker role.
pub async fn prepare_worker(
    engine: &wasmtime::Engine,
    linker: &wasmtime::component::Linker<InstanceState>,
    bytes: Vec<u8>,
) -> Result<WorkerRolePre<InstanceState>, String> {
    match prepare_role(engine, linker, bytes, RoleKind::Worker).await? {
        RolePre::Worker(pre) => Ok(pre),
        RolePre::Web(_) => Err("is not a worker role".into()),
    }
}

/// The most bytes a snapshot of `runtime`'s role can unpack to: its component and each of
/// its memories at the VM size's cap (what a thaw will allocate at most).
fn max_snapshot_len(runtime: &RoleRuntime) -> u64 {
    let source = runtime.freeze_source.as_ref().map_or(0, |s| s.len());
    let memories = runtime
        .freeze_source
        .as_ref()
        .map_or(1, |s| crate::freeze::memories_defined(s));
    (source as u64)
        // Instrumentation and the data segments' framing.
        .saturating_add(1 << 20)
        .saturating_mul(2)
        .saturating_add((memories as u64).saturating_mul(runtime.spec.limits.memory_bytes))
}

/// How to run a service.
#[derive(Default)]
pub struct ServiceOptions {
    /// Where local resources go (`<data dir>/local`).
    pub data_dir: PathBuf,
    /// Where compiled components are cached.
    pub cache_dir: Option<PathBuf>,
    /// Faults to inject on every instance's link (verification only).
    pub faults: Option<Arc<dyn FaultPlan>>,
    /// Log every instance's CPU, memory and local-disk use against its quotas this often.
    pub usage_log: Option<Duration>,
    /// Run on this engine (a host's, shared by its services) instead of one of the service's
    /// own, sized for its manifest.
    pub engine: Option<wasmtime::Engine>,
    /// Where guest output goes besides the host's log.
    pub logs: Option<Arc<LogHub>>,
    /// Under `rolehost verify`: virtual clocks and seeded randomness for every instance.
    pub sim: Option<crate::instance::SimEnv>,
    /// Roles already compiled and checked, by name (on the same engine): used instead of
    /// compiling their components again.
    pub precompiled: Option<Arc<BTreeMap<String, RolePre>>>,
    /// The deployment's id; default: a fresh one. A host gives the id of what was deployed,
    /// so the same deployment keeps its id across restarts.
    pub deployment_id: Option<String>,
    /// Instances (ids) that start frozen: their slots show frozen and run nothing until a
    /// snapshot is thawed into them. A host restarting keeps its frozen instances so.
    pub frozen: Vec<String>,
    /// Signs the snapshots this service's instances are frozen into and checks those thawed
    /// into it; default: a random key of this service alone.
    pub snapshot_key: Option<crate::freeze::SnapshotKey>,
    /// The connections all web endpoints of the host may hold together; default: a budget
    /// of this service's own, from the process's descriptor limit.
    pub connections: Option<Arc<crate::conn::HostBudget>>,
}

/// Upgrade domains: an in-place upgrade replaces a role's instances in this many steps, as
/// Azure's default of five.
pub const UPGRADE_DOMAINS: u32 = 5;
/// How long an upgrade waits for a domain's new instances to run before going on.
pub const UPGRADE_SETTLE: Duration = Duration::from_secs(60);

/// Reports a long operation's progress, a line at a time.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

struct InstanceSlot {
    stop: StopHandle,
    freeze: Arc<crate::worker::FreezeCell>,
    task: Mutex<Option<JoinHandle<()>>>,
    status: Arc<Mutex<InstanceStatus>>,
    usage: Arc<UsageCell>,
    role: Arc<RoleRuntime>,
}

impl InstanceSlot {
    /// A slot that starts frozen: nothing runs in it until a thaw replaces it.
    fn frozen(runtime: &Arc<RoleRuntime>, index: u32) -> Arc<InstanceSlot> {
        let (stop, _) = stop_signal();
        Arc::new(InstanceSlot {
            stop,
            freeze: Arc::default(),
            task: Mutex::new(None),
            status: Arc::new(Mutex::new(InstanceStatus {
                role: runtime.spec.name.clone(),
                instance_id: format!("{}_IN_{index}", runtime.spec.name),
                phase: Phase::Frozen,
                restarts: 0,
                last_recycle_reason: None,
                interrupted: false,
                usage: Usage::default(),
            })),
            usage: Arc::default(),
            role: runtime.clone(),
        })
    }

    fn read(&self) -> InstanceStatus {
        let mut s = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        s.usage = self.usage.read(
            &self.role.spec.limits,
            self.role.spec.local_resource_bytes(),
        );
        s
    }

    /// Asks the instance to stop and waits until it has (within its grace period).
    async fn stop(&self) {
        self.stop.request();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "instance supervisor failed");
        }
    }
}

/// The instances of a worker role, by index.
struct WorkerPool {
    runtime: Mutex<Arc<RoleRuntime>>,
    slots: Mutex<BTreeMap<u32, Arc<InstanceSlot>>>,
    /// Slots frozen for idleness (`idle-freeze-ms`): the snapshot, compiled, and the queues
    /// whose messages thaw it.
    warm: Mutex<BTreeMap<u32, (crate::worker::Resume, Vec<String>)>>,
}

impl WorkerPool {
    fn new(runtime: Arc<RoleRuntime>) -> Self {
        WorkerPool {
            runtime: Mutex::new(runtime),
            slots: Mutex::new(BTreeMap::new()),
            warm: Mutex::new(BTreeMap::new()),
        }
    }

    /// Scale to zero with warm memory (`idle-freeze-ms`), every so often: thaws each slot
    /// frozen for idleness whose queues hold messages, then freezes each instance that has
    /// read queues but received no message for `after`. Each step holds the service's `ops`
    /// (no scale, upgrade or freeze in between). Stops with the service, or at the first
    /// refusal (the role cannot be frozen; a warning says why, and its instances run on).
    async fn freeze_idle(
        self: Arc<Self>,
        after: Duration,
        ops: Arc<tokio::sync::Mutex<()>>,
        stop: StopSignal,
    ) {
        let every = (after / 4).clamp(Duration::from_millis(25), Duration::from_secs(5));
        let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::select! {
                biased;
                () = stop.requested() => return,
                () = tokio::time::sleep(every) => {}
            }
            let _op = ops.lock().await;
            // The service may have stopped while this waited.
            if stop.is_requested() {
                return;
            }
            let runtime = self.runtime();
            let has_messages = |q: &String| {
                runtime
                    .backend
                    .get_queue_properties(&runtime.account, q)
                    .is_ok_and(|m| m.approximate_message_count > 0)
            };
            let due: Vec<u32> = {
                let warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
                warm.iter()
                    .filter(|(_, (_, queues))| queues.iter().any(has_messages))
                    .map(|(i, _)| *i)
                    .collect()
            };
            for index in due {
                let resume = self
                    .warm
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&index);
                if let Some((resume, _)) = resume {
                    tracing::debug!(role = %runtime.spec.name, index, "thawing on demand");
                    self.thaw(resume, Some(index));
                }
            }
            let now = crate::quota::host_ms();
            let idle: Vec<(u32, Arc<InstanceSlot>)> = self
                .slots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, s)| {
                    s.read().phase == Phase::Running
                        && now.saturating_sub(s.usage.last_active_ms.load(Ordering::Relaxed))
                            >= after_ms
                        && !s
                            .usage
                            .polled
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .is_empty()
                })
                .map(|(i, s)| (*i, s.clone()))
                .collect();
            for (index, slot) in idle {
                let id = format!("{}_IN_{index}", runtime.spec.name);
                let queues: Vec<String> = slot
                    .usage
                    .polled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let (component, monotonic_ns) = match slot.freeze.ask(&slot.stop).await {
                    Ok(Ok(snapshot)) => snapshot,
                    Ok(Err(reason)) => {
                        tracing::warn!(instance = %id, %reason, "idle instances of this role stay running");
                        return;
                    }
                    // It failed on the way; its supervisor recycles it.
                    Err(_) => continue,
                };
                slot.stop().await;
                match crate::worker::Resume::for_idle(&runtime.engine, &id, component, monotonic_ns)
                    .await
                {
                    Ok(resume) => {
                        tracing::debug!(instance = %id, "frozen while idle");
                        self.warm
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(index, (resume, queues));
                    }
                    // Nothing is lost but the instance's memory: it starts afresh.
                    Err(reason) => {
                        tracing::warn!(instance = %id, %reason, "its idle snapshot did not compile; starting it afresh");
                        let restarts = slot.read().restarts;
                        self.slots
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(index, Self::spawn(&runtime, index, restarts));
                    }
                }
            }
        }
    }

    fn runtime(&self) -> Arc<RoleRuntime> {
        self.runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Thaws a snapshot into slot `wanted` when that is frozen, else another frozen slot,
    /// else the lowest free index (its restart count carried over); returns the slot's index.
    fn thaw(&self, resume: crate::worker::Resume, wanted: Option<u32>) -> u32 {
        let runtime = self.runtime();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let frozen: Vec<u32> = slots
            .iter()
            .filter(|(_, s)| s.read().phase == Phase::Frozen)
            .map(|(i, _)| *i)
            .collect();
        let index = crate::worker::thaw_slot(wanted, &frozen, |i| slots.contains_key(&i));
        let restarts = slots.get(&index).map_or(0, |s| s.read().restarts);
        // Its idle snapshot, if it had one, is superseded.
        self.warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&index);
        slots.insert(
            index,
            Self::spawn_from(&runtime, index, restarts, Some(resume)),
        );
        index
    }

    /// Slots, frozen ones included.
    fn slot_count(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Instances running or able to (every slot not frozen).
    fn running_count(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.read().phase != Phase::Frozen)
            .count()
    }

    fn spawn(runtime: &Arc<RoleRuntime>, index: u32, restarts: u32) -> Arc<InstanceSlot> {
        Self::spawn_from(runtime, index, restarts, None)
    }

    /// [`WorkerPool::spawn`], its first incarnation thawed from `resume` when given.
    fn spawn_from(
        runtime: &Arc<RoleRuntime>,
        index: u32,
        restarts: u32,
        resume: Option<crate::worker::Resume>,
    ) -> Arc<InstanceSlot> {
        let (stop, signal) = stop_signal();
        let freeze = Arc::new(crate::worker::FreezeCell::default());
        let status = Arc::new(Mutex::new(InstanceStatus {
            role: runtime.spec.name.clone(),
            instance_id: format!("{}_IN_{index}", runtime.spec.name),
            phase: Phase::Starting,
            restarts,
            last_recycle_reason: None,
            interrupted: false,
            usage: Usage::default(),
        }));
        let usage = Arc::new(UsageCell::default());
        let task = tokio::spawn(runtime.clone().supervise(
            index,
            signal,
            status.clone(),
            usage.clone(),
            freeze.clone(),
            resume,
        ));
        Arc::new(InstanceSlot {
            stop,
            freeze,
            task: Mutex::new(Some(task)),
            status,
            usage,
            role: runtime.clone(),
        })
    }

    /// Sets the number of instances to `n`: starts the missing ones, stops the ones past it
    /// (gracefully, waiting for them).
    async fn scale(&self, n: u32) {
        let runtime = self.runtime();
        self.warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|i, _| *i < n);
        let removed: Vec<Arc<InstanceSlot>> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            for index in 0..n {
                slots
                    .entry(index)
                    .or_insert_with(|| Self::spawn(&runtime, index, 0));
            }
            let past: Vec<u32> = slots.range(n..).map(|(i, _)| *i).collect();
            past.iter().filter_map(|i| slots.remove(i)).collect()
        };
        stop_all(&removed).await;
    }

    /// Replaces every instance with one of `runtime`, `batch` at a time: each old instance
    /// stops (within its grace period) before its replacement starts.
    async fn upgrade(&self, runtime: Arc<RoleRuntime>, batch: usize, progress: Progress<'_>) {
        *self.runtime.lock().unwrap_or_else(|p| p.into_inner()) = runtime.clone();
        // Idle snapshots are of the old version: their slots start afresh in their domain.
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let indices: Vec<u32> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let role = runtime.spec.name.clone();
        for domain in crate::worker::upgrade_domains(&role, &indices, batch, progress) {
            let old: Vec<Arc<InstanceSlot>> = {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                domain
                    .iter()
                    .filter_map(|i| slots.get(i).cloned())
                    .collect()
            };
            stop_all(&old).await;
            let mut fresh = Vec::new();
            {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                for (index, old) in domain.iter().zip(&old) {
                    let restarts = old.read().restarts;
                    let slot = Self::spawn(&runtime, *index, restarts);
                    fresh.push(slot.clone());
                    slots.insert(*index, slot);
                }
            }
            let deadline = tokio::time::Instant::now() + UPGRADE_SETTLE;
            while tokio::time::Instant::now() < deadline
                && fresh.iter().any(|s| s.read().phase == Phase::Starting)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Some instances run the new version, others the old one.
            crate::crash::point("upgrade.domain");
        }
    }

    fn slots(&self) -> Vec<Arc<InstanceSlot>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().cloned().collect()
    }

    fn status(&self) -> Vec<InstanceStatus> {
        self.slots().iter().map(|s| s.read()).collect()
    }
}

/// Asks every slot to stop at once, then waits for each.
async fn stop_all(slots: &[Arc<InstanceSlot>]) {
    for s in slots {
        s.stop.request();
    }
    for s in slots {
        s.stop().await;
    }
}

/// A running role, by kind: what a scale or a thaw works on.
enum Target {
    Worker(Arc<WorkerPool>),
    Web(Arc<WebRole>),
}

/// What a freeze works on: a worker instance, or a web role and a slot.
enum Found {
    Worker(Arc<InstanceSlot>),
    Web(Arc<WebRole>, usize),
}

/// How much longer than its request timeout a freeze waits for a busy web instance.
const WEB_FREEZE_SLACK: Duration = Duration::from_secs(1);

/// A role of a running service.
enum RoleEntry {
    Worker(Arc<WorkerPool>),
    Web {
        role: Arc<WebRole>,
        endpoints: Vec<std::net::SocketAddr>,
        serve_tasks: Vec<JoinHandle<()>>,
    },
}

impl RoleEntry {
    fn status(&self) -> Vec<InstanceStatus> {
        match self {
            RoleEntry::Worker(pool) => pool.status(),
            RoleEntry::Web { role, .. } => role.status(),
        }
    }

    fn spec(&self) -> crate::manifest::RoleSpec {
        match self {
            RoleEntry::Worker(pool) => pool.runtime().spec.clone(),
            RoleEntry::Web { role, .. } => role.runtime().spec.clone(),
        }
    }
}

type Roles = Arc<Mutex<BTreeMap<String, RoleEntry>>>;

/// What every role of the service shares.
struct Shared {
    name: String,
    engine: wasmtime::Engine,
    linker: wasmtime::component::Linker<InstanceState>,
    backend: Arc<dyn Backend>,
    account: AccountName,
    wakers: Arc<QueueWakers>,
    /// Hints from other processes sharing the storage wake this service's waiters.
    _put_watch: rolehost_storage::queue::PutWatch,
    data_dir: PathBuf,
    faults: Option<Arc<dyn FaultPlan>>,
    topology: Arc<Topology>,
    logs: Option<Arc<LogHub>>,
    metered: bool,
    sim: Option<crate::instance::SimEnv>,
    precompiled: Option<Arc<BTreeMap<String, RolePre>>>,
    /// Instances that start frozen (`ServiceOptions::frozen`).
    frozen: std::collections::BTreeSet<String>,
    /// Signs and checks snapshots (`ServiceOptions::snapshot_key`).
    snapshot_key: crate::freeze::SnapshotKey,
    /// The host's connection budget (`ServiceOptions::connections`).
    connections: Arc<crate::conn::HostBudget>,
}

/// A role, compiled and checked, not yet running.
struct Prepared {
    runtime: Arc<RoleRuntime>,
}

/// A running service.
pub struct Service {
    shared: Shared,
    deployment_id: Mutex<String>,
    roles: Roles,
    /// Scale, upgrade and shutdown one at a time.
    ops: Arc<tokio::sync::Mutex<()>>,
    web_stop: StopHandle,
    web_signal: crate::stop::StopSignal,
    usage_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.shared.name)
            .field("deployment_id", &self.deployment_id())
            .finish_non_exhaustive()
    }
}

fn deployment_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:016x}",
        (nanos as u64) ^ (u64::from(std::process::id()) << 48)
    )
}

impl Shared {
    /// Compiles and checks every role of `manifest` (nothing starts); the error names the
    /// role and what is wrong.
    async fn prepare(
        &self,
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        deployment_id: &str,
        progress: Progress<'_>,
    ) -> Result<Vec<Prepared>, RuntimeError> {
        let mut out = Vec::new();
        for (name, spec) in &manifest.roles {
            let (pre, freeze_source) = match self.precompiled.as_ref().and_then(|p| p.get(name)) {
                Some(pre) => (pre.clone(), None),
                None => self.compile(name, spec.kind, components, progress).await?,
            };
            out.push(Prepared {
                runtime: Arc::new(RoleRuntime {
                    spec: spec.clone(),
                    service: manifest.service.clone(),
                    deployment_id: deployment_id.to_string(),
                    engine: self.engine.clone(),
                    pre,
                    linker: self.linker.clone(),
                    backend: self.backend.clone(),
                    account: self.account.clone(),
                    wakers: self.wakers.clone(),
                    local_root: self.data_dir.join("local").join(name),
                    faults: self.faults.clone(),
                    metered: self.metered,
                    topology: self.topology.clone(),
                    logs: self.logs.clone(),
                    sim: self.sim,
                    freeze_source,
                }),
            });
        }
        Ok(out)
    }
}

impl Shared {
    /// Compiles role `name`'s component and checks it against its kind's world.
    async fn compile(
        &self,
        name: &str,
        kind: crate::manifest::RoleKind,
        components: &BTreeMap<String, PathBuf>,
        progress: Progress<'_>,
    ) -> Result<(RolePre, Option<Arc<Vec<u8>>>), RuntimeError> {
        let path = components
            .get(name)
            .ok_or_else(|| RuntimeError::Unsupported(format!("role {name} has no component")))?;
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        progress(format!(
            "role {name}: compiling {} ({} KiB)",
            path.file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            size >> 10
        ));
        let started = std::time::Instant::now();
        let (pre, freeze_source) =
            load_role(&self.engine, &self.linker, name, path, kind, true).await?;
        tracing::info!(role = %name, elapsed = ?started.elapsed(), "compiled and linked");
        progress(format!(
            "role {name}: compiled and linked in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok((pre, freeze_source))
    }
}

/// Binds a web role's endpoints (so a taken port fails before anything starts).
async fn bind_endpoints(
    spec: &crate::manifest::RoleSpec,
) -> Result<Vec<(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>)>, RuntimeError> {
    let mut out = Vec::new();
    for e in &spec.web.endpoints {
        let tls = match &e.tls {
            None => None,
            Some(files) => Some(crate::web::tls_acceptor(files).map_err(|detail| {
                RuntimeError::Unsupported(format!("role {}: {detail}", spec.name))
            })?),
        };
        let listener = crate::conn::bind(e.address).map_err(|source| {
            RuntimeError::Unsupported(format!(
                "role {}: cannot listen on {}: {source}",
                spec.name, e.address
            ))
        })?;
        out.push((listener, tls));
    }
    Ok(out)
}

impl Service {
    /// Compiles every role's component, checks it against its world, and starts the instances.
    /// Nothing starts unless every role is valid.
    pub async fn start(
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        backend: Arc<dyn Backend>,
        options: ServiceOptions,
    ) -> Result<Service, RuntimeError> {
        Self::start_with_progress(manifest, components, backend, options, &|_| {}).await
    }

    /// [`Service::start`], reporting progress.
    pub async fn start_with_progress(
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        backend: Arc<dyn Backend>,
        options: ServiceOptions,
        progress: Progress<'_>,
    ) -> Result<Service, RuntimeError> {
        let engine = match options.engine.clone() {
            Some(engine) => engine,
            None => {
                let total: u32 = manifest.roles.values().map(|r| r.instances).sum();
                let engine_options = EngineOptions {
                    cache_dir: options.cache_dir.clone(),
                    metering: true,
                    // Every instance, and some headroom (a recycled instance's store is
                    // dropped before its replacement is made, so recycling needs none).
                    pool_capacity: Some(total.saturating_add((total / 8).max(16))),
                };
                build_engine(&engine_options).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?
            }
        };
        let linker = linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let account = AccountName::new(manifest.service.clone()).map_err(|e| {
            RuntimeError::Unsupported(format!("service name {:?}: {e}", manifest.service))
        })?;
        let wakers = Arc::new(QueueWakers::default());
        let put_watch = {
            let (mine, wakers) = (account.as_str().to_owned(), Arc::downgrade(&wakers));
            backend.watch_puts(Arc::new(move |account: &str, queue: &str| {
                if account == mine
                    && let Some(w) = wakers.upgrade()
                {
                    w.wake(queue);
                }
            }))
        };
        let shared = Shared {
            name: manifest.service.clone(),
            engine,
            linker,
            backend,
            account,
            wakers,
            _put_watch: put_watch,
            data_dir: options.data_dir.clone(),
            faults: options.faults.clone(),
            topology: Arc::new(Topology::default()),
            logs: options.logs.clone(),
            metered: true,
            sim: options.sim,
            precompiled: options.precompiled.clone(),
            frozen: options.frozen.iter().cloned().collect(),
            snapshot_key: match options.snapshot_key.clone() {
                Some(k) => k,
                None => crate::freeze::SnapshotKey::random()
                    .map_err(|e| RuntimeError::Engine(format!("making a snapshot key: {e}")))?,
            },
            connections: options
                .connections
                .clone()
                .unwrap_or_else(crate::conn::HostBudget::from_fd_limit),
        };
        let deployment_id = options.deployment_id.clone().unwrap_or_else(deployment_id);
        let prepared = shared
            .prepare(manifest, components, &deployment_id, progress)
            .await?;
        let (web_stop, web_signal) = stop_signal();
        let roles: Roles = Arc::default();
        let service = Service {
            shared,
            deployment_id: Mutex::new(deployment_id.clone()),
            roles: roles.clone(),
            ops: Arc::new(tokio::sync::Mutex::new(())),
            web_stop,
            web_signal,
            usage_task: options
                .usage_log
                .map(|every| tokio::spawn(log_usage(roles.clone(), every))),
        };
        // Web roles: bind every endpoint before anything starts, so a taken port fails the
        // start cleanly.
        let mut bound = Vec::new();
        for p in &prepared {
            if matches!(p.runtime.pre, RolePre::Web(_)) {
                bound.push(bind_endpoints(&p.runtime.spec).await?);
            } else {
                bound.push(Vec::new());
            }
        }
        for (p, listeners) in prepared.into_iter().zip(bound) {
            service.add_role(p, listeners, progress).await;
        }
        tracing::info!(
            service = %manifest.service,
            deployment = %deployment_id,
            instances = service.status().len(),
            "service started"
        );
        Ok(service)
    }

    /// Starts a prepared role with its bound listeners.
    async fn add_role(
        &self,
        p: Prepared,
        listeners: Vec<(tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>)>,
        progress: Progress<'_>,
    ) {
        let runtime = p.runtime;
        let name = runtime.spec.name.clone();
        let n = runtime.spec.instances;
        progress(format!("role {name}: starting {n} instances"));
        let frozen: Vec<u32> = (0..n)
            .filter(|i| self.shared.frozen.contains(&format!("{name}_IN_{i}")))
            .collect();
        let entry = match &runtime.pre {
            RolePre::Web(pre) => {
                let frozen: Vec<usize> = frozen.iter().map(|i| *i as usize).collect();
                let web = WebRole::start(
                    runtime.clone(),
                    pre.clone(),
                    self.web_signal.clone(),
                    &frozen,
                )
                .await;
                let mut endpoints = Vec::new();
                let mut serve_tasks = Vec::new();
                for (listener, tls) in listeners {
                    if let Ok(addr) = listener.local_addr() {
                        let scheme = if tls.is_some() { "https" } else { "http" };
                        tracing::info!(role = %name, %addr, scheme, "listening");
                        endpoints.push(addr);
                    }
                    let conns = crate::conn::Connections::new(
                        runtime.spec.web.connections,
                        Some(self.shared.connections.clone()),
                    );
                    serve_tasks.push(tokio::spawn(web.clone().serve(listener, tls, conns)));
                }
                RoleEntry::Web {
                    role: web,
                    endpoints,
                    serve_tasks,
                }
            }
            RolePre::Worker(_) => {
                let pool = Arc::new(WorkerPool::new(runtime.clone()));
                {
                    let mut slots = pool.slots.lock().unwrap_or_else(|p| p.into_inner());
                    for index in frozen {
                        slots.insert(index, InstanceSlot::frozen(&runtime, index));
                    }
                }
                pool.scale(n).await;
                if let Some(after) = runtime.spec.idle_freeze {
                    tokio::spawn(pool.clone().freeze_idle(
                        after,
                        self.ops.clone(),
                        self.web_signal.clone(),
                    ));
                }
                RoleEntry::Worker(pool)
            }
        };
        self.shared.topology.set(&name, n);
        self.roles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, entry);
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// This deployment's id (a new one with every upgrade).
    pub fn deployment_id(&self) -> String {
        self.deployment_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every instance's status, role by role.
    pub fn status(&self) -> Vec<InstanceStatus> {
        let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
        roles.values().flat_map(RoleEntry::status).collect()
    }

    /// The roles and their instance counts (the topology instances see).
    pub fn instance_counts(&self) -> BTreeMap<String, u32> {
        self.shared.topology.read().1
    }

    /// The addresses web roles listen on: (role, address).
    pub fn endpoints(&self) -> Vec<(String, std::net::SocketAddr)> {
        let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
        roles
            .iter()
            .flat_map(|(name, e)| match e {
                RoleEntry::Web { endpoints, .. } => {
                    endpoints.iter().map(|a| (name.clone(), *a)).collect()
                }
                RoleEntry::Worker(_) => Vec::new(),
            })
            .collect()
    }

    /// Request counts and latencies of each web role.
    pub fn web_metrics(&self) -> Vec<(String, Arc<WebRole>)> {
        let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
        roles
            .iter()
            .filter_map(|(name, e)| match e {
                RoleEntry::Web { role, .. } => Some((name.clone(), role.clone())),
                RoleEntry::Worker(_) => None,
            })
            .collect()
    }

    /// Wakes the instances waiting on `queue` (a message was put from outside the service).
    pub fn wake_queue(&self, queue: &str) {
        self.shared.wakers.wake(queue);
    }

    /// The storage this service runs on, and its account.
    pub fn storage(&self) -> (Arc<dyn Backend>, AccountName) {
        (self.shared.backend.clone(), self.shared.account.clone())
    }

    /// Sets the instance count of `role` to `n` while the service runs. New instances start
    /// at once; removed ones stop gracefully (a worker within its grace period; a web
    /// instance takes no new request and finishes the one it serves). Running instances see
    /// the new topology.
    pub async fn scale(&self, role: &str, n: u32) -> Result<(), RuntimeError> {
        if n > crate::manifest::MAX_INSTANCES {
            return Err(RuntimeError::Unsupported(format!(
                "{n} instances: a role has at most {}",
                crate::manifest::MAX_INSTANCES
            )));
        }
        let _op = self.ops.lock().await;
        let target = self.target(role)?;
        tracing::info!(service = %self.shared.name, role, instances = n, "scaling");
        // Instances see the new count as soon as the change begins.
        self.shared.topology.set(role, n);
        match target {
            Target::Worker(pool) => pool.scale(n).await,
            Target::Web(web) => web.scale(n as usize),
        }
        Ok(())
    }

    /// Upgrades the service in place to `manifest`: every role is compiled and checked first
    /// (nothing changes if one is invalid); then roles that are gone stop, new roles start,
    /// and the others are replaced upgrade domain by upgrade domain ([`UPGRADE_DOMAINS`]), so
    /// a web role keeps answering throughout. Instance counts follow the new manifest.
    /// `deployment_id` names the new deployment (default: a fresh id).
    pub async fn upgrade(
        &self,
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        deployment_id: Option<String>,
        progress: Progress<'_>,
    ) -> Result<(), RuntimeError> {
        if manifest.service != self.shared.name {
            return Err(RuntimeError::Unsupported(format!(
                "the manifest is for service {}, not {}",
                manifest.service, self.shared.name
            )));
        }
        let _op = self.ops.lock().await;
        // Check what cannot change in place before compiling anything.
        let current: BTreeMap<String, crate::manifest::RoleSpec> = {
            let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
            roles.iter().map(|(n, e)| (n.clone(), e.spec())).collect()
        };
        for (name, spec) in &manifest.roles {
            if let Some(old) = current.get(name) {
                if old.kind != spec.kind {
                    return Err(RuntimeError::Unsupported(format!(
                        "role {name} changes from {:?} to {:?}: a role's kind cannot change in \
                         an upgrade (give the new role another name, or delete the service first)",
                        old.kind, spec.kind
                    )));
                }
                if old.web.endpoints != spec.web.endpoints {
                    return Err(RuntimeError::Unsupported(format!(
                        "role {name}: its endpoints change; endpoints cannot change in an \
                         upgrade (delete the service and deploy it again)"
                    )));
                }
            }
        }
        let deployment_id = deployment_id.unwrap_or_else(self::deployment_id);
        let prepared = self
            .shared
            .prepare(manifest, components, &deployment_id, progress)
            .await?;
        // New web roles bind before anything changes.
        let mut bound = Vec::new();
        for p in &prepared {
            let new = !current.contains_key(&p.runtime.spec.name);
            if new && matches!(p.runtime.pre, RolePre::Web(_)) {
                bound.push(bind_endpoints(&p.runtime.spec).await?);
            } else {
                bound.push(Vec::new());
            }
        }
        *self.deployment_id.lock().unwrap_or_else(|p| p.into_inner()) = deployment_id.clone();
        // Roles that are gone.
        for name in current.keys().filter(|n| !manifest.roles.contains_key(*n)) {
            progress(format!("role {name}: removed; stopping its instances"));
            let entry = self
                .roles
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name);
            if let Some(entry) = entry {
                stop_role(entry).await;
            }
            self.shared.topology.set(name, 0);
        }
        for (p, listeners) in prepared.into_iter().zip(bound) {
            let name = p.runtime.spec.name.clone();
            let n = p.runtime.spec.instances;
            if !current.contains_key(&name) {
                self.add_role(p, listeners, progress).await;
                continue;
            }
            let batch = n.max(1).div_ceil(UPGRADE_DOMAINS) as usize;
            let entry = {
                let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
                match roles.get(&name) {
                    Some(RoleEntry::Worker(pool)) => Some(Ok(pool.clone())),
                    Some(RoleEntry::Web { role, .. }) => Some(Err(role.clone())),
                    None => None,
                }
            };
            match (entry, &p.runtime.pre) {
                (Some(Ok(pool)), _) => {
                    pool.upgrade(p.runtime.clone(), batch, progress).await;
                    pool.scale(n).await;
                }
                (Some(Err(web)), RolePre::Web(pre)) => {
                    let version = Arc::new(WebVersion {
                        role: p.runtime.clone(),
                        pre: pre.clone(),
                    });
                    web.upgrade(version, batch, UPGRADE_SETTLE, progress).await;
                    web.scale(n as usize);
                }
                _ => {}
            }
            self.shared.topology.set(&name, n);
        }
        self.shared.topology.bump();
        progress(format!("deployment {deployment_id} is running"));
        tracing::info!(service = %self.shared.name, deployment = %deployment_id, "upgraded");
        Ok(())
    }

    /// Freezes instance `instance_id` at its quiet point and returns the snapshot file
    /// ([`crate::freeze`]). A worker is asked to stop, and its `run` returns; a web instance
    /// is taken between two requests (a busy one finishes its request first). Its
    /// `on-freeze` runs, its memory and globals are captured, and its local resources are
    /// wiped. Refused, with the instance left running, when something it holds cannot survive
    /// a thaw, or a web role does not export `web-freeze`.
    pub async fn freeze(&self, instance_id: &str) -> Result<Vec<u8>, RuntimeError> {
        self.freeze_within(instance_id, None).await
    }

    /// [`Service::freeze`], waiting at most `wait` for a busy web instance to finish its
    /// request (default: the role's request timeout and a second, which always suffices).
    /// Past it the instance is left serving and the freeze is refused.
    pub async fn freeze_within(
        &self,
        instance_id: &str,
        wait: Option<Duration>,
    ) -> Result<Vec<u8>, RuntimeError> {
        let _op = self.ops.lock().await;
        let (runtime, answer) = match self.find_instance(instance_id)? {
            Found::Worker(slot) => {
                let answer = slot.freeze.ask(&slot.stop);
                let answer = answer.await.map_err(|_| {
                    RuntimeError::Unsupported(format!(
                        "{instance_id} stopped without reaching a quiet point (it failed, or \
                         did not return from run within its grace period); it was not frozen"
                    ))
                })?;
                // Frozen: its supervisor has ended. Refused: it runs on (the stop was withdrawn).
                if answer.is_ok() {
                    slot.stop().await;
                }
                (slot.role.clone(), answer)
            }
            Found::Web(web, index) => {
                let runtime = web.runtime();
                // Any request ends within the request timeout: waiting a little longer always
                // reaches the quiet point.
                let wait = wait.unwrap_or(runtime.spec.web.request_timeout + WEB_FREEZE_SLACK);
                let answer = web.freeze(index, wait).await;
                if answer.is_ok() {
                    let count = u32::try_from(web.running_count()).unwrap_or(u32::MAX);
                    self.shared.topology.set(&runtime.spec.name, count);
                }
                (runtime, answer)
            }
        };
        let (component, monotonic_ns) = answer.map_err(|e| {
            RuntimeError::Unsupported(format!("{instance_id} could not be frozen: {e}"))
        })?;
        let header = crate::freeze::SnapshotHeader {
            service: self.shared.name.clone(),
            role: runtime.spec.name.clone(),
            instance_id: instance_id.to_string(),
            deployment_id: self.deployment_id(),
            vm_size: format!("{:?}", runtime.spec.vm_size),
            settings: runtime.spec.settings.clone(),
            frozen_at_micros: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            monotonic_ns,
            raw_len: 0,
            payload_len: 0,
            payload_blake3: String::new(),
        };
        crate::freeze::encode(header, &component, &self.shared.snapshot_key)
            .map_err(|e| RuntimeError::Unsupported(e.to_string()))
    }

    /// Checks a snapshot file for a thaw into this service, before anything is compiled or
    /// started: its signature (this service's key), that it is of this service and its
    /// running deployment, of one of its roles, and no larger than that role can make.
    /// Returns the header (which, signed, is the host's own statement).
    pub fn check_snapshot(
        &self,
        file: &[u8],
    ) -> Result<crate::freeze::SnapshotHeader, RuntimeError> {
        let refused = |e: crate::freeze::FreezeError| RuntimeError::Unsupported(e.to_string());
        let (header, _) = crate::freeze::check(file, &self.shared.snapshot_key).map_err(refused)?;
        let current = self.deployment_id();
        if header.service != self.shared.name {
            return Err(RuntimeError::Unsupported(format!(
                "the snapshot is of service {}, not {}",
                header.service, self.shared.name
            )));
        }
        if header.deployment_id != current {
            return Err(RuntimeError::Unsupported(format!(
                "the snapshot is of deployment {}, and {} now runs deployment {current}: a \
                 snapshot resumes only in the deployment it came from",
                header.deployment_id, self.shared.name
            )));
        }
        let runtime = match self.target(&header.role)? {
            Target::Web(web) => web.runtime(),
            Target::Worker(pool) => pool.runtime(),
        };
        header
            .check_size(max_snapshot_len(&runtime))
            .map_err(refused)?;
        Ok(header)
    }

    /// Slots of role `role`, frozen ones included (0 for a role it does not have).
    pub fn slot_count(&self, role: &str) -> u32 {
        let n = match self.target(role) {
            Ok(Target::Web(web)) => web.slot_count(),
            Ok(Target::Worker(pool)) => pool.slot_count(),
            Err(_) => 0,
        };
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether a thaw into role `role` takes a frozen slot (so the role's count stays) rather
    /// than adding an instance.
    pub fn has_frozen_slot(&self, role: &str) -> bool {
        match self.target(role) {
            Ok(Target::Web(web)) => web.running_count() < web.slot_count(),
            Ok(Target::Worker(pool)) => pool.running_count() < pool.slot_count(),
            Err(_) => false,
        }
    }

    /// Thaws a snapshot file into this service: checked whole first ([`Service::check_snapshot`]:
    /// a corrupt, truncated, unsigned or foreign snapshot is refused and nothing starts), then
    /// the instance resumes in a slot the host chooses: its old one if that is frozen, else
    /// another frozen one, else a new one (one instance more; the caller admits it against
    /// its capacity first). Local resources are fresh; `run` is called again. Returns the
    /// instance's id.
    pub async fn thaw(&self, file: &[u8], snapshot_id: &str) -> Result<String, RuntimeError> {
        let header = self.check_snapshot(file)?;
        self.thaw_checked(&header, file, snapshot_id).await
    }

    /// [`Service::thaw`] of a file [`Service::check_snapshot`] accepted, with the header it
    /// returned: the signature (a pass over the whole payload) is not checked twice.
    pub async fn thaw_checked(
        &self,
        header: &crate::freeze::SnapshotHeader,
        file: &[u8],
        snapshot_id: &str,
    ) -> Result<String, RuntimeError> {
        let (_, payload) =
            crate::freeze::header(file).map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
        let _op = self.ops.lock().await;
        let role = self.target(&header.role)?;
        let engine = self.shared.engine.clone();
        // Compiled snapshots are kept here: thawing the same snapshot again maps it.
        let cache = self.shared.data_dir.join("snapshots");
        let checked = header.clone();
        let payload = payload.to_vec();
        let compiled = tokio::task::spawn_blocking(move || {
            crate::freeze::compile(&engine, &checked, &payload, Some(&cache))
        })
        .await
        .map_err(|e| RuntimeError::Engine(e.to_string()))?
        .map_err(|e| RuntimeError::Unsupported(format!("the snapshot does not compile: {e:#}")))?;
        let resume = crate::worker::Resume {
            component: compiled,
            monotonic_ns: header.monotonic_ns,
            snapshot_id: snapshot_id.to_string(),
        };
        let wanted = header.slot();
        let (index, count) = match role {
            Target::Web(web) => {
                let index = web.thaw(resume, wanted.map(|i| i as usize));
                (index as u32, web.running_count())
            }
            Target::Worker(pool) => (pool.thaw(resume, wanted), pool.running_count()),
        };
        self.shared
            .topology
            .set(&header.role, u32::try_from(count).unwrap_or(u32::MAX));
        Ok(format!("{}_IN_{index}", header.role))
    }

    /// Role `role`, running; the error names the roles there are.
    fn target(&self, role: &str) -> Result<Target, RuntimeError> {
        let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
        match roles.get(role) {
            None => Err(RuntimeError::Unsupported(format!(
                "service {} has no role {role} (it has: {})",
                self.shared.name,
                roles.keys().cloned().collect::<Vec<_>>().join(", ")
            ))),
            Some(RoleEntry::Worker(pool)) => Ok(Target::Worker(pool.clone())),
            Some(RoleEntry::Web { role, .. }) => Ok(Target::Web(role.clone())),
        }
    }

    fn find_instance(&self, instance_id: &str) -> Result<Found, RuntimeError> {
        let missing = || {
            RuntimeError::Unsupported(format!(
                "service {} has no instance {instance_id}",
                self.shared.name
            ))
        };
        let (role, index) = instance_id.rsplit_once("_IN_").ok_or_else(missing)?;
        let index: usize = index.parse().map_err(|_| missing())?;
        let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
        match roles.get(role).ok_or_else(missing)? {
            RoleEntry::Worker(pool) => {
                let slots = pool.slots.lock().unwrap_or_else(|p| p.into_inner());
                let slot = u32::try_from(index)
                    .ok()
                    .and_then(|i| slots.get(&i))
                    .ok_or_else(missing)?;
                if slot.read().phase == Phase::Frozen {
                    return Err(RuntimeError::Unsupported(format!(
                        "{instance_id} is frozen already"
                    )));
                }
                Ok(Found::Worker(slot.clone()))
            }
            RoleEntry::Web { role, .. } => Ok(Found::Web(role.clone(), index)),
        }
    }

    /// Asks every instance to stop and waits until all have stopped (each within its grace
    /// period). Returns their final status.
    pub async fn shutdown(self) -> Vec<InstanceStatus> {
        self.stop().await
    }

    /// [`Service::shutdown`] through a shared reference: the service is empty afterwards.
    pub async fn stop(&self) -> Vec<InstanceStatus> {
        let _op = self.ops.lock().await;
        tracing::info!(service = %self.shared.name, "stopping all instances");
        if let Some(t) = &self.usage_task {
            t.abort();
        }
        // Web roles stop taking connections; requests in flight finish on their own.
        self.web_stop.request();
        let entries: Vec<(String, RoleEntry)> = {
            let mut roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *roles).into_iter().collect()
        };
        let mut workers = Vec::new();
        let mut out = Vec::new();
        for (name, entry) in entries {
            self.shared.topology.set(&name, 0);
            match entry {
                RoleEntry::Worker(pool) => {
                    let slots = pool.slots();
                    for s in &slots {
                        s.stop.request();
                    }
                    workers.extend(slots);
                }
                web => out.extend(stop_role(web).await),
            }
        }
        for s in &workers {
            s.stop().await;
            out.push(s.read());
        }
        out
    }
}

/// Stops a role's instances and waits for them; returns their final status.
async fn stop_role(entry: RoleEntry) -> Vec<InstanceStatus> {
    match entry {
        RoleEntry::Worker(pool) => {
            let slots = pool.slots();
            stop_all(&slots).await;
            slots.iter().map(|s| s.read()).collect()
        }
        RoleEntry::Web {
            role, serve_tasks, ..
        } => {
            for t in &serve_tasks {
                t.abort();
            }
            // Their last status, read before the slots go (idle instances are dropped and
            // wiped at once; one serving a request, when it ends).
            let mut last = role.status();
            role.wipe();
            role.scale(0);
            for s in &mut last {
                s.phase = Phase::Stopped;
            }
            last
        }
    }
}

/// Logs each instance's use of its quotas every `every`: CPU in reference cores over the
/// interval against its share, memory and local disk against their caps.
async fn log_usage(roles: Roles, every: Duration) {
    let read_all = || {
        let roles = roles.lock().unwrap_or_else(|p| p.into_inner());
        roles
            .values()
            .flat_map(RoleEntry::status)
            .collect::<Vec<_>>()
    };
    let mut last: std::collections::HashMap<String, u64> = read_all()
        .into_iter()
        .map(|s| (s.instance_id, s.usage.fuel))
        .collect();
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        for s in read_all() {
            let before = last
                .insert(s.instance_id.clone(), s.usage.fuel)
                .unwrap_or(0);
            let used = s.usage.fuel.saturating_sub(before);
            let core = crate::quota::REFERENCE_CORE_FUEL_PER_SEC as f64;
            let cores = used as f64 / every.as_secs_f64() / core;
            let share = s.usage.fuel_per_sec as f64 / core;
            tracing::info!(
                instance = %s.instance_id,
                phase = ?s.phase,
                restarts = s.restarts,
                "usage: cpu {cores:.2} of {share:.2} cores, memory {} of {} MiB, local disk {} of {} MiB",
                s.usage.memory_bytes >> 20,
                s.usage.memory_cap >> 20,
                s.usage.disk_bytes >> 20,
                s.usage.disk_quota >> 20,
            );
        }
    }
}
