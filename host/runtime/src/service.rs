//! A running service: its storage, engine, compiled roles and instance supervisors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rolehost_storage::{AccountName, Backend, Clock, RedbStore, StorageOptions};
use tokio::task::JoinHandle;
use wasmtime::component::Component;

use crate::bindings::WorkerRolePre;
use crate::capability::queue::QueueWakers;
use crate::engine::{EngineOptions, EpochTicker, build_engine};
use crate::error::RuntimeError;
use crate::instance::{InstanceState, linker};
use crate::link::FaultPlan;
use crate::manifest::{ComponentSource, Manifest, RoleKind};
use crate::quota::Usage;
use crate::quota::UsageCell;
use crate::stop::{StopHandle, stop_signal};
use crate::web::WebRole;
use crate::worker::{InstanceStatus, Phase, RolePre, RoleRuntime};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "storage.redb";

/// Opens (or creates) the embedded storage of a data directory.
pub fn open_storage(
    data_dir: &Path,
    manifest: &Manifest,
    clock: Option<Arc<dyn Clock>>,
) -> Result<Arc<RedbStore>, RuntimeError> {
    std::fs::create_dir_all(data_dir).map_err(|source| RuntimeError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let path = data_dir.join(DATABASE_FILE);
    let mut options = StorageOptions {
        queue_message_max_bytes: manifest.storage.queue_message_max_bytes,
        ..StorageOptions::default()
    };
    if let Some(clock) = clock {
        options.clock = clock;
    }
    RedbStore::open(&path, options)
        .map(Arc::new)
        .map_err(|source| RuntimeError::Storage { path, source })
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
            ComponentSource::Crate(dir) => {
                let built = crate::build::build_crate(dir, target_dir)?;
                // A crate that is a workspace may build several; take the one named like it.
                let stem = dir
                    .file_name()
                    .map(|s| s.to_string_lossy().replace('-', "_"));
                built
                    .iter()
                    .find(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()) == stem)
                    .or(built.first())
                    .cloned()
                    .ok_or_else(|| crate::error::BuildError::NoComponent {
                        crate_dir: dir.clone(),
                    })?
            }
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
    pub usage_log: Option<std::time::Duration>,
}

struct InstanceSlot {
    stop: StopHandle,
    task: Mutex<Option<JoinHandle<()>>>,
    status: Arc<Mutex<InstanceStatus>>,
    usage: Arc<UsageCell>,
    role: Arc<RoleRuntime>,
}

impl InstanceSlot {
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
}

/// The web side of a service: its roles' load balancers and their listeners.
struct WebPart {
    stop: StopHandle,
    roles: Vec<Arc<WebRole>>,
    endpoints: Vec<(String, std::net::SocketAddr)>,
    serve_tasks: Vec<JoinHandle<()>>,
}

