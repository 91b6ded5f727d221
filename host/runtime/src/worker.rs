//! Worker role instances: start, run, stop with a grace period, recycle with backoff.
//!
//! One supervisor task per instance slot runs incarnations of the instance one after the other.
//! An incarnation is a fresh store: `on-start`, then `run` until the host asks it to stop, then
//! `on-stop`. A trap, an `err`, or a `run` that returns unasked ends the incarnation; the
//! supervisor logs why, waits a backoff (doubling up to [`MAX_BACKOFF`]) and starts a new one.
//! The host and the other instances go on.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rolehost_storage::{AccountName, Backend};
use tokio::sync::oneshot;
use tokio::time::Instant;
use wasmtime::Engine;

use crate::bindings::WorkerRolePre;
use crate::capability::environment::{InstanceInfo, LocalResourceInfo, Topology};
use crate::capability::local_disk::DiskQuota;
use crate::capability::queue::QueueWakers;
use crate::guest_log::LogHub;
use crate::instance::{InstanceParts, InstanceState, new_store};
use crate::link::{FaultPlan, InjectedCrash, Link};
use crate::manifest::RoleSpec;
use crate::quota::{Usage, UsageCell};
use crate::stop::{StopHandle, StopSignal};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Longest wait between recycles.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// An incarnation that ran this long was healthy: the next failure starts the backoff afresh.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Instantiating and in `on-start`.
    Starting,
    /// In `run`.
    Running,
    /// Asked to stop; finishing `run` and `on-stop` within the grace period.
    Stopping,
    /// Failed; waiting out the backoff before a new incarnation.
    Recycling,
    /// Done.
    Stopped,
    /// Captured into a snapshot and stopped; a thaw brings it back.
    Frozen,
}

/// What the host knows of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStatus {
    /// The role.
    pub role: String,
    /// The instance id.
    pub instance_id: String,
    /// Where it is.
    pub phase: Phase,
    /// How many times it was recycled.
    pub restarts: u32,
    /// Why it was last recycled.
    pub last_recycle_reason: Option<String>,
    /// Whether its last stop had to interrupt it after the grace period.
    pub interrupted: bool,
    /// What it uses against its quotas (filled in when read).
    pub usage: Usage,
}

/// A role's component, checked against its world and ready to instantiate.
#[derive(Clone)]
pub enum RolePre {
    /// A worker role.
    Worker(WorkerRolePre<InstanceState>),
    /// A web role (`wasi:http/incoming-handler`).
    Web(ProxyPre<InstanceState>),
}

/// A freeze asked of one instance: its supervisor answers at the quiet point with the
/// snapshot component and the guest's monotonic time, or why it could not.
#[derive(Debug, Default)]
pub struct FreezeCell {
    asked: Mutex<Option<Asked>>,
}

#[derive(Debug)]
struct Asked {
    reply: oneshot::Sender<FreezeAnswer>,
    /// The instance's stop, requested to reach the quiet point and withdrawn when the freeze
    /// is refused there (the instance then runs on).
    stop: StopHandle,
}

/// A freeze's answer: the snapshot component and the guest's monotonic time (ns), or why not.
pub type FreezeAnswer = Result<(Vec<u8>, u64), String>;

