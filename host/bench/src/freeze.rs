//! The `freeze` suite: freeze time, snapshot size (raw and zstd), and thaw time on another
//! host (a new engine: compiling) and on the same host (the compiled snapshot mapped; the
//! median of five), for
//! worker instances with 1 MiB and 64 MiB of touched heap (testbed mode `heap`); then scale
//! to zero: a request to a running web instance against one that thaws a frozen instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rolehost_runtime::bindings::WorkerRole;
use rolehost_runtime::capability::environment::InstanceInfo;
use rolehost_runtime::engine::{EngineOptions, build_engine};
use rolehost_runtime::freeze::{self, SnapshotHeader};
use rolehost_runtime::instance::{InstanceParts, InstanceState, linker, new_store};
use rolehost_runtime::link::Link;
use rolehost_runtime::manifest::VmSize;
use rolehost_runtime::quota::Limits;
use rolehost_runtime::stop::{StopHandle, stop_signal};
use rolehost_storage::{AccountName, Backend};
use wasmtime::Store;
use wasmtime::component::Component;

use crate::line;

fn store(
    engine: &wasmtime::Engine,
    backend: &Arc<dyn Backend>,
    mib: u64,
) -> (Store<InstanceState>, StopHandle) {
    let info = InstanceInfo {
        service: "bench".into(),
        role: "Heap".into(),
        instance_id: "Heap_IN_0".into(),
        deployment_id: "bench".into(),
        settings: vec![
            ("mode".into(), "heap".into()),
            ("heap-mib".into(), mib.to_string()),
        ],
        local_resources: Vec::new(),
        resumed_from: None,
    };
    let (stop, signal) = stop_signal();
    let link = Link::new(
        backend.clone(),
        AccountName::new("bench").unwrap(),
        Arc::from("Heap_IN_0"),
    );
    let parts = InstanceParts::bare(info, link, signal);
    (
        new_store(engine, parts, &Limits::of(VmSize::Small)).expect("store"),
        stop,
    )
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

async fn suite(mib: u64, original: &[u8], bed: &crate::runtime::Bed) {
    let backend = bed.backend();
    // Host A: the instance fills its heap, is stopped (the quiet point), and frozen.
    let engine_a = build_engine(&EngineOptions::default()).expect("engine");
    let instrumented = freeze::instrument(original).expect("instrument");
    let component = Component::new(&engine_a, &instrumented).expect("compile");
    let pre = linker(&engine_a)
        .unwrap()
        .instantiate_pre(&component)
        .unwrap();
    let (mut st, stop) = store(&engine_a, &backend, mib);
    let instance = pre.instantiate_async(&mut st).await.unwrap();
    let worker = WorkerRole::new(&mut st, &instance).unwrap();
    let w = worker.rolehost_platform_worker();
    w.call_on_start(&mut st).await.unwrap().unwrap();
    let stopper = async {
        // Let it fill its heap, then stop it.
        tokio::time::sleep(Duration::from_millis(300 + mib * 20)).await;
        stop.request();
    };
    let (ran, ()) = tokio::join!(w.call_run(&mut st), stopper);
    ran.unwrap().unwrap();
    let started = Instant::now();
    w.call_on_freeze(&mut st).await.unwrap();
    let readied = started.elapsed();
    let snapshot = freeze::capture(original, &mut st, instance)
        .await
        .expect("capture");
    let captured = started.elapsed();
    let header = SnapshotHeader {
        service: "bench".into(),
        role: "Heap".into(),
        instance_id: "Heap_IN_0".into(),
        deployment_id: "bench".into(),
        vm_size: "Small".into(),
        settings: vec![],
        frozen_at_micros: 0,
        monotonic_ns: st.data().monotonic_now(),
        raw_len: 0,
        payload_len: 0,
        payload_blake3: String::new(),
    };
    let file = freeze::encode(header, &snapshot, &bench_key()).expect("encode");
    let freeze_time = started.elapsed();
    eprintln!(
        "  ({mib} MiB freeze: on-freeze {} ms, capture {} ms, pack {} ms)",
        ms(readied),
        ms(captured - readied),
        ms(freeze_time - captured)
    );
    drop(st);
    let key = format!("{mib}mib");
    line(&format!("freeze_{key}_ms"), ms(freeze_time));
    line(
        &format!("snapshot_{key}_raw_mib"),
        format!("{:.2}", snapshot.len() as f64 / f64::from(1 << 20)),
    );
    line(
        &format!("snapshot_{key}_zstd_mib"),
        format!("{:.3}", file.len() as f64 / f64::from(1 << 20)),
    );

    // Host B, cold: a new engine checks, unpacks and compiles the snapshot, and
    // instantiates it. Then the same host again, warm: the check, then the compiled snapshot
    // is mapped (once its background write is done), not unpacked or compiled.
    let cache = tempfile::tempdir().expect("cache dir");
    let engine_b = build_engine(&EngineOptions::default()).expect("engine");
    // Host B runs the service (a thaw needs it there): it compiled the role when it started.
    Component::new(&engine_b, &instrumented).expect("compile on host B");
    let cold = thaw(&engine_b, &file, cache.path(), &backend, mib).await;
    line(&format!("thaw_cold_{key}_ms"), ms(cold));
    let (h, _) = freeze::check(&file, &bench_key()).expect("check");
    let cwasm = freeze::cache_file(cache.path(), &h);
    while !cwasm.is_file() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The median of five: one thaw takes a few milliseconds, where a scheduling hiccup on a
    // 2-core machine shows; the slowest is printed too.
    let mut warm = Vec::new();
    for _ in 0..5 {
        warm.push(thaw(&engine_b, &file, cache.path(), &backend, mib).await);
    }
    let slowest = warm.iter().max().copied().unwrap_or_default();
    line(&format!("thaw_warm_{key}_ms"), ms(median(warm)));
    line(&format!("thaw_warm_{key}_slowest_ms"), ms(slowest));
}

/// The key both hosts of the bench sign and check with.
fn bench_key() -> freeze::SnapshotKey {
    freeze::SnapshotKey::from_bytes([42; 32])
}

/// A thaw as `Service::thaw` does it: the file checked, the snapshot compiled (or mapped from
/// `cache`), an instance made; how long it took.
async fn thaw(
    engine: &wasmtime::Engine,
    file: &[u8],
    cache: &std::path::Path,
    backend: &Arc<dyn Backend>,
    mib: u64,
) -> Duration {
    let started = Instant::now();
    let (h, payload) = freeze::check(file, &bench_key()).expect("check");
    let checked = started.elapsed();
    let component = freeze::compile(engine, &h, payload, Some(cache)).expect("compile");
    let compiled = started.elapsed();
    let pre = linker(engine).unwrap().instantiate_pre(&component).unwrap();
    let (mut st, _stop) = store(engine, backend, mib);
    let linked = started.elapsed();
    let instance = pre.instantiate_async(&mut st).await.unwrap();
    let took = started.elapsed();
    eprintln!(
        "  ({mib} MiB thaw: check {} ms, compile or map {} ms, link and store {} ms, instantiate {} ms)",
        ms(checked),
        ms(compiled - checked),
        ms(linked - compiled),
        ms(took - linked)
    );
    WorkerRole::new(&mut st, &instance).expect("a worker");
    took
}

pub(crate) fn freeze() {
    let original = std::fs::read(crate::runtime::guest("testbed")).expect("testbed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let bed = crate::runtime::Bed::new();
    rt.block_on(async {
        suite(1, &original, &bed).await;
        suite(64, &original, &bed).await;
        scale_to_zero().await;
    });
}

/// One `GET /` on a fresh connection: how long until the whole answer is in.
async fn get_once(addr: std::net::SocketAddr) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.expect("answer");
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Scale to zero with warm memory: a web role of one instance with `idle-freeze-ms = 100`.
/// A request to the running instance, against the first request after it froze (which thaws
/// it on demand): medians of 10 and of 5.
async fn scale_to_zero() {
    use rolehost_runtime::worker::Phase;
    let component = crate::runtime::guest("hello_web");
    let text = format!(
        "[service]\nname = \"tozero\"\n[roles.Web]\nkind = \"web\"\ncomponent = {component:?}\n\
         idle-freeze-ms = 100\n[[roles.Web.endpoints]]\nport = 0\n"
    );
    let (_dir, svc) = crate::runtime::start_service(&text).await;
    let addr = svc.endpoints()[0].1;
    let frozen = || svc.status().iter().all(|s| s.phase == Phase::Frozen);
    let mut running = Vec::new();
    let mut wake = Vec::new();
    for _ in 0..5 {
        while !frozen() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        wake.push(get_once(addr).await);
        // Back to back, so the instance is never idle long enough to freeze.
        running.push(get_once(addr).await);
        running.push(get_once(addr).await);
    }
    svc.shutdown().await;
    let (running, wake) = (median(running), median(wake));
    line("request_running_ms", ms(running));
    line("request_waking_frozen_ms", ms(wake));
    line(
        "wake_vs_running_ratio",
        format!("{:.1}", wake.as_secs_f64() / running.as_secs_f64()),
    );
}
