//! `rolehost verify`: runs a service's worker roles in a deterministic simulation, records
//! every storage call, and re-runs it once per call and fault (the request lost, the response
//! lost, a crash just before or just after the call, a received message's visibility timeout
//! expiring while it is handled), checking the scenario's invariant at the end of each run.
//!
//! Determinism: one thread (a current-thread executor with tokio's paused clock: waiting
//! advances virtual time at once), storage calls run inline on it in call order, the storage
//! engine's clock and ids, and the guests' WASI clocks and randomness, all come from the
//! virtual time and the seed. The same seed and faults give the same run, call for call.
//!
//! Faults go through the link between instances and storage ([`crate::link::FaultPlan`]);
//! the engine and the guests are unchanged.

pub mod scenario;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rolehost_storage::blob::{GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::PutMessageOptions;
use rolehost_storage::table::{EdmValue, Entity, TableOp};
use rolehost_storage::{
    AccountName, Backend, ListOptions, ManualClock, RedbStore, StorageOptions, Timestamp,
};
use serde::Serialize;

use crate::engine::{EngineOptions, build_engine};
use crate::error::RuntimeError;
use crate::instance::SimEnv;
use crate::link::{CallInfo, Fault, FaultPlan};
use crate::manifest::{Manifest, RoleKind};
use crate::service::{Service, ServiceOptions};
use crate::worker::RolePre;
pub use scenario::{Check, Checker, End, SCENARIO_FILE, Scenario, ScenarioError};

/// Virtual time zero of every run: 2008-10-27 (the Azure announcement), so timestamps in
/// traces are recognisable and the same in every run.
const EPOCH_MICROS: u64 = 1_225_065_600_000_000;

/// Faults tried on every call.
pub const CALL_FAULTS: [Fault; 4] = [
    Fault::LoseRequest,
    Fault::LoseResponse,
    Fault::CrashBefore,
    Fault::CrashAfter,
];

/// One storage call of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEntry {
    /// Its place in the run (0 first).
    pub index: usize,
    /// Virtual milliseconds since the run began.
    pub at_ms: u64,
    /// The calling instance.
    pub instance: String,
    /// The WIT function.
    pub operation: String,
    /// The queue, container or table.
    pub target: String,
    /// The fault injected.
    pub fault: &'static str,
    /// What came of it: `ok`, `ok (n)` for the messages a get returned, or the error the
    /// guest saw.
    pub outcome: String,
}

impl std::fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{:<4} {:>8.3}s  {:<14} {:<26} {:<14} {}",
            self.index,
            self.at_ms as f64 / 1000.0,
            self.instance,
            self.operation,
            self.target,
            if self.fault == "none" {
                self.outcome.clone()
            } else {
                format!("[{}] {}", self.fault, self.outcome)
            }
        )
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "messages", rename_all = "lowercase")]
pub enum Verdict {
    /// Every check held.
    Pass,
    /// Some checks failed: what was found instead.
    Fail(Vec<String>),
    /// Still busy at the scenario's time limit.
    Stuck(Vec<String>),
}

impl Verdict {
    /// Whether the invariant held.
    pub fn passed(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

/// A case: the faults to inject, by call index.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Case {
    /// (call index, fault), in call order.
    pub faults: Vec<(usize, Fault)>,
}

impl Case {
    /// Its id, e.g. `c12-lose-response` or `c3-crash-after+c20-lose-request`; `baseline` for
    /// no faults.
    pub fn id(&self) -> String {
        if self.faults.is_empty() {
            return "baseline".into();
        }
        self.faults
            .iter()
            .map(|(i, f)| format!("c{i}-{}", f.name()))
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The case with this id.
    pub fn parse(id: &str) -> Option<Case> {
        if id == "baseline" {
            return Some(Case::default());
        }
        let mut faults = Vec::new();
        for part in id.split('+') {
            let rest = part.strip_prefix('c')?;
            let (index, fault) = rest.split_once('-')?;
            faults.push((index.parse().ok()?, Fault::parse(fault)?));
        }
        faults.sort();
        Some(Case { faults })
    }
}

/// A run of a case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The case's id.
    pub id: String,
    /// The verdict.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Every storage call, in order.
    pub trace: Vec<TraceEntry>,
    /// Virtual time the run took, milliseconds.
    pub virtual_ms: u64,
}

impl Run {
    /// The faulted calls of this run.
    pub fn faulted(&self) -> impl Iterator<Item = &TraceEntry> {
        self.trace.iter().filter(|t| t.fault != "none")
    }
}

/// Panics on simulation threads, recorded so a case whose host panicked fails (before, an
/// instance whose host function panicked died silently and the case could pass).
mod host_panics {
    use std::cell::{Cell, RefCell};

