//! The `runtime` suite: instance start time, the cost of the VM-size limits on CPU-bound
//! guests, and host memory with 1,000 and 10,000 idle worker instances.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rolehost_runtime::bindings::WorkerRolePre;
use rolehost_runtime::capability::environment::InstanceInfo;
use rolehost_runtime::capability::queue::QueueWakers;
use rolehost_runtime::engine::{EngineOptions, build_engine};
use rolehost_runtime::instance::{InstanceParts, InstanceState, linker, new_store};
use rolehost_runtime::link::Link;
use rolehost_runtime::manifest::{Manifest, VmSize};
use rolehost_runtime::quota::Limits;
use rolehost_runtime::service::{self, Service, ServiceOptions, prepare_worker};
use rolehost_runtime::stop::stop_signal;
use rolehost_runtime::worker::Phase;
use rolehost_storage::{AccountName, Backend, RedbStore, StorageOptions};

use crate::line;

/// Instances started, one after the other, for the start-time figure.
const STARTS: u32 = 2000;
/// Runs of each CPU-bound workload per engine; the best counts.
const RUNS: usize = 7;

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds `guests/` (release, wasm32-wasip2) and returns the component called `name`.
pub(crate) fn guest(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let built = rolehost_runtime::build::build_crate(
        &repo_root().join("guests"),
        Some(&target.join("guests")),
    )
    .expect("building guests/");
    built
        .into_iter()
        .find(|p| p.file_stem().is_some_and(|s| s == name))
        .unwrap_or_else(|| panic!("no {name} component"))
}

fn testbed() -> PathBuf {
    guest("testbed")
}

pub(crate) struct Bed {
    _dir: tempfile::TempDir,
    backend: Arc<dyn Backend>,
    wakers: Arc<QueueWakers>,
}

impl Bed {
    pub(crate) fn backend(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            RedbStore::open(dir.path().join("s.redb"), StorageOptions::default()).expect("storage");
        Bed {
            _dir: dir,
            backend: Arc::new(store),
            wakers: Arc::default(),
        }
    }

    pub(crate) fn parts(&self, settings: &[(&str, &str)], metered: bool) -> InstanceParts {
        let info = InstanceInfo {
            service: "bench".into(),
            role: "Bench".into(),
            instance_id: "Bench_IN_0".into(),
            deployment_id: "bench".into(),
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            local_resources: Vec::new(),
            resumed_from: None,
        };
        let link = Link::new(
            self.backend.clone(),
            AccountName::new("bench").expect("account"),
            Arc::from("Bench_IN_0"),
        );
        let (_stop, signal) = stop_signal();
        let mut parts = InstanceParts::bare(info, link, signal);
        parts.wakers = self.wakers.clone();
        parts.metered = metered;
        parts
    }
}

async fn prepare(engine: &wasmtime::Engine, component: &Path) -> WorkerRolePre<InstanceState> {
    let linker = linker(engine).expect("linker");
    prepare_worker(
        engine,
        &linker,
        std::fs::read(component).expect("component"),
    )
    .await
    .expect("worker role")
}

/// Limits that are all on but never bind: what they cost, not what they throttle.
fn slack_limits() -> Limits {
    let mut l = Limits::of(VmSize::Small);
    l.fuel_per_sec = u64::MAX / 8;
    l.call_budget = Some(u64::MAX / 8);
    l
}