impl FreezeCell {
    /// Asks for a freeze and requests the instance's `stop` (so `run` returns); the answer
    /// comes on the receiver.
    pub fn ask(&self, stop: &StopHandle) -> oneshot::Receiver<FreezeAnswer> {
        let (reply, rx) = oneshot::channel();
        *self.asked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Asked {
            reply,
            stop: stop.clone(),
        });
        stop.request();
        rx
    }

    fn take(&self) -> Option<Asked> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Captures an instance at its quiet point, after its `on-freeze`: refused (the instance is
/// left as it was) while the guest still holds a stdio stream, which no thaw could give back.
pub(crate) async fn capture_quiet(
    source: &[u8],
    store: &mut wasmtime::Store<InstanceState>,
    instance: wasmtime::component::Instance,
) -> Result<(Vec<u8>, u64), FreezeFailure> {
    let held = store
        .data()
        .usage
        .stdio_held
        .load(std::sync::atomic::Ordering::Relaxed);
    if held > 0 {
        return Err(FreezeFailure::Refused(format!(
            "it holds {held} stdout/stderr stream(s), and no handle survives a thaw. The SDK \
             releases wasi-libc's at on-freeze (rolehost_sdk::worker!, web_freezable!); a role \
             built without it, or keeping a stream of its own, can log with \
             rolehost_sdk::env::log instead, which holds no handle"
        )));
    }
    // wizer's accessor grows the memory by a page to read it: past the VM size's cap that
    // page is allowed (the headroom), past wasm32's maximum nothing can give it.
    let memory = store.data().limiter.current as u64;
    if memory + crate::quota::FREEZE_HEADROOM as u64 > crate::quota::WASM32_MAX_MEMORY {
        return Err(FreezeFailure::Refused(format!(
            "its memory is at wasm32's 4 GiB maximum ({memory} bytes), and reading it for a \
             snapshot takes one more 64 KiB page"
        )));
    }
    let monotonic_ns = store.data().monotonic_now();
    store.data_mut().limiter.headroom = crate::quota::FREEZE_HEADROOM;
    let captured = crate::freeze::capture(source, store, instance).await;
    store.data_mut().limiter.headroom = 0;
    captured
        .map(|snapshot| (snapshot, monotonic_ns))
        .map_err(|e| match e {
            // A trap may leave the instance unable to run again: it is recycled.
            crate::freeze::FreezeError::Trapped(_) => FreezeFailure::Failed(e.to_string()),
            e => FreezeFailure::Refused(e.to_string()),
        })
}

/// What an `on-freeze` call (bounded by the grace period) means for the freeze.
pub(crate) fn on_freeze_outcome(
    readied: Result<wasmtime::Result<()>, tokio::time::error::Elapsed>,
    state: &InstanceState,
) -> Result<(), FreezeFailure> {
    match readied {
        Err(_) => Err(FreezeFailure::Failed(
            "on-freeze did not return within the grace period".into(),
        )),
        Ok(Err(e)) => Err(FreezeFailure::Failed(describe_failure(
            "on-freeze",
            &e,
            Some(state),
        ))),
        Ok(Ok(())) => Ok(()),
    }
}

/// Why a freeze did not happen at the quiet point.
pub(crate) enum FreezeFailure {
    /// The instance is intact (nothing was captured): it goes on.
    Refused(String),
    /// The instance failed (`on-freeze` trapped or overran): it is recycled.
    Failed(String),
}

/// What a thawed instance starts from: the snapshot, compiled.
#[derive(Clone)]
pub struct Resume {
    /// The snapshot component, compiled on this role's engine.
    pub component: wasmtime::component::Component,
    /// The guest's monotonic clock when it was frozen, nanoseconds.
    pub monotonic_ns: u64,
    /// The snapshot's id (what `environment.resumed-from` tells the guest).
    pub snapshot_id: String,
}

impl Resume {
    /// Compiles a snapshot taken for idleness (scale to zero) on a blocking thread: what
    /// instance `id` resumes from when demand comes. The error says why it did not compile.
    pub(crate) async fn for_idle(
        engine: &Engine,
        id: &str,
        snapshot: Vec<u8>,
        monotonic_ns: u64,
    ) -> Result<Resume, String> {
        let engine = engine.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            crate::freeze::compile_snapshot(&engine, &snapshot)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))?;
        Ok(Resume {
            component: compiled,
            monotonic_ns,
            snapshot_id: format!("idle:{id}"),
        })
    }
}