/// A running service.
pub struct Service {
    name: String,
    deployment_id: String,
    instances: Arc<Vec<InstanceSlot>>,
    usage_task: Option<JoinHandle<()>>,
    web: WebPart,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("deployment_id", &self.deployment_id)
            .field("instances", &self.instances.len())
            .finish()
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

impl Service {
    /// Compiles every role's component, checks it against its world, and starts the instances.
    /// Nothing starts unless every role is valid.
    pub async fn start(
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        backend: Arc<dyn Backend>,
        options: ServiceOptions,
    ) -> Result<Service, RuntimeError> {
        let total: u32 = manifest.roles.values().map(|r| r.instances).sum();
        let engine_options = EngineOptions {
            cache_dir: options.cache_dir.clone(),
            metering: true,
            // Every instance, and some headroom (a recycled instance's store is dropped before
            // its replacement is made, so recycling needs none).
            pool_capacity: Some(total.saturating_add((total / 8).max(16))),
        };
        let engine =
            build_engine(&engine_options).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker = linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let account = AccountName::new(manifest.service.clone()).map_err(|e| {
            RuntimeError::Unsupported(format!("service name {:?}: {e}", manifest.service))
        })?;
        let deployment_id = deployment_id();
        let wakers = Arc::new(QueueWakers::default());
        let mut roles = Vec::new();
        for (name, spec) in &manifest.roles {
            let path = components.get(name).ok_or_else(|| {
                RuntimeError::Unsupported(format!("role {name} has no component"))
            })?;
            let component_err = |detail: String| RuntimeError::Component {
                role: name.clone(),
                path: path.clone(),
                detail,
            };
            let bytes = std::fs::read(path).map_err(|source| RuntimeError::Io {
                path: path.clone(),
                source,
            })?;
            let started = std::time::Instant::now();
            let pre = prepare_role(&engine, &linker, bytes, spec.kind)
                .await
                .map_err(component_err)?;
            tracing::info!(role = %name, elapsed = ?started.elapsed(), "compiled and linked");
            roles.push(Arc::new(RoleRuntime {
                spec: spec.clone(),
                service: manifest.service.clone(),
                deployment_id: deployment_id.clone(),
                engine: engine.clone(),
                pre,
                backend: backend.clone(),
                account: account.clone(),
                wakers: wakers.clone(),
                local_root: options.data_dir.join("local").join(name),
                faults: options.faults.clone(),
                metered: engine_options.metering,
            }));
        }
        let ticker =
            EpochTicker::start(&engine).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        // Web roles: bind every endpoint before anything starts, so a taken port fails the
        // start cleanly.
        let mut listeners = Vec::new();
        for role in roles.iter().filter(|r| matches!(r.pre, RolePre::Web(_))) {
            for e in &role.spec.web.endpoints {
                let tls = match &e.tls {
                    None => None,
                    Some(files) => Some(crate::web::tls_acceptor(files).map_err(|detail| {
                        RuntimeError::Unsupported(format!("role {}: {detail}", role.spec.name))
                    })?),
                };
                let listener = crate::web::bind(e.address).await.map_err(|source| {
                    RuntimeError::Unsupported(format!(
                        "role {}: cannot listen on {}: {source}",
                        role.spec.name, e.address
                    ))
                })?;
                listeners.push((role.clone(), listener, tls));
            }
        }
        let (web_stop, web_signal) = stop_signal();
        let mut web_roles: Vec<(Arc<RoleRuntime>, Arc<WebRole>)> = Vec::new();
        let mut endpoints = Vec::new();
        let mut serve_tasks = Vec::new();
        for role in roles.iter() {
            if let RolePre::Web(pre) = &role.pre {
                let web = WebRole::start(role.clone(), pre.clone(), web_signal.clone()).await;
                web_roles.push((role.clone(), web));
            }
        }
        for (role, listener, tls) in listeners {
            let Some((_, web)) = web_roles.iter().find(|(r, _)| Arc::ptr_eq(r, &role)) else {
                continue;
            };
            if let Ok(addr) = listener.local_addr() {
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(role = %role.spec.name, %addr, scheme, "listening");
                endpoints.push((role.spec.name.clone(), addr));
            }
            serve_tasks.push(tokio::spawn(web.clone().serve(listener, tls)));
        }
        let mut instances = Vec::new();
        for role in roles.iter().filter(|r| matches!(r.pre, RolePre::Worker(_))) {
            for index in 0..role.spec.instances {
                let (stop, signal) = stop_signal();
                let status = Arc::new(Mutex::new(InstanceStatus {
                    role: role.spec.name.clone(),
                    instance_id: format!("{}_IN_{index}", role.spec.name),
                    phase: Phase::Starting,
                    restarts: 0,
                    last_recycle_reason: None,
                    interrupted: false,
                    usage: Usage::default(),
                }));
                let usage = Arc::new(UsageCell::default());
                let task = tokio::spawn(role.clone().supervise(
                    index,
                    signal,
                    status.clone(),
                    usage.clone(),
                ));
                instances.push(InstanceSlot {
                    stop,
                    task: Mutex::new(Some(task)),
                    status,
                    usage,
                    role: role.clone(),
                });
            }
        }
        tracing::info!(
            service = %manifest.service,
            deployment = %deployment_id,
            instances = instances.len(),
            "service started"
        );
        let instances = Arc::new(instances);
        let web_list: Vec<Arc<WebRole>> = web_roles.iter().map(|(_, w)| w.clone()).collect();
        let usage_task = options
            .usage_log
            .map(|every| tokio::spawn(log_usage(instances.clone(), web_list, every)));
        Ok(Service {
            name: manifest.service.clone(),
            deployment_id,
            instances,
            usage_task,
            web: WebPart {
                stop: web_stop,
                roles: web_roles.into_iter().map(|(_, w)| w).collect(),
                endpoints,
                serve_tasks,
            },
            _ticker: ticker,
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This deployment's id.
    pub fn deployment_id(&self) -> &str {
        &self.deployment_id
    }

    /// Every instance's status (worker roles, then web roles).
    pub fn status(&self) -> Vec<InstanceStatus> {
        let mut all: Vec<InstanceStatus> = self.instances.iter().map(InstanceSlot::read).collect();
        for w in &self.web.roles {
            all.extend(w.status());
        }
        all
    }

    /// The addresses web roles listen on: (role, address).
    pub fn endpoints(&self) -> &[(String, std::net::SocketAddr)] {
        &self.web.endpoints
    }

    /// Asks every instance to stop and waits until all have stopped (each within its grace
    /// period). Returns their final status.
    pub async fn shutdown(self) -> Vec<InstanceStatus> {
        tracing::info!(service = %self.name, "stopping all instances");
        if let Some(t) = &self.usage_task {
            t.abort();
        }
        // Web roles stop taking connections; requests in flight finish on their own.
        self.web.stop.request();
        for t in &self.web.serve_tasks {
            t.abort();
        }
        for i in self.instances.iter() {
            i.stop.request();
        }
        let mut out = Vec::with_capacity(self.instances.len());
        for i in self.instances.iter() {
            let task = i.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(task) = task
                && let Err(e) = task.await
            {
                tracing::error!(error = %e, "instance supervisor failed");
            }
            out.push(i.read());
        }
        for w in &self.web.roles {
            w.wipe();
            out.extend(w.status());
        }
        out
    }
}

/// Logs each instance's use of its quotas every `every`: CPU in reference cores over the
/// interval against its share, memory and local disk against their caps.
async fn log_usage(
    instances: Arc<Vec<InstanceSlot>>,
    web: Vec<Arc<WebRole>>,
    every: std::time::Duration,
) {
    let read_all = || {
        let mut all: Vec<InstanceStatus> = instances.iter().map(InstanceSlot::read).collect();
        for w in &web {
            all.extend(w.status());
        }
        all
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
