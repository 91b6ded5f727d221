//! One instance's store: WASI (stdio into the log, local resources as preopens, no network)
//! plus the platform capabilities, and the linker that serves them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{CallHook, CallHookHandler, Engine, Store, StoreContextMut};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttp, WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capability::blob::BlobCtx;
use crate::capability::environment::{EnvironmentCtx, InstanceInfo, Topology};
use crate::capability::local_disk::{self, DiskQuota, LocalDiskCtx, LocalDiskView};
use crate::capability::outbound::OutboundPolicy;
use crate::capability::queue::{QueueCtx, QueueWakers};
use crate::capability::table::TableCtx;
use crate::capability::{self, Capabilities, CapabilityView};
use crate::guest_log::{GuestOutput, LineBudget, LogHub, LogTarget, Stream};
use crate::link::Link;
use crate::quota::{
    CpuMeter, Limits, MAX_HOST_HANDLES, MAX_HOSTCALL_BYTES, MemoryLimiter, UsageCell, Verdict,
};
use crate::stop::StopSignal;

/// The data of an instance's `Store`.
pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundPolicy,
    table: ResourceTable,
    capabilities: Capabilities,
    /// Memory and table limits.
    pub limiter: MemoryLimiter,
    /// The CPU share.
    pub cpu: CpuMeter,
    /// The per-call fuel budget, if any.
    pub call_budget: Option<u64>,
    /// Where usage is published.
    pub usage: Arc<UsageCell>,
    /// The guest's monotonic clock (read at a freeze).
    monotonic: ResumableMonotonic,
    /// Fuel consumed by earlier incarnations of this instance slot.
    fuel_base: u64,
    /// Platform calls made (storage and environment); the call budget restarts after each.
    platform_calls: Arc<AtomicU64>,
    /// `platform_calls` when the budget last restarted.
    budget_mark: u64,
    /// What the instance's calls cost the host, charged to its CPU share on the way back
    /// into the guest.
    host_work: Arc<crate::link::HostWork>,
    /// Local resource quotas.
    disk: Arc<Mutex<LocalDiskCtx>>,
}

impl InstanceState {
    /// Publishes the current usage.
    fn publish(&self) {
        use Ordering::Relaxed;
        self.usage
            .fuel
            .store(self.fuel_base + self.cpu.consumed, Relaxed);
        self.usage
            .memory
            .store(self.limiter.current as u64, Relaxed);
        let throttled = u64::try_from(self.cpu.throttled.as_micros()).unwrap_or(u64::MAX);
        self.usage.throttled_us.store(throttled, Relaxed);
    }
}

impl InstanceState {
    /// The guest's monotonic clock now, nanoseconds.
    pub fn monotonic_now(&self) -> u64 {
        self.monotonic.now()
    }
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl LocalDiskView for InstanceState {
    fn local_disk(&self) -> Arc<Mutex<LocalDiskCtx>> {
        self.disk.clone()
    }
}

impl CapabilityView for InstanceState {
    fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.capabilities
    }
}

/// What one instance is made of.
#[derive(Debug)]
pub struct InstanceParts {
    /// Who it is.
    pub info: Arc<InstanceInfo>,
    /// Its local resources: (host directory, guest path).
    pub local_dirs: Vec<(PathBuf, String)>,
    /// Their quotas.
    pub disk_quotas: Vec<Arc<DiskQuota>>,
    /// Its link to storage.
    pub link: Link,
    /// The service's queue wakers.
    pub wakers: Arc<QueueWakers>,
    /// Its stop signal.
    pub stop: StopSignal,
    /// Whether the engine meters fuel ([`crate::engine::EngineOptions::metering`]).
    pub metered: bool,
    /// Where its usage is published.
    pub usage: Arc<UsageCell>,
    /// Hosts it may send HTTP requests to.
    pub outbound_hosts: Vec<String>,
    /// The service's topology.
    pub topology: Arc<Topology>,
    /// Where its output goes besides the host's log.
    pub logs: Option<Arc<LogHub>>,
    /// Under `rolehost verify`: virtual clocks and seeded randomness.
    pub sim: Option<SimEnv>,
    /// Where the guest's monotonic clock starts, nanoseconds: 0 for a new instance, the
    /// frozen instance's reading for a thawed one (so time never goes back for the guest).
    pub monotonic_base_ns: u64,
}