/// Everything the instances of one role share.
pub struct RoleRuntime {
    /// The role.
    pub spec: RoleSpec,
    /// The service name.
    pub service: String,
    /// The deployment id.
    pub deployment_id: String,
    /// The engine.
    pub engine: Engine,
    /// The role's component, linked and ready to instantiate.
    pub pre: RolePre,
    /// The service's linker: a thawed snapshot is linked with it.
    pub linker: wasmtime::component::Linker<InstanceState>,
    /// Storage.
    pub backend: Arc<dyn Backend>,
    /// The service's account.
    pub account: AccountName,
    /// Queue wake-ups of the service.
    pub wakers: Arc<QueueWakers>,
    /// Where this role's local resources live: `<root>/<instance id>/<resource>`.
    pub local_root: PathBuf,
    /// Faults to inject on the link (verification runs only).
    pub faults: Option<Arc<dyn FaultPlan>>,
    /// Whether the engine meters fuel.
    pub metered: bool,
    /// The service's topology, which instances read.
    pub topology: Arc<Topology>,
    /// Where guest output goes besides the host's log.
    pub logs: Option<Arc<LogHub>>,
    /// Under `rolehost verify`: virtual clocks and seeded randomness for its instances.
    pub sim: Option<crate::instance::SimEnv>,
    /// The role's component as deployed, when its instances run the instrumented copy (and so
    /// can be frozen).
    pub freeze_source: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for RoleRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleRuntime")
            .field("role", &self.spec.name)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Local resource directories (host, guest path) and their quotas.
type LocalDirs = (Vec<(PathBuf, String)>, Vec<Arc<DiskQuota>>);

enum Outcome {
    Stopped { interrupted: bool },
    Frozen,
    Recycle(String),
}

/// The instance did not finish within the grace period.
struct Interrupted;

/// Runs `fut` until it completes; once a stop is requested, gives it until the grace deadline
/// and then drops it (which interrupts the guest at its next yield: the end of its fuel slice
/// or its next host call).
async fn guarded<F: Future>(
    fut: F,
    stop: &StopSignal,
    grace: Duration,
    deadline: &mut Option<Instant>,
) -> Result<F::Output, Interrupted> {
    tokio::pin!(fut);
    if deadline.is_none() {
        tokio::select! {
            biased;
            out = &mut fut => return Ok(out),
            () = stop.requested() => {}
        }
    }
    let at = *deadline.get_or_insert_with(|| Instant::now() + grace);
    tokio::time::timeout_at(at, fut)
        .await
        .map_err(|_| Interrupted)
}

/// The slot a thaw takes, chosen by the host (never by the snapshot alone): `wanted` (the
/// frozen instance's own slot) when that is frozen, else the lowest frozen slot, else the
/// lowest index not `taken`. A snapshot's slot number thus never makes a slot appear out of
/// nowhere.
pub(crate) fn thaw_slot(wanted: Option<u32>, frozen: &[u32], taken: impl Fn(u32) -> bool) -> u32 {
    if let Some(w) = wanted.filter(|w| frozen.contains(w)) {
        return w;
    }
    if let Some(f) = frozen.iter().min() {
        return *f;
    }
    (0..u32::MAX).find(|i| !taken(*i)).unwrap_or(u32::MAX)
}

/// Why a call failed, in words for the log: names the quota when one was hit.
pub(crate) fn describe_failure(
    phase: &str,
    e: &wasmtime::Error,
    state: Option<&InstanceState>,
) -> String {
    if let Some(crash) = e.downcast_ref::<InjectedCrash>() {
        return crash.to_string();
    }
    let mut reason = match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => {
            let budget = state.and_then(|s| s.call_budget).unwrap_or_default();
            format!(
                "{phase} used its per-call CPU budget ({budget} fuel) without calling the host \
                 (a runaway loop?)"
            )
        }
        Some(wasmtime::Trap::StackOverflow) => format!("{phase} overflowed its stack"),
        // Rust and C guests keep their stack in linear memory: when it overflows, the first
        // sign is an access below address 0.
        Some(wasmtime::Trap::MemoryOutOfBounds) => format!(
            "{phase} trapped: out of bounds memory access (a stack overflow in linear memory, or \
             a bad pointer)"
        ),
        Some(trap) => format!("{phase} trapped: {trap}"),
        None => format!("{phase} failed: {e}"),
    };
    if let Some(asked) = state.and_then(|s| s.limiter.refused) {
        let cap = state.map_or(0, |s| s.limiter.cap());
        reason.push_str(&format!(
            " after hitting its memory quota ({} MiB; it asked for {} MiB)",
            cap >> 20,
            asked >> 20
        ));
    }
    reason
}

/// Splits a role's instance indices into upgrade domains of `batch`, and announces each
/// domain through `progress` as the upgrade reaches it.
pub(crate) fn upgrade_domains<'a, I>(
    role: &'a str,
    indices: &'a [I],
    batch: usize,
    progress: &'a (dyn Fn(String) + Send + Sync),
) -> impl Iterator<Item = &'a [I]> + 'a {
    let total = indices.chunks(batch.max(1)).count();
    indices
        .chunks(batch.max(1))
        .enumerate()
        .map(move |(d, domain)| {
            progress(format!(
                "role {role}: upgrade domain {}/{total} ({} instances)",
                d + 1,
                domain.len()
            ));
            domain
        })
}

