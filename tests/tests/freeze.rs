//! Freeze and thaw, the building block: a worker that counts in memory is captured after N
//! messages, and a brand-new engine (as on another host) resumes it from the snapshot file:
//! it goes on at N+1. Damaged snapshot files are refused before anything is compiled.

use std::sync::Arc;
use std::time::Duration;

use rolehost_runtime::bindings::WorkerRole;
use rolehost_runtime::capability::environment::InstanceInfo;
use rolehost_runtime::engine::{EngineOptions, build_engine};
use rolehost_runtime::freeze::{self, SnapshotHeader};
use rolehost_runtime::instance::{InstanceParts, InstanceState, linker, new_store};
use rolehost_runtime::link::Link;
use rolehost_runtime::manifest::VmSize;
use rolehost_runtime::quota::Limits;
use rolehost_runtime::stop::{StopHandle, stop_signal};
use rolehost_storage::blob::GetBlobOptions;
use rolehost_storage::queue::PutMessageOptions;
use rolehost_storage::{AccountName, Backend, RedbStore, StorageOptions};
use wasmtime::Store;
use wasmtime::component::Component;

fn store_for(
    engine: &wasmtime::Engine,
    backend: &Arc<dyn Backend>,
    account: &AccountName,
) -> (Store<InstanceState>, StopHandle) {
    let info = InstanceInfo {
        service: "frozen".into(),
        role: "Counter".into(),
        instance_id: "Counter_IN_0".into(),
        deployment_id: "d1".into(),
        settings: vec![("mode".into(), "memcount".into())],
        local_resources: Vec::new(),
        resumed_from: None,
    };
    let (stop, signal) = stop_signal();
    let link = Link::new(backend.clone(), account.clone(), Arc::from("Counter_IN_0"));
    let parts = InstanceParts::bare(info, link, signal);
    let store = new_store(engine, parts, &Limits::of(VmSize::Small)).expect("store");
    (store, stop)
}

fn latest(backend: &Arc<dyn Backend>, account: &AccountName) -> Option<u64> {
    use std::io::Read;
    let mut r = backend
        .get_blob(account, "memcount", "latest", &GetBlobOptions::default())
        .ok()?;
    let mut s = String::new();
    r.reader.read_to_string(&mut s).ok()?;
    s.parse().ok()
}