    thread_local! {
        static SIMULATION: Cell<bool> = const { Cell::new(false) };
        static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    /// Installs, once, a panic hook that records panics on simulation threads (and then
    /// does what the hook before it did).
    pub(super) fn watch() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if SIMULATION.with(Cell::get) {
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_string())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    let at = info
                        .location()
                        .map(|l| format!(" at {}:{}", l.file(), l.line()))
                        .unwrap_or_default();
                    PANICS.with(|p| p.borrow_mut().push(format!("{message}{at}")));
                }
                previous(info);
            }));
        });
    }

    /// This thread runs a simulation: its panics are the host's.
    pub(super) fn mark_simulation() {
        SIMULATION.with(|s| s.set(true));
        PANICS.with(|p| p.borrow_mut().clear());
    }

    /// The panics recorded on this thread since the last call.
    pub(super) fn take() -> Vec<String> {
        PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_panic_on_a_simulation_thread_is_recorded_and_taken_once() {
            super::watch();
            std::thread::spawn(|| {
                super::mark_simulation();
                let r = std::panic::catch_unwind(|| panic!("a host function fell over"));
                assert!(r.is_err());
                let seen = super::take();
                assert_eq!(seen.len(), 1, "{seen:?}");
                assert!(seen[0].contains("a host function fell over"), "{seen:?}");
                assert!(super::take().is_empty());
            })
            .join()
            .unwrap();
            // Another thread's panics are not a simulation's.
            let r = std::panic::catch_unwind(|| panic!("elsewhere"));
            assert!(r.is_err());
            assert!(super::take().is_empty());
        }
    }
}

/// The fault plan of one run: injects the case's faults by call index and records the trace.
struct SimPlan {
    faults: BTreeMap<usize, Fault>,
    trace: Mutex<Vec<TraceEntry>>,
    clock: Arc<ManualClock>,
    start: tokio::time::Instant,
}

impl SimPlan {
    fn elapsed(&self) -> Duration {
        tokio::time::Instant::now() - self.start
    }

    /// Brings the storage engine's clock to the virtual now.
    fn sync_clock(&self) {
        let micros = u64::try_from(self.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.clock
            .set(Timestamp(EPOCH_MICROS.saturating_add(micros)));
    }
}

impl FaultPlan for SimPlan {
    fn fault(&self, call: &CallInfo) -> Fault {
        self.sync_clock();
        let mut trace = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        let index = trace.len();
        let mut fault = self.faults.get(&index).copied().unwrap_or_default();
        if fault == Fault::ExpireVisibility && call.operation != "queue.get-messages" {
            fault = Fault::None;
        }
        trace.push(TraceEntry {
            index,
            at_ms: u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX),
            instance: call.instance.to_string(),
            operation: call.operation.to_string(),
            target: call.target.clone(),
            fault: fault.name(),
            outcome: String::new(),
        });
        fault
    }

    fn observed(&self, _call: &CallInfo, _fault: Fault, outcome: Result<Option<usize>, String>) {
        let mut trace = self.trace.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = trace.last_mut() {
            last.outcome = match outcome {
                Ok(None) => "ok".into(),
                Ok(Some(n)) => format!("ok ({n})"),
                Err(e) => e,
            };
        }
    }

    fn inline(&self) -> bool {
        true
    }
}

/// A service and scenario ready to simulate: the roles compiled once, run as many times as
/// there are cases.
pub struct Verifier {
    manifest: Manifest,
    scenario: Scenario,
    engine: wasmtime::Engine,
    roles: Arc<BTreeMap<String, RolePre>>,
    work_dir: tempfile::TempDir,
    left_out: Vec<String>,
    checker: Option<crate::bindings::WorkerRolePre<crate::instance::InstanceState>>,
}