/// Removes the tree at `dir` without walking it here: it is renamed out of the way at once
/// (its name is free for a new incarnation when this returns) and deleted on a blocking
/// thread, so a guest's many files never stall the executor. A tree left by a crash is a
/// `.wipe-*` sibling, removed by [`remove_leftover_wipes`] when its role starts.
pub(crate) fn remove_tree_later(dir: &std::path::Path) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = dir.with_file_name(format!(".wipe-{name}-{}-{n}", std::process::id()));
    std::fs::rename(dir, &aside)?;
    let remove = move || {
        // NotFound: a starting instance's sweep of leftovers got there first.
        if let Err(e) = std::fs::remove_dir_all(&aside)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %aside.display(), error = %e, "could not remove a wiped tree");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn_blocking(remove)),
        Err(_) => remove(),
    }
    Ok(())
}

/// Removes the `.wipe-*` trees a crash left in `root` (on a blocking thread).
pub(crate) fn remove_leftover_wipes(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".wipe-") {
            let path = entry.path();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || std::fs::remove_dir_all(path))),
                Err(_) => drop(std::fs::remove_dir_all(path)),
            }
        }
    }
}

fn set_phase(status: &Mutex<InstanceStatus>, phase: Phase) {
    status.lock().unwrap_or_else(|p| p.into_inner()).phase = phase;
}