/// Runs `worker.run` until `n` messages were counted, then asks it to stop.
async fn run_until(
    worker: &WorkerRole,
    store: &mut Store<InstanceState>,
    stop: &StopHandle,
    backend: &Arc<dyn Backend>,
    account: &AccountName,
    n: u64,
) {
    let run = worker.rolehost_platform_worker().call_run(&mut *store);
    let feed = async {
        while latest(backend, account) != Some(n) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.request();
    };
    let (ran, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, feed) })
            .await
            .expect("the worker counted in time");
    ran.expect("run").expect("run ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_after_n_messages_goes_on_at_n_plus_1_on_a_new_engine() {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(RedbStore::open(dir.path().join("s.redb"), StorageOptions::default()).unwrap());
    let account = AccountName::new("frozen").unwrap();
    backend
        .create_queue(&account, "memcount", Vec::new())
        .unwrap();
    let put = |k: usize| {
        for _ in 0..k {
            backend
                .put_message(&account, "memcount", b"m", PutMessageOptions::default())
                .unwrap();
        }
    };
    let original = std::fs::read(rolehost_tests::guest("testbed")).unwrap();

    // Host A: the instrumented component, 3 messages, then a stop (the quiet point).
    let engine_a = build_engine(&EngineOptions::default()).unwrap();
    let instrumented = freeze::instrument(&original).expect("instrumented");
    let component = Component::new(&engine_a, &instrumented).unwrap();
    let pre = linker(&engine_a)
        .unwrap()
        .instantiate_pre(&component)
        .unwrap();
    let (mut store, stop) = store_for(&engine_a, &backend, &account);
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let worker = WorkerRole::new(&mut store, &instance).unwrap();
    worker
        .rolehost_platform_worker()
        .call_on_start(&mut store)
        .await
        .unwrap()
        .unwrap();
    put(3);
    run_until(&worker, &mut store, &stop, &backend, &account, 3).await;
    let snapshot = freeze::capture(&original, &mut store, instance)
        .await
        .expect("captured");
    let header = SnapshotHeader {
        service: "frozen".into(),
        role: "Counter".into(),
        instance_id: "Counter_IN_0".into(),
        deployment_id: "d1".into(),
        vm_size: "Small".into(),
        settings: vec![],
        frozen_at_micros: 0,
        monotonic_ns: 0,
        raw_len: 0,
        payload_len: 0,
        payload_sha256: String::new(),
    };
    let file = freeze::encode(header, &snapshot).unwrap();
    drop(store);

    // Damaged files are refused, naming what is wrong.
    assert!(
        freeze::decode(&file[..file.len() / 2])
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    let mut bad = file.clone();
    let mid = bad.len() - 100;
    bad[mid] ^= 1;
    assert!(
        freeze::decode(&bad)
            .unwrap_err()
            .to_string()
            .contains("corrupt")
    );

    // Host B: a brand-new engine compiles the snapshot; no on-start: its memory is the
    // frozen instance's. One more message: the count goes on at 4.
    let (header, component_bytes) = freeze::decode(&file).expect("decoded");
    assert_eq!(header.deployment_id, "d1");
    let engine_b = build_engine(&EngineOptions::default()).unwrap();
    let component = Component::new(&engine_b, &component_bytes).unwrap();
    let pre = linker(&engine_b)
        .unwrap()
        .instantiate_pre(&component)
        .unwrap();
    let (mut store, stop) = store_for(&engine_b, &backend, &account);
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let worker = WorkerRole::new(&mut store, &instance).unwrap();
    put(1);
    run_until(&worker, &mut store, &stop, &backend, &account, 4).await;
    assert_eq!(
        latest(&backend, &account),
        Some(4),
        "the count went on from the snapshot"
    );
}

/// Starts the `frozen` service (one memcount worker, one printing worker) on `store`, with
/// local resources under `data` and deployment id `deployment`.
async fn service_on(
    t: &rolehost_tests::TestService,
    data: &std::path::Path,
    deployment: &str,
    counters: u32,
) -> rolehost_runtime::service::Service {
    let mut manifest = t.manifest.clone();
    if let Some(r) = manifest.roles.get_mut("Counter") {
        r.instances = counters;
    }
    let components = rolehost_runtime::service::resolve_components(&manifest, None).unwrap();
    let options = rolehost_runtime::service::ServiceOptions {
        data_dir: data.to_path_buf(),
        deployment_id: Some(deployment.into()),
        ..Default::default()
    };
    rolehost_runtime::service::Service::start(&manifest, &components, t.store.clone(), options)
        .await
        .expect("service")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_freezes_an_instance_and_another_host_thaws_it_where_it_was() {
    use rolehost_runtime::worker::Phase;
    let t = rolehost_tests::prepare(
        r#"
        [service]
        name = "frozen"
        [roles.Counter]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Counter.settings]
        mode = "memcount"
        [roles.Printer]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Printer.settings]
        mode = "print"
        "#,
    );
    let backend: Arc<dyn Backend> = t.store.clone();
    let account = t.account.clone();
    backend
        .create_queue(&account, "memcount", Vec::new())
        .unwrap();
    let put = || {
        backend
            .put_message(&account, "memcount", b"m", PutMessageOptions::default())
            .unwrap()
    };
    let host_a = service_on(&t, &t.dir.path().join("host-a"), "d1", 1).await;
    for _ in 0..3 {
        put();
    }
    rolehost_tests::wait_for(Duration::from_secs(60), "3 counted", || {
        (latest(&backend, &account) == Some(3)).then_some(())
    })
    .await;

    // A role that printed cannot be frozen, and says why; it goes on running.
    rolehost_tests::wait_for(Duration::from_secs(30), "the printer running", || {
        host_a
            .status()
            .iter()
            .any(|s| s.instance_id == "Printer_IN_0" && s.phase == Phase::Running)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = host_a.freeze("Printer_IN_0").await.unwrap_err().to_string();
    assert!(
        refused.contains("stdout") && refused.contains("env::log"),
        "{refused}"
    );
    assert!(
        host_a
            .status()
            .iter()
            .any(|s| s.instance_id == "Printer_IN_0" && s.phase == Phase::Running)
    );

    // The counter freezes: frozen in the status, its messages wait.
    let file = host_a.freeze("Counter_IN_0").await.expect("frozen");
    let frozen = host_a
        .status()
        .into_iter()
        .find(|s| s.instance_id == "Counter_IN_0")
        .unwrap();
    assert_eq!(frozen.phase, Phase::Frozen);
    put();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        latest(&backend, &account),
        Some(3),
        "nobody counts while it is frozen"
    );
    host_a.shutdown().await;

    // Another host (its own engine and data directory, the same storage, no counter of its
    // own) refuses a snapshot of another deployment, then thaws this one: the message that
    // waited is counted 4th.
    let host_other = service_on(&t, &t.dir.path().join("host-c"), "d2", 0).await;
    let e = host_other.thaw(&file, "s1").await.unwrap_err().to_string();
    assert!(e.contains("deployment d1") && e.contains("d2"), "{e}");
    host_other.shutdown().await;
    let host_b = service_on(&t, &t.dir.path().join("host-b"), "d1", 0).await;
    let truncated = host_b
        .thaw(&file[..file.len() - 10], "s1")
        .await
        .unwrap_err()
        .to_string();
    assert!(truncated.contains("truncated"), "{truncated}");
    let id = host_b.thaw(&file, "s1").await.expect("thawed");
    assert_eq!(id, "Counter_IN_0");
    rolehost_tests::wait_for(Duration::from_secs(60), "the 4th message counted", || {
        (latest(&backend, &account) == Some(4)).then_some(())
    })
    .await;
    host_b.shutdown().await;
}