/// The depth-1 cases of a baseline run: every call with every call fault, and each
/// `get-messages` that returned messages with an expired visibility timeout.
pub fn cases_for(baseline: &Run, after: &Case) -> Vec<Case> {
    let from = after.faults.last().map_or(0, |(i, _)| i + 1);
    let mut out = Vec::new();
    for t in baseline.trace.iter().filter(|t| t.index >= from) {
        let mut faults: Vec<Fault> = CALL_FAULTS.to_vec();
        if t.operation == "queue.get-messages"
            && t.outcome.starts_with("ok (")
            && t.outcome != "ok (0)"
        {
            faults.push(Fault::ExpireVisibility);
        }
        for f in faults {
            let mut c = after.clone();
            c.faults.push((t.index, f));
            out.push(c);
        }
    }
    out
}

impl Verifier {
    /// Compiles the service's worker roles (web roles do not run under verify) and, when the
    /// scenario has one, its checker (`checker_component`: the built file), and checks the
    /// scenario against the manifest.
    pub async fn new(
        manifest: &Manifest,
        components: &BTreeMap<String, PathBuf>,
        scenario: Scenario,
        checker_component: Option<&Path>,
    ) -> Result<Verifier, RuntimeError> {
        let mut manifest = manifest.clone();
        for role in scenario.roles.keys() {
            if !manifest.roles.contains_key(role) {
                return Err(RuntimeError::Unsupported(format!(
                    "{}: roles.{role}: the manifest has no role {role}",
                    scenario.path.display()
                )));
            }
        }
        let left_out: Vec<String> = manifest
            .roles
            .iter()
            .filter(|(_, r)| r.kind == RoleKind::Web)
            .map(|(n, _)| n.clone())
            .collect();
        manifest.roles.retain(|_, r| r.kind == RoleKind::Worker);
        for (name, spec) in manifest.roles.iter_mut() {
            if let Some(n) = scenario.roles.get(name) {
                spec.instances = *n;
            }
            // The CPU share would read the machine's clock: unlimited under simulation (fuel
            // still ends every slice in a yield, at the same points in every run).
            spec.limits.fuel_per_sec = u64::MAX / 4;
        }
        manifest.roles.retain(|_, r| r.instances > 0);
        if manifest.roles.is_empty() {
            return Err(RuntimeError::Unsupported(
                "no worker role runs in this scenario (verify runs worker roles)".into(),
            ));
        }
        let total: u32 = manifest.roles.values().map(|r| r.instances).sum();
        let engine = build_engine(&EngineOptions {
            cache_dir: None,
            metering: true,
            pool_capacity: Some(total.saturating_add(16)),
        })
        .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker =
            crate::instance::linker(&engine).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut roles = BTreeMap::new();
        for (name, spec) in &manifest.roles {
            let path = components.get(name).ok_or_else(|| {
                RuntimeError::Unsupported(format!("role {name} has no component"))
            })?;
            let (pre, _) =
                crate::service::load_role(&engine, &linker, name, path, spec.kind, false).await?;
            roles.insert(name.clone(), pre);
        }
        let checker = match (&scenario.checker, checker_component) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(RuntimeError::Unsupported(
                    "the scenario has a checker, but no component was given for it".into(),
                ));
            }
            (Some(_), Some(path)) => match crate::service::load_role(
                &engine,
                &linker,
                "checker",
                path,
                RoleKind::Worker,
                false,
            )
            .await?
            {
                (RolePre::Worker(pre), _) => Some(pre),
                (RolePre::Web(_), _) => None,
            },
        };
        // tmpfs when there is one: a run's commits then cost no disk flushes.
        let shm = Path::new("/dev/shm");
        let work_dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .map_err(|source| RuntimeError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        Ok(Verifier {
            manifest,
            scenario,
            engine,
            roles: Arc::new(roles),
            work_dir,
            left_out,
            checker,
        })
    }

    /// Web roles of the manifest that do not run under verify.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// The scenario.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// Runs one case from scratch, on a thread of its own with a fresh executor, storage and
    /// instances.
    pub fn run(&self, case: &Case) -> Result<Run, RuntimeError> {
        host_panics::watch();
        std::thread::scope(|s| {
            s.spawn(|| {
                host_panics::mark_simulation();
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .map_err(|e| RuntimeError::Engine(format!("a simulation executor: {e}")))?;
                rt.block_on(self.simulate(case))
            })
            .join()
            .unwrap_or_else(|_| Err(RuntimeError::Engine("the simulation panicked".into())))
        })
    }

    async fn simulate(&self, case: &Case) -> Result<Run, RuntimeError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.work_dir.path().join(format!("run-{n}"));
        std::fs::create_dir_all(&dir).map_err(|source| RuntimeError::Io {
            path: dir.clone(),
            source,
        })?;
        let clock = Arc::new(ManualClock::new(Timestamp(EPOCH_MICROS)));
        let db = dir.join("storage.redb");
        let store = RedbStore::open(
            &db,
            StorageOptions {
                clock: clock.clone(),
                id_seed: Some(self.scenario.seed),
                queue_message_max_bytes: self.manifest.storage.queue_message_max_bytes,
                // A case's database is small and short-lived (on tmpfs): the host's disk
                // headroom would only refuse it where tmpfs is small.
                headroom_bytes: 0,
                ..StorageOptions::default()
            },
        )
        .map_err(|source| RuntimeError::Storage {
            location: db.display().to_string(),
            source,
        })?;
        let store: Arc<dyn Backend> = Arc::new(store);
        let account = AccountName::new(self.manifest.service.clone())
            .map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
        setup(&*store, &account, &self.scenario).map_err(RuntimeError::Unsupported)?;

        let start = tokio::time::Instant::now();
        let plan = Arc::new(SimPlan {
            faults: case.faults.iter().copied().collect(),
            trace: Mutex::new(Vec::new()),
            clock,
            start,
        });
        let options = ServiceOptions {
            data_dir: dir.clone(),
            faults: Some(plan.clone()),
            engine: Some(self.engine.clone()),
            precompiled: Some(self.roles.clone()),
            deployment_id: Some("verify".into()),
            sim: Some(SimEnv {
                seed: self.scenario.seed,
                start,
                wall_base: Duration::from_micros(EPOCH_MICROS),
            }),
            ..ServiceOptions::default()
        };
        let service =
            Service::start(&self.manifest, &BTreeMap::new(), store.clone(), options).await?;
        // Run until the end condition, a virtual second at a time.
        let mut stuck = None;
        let mut idle_since: Option<Duration> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            plan.sync_clock();
            let now = plan.elapsed();
            match self.scenario.end {
                End::After(d) if now >= d => break,
                End::After(_) => {}
                End::Idle(settle) => {
                    if queues_empty(&*store, &account) {
                        let since = *idle_since.get_or_insert(now);
                        if now - since >= settle {
                            break;
                        }
                    } else {
                        idle_since = None;
                    }
                }
            }
            if now >= self.scenario.limit {
                stuck = Some(format!(
                    "still busy after {} s of virtual time (messages left: {})",
                    now.as_secs(),
                    queue_summary(&*store, &account)
                ));
                break;
            }
        }
        let virtual_ms = u64::try_from(plan.elapsed().as_millis()).unwrap_or(u64::MAX);
        service.stop().await;
        plan.sync_clock();
        let mut failures = check(&*store, &account, &self.scenario.checks);
        // A panic in the host (a host function, the storage engine) ends an instance's task
        // without a trace of its own: it is a failed case, never a pass.
        for p in host_panics::take() {
            failures.push(format!("the host panicked: {p}"));
        }
        if let Some(pre) = &self.checker
            && let Err(message) = self.run_checker(pre, &store, &account, start).await
        {
            failures.push(format!("the checker says: {message}"));
        }
        let verdict = match (stuck, failures.is_empty()) {
            (Some(s), _) => Verdict::Stuck([vec![s], failures].concat()),
            (None, true) => Verdict::Pass,
            (None, false) => Verdict::Fail(failures),
        };
        let trace = std::mem::take(&mut *plan.trace.lock().unwrap_or_else(|p| p.into_inner()));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Run {
            id: case.id(),
            verdict,
            trace,
            virtual_ms,
        })
    }
}

