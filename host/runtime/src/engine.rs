//! The one place the wasmtime [`Engine`] is configured (Architecture Invariant), and the epoch
//! ticker that lets long-running guests yield and be interrupted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use std::path::PathBuf;

use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use crate::quota::WASM32_MAX_MEMORY;

/// How often the epoch advances. A running guest yields to the async executor at least this
/// often, so one busy instance never starves the others or the host, and a stuck one can be
/// interrupted within about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How to build the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Cache compiled components here (keyed by content and engine settings), so a restart, or
    /// the next test, does not compile the same component again.
    pub cache_dir: Option<PathBuf>,
    /// Meter CPU with fuel and preempt with epochs (the VM sizes' CPU share, per-call budgets,
    /// grace-period interruption). Off only to measure what the limits cost: instances then
    /// cannot be interrupted.
    pub metering: bool,
    /// Preallocate a pool for this many live instances (fast instantiation; an instance past
    /// it fails to start). `None`: allocate on demand.
    pub pool_capacity: Option<u32>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: None,
            metering: true,
            pool_capacity: None,
        }
    }
}

/// Builds the engine every role of this host runs on.
pub fn build_engine(options: &EngineOptions) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    if let Some(dir) = &options.cache_dir {
        let mut cache = CacheConfig::new();
        // wasmtime wants an absolute cache directory.
        cache.with_directory(std::path::absolute(dir)?);
        config.cache(Some(Cache::new(cache)?));
    }
    config.wasm_component_model(true);
    // Preemption: stores yield (and are metered) at every epoch tick (`instance::new_store`).
    config.epoch_interruption(options.metering);
    config.consume_fuel(options.metering);
    if let Some(n) = options.pool_capacity {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(n)));
    }
    // Guests are long-lived: compile for speed of the code, not of compilation.
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&config)
}

/// A thread advancing the engine's epoch every [`EPOCH_TICK`] until dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    pub fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rolehost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The pooling allocator for `n` live instances. A component instance holds several core
/// instances and tables (a Rust guest: about four and two), hence the factors. Every memory
/// slot reserves address space for the largest wasm32 memory; only touched pages cost RAM.
fn pool(n: u32) -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        // Rust wasip2 components have one memory; a quarter more covers the odd adapter's.
        .total_memories(n.saturating_add(n / 4))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_memory_size(WASM32_MAX_MEMORY as usize)
        // Keep a little of each slot's memory resident between uses: recycling and starting
        // instances then touches fewer fresh pages.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10);
    p
}