pub(crate) fn runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let component = testbed();
    rt.block_on(async {
        start_time(&component).await;
        overhead(&component).await;
    });
    for n in [1000u32, 10_000] {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("runtime-idle")
            .arg(n.to_string())
            .arg(&component)
            .output()
            .expect("idle child");
        assert!(
            out.status.success(),
            "idle child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

async fn start_time(component: &Path) {
    let engine = build_engine(&EngineOptions {
        pool_capacity: Some(64),
        ..EngineOptions::default()
    })
    .expect("engine");
    let pre = prepare(&engine, component).await;
    let bed = Bed::new();
    let limits = Limits::of(VmSize::Small);
    // Warm the pool's slots.
    for _ in 0..50 {
        let mut store = new_store(&engine, bed.parts(&[], true), &limits).expect("store");
        pre.instantiate_async(&mut store)
            .await
            .expect("instantiate");
    }
    let started = Instant::now();
    for _ in 0..STARTS {
        let mut store = new_store(&engine, bed.parts(&[], true), &limits).expect("store");
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        std::hint::black_box(&instance);
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / f64::from(STARTS);
    line("instance_start_us", format!("{per:.1}"));
}

/// Wall time of one `run` in `mode` on a fresh instance of `pre`.
async fn one_run(
    engine: &wasmtime::Engine,
    pre: &WorkerRolePre<InstanceState>,
    bed: &Bed,
    mode: &str,
    metered: bool,
) -> Duration {
    let mut store = new_store(
        engine,
        bed.parts(&[("mode", mode)], metered),
        &slack_limits(),
    )
    .expect("store");
    let role = pre
        .instantiate_async(&mut store)
        .await
        .expect("instantiate");
    let worker = role.rolehost_platform_worker();
    worker
        .call_on_start(&mut store)
        .await
        .expect("on-start")
        .expect("on-start ok");
    let started = Instant::now();
    worker
        .call_run(&mut store)
        .await
        .expect("run")
        .expect("run ok");
    started.elapsed()
}

async fn overhead(component: &Path) {
    let plain = build_engine(&EngineOptions {
        metering: false,
        ..EngineOptions::default()
    })
    .expect("engine");
    let limited = build_engine(&EngineOptions {
        pool_capacity: Some(16),
        ..EngineOptions::default()
    })
    .expect("engine");
    let plain_pre = prepare(&plain, component).await;
    let limited_pre = prepare(&limited, component).await;
    let bed = Bed::new();
    let mut worst: f64 = 0.0;
    for (mode, key) in [("cpu-loop", "loop"), ("cpu-alloc", "alloc")] {
        // Plain and limited runs alternate, so a change in the machine's speed during the
        // suite (frequency scaling, a neighbour) falls on both; the best of each counts.
        let (mut base, mut with) = (Duration::MAX, Duration::MAX);
        for _ in 0..RUNS {
            base = base.min(one_run(&plain, &plain_pre, &bed, mode, false).await);
            with = with.min(one_run(&limited, &limited_pre, &bed, mode, true).await);
        }
        let ratio = with.as_secs_f64() / base.as_secs_f64();
        worst = worst.max(ratio);
        line(
            &format!("{key}_plain_ms"),
            format!("{:.1}", base.as_secs_f64() * 1e3),
        );
        line(
            &format!("{key}_limited_ms"),
            format!("{:.1}", with.as_secs_f64() * 1e3),
        );
        line(
            &format!("limits_overhead_{key}_ratio"),
            format!("{ratio:.3}"),
        );
    }
    line("limits_overhead_ratio", format!("{worst:.3}"));
}

/// Starts the service described by manifest `text` on a temporary data directory (kept alive
/// by the returned guard).
pub(crate) async fn start_service(text: &str) -> (tempfile::TempDir, Service) {
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = Manifest::parse(text, &dir.path().join("rolehost.toml")).expect("manifest");
    let store = service::open_storage(dir.path(), &manifest, None, None).expect("storage");
    let components = service::resolve_components(&manifest, None).expect("components");
    let options = ServiceOptions {
        data_dir: dir.path().to_path_buf(),
        ..ServiceOptions::default()
    };
    let svc = Service::start(&manifest, &components, store, options)
        .await
        .expect("service");
    (dir, svc)
}

fn rss_mib() -> f64 {
    crate::proc_status_mib("VmRSS")
}

/// Starts `n` idle worker instances and prints the process's RSS once all run.
pub(crate) fn idle_child(n: &str, component: &str) {
    let n: u32 = n.parse().expect("instance count");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let text = format!(
            "[service]\nname = \"idle\"\n[roles.Idle]\nkind = \"worker\"\ncomponent = {component:?}\n\
             instances = {n}\n[roles.Idle.settings]\nmode = \"idle\"\n"
        );
        let before = rss_mib();
        let started = Instant::now();
        let (_dir, svc) = start_service(&text).await;
        while svc.status().iter().any(|s| s.phase != Phase::Running) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let up = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_mib();
        let key = if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() };
        line(&format!("idle_{key}_start_s"), format!("{:.2}", up.as_secs_f64()));
        line(&format!("idle_{key}_rss_mib"), format!("{rss:.1}"));
        line(&format!("idle_{key}_rss_before_mib"), format!("{before:.1}"));
        line(
            &format!("idle_{key}_kib_per_instance"),
            format!("{:.1}", (rss - before) * 1024.0 / f64::from(n)),
        );
        svc.shutdown().await;
    });
}