impl Verifier {
    /// Runs the scenario's checker once on the run's storage (no faults): `Ok` passes.
    async fn run_checker(
        &self,
        pre: &crate::bindings::WorkerRolePre<crate::instance::InstanceState>,
        store: &Arc<dyn Backend>,
        account: &AccountName,
        start: tokio::time::Instant,
    ) -> Result<(), String> {
        use crate::capability::environment::InstanceInfo;
        let settings = self
            .scenario
            .checker
            .as_ref()
            .map(|c| c.settings.clone())
            .unwrap_or_default();
        let info = InstanceInfo {
            service: self.manifest.service.clone(),
            role: "Checker".into(),
            instance_id: "Checker_IN_0".into(),
            deployment_id: "verify".into(),
            settings,
            local_resources: Vec::new(),
            resumed_from: None,
        };
        let (_stop, signal) = crate::stop::stop_signal();
        let link =
            crate::link::Link::new(store.clone(), account.clone(), Arc::from("Checker_IN_0"));
        let mut parts = crate::instance::InstanceParts::bare(info, link, signal);
        parts.sim = Some(SimEnv {
            seed: self.scenario.seed,
            start,
            wall_base: Duration::from_micros(EPOCH_MICROS),
        });
        let mut limits = crate::quota::Limits::of(crate::manifest::VmSize::Small);
        limits.fuel_per_sec = u64::MAX / 4;
        let mut store = crate::instance::new_store(&self.engine, parts, &limits)
            .map_err(|e| format!("could not start the checker: {e:#}"))?;
        let role = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| format!("the checker failed to start: {e:#}"))?;
        let worker = role.rolehost_platform_worker();
        worker
            .call_on_start(&mut store)
            .await
            .map_err(|e| format!("the checker trapped in on-start: {e:#}"))??;
        worker
            .call_run(&mut store)
            .await
            .map_err(|e| format!("the checker trapped: {e:#}"))?
    }
}