impl InstanceParts {
    /// The parts of an instance standing alone (benchmarks, tests, verify's checker): no local
    /// resources, no outbound hosts, metered, its own usage cell and topology, no log hub.
    pub fn bare(info: InstanceInfo, link: Link, stop: StopSignal) -> InstanceParts {
        InstanceParts {
            info: Arc::new(info),
            local_dirs: Vec::new(),
            disk_quotas: Vec::new(),
            link,
            wakers: Arc::default(),
            stop,
            metered: true,
            usage: Arc::default(),
            outbound_hosts: Vec::new(),
            topology: Arc::default(),
            logs: None,
            sim: None,
            monotonic_base_ns: 0,
        }
    }
}

/// The guest's monotonic clock: from a base, at the host's pace.
#[derive(Clone, Copy, Debug)]
struct ResumableMonotonic {
    base_ns: u64,
    started: std::time::Instant,
}

impl ResumableMonotonic {
    fn now(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }
}

impl wasmtime_wasi::HostMonotonicClock for ResumableMonotonic {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        ResumableMonotonic::now(self)
    }
}

/// What a simulated instance reads instead of the machine's clocks and entropy: the virtual
/// time of the simulation (tokio's paused clock) and randomness from a seed.
#[derive(Clone, Copy, Debug)]
pub struct SimEnv {
    /// The simulation's seed.
    pub seed: u64,
    /// Virtual time zero.
    pub start: tokio::time::Instant,
    /// The wall-clock time at virtual time zero, since the Unix epoch.
    pub wall_base: std::time::Duration,
}

/// Bytes from a seed (splitmix64), for deterministic WASI randomness.
fn seeded_bytes(mut seed: u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}

struct VirtualWall(SimEnv);

impl wasmtime_wasi::HostWallClock for VirtualWall {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_micros(1)
    }
    fn now(&self) -> std::time::Duration {
        self.0.wall_base + (tokio::time::Instant::now() - self.0.start)
    }
}

struct VirtualMonotonic(SimEnv);

