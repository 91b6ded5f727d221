//! The one place the wasmtime [`Engine`] is configured (Architecture Invariant).

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
};

use crate::quota::WASM32_MAX_MEMORY;

/// How to build the engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Cache compiled components here (keyed by content and engine settings), so a restart, or
    /// the next test, does not compile the same component again.
    pub cache_dir: Option<PathBuf>,
    /// Meter CPU with fuel, which also preempts (the VM sizes' CPU share, per-call budgets,
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
    // Metering and preemption: stores yield (and are metered) at the end of every slice of
    // fuel (`instance::new_store`). No epoch interruption: its checks would cost as much again.
    config.consume_fuel(options.metering);
    if let Some(n) = options.pool_capacity {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(n)));
    }
    // Guests are long-lived: compile for speed of the code, not of compilation.
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // No cranelift inlining: it cost 180 MiB of host memory for the test guest (1,000 idle
    // instances: 287 MiB instead of 105) and did not measurably lower the limits' cost.
    // Compiled functions are kept by content: a snapshot's code is its role's, so a thaw
    // compiles only its memory image (`rolehost-bench freeze`, thaw_cold).
    config.enable_incremental_compilation(Arc::new(FunctionCache::default()))?;
    Engine::new(&config)
}

/// Most bytes of compiled functions [`FunctionCache`] keeps (beyond it, new ones are not kept).
const FUNCTION_CACHE_BYTES: usize = 256 << 20;

/// Cranelift's incremental compilation cache, in memory: compiled functions by a hash of their
/// code and the compiler's settings. Every role compiled on the engine fills it; compiling a
/// snapshot of that role (a thaw) then finds all of its functions.
#[derive(Debug, Default)]
struct FunctionCache {
    entries: std::sync::Mutex<Functions>,
}

/// What [`FunctionCache`] holds: compiled functions by key, and their bytes in all.
#[derive(Debug, Default)]
struct Functions {
    by_key: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    bytes: usize,
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .by_key
            .get(key)
            .map(|v| std::borrow::Cow::Owned(v.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let size = key.len() + value.len();
        if entries.bytes + size > FUNCTION_CACHE_BYTES {
            return false;
        }
        entries.bytes += size;
        entries.by_key.insert(key.to_vec(), value);
        true
    }
}

/// What instances take from the pooling allocator: core instances, linear memories, tables.
/// [`pool_use`] measures a component's, per instance; [`pool_totals`] is the pool's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUse {
    /// Core instances.
    pub core_instances: u64,
    /// Linear memories.
    pub memories: u64,
    /// Tables.
    pub tables: u64,
}

impl PoolUse {
    /// `self` `n` times.
    pub fn times(self, n: u64) -> PoolUse {
        PoolUse {
            core_instances: self.core_instances.saturating_mul(n),
            memories: self.memories.saturating_mul(n),
            tables: self.tables.saturating_mul(n),
        }
    }

    /// `self` and `other`.
    pub fn plus(self, other: PoolUse) -> PoolUse {
        PoolUse {
            core_instances: self.core_instances.saturating_add(other.core_instances),
            memories: self.memories.saturating_add(other.memories),
            tables: self.tables.saturating_add(other.tables),
        }
    }

    /// The first kind of slot `self` needs more of than `pool` has: its name, needed, had.
    pub fn exceeds(self, pool: PoolUse) -> Option<(&'static str, u64, u64)> {
        [
            ("core instances", self.core_instances, pool.core_instances),
            ("memories", self.memories, pool.memories),
            ("tables", self.tables, pool.tables),
        ]
        .into_iter()
        .find(|(_, need, have)| need > have)
    }
}

/// What one instance of `component` takes from the pool: the core instances it instantiates
/// and the memories and tables its modules define; `None` when it cannot be read (compiling
/// it will refuse it, saying why).
pub fn pool_use(component: &[u8]) -> Option<PoolUse> {
    let mut u = PoolUse::default();
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload {
            Ok(wasmparser::Payload::InstanceSection(s)) => {
                for i in s.into_iter().flatten() {
                    if matches!(i, wasmparser::Instance::Instantiate { .. }) {
                        u.core_instances += 1;
                    }
                }
            }
            Ok(wasmparser::Payload::MemorySection(s)) => u.memories += u64::from(s.count()),
            Ok(wasmparser::Payload::TableSection(s)) => u.tables += u64::from(s.count()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    Some(u)
}

/// The slots of a pool for `n` live instances (what the engine's pooling allocator gets).
pub fn pool_totals(n: u32) -> PoolUse {
    PoolUse {
        core_instances: u64::from(n.saturating_mul(8)),
        memories: u64::from(n.saturating_add(n / 4)),
        tables: u64::from(n.saturating_mul(8)),
    }
}

/// The pooling allocator for `n` live instances. A component instance holds several core
/// instances and tables (a Rust guest: about four and two), hence the factors. Every memory
/// slot reserves address space for the largest wasm32 memory; only touched pages cost RAM.
/// A deployment is admitted against these totals by what its components really take
/// ([`pool_use`]), so a component with many memories cannot starve other tenants.
fn pool(n: u32) -> PoolingAllocationConfig {
    let mut p = PoolingAllocationConfig::default();
    let totals = pool_totals(n);
    p.total_component_instances(n)
        .total_core_instances(u32::try_from(totals.core_instances).unwrap_or(u32::MAX))
        // Rust wasip2 components have one memory; a quarter more covers the odd adapter's.
        .total_memories(u32::try_from(totals.memories).unwrap_or(u32::MAX))
        .total_tables(u32::try_from(totals.tables).unwrap_or(u32::MAX))
        .total_stacks(n)
        .max_memory_size(WASM32_MAX_MEMORY as usize)
        // Keep a little of each slot's memory resident between uses: recycling and starting
        // instances then touches fewer fresh pages.
        .linear_memory_keep_resident(64 << 10)
        .table_keep_resident(16 << 10);
    p
}