fn queues_empty(store: &dyn Backend, account: &AccountName) -> bool {
    let Ok(page) = store.list_queues(account, &ListOptions::default()) else {
        return false;
    };
    page.items.iter().all(|q| {
        store
            .get_queue_properties(account, &q.name)
            .is_ok_and(|p| p.approximate_message_count == 0)
    })
}

fn queue_summary(store: &dyn Backend, account: &AccountName) -> String {
    let Ok(page) = store.list_queues(account, &ListOptions::default()) else {
        return "?".into();
    };
    page.items
        .iter()
        .filter_map(|q| {
            let n = store
                .get_queue_properties(account, &q.name)
                .ok()?
                .approximate_message_count;
            (n > 0).then(|| format!("{} {n}", q.name))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn edm(v: &toml::Value) -> Option<EdmValue> {
    Some(match v {
        toml::Value::String(s) => EdmValue::String(s.clone()),
        toml::Value::Integer(i) => EdmValue::Int64(*i),
        toml::Value::Float(f) => EdmValue::Double(*f),
        toml::Value::Boolean(b) => EdmValue::Boolean(*b),
        _ => return None,
    })
}

fn edm_text(v: &EdmValue) -> String {
    match v {
        EdmValue::String(s) | EdmValue::Guid(s) => s.clone(),
        EdmValue::Int32(i) => i.to_string(),
        EdmValue::Int64(i) => i.to_string(),
        EdmValue::Double(d) => d.to_string(),
        EdmValue::Boolean(b) => b.to_string(),
        EdmValue::DateTime(t) => t.to_string(),
        EdmValue::Binary(b) => format!("{b:?}"),
    }
}

/// Puts the scenario's messages, blobs and entities.
fn setup(store: &dyn Backend, account: &AccountName, s: &Scenario) -> Result<(), String> {
    for m in &s.setup.messages {
        let _ = store.create_queue(account, &m.queue, Default::default());
        for _ in 0..m.count {
            store
                .put_message(
                    account,
                    &m.queue,
                    m.body.as_bytes(),
                    PutMessageOptions::default(),
                )
                .map_err(|e| format!("setup: a message on {}: {e}", m.queue))?;
        }
    }
    for b in &s.setup.blobs {
        let _ = store.create_container(account, &b.container, Default::default());
        store
            .put_blob(
                account,
                &b.container,
                &b.name,
                &mut b.text.as_bytes(),
                PutBlobOptions::default(),
            )
            .map_err(|e| format!("setup: blob {}/{}: {e}", b.container, b.name))?;
    }
    for e in &s.setup.entities {
        let _ = store.create_table(account, &e.table);
        let mut entity = Entity::new(e.partition.clone(), e.row.clone());
        for (k, v) in &e.properties {
            let v = edm(v).ok_or_else(|| format!("setup: entity {}/{}/{}: property {k} is not a string, integer, float or boolean", e.table, e.partition, e.row))?;
            entity.properties.insert(k.clone(), v);
        }
        store
            .execute(account, &e.table, TableOp::Insert(entity))
            .map_err(|err| format!("setup: entity {}/{}/{}: {err}", e.table, e.partition, e.row))?;
    }
    Ok(())
}

/// What failed of `checks`, in words.
fn check(store: &dyn Backend, account: &AccountName, checks: &[Check]) -> Vec<String> {
    let blob = |c: &str, n: &str| -> Option<String> {
        let mut read = store
            .get_blob(account, c, n, &GetBlobOptions::default())
            .ok()?;
        let mut v = Vec::new();
        read.reader.read_to_end(&mut v).ok()?;
        Some(String::from_utf8_lossy(&v).into_owned())
    };
    let mut out = Vec::new();
    for c in checks {
        let found = match c {
            Check::BlobEquals {
                container,
                name,
                text,
            } => match blob(container, name) {
                Some(t) if t == *text => None,
                Some(t) => Some(format!("blob {container}/{name} is {t:?}")),
                None => Some(format!("blob {container}/{name} does not exist")),
            },
            Check::BlobExists {
                container,
                name,
                exists,
            } => {
                let there = blob(container, name).is_some();
                (there != *exists).then(|| {
                    format!(
                        "blob {container}/{name} {}",
                        if there { "exists" } else { "does not exist" }
                    )
                })
            }
            Check::QueueCount { queue, count } => {
                let n = store
                    .get_queue_properties(account, queue)
                    .map_or(0, |p| p.approximate_message_count);
                (n != *count).then(|| format!("queue {queue} holds {n} messages"))
            }
            Check::EntityEquals {
                table,
                partition,
                row,
                property,
                text,
            } => match store.get_entity(account, table, partition, row, None) {
                Err(_) => Some(format!("entity {table}/{partition}/{row} does not exist")),
                Ok(e) => match e.properties.get(property).map(edm_text) {
                    Some(t) if t == *text => None,
                    Some(t) => Some(format!(
                        "entity {table}/{partition}/{row} has {property} = {t:?}"
                    )),
                    None => Some(format!(
                        "entity {table}/{partition}/{row} has no {property}"
                    )),
                },
            },
            Check::EntityExists {
                table,
                partition,
                row,
                exists,
            } => {
                let there = store
                    .get_entity(account, table, partition, row, None)
                    .is_ok();
                (there != *exists).then(|| {
                    format!(
                        "entity {table}/{partition}/{row} {}",
                        if there { "exists" } else { "does not exist" }
                    )
                })
            }
        };
        if let Some(found) = found {
            out.push(format!("expected {c}, but {found}"));
        }
    }
    out
}

/// Everything `rolehost verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The fault-free run.
    pub baseline: Run,
    /// Every case, in call order (the baseline is not among them).
    pub cases: Vec<Run>,
    /// Cases left out because the budget ran out.
    pub skipped: usize,
    /// Wall-clock seconds the whole enumeration took.
    pub elapsed_s: f64,
}

impl Report {
    /// The cases whose invariant broke (or that got stuck).
    pub fn failures(&self) -> impl Iterator<Item = &Run> {
        self.cases.iter().filter(|r| !r.verdict.passed())
    }
}

/// Enumerates every case to `depth` (1 or 2), at most `budget` cases; `progress` hears how
/// far it got.
pub fn enumerate(
    verifier: &Verifier,
    depth: u8,
    budget: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<Report, RuntimeError> {
    let started = std::time::Instant::now();
    let baseline = verifier.run(&Case::default())?;
    let mut pending = cases_for(&baseline, &Case::default());
    let mut cases = Vec::new();
    let mut skipped = 0;
    let mut i = 0;
    while i < pending.len() {
        if cases.len() >= budget {
            skipped = pending.len() - i;
            break;
        }
        let case = pending[i].clone();
        i += 1;
        let run = verifier.run(&case)?;
        if depth >= 2 && case.faults.len() == 1 {
            // Pairs: a second fault on any later call of this faulted run.
            pending.extend(cases_for(&run, &case));
        }
        cases.push(run);
        progress(cases.len(), pending.len().min(budget));
    }
    Ok(Report {
        baseline,
        cases,
        skipped,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_ids_round_trip() {
        let c = Case {
            faults: vec![(3, Fault::CrashAfter), (20, Fault::ExpireVisibility)],
        };
        assert_eq!(c.id(), "c3-crash-after+c20-expire-visibility");
        assert_eq!(Case::parse(&c.id()), Some(c));
        assert_eq!(Case::parse("baseline"), Some(Case::default()));
        assert_eq!(Case::parse("c3-explode"), None);
        assert_eq!(Case::parse("x3-lose-request"), None);
    }
}