impl wasmtime_wasi::HostMonotonicClock for VirtualMonotonic {
    fn resolution(&self) -> u64 {
        1_000
    }
    fn now(&self) -> u64 {
        u64::try_from((tokio::time::Instant::now() - self.0.start).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The linker every instance is instantiated with: WASI p2 and the platform.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    local_disk::add_to_linker(&mut linker)?;
    // `wasi:http`: the types (web roles' handlers) and outbound requests, which the role's
    // allow-list gates (`capability::outbound`).
    let http_options = wasmtime_wasi_http::p2::bindings::LinkOptions::default();
    wasmtime_wasi_http::p2::bindings::http::outgoing_handler::add_to_linker::<_, WasiHttp>(
        &mut linker,
        |s: &mut InstanceState| s.http(),
    )?;
    wasmtime_wasi_http::p2::bindings::http::types::add_to_linker::<_, WasiHttp>(
        &mut linker,
        &http_options.into(),
        |s: &mut InstanceState| s.http(),
    )?;
    capability::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Fuel given to a store without a per-call budget: never runs out in practice (the CPU share
/// is enforced by the meter, not by running dry).
const UNBOUNDED_FUEL: u64 = u64::MAX / 4;

/// Fuel per slice: about a millisecond of a busy guest on current hardware. Each slice ends in
/// a yield (a few microseconds), so a busy guest gives way to others this often, can be
/// interrupted this soon, and the meter is exact to within one slice.
const FUEL_SLICE: u64 = 4_000_000;

/// A fresh store for one instance, with its limits applied.
pub fn new_store(
    engine: &Engine,
    parts: InstanceParts,
    limits: &Limits,
) -> wasmtime::Result<Store<InstanceState>> {
    let target = LogTarget {
        service: Arc::from(parts.info.service.as_str()),
        instance: Arc::from(parts.info.instance_id.as_str()),
        hub: parts.logs.clone(),
        usage: parts.usage.clone(),
    };
    let mut wasi = WasiCtxBuilder::new();
    let budget = LineBudget::new();
    wasi.stdout(GuestOutput::new(
        target.clone(),
        Stream::Stdout,
        budget.clone(),
    ))
    .stderr(GuestOutput::new(target, Stream::Stderr, budget))
    // Instances share nothing but storage: no sockets, no name lookups.
    .allow_tcp(false)
    .allow_udp(false)
    .allow_ip_name_lookup(false)
    .env("ROLEHOST_SERVICE", &parts.info.service)
    .env("ROLEHOST_ROLE", &parts.info.role)
    .env("ROLEHOST_INSTANCE_ID", &parts.info.instance_id);
    let monotonic = ResumableMonotonic {
        base_ns: parts.monotonic_base_ns,
        started: std::time::Instant::now(),
    };
    if parts.sim.is_none() {
        wasi.monotonic_clock(monotonic);
    }
    if let Some(sim) = parts.sim {
        // The instance's own stream of randomness: the seed and its id.
        let id_hash = parts
            .info
            .instance_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        let seed = sim.seed ^ id_hash;
        wasi.wall_clock(VirtualWall(sim))
            .monotonic_clock(VirtualMonotonic(sim))
            .secure_random(wasmtime_wasi::Deterministic::new(seeded_bytes(seed, 4096)))
            .insecure_random(wasmtime_wasi::Deterministic::new(seeded_bytes(!seed, 4096)))
            .insecure_random_seed(u128::from(seed));
    }
    for (host, guest) in &parts.local_dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadWrite)?;
    }
    let platform_calls = Arc::new(AtomicU64::new(0));
    let host_work = Arc::new(crate::link::HostWork::default());
    let link = parts
        .link
        .counting(platform_calls.clone())
        .charging(host_work.clone());
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HOST_HANDLES);
    let metered = parts.metered;
    let initial_fuel = limits.call_budget.unwrap_or(UNBOUNDED_FUEL);
    let state = InstanceState {
        wasi: wasi.build(),
        http: WasiHttpCtx::new(),
        outbound: OutboundPolicy::new(&parts.outbound_hosts),
        table,
        limiter: MemoryLimiter::new(limits.memory_bytes).publishing(parts.usage.clone()),
        cpu: CpuMeter::new(limits.fuel_per_sec, initial_fuel),
        call_budget: limits.call_budget.filter(|_| metered),
        fuel_base: parts.usage.fuel.load(Ordering::Relaxed),
        platform_calls: platform_calls.clone(),
        budget_mark: 0,
        host_work,
        disk: LocalDiskCtx::new(parts.disk_quotas, parts.usage.clone()),
        usage: parts.usage.clone(),
        monotonic,
        capabilities: Capabilities {
            blob: BlobCtx::new(link.clone()),
            queue: QueueCtx::new(link.clone(), parts.wakers, parts.stop.clone())
                .counting(parts.usage.clone()),
            table: TableCtx::new(link),
            environment: EnvironmentCtx::new(parts.info, parts.stop)
                .counting(platform_calls)
                .with_topology(parts.topology)
                .with_logs(parts.logs),
        },
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.set_hostcall_fuel(MAX_HOSTCALL_BYTES);
    if metered {
        // Fuel must be there before instantiation: instantiating runs wasm.
        store.set_fuel(initial_fuel)?;
        // Every slice of fuel ends in a yield to the executor: a busy guest never starves its
        // neighbours or the host, and a stopping one can be interrupted there. Running code
        // keeps its fuel count in a register; the store's count (what the meter reads) is
        // brought up to date at the end of each slice and at every host call.
        store.fuel_async_yield_interval(Some(FUEL_SLICE))?;
        store.call_hook_async(Metering {
            budget: limits.call_budget,
        });
    }
    Ok(store)
}

/// The CPU meter and the per-call budget, run on the way into and back from the host (every
/// host function, and wasmtime's own libcalls such as the one that ends a fuel slice).
///
/// Fuel alone does this: wasmtime's epoch checks, the other way to preempt, cost as much
/// again on call-heavy guests (`rolehost-bench runtime`).
struct Metering {
    budget: Option<u64>,
}

impl Metering {
    /// What the hook does, without waiting: how long the guest must sleep, if it is over its
    /// CPU share.
    fn event(
        &self,
        ctx: &mut StoreContextMut<'_, InstanceState>,
        hook: CallHook,
    ) -> wasmtime::Result<Option<std::time::Duration>> {
        let mut sleep = None;
        match hook {
            CallHook::ReturningFromHost => {
                // Charge the fuel used to the CPU share; when a reading is due and the guest
                // is over its share, it sleeps.
                let fuel = ctx.get_fuel()?;
                // Work done inside the call on the guest's behalf is its CPU too: a
                // throttled instance is throttled in its host calls as well.
                let owed = ctx.data().host_work.take();
                if owed > 0 {
                    ctx.data_mut().cpu.charge_host(owed);
                }
                let due = ctx.data_mut().cpu.charge_to(fuel);
                ctx.data().publish();
                if due && let Verdict::Sleep(d) = ctx.data_mut().cpu.read(std::time::Instant::now())
                {
                    sleep = Some(d);
                }
                // A platform call starts a new per-call budget: only code that runs that long
                // without calling the platform runs out. (Returns from libcalls, such as the
                // end of a fuel slice, come here too; the platform-call counter tells them
                // apart.)
                if let Some(budget) = self.budget {
                    let calls = ctx.data().platform_calls.load(Ordering::Relaxed);
                    if calls != ctx.data().budget_mark {
                        ctx.data_mut().budget_mark = calls;
                        restart_budget(ctx, budget)?;
                    }
                }
            }
            // Each call into the guest starts a new budget.
            CallHook::CallingWasm => {
                if let Some(budget) = self.budget {
                    restart_budget(ctx, budget)?;
                }
            }
            CallHook::CallingHost | CallHook::ReturningFromWasm => {}
        }
        Ok(sleep)
    }
}

/// A hook's work when it has nothing to wait for. Zero-sized, so boxing it (the trait returns
/// a boxed future) allocates nothing: the hook runs four times per host call, and with
/// `#[async_trait]` each time allocated and freed a future (with this, malloc and free went
/// from 6.1% to 4.1% of a perf profile of the web bench's rolehost server).
struct Done;

impl std::future::Future for Done {
    type Output = wasmtime::Result<()>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Written out rather than with `#[async_trait]`: the work is done before the future is made,
/// and only a sleep or an error needs a future that allocates.
impl CallHookHandler<InstanceState> for Metering {
    fn handle_call_event<'life0, 'life1, 'async_trait>(
        &'life0 self,
        mut ctx: StoreContextMut<'life1, InstanceState>,
        hook: CallHook,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = wasmtime::Result<()>> + Send + 'async_trait>,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        match self.event(&mut ctx, hook) {
            Ok(None) => Box::pin(Done),
            Ok(Some(d)) => Box::pin(async move {
                tokio::time::sleep(d).await;
                Ok(())
            }),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

fn restart_budget(
    ctx: &mut StoreContextMut<'_, InstanceState>,
    budget: u64,
) -> wasmtime::Result<()> {
    let fuel = ctx.get_fuel()?;
    ctx.data_mut().cpu.reset_fuel(fuel, budget);
    ctx.set_fuel(budget)
}