impl RoleRuntime {
    fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.local_root.join(instance_id)
    }

    /// Creates the instance's local resource directories (emptied first when `fresh` or the
    /// resource is cleaned on recycle), with their quotas.
    fn prepare_local(&self, instance_id: &str, fresh: bool) -> std::io::Result<LocalDirs> {
        let mut dirs = Vec::new();
        let mut quotas = Vec::new();
        if fresh {
            remove_leftover_wipes(&self.local_root);
            remove_leftover_wipes(&self.instance_dir(instance_id));
        }
        for r in &self.spec.local_resources {
            let host = self.instance_dir(instance_id).join(&r.name);
            if (fresh || r.clean_on_recycle) && host.exists() {
                remove_tree_later(&host)?;
            }
            std::fs::create_dir_all(&host)?;
            let guest = format!("/local/{}", r.name);
            quotas.push(Arc::new(DiskQuota::new(
                &r.name,
                &guest,
                &host,
                r.size_bytes,
            )?));
            dirs.push((host, guest));
        }
        Ok((dirs, quotas))
    }

    fn wipe_local(&self, instance_id: &str) {
        let dir = self.instance_dir(instance_id);
        if dir.exists()
            && let Err(e) = remove_tree_later(&dir)
        {
            tracing::warn!(instance = instance_id, error = %e, "could not wipe local resources");
        }
    }

    fn info(&self, instance_id: &str) -> InstanceInfo {
        InstanceInfo {
            service: self.service.clone(),
            role: self.spec.name.clone(),
            instance_id: instance_id.to_string(),
            deployment_id: self.deployment_id.clone(),
            settings: self.spec.settings.clone(),
            local_resources: self
                .spec
                .local_resources
                .iter()
                .map(|r| LocalResourceInfo {
                    name: r.name.clone(),
                    guest_path: format!("/local/{}", r.name),
                    quota_bytes: r.size_bytes,
                })
                .collect(),
            resumed_from: None,
        }
    }

    /// A fresh store for an incarnation of `instance_id`, with its local resources prepared
    /// (emptied first when `first`, or per clean-on-recycle). The error says what failed.
    pub fn new_store(
        &self,
        instance_id: &str,
        first: bool,
        stop: &StopSignal,
        usage: &Arc<UsageCell>,
        resume: Option<&Resume>,
    ) -> Result<wasmtime::Store<InstanceState>, String> {
        let (local_dirs, disk_quotas) = self
            .prepare_local(instance_id, first)
            .map_err(|e| format!("preparing local resources: {e}"))?;
        let mut link = Link::new(
            self.backend.clone(),
            self.account.clone(),
            Arc::from(instance_id),
        );
        if let Some(plan) = &self.faults {
            link = link.with_faults(plan.clone());
        }
        let mut info = self.info(instance_id);
        info.resumed_from = resume.map(|r| r.snapshot_id.clone());
        let parts = InstanceParts {
            info: Arc::new(info),
            monotonic_base_ns: resume.map_or(0, |r| r.monotonic_ns),
            local_dirs,
            disk_quotas,
            link,
            wakers: self.wakers.clone(),
            stop: stop.clone(),
            metered: self.metered,
            usage: usage.clone(),
            outbound_hosts: self.spec.outbound_hosts.clone(),
            topology: self.topology.clone(),
            logs: self.logs.clone(),
            sim: self.sim,
        };
        new_store(&self.engine, parts, &self.spec.limits)
            .map_err(|e| format!("creating the store: {e:#}"))
    }

    /// Wipes an instance's local resources (it stopped).
    pub fn wipe(&self, instance_id: &str) {
        self.wipe_local(instance_id);
    }

    #[allow(clippy::too_many_arguments)]
    async fn incarnation(
        &self,
        instance_id: &str,
        first: bool,
        stop: &StopSignal,
        status: &Mutex<InstanceStatus>,
        usage: &Arc<UsageCell>,
        freeze: &FreezeCell,
        resume: Option<Resume>,
    ) -> Outcome {
        let grace = self.spec.grace_period;
        let mut store = match self.new_store(instance_id, first, stop, usage, resume.as_ref()) {
            Ok(s) => s,
            Err(reason) => return Outcome::Recycle(reason),
        };
        let RolePre::Worker(pre) = &self.pre else {
            return Outcome::Recycle("not a worker role".into());
        };
        // A thawed incarnation starts from its snapshot; any other from the role's component.
        let instance_pre = match &resume {
            None => pre.instance_pre().clone(),
            Some(r) => match self.linker.instantiate_pre(&r.component) {
                Ok(p) => p,
                Err(e) => return Outcome::Recycle(format!("linking the snapshot: {e:#}")),
            },
        };
        let mut deadline = None;
        let instance = match guarded(
            instance_pre.instantiate_async(&mut store),
            stop,
            grace,
            &mut deadline,
        )
        .await
        {
            Err(Interrupted) => return Outcome::Stopped { interrupted: true },
            Ok(Err(e)) => {
                return Outcome::Recycle(describe_failure("instantiation", &e, Some(store.data())));
            }
            Ok(Ok(i)) => i,
        };
        let bindings = match crate::bindings::WorkerRole::new(&mut store, &instance) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Recycle(format!("the component is not a worker role: {e:#}"));
            }
        };
        let worker = bindings.rolehost_platform_worker();

        let started = if resume.is_some() {
            // Its memory is the frozen instance's: it started long ago.
            Ok(Ok(Ok(())))
        } else {
            guarded(worker.call_on_start(&mut store), stop, grace, &mut deadline).await
        };
        match started {
            Err(Interrupted) => return Outcome::Stopped { interrupted: true },
            Ok(Err(e)) => {
                tracing::debug!(instance = instance_id, error = ?e, "on-start failed");
                return Outcome::Recycle(describe_failure("on-start", &e, Some(store.data())));
            }
            Ok(Ok(Err(msg))) => {
                return Outcome::Recycle(format!("on-start returned an error: {msg}"));
            }
            Ok(Ok(Ok(()))) => {}
        }

        let at = loop {
            if !stop.is_requested() {
                set_phase(status, Phase::Running);
                usage.last_active_ms.store(
                    crate::quota::host_ms(),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tracing::info!(instance = instance_id, "running");
                match guarded(worker.call_run(&mut store), stop, grace, &mut deadline).await {
                    Err(Interrupted) => return Outcome::Stopped { interrupted: true },
                    Ok(Err(e)) => {
                        tracing::debug!(instance = instance_id, error = ?e, "run failed");
                        let reason = describe_failure("run", &e, Some(store.data()));
                        if stop.is_requested() {
                            tracing::warn!(instance = instance_id, %reason, "failed while stopping");
                            return Outcome::Stopped { interrupted: false };
                        }
                        return Outcome::Recycle(reason);
                    }
                    Ok(Ok(Err(msg))) if !stop.is_requested() => {
                        return Outcome::Recycle(format!("run returned an error: {msg}"));
                    }
                    Ok(Ok(Err(msg))) => {
                        tracing::warn!(
                            instance = instance_id,
                            "run returned an error while stopping: {msg}"
                        );
                    }
                    Ok(Ok(Ok(()))) if !stop.is_requested() => {
                        return Outcome::Recycle("run returned without a stop request".into());
                    }
                    Ok(Ok(Ok(()))) => {}
                }
            }

            set_phase(status, Phase::Stopping);
            let at = *deadline.get_or_insert_with(|| Instant::now() + grace);
            let Some(asked) = freeze.take() else {
                break at;
            };
            match self.freeze(&mut store, worker, instance, at).await {
                Ok(snapshot) => {
                    let _ = asked.reply.send(Ok(snapshot));
                    return Outcome::Frozen;
                }
                Err(FreezeFailure::Refused(reason)) => {
                    // Nothing was taken from the instance: `run` is called again, as after a
                    // thaw, and the stop that reached the quiet point is withdrawn.
                    tracing::info!(instance = instance_id, %reason, "freeze refused; running on");
                    let _ = asked.reply.send(Err(reason));
                    asked.stop.withdraw();
                    deadline = None;
                }
                Err(FreezeFailure::Failed(reason)) => {
                    // The instance is lost, not the slot: a fresh one starts after the backoff.
                    let _ = asked.reply.send(Err(reason.clone()));
                    asked.stop.withdraw();
                    return Outcome::Recycle(reason);
                }
            }
        };
        match tokio::time::timeout_at(at, worker.call_on_stop(&mut store)).await {
            Err(_) => Outcome::Stopped { interrupted: true },
            Ok(Err(e)) => {
                let reason = describe_failure("on-stop", &e, Some(store.data()));
                tracing::warn!(instance = instance_id, %reason, "on-stop failed");
                Outcome::Stopped { interrupted: false }
            }
            Ok(Ok(())) => Outcome::Stopped { interrupted: false },
        }
    }

    /// The quiet point of a freeze (`run` returned): `on-freeze`, then the capture.
    async fn freeze(
        &self,
        store: &mut wasmtime::Store<InstanceState>,
        worker: &crate::bindings::exports::rolehost::platform::worker::Guest,
        instance: wasmtime::component::Instance,
        deadline: Instant,
    ) -> Result<(Vec<u8>, u64), FreezeFailure> {
        let source = self.freeze_source.clone().ok_or_else(|| {
            FreezeFailure::Refused(format!(
                "role {} runs a component that cannot be frozen",
                self.spec.name
            ))
        })?;
        let readied = tokio::time::timeout_at(deadline, worker.call_on_freeze(&mut *store)).await;
        on_freeze_outcome(readied, store.data())?;
        capture_quiet(&source, store, instance).await
    }

    /// Runs instance `index` of this role until `stop` is requested, recycling it on failure.
    /// `freeze` may ask for a freeze instead; `resume` starts the first incarnation from a
    /// snapshot.
    #[allow(clippy::too_many_arguments)]
    pub async fn supervise(
        self: Arc<Self>,
        index: u32,
        stop: StopSignal,
        status: Arc<Mutex<InstanceStatus>>,
        usage: Arc<UsageCell>,
        freeze: Arc<FreezeCell>,
        mut resume: Option<Resume>,
    ) {
        let instance_id = format!("{}_IN_{index}", self.spec.name);
        let mut backoff = self.spec.recycle_backoff;
        let mut first = true;
        loop {
            set_phase(&status, Phase::Starting);
            let started = Instant::now();
            let outcome = self
                .incarnation(
                    &instance_id,
                    first,
                    &stop,
                    &status,
                    &usage,
                    &freeze,
                    resume.take(),
                )
                .await;
            first = false;
            match outcome {
                Outcome::Frozen => {
                    tracing::info!(instance = %instance_id, "frozen");
                    self.wipe_local(&instance_id);
                    set_phase(&status, Phase::Frozen);
                    return;
                }
                Outcome::Stopped { interrupted } => {
                    if interrupted {
                        tracing::warn!(
                            instance = %instance_id,
                            grace = ?self.spec.grace_period,
                            "did not stop within the grace period; interrupted"
                        );
                    } else {
                        tracing::info!(instance = %instance_id, "stopped");
                    }
                    self.wipe_local(&instance_id);
                    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                    s.interrupted = interrupted;
                    s.phase = Phase::Stopped;
                    return;
                }
                Outcome::Recycle(reason) => {
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff = self.spec.recycle_backoff;
                    }
                    tracing::warn!(instance = %instance_id, %reason, ?backoff, "recycling instance");
                    {
                        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                        s.restarts += 1;
                        s.last_recycle_reason = Some(reason);
                        s.phase = Phase::Recycling;
                    }
                    tokio::select! {
                        biased;
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.requested() => {
                            self.wipe_local(&instance_id);
                            set_phase(&status, Phase::Stopped);
                            return;
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
