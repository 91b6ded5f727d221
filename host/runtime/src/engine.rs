//! The one place the wasmtime [`Engine`] is configured (Architecture Invariant), and the epoch
//! ticker that lets long-running guests yield and be interrupted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use std::path::Path;

use wasmtime::{Cache, CacheConfig, Config, Engine};

/// How often the epoch advances. A running guest yields to the async executor at least this
/// often, so one busy instance never starves the others or the host, and a stuck one can be
/// interrupted within about one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Builds the engine every role of this host runs on. With `cache_dir`, compiled components
/// are cached there (keyed by content and engine settings), so a restart, or the next test,
/// does not compile the same component again.
pub fn build_engine(cache_dir: Option<&Path>) -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    if let Some(dir) = cache_dir {
        let mut cache = CacheConfig::new();
        // wasmtime wants an absolute cache directory.
        cache.with_directory(std::path::absolute(dir)?);
        config.cache(Some(Cache::new(cache)?));
    }
    config.wasm_component_model(true);
    // Preemption: stores yield at every epoch tick (see `instance::new_store`).
    config.epoch_interruption(true);
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
