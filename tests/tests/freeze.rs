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
use wasmtime::component::{Component, Instance};

/// A store for a testbed instance in mode `mode`.
fn store_for(
    engine: &wasmtime::Engine,
    backend: &Arc<dyn Backend>,
    account: &AccountName,
    mode: &str,
) -> (Store<InstanceState>, StopHandle) {
    let info = InstanceInfo {
        service: "frozen".into(),
        role: "Counter".into(),
        instance_id: "Counter_IN_0".into(),
        deployment_id: "d1".into(),
        settings: vec![("mode".into(), mode.into())],
        local_resources: Vec::new(),
        resumed_from: None,
    };
    let (stop, signal) = stop_signal();
    let link = Link::new(backend.clone(), account.clone(), Arc::from("Counter_IN_0"));
    let parts = InstanceParts::bare(info, link, signal);
    let store = new_store(engine, parts, &Limits::of(VmSize::Small)).expect("store");
    (store, stop)
}

fn blob_text(
    backend: &Arc<dyn Backend>,
    account: &AccountName,
    container: &str,
    name: &str,
) -> Option<String> {
    use std::io::Read;
    let mut r = backend
        .get_blob(account, container, name, &GetBlobOptions::default())
        .ok()?;
    let mut s = String::new();
    r.reader.read_to_string(&mut s).ok()?;
    Some(s)
}

/// Creates queue `queue`; the closure returned puts a message in it.
fn feeder<'a>(
    backend: &'a Arc<dyn Backend>,
    account: &'a AccountName,
    queue: &'a str,
) -> impl Fn() + 'a {
    backend.create_queue(account, queue, Vec::new()).unwrap();
    move || {
        backend
            .put_message(account, queue, b"m", PutMessageOptions::default())
            .unwrap();
    }
}

fn latest(backend: &Arc<dyn Backend>, account: &AccountName) -> Option<u64> {
    blob_text(backend, account, "memcount", "latest")?
        .parse()
        .ok()
}

/// Runs `worker.run` until `done` says so, then asks it to stop.
async fn run_until(
    worker: &WorkerRole,
    store: &mut Store<InstanceState>,
    stop: &StopHandle,
    done: impl Fn() -> bool,
) {
    let run = worker.rolehost_platform_worker().call_run(&mut *store);
    let watch = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.request();
    };
    let (ran, ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, watch) })
            .await
            .expect("the run got where it was waited for in time");
    ran.expect("run").expect("run ok");
}

/// A fresh storage database and the account the tests use.
fn storage() -> (tempfile::TempDir, Arc<dyn Backend>, AccountName) {
    let dir = tempfile::tempdir().unwrap();
    let backend: Arc<dyn Backend> =
        Arc::new(RedbStore::open(dir.path().join("s.redb"), StorageOptions::default()).unwrap());
    (dir, backend, AccountName::new("frozen").unwrap())
}

/// An instance of `component` on `engine`, as testbed mode `mode`; nothing called yet.
async fn instance_of(
    engine: &wasmtime::Engine,
    component: &Component,
    backend: &Arc<dyn Backend>,
    account: &AccountName,
    mode: &str,
) -> (Store<InstanceState>, StopHandle, Instance, WorkerRole) {
    let pre = linker(engine).unwrap().instantiate_pre(component).unwrap();
    let (mut store, stop) = store_for(engine, backend, account, mode);
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let worker = WorkerRole::new(&mut store, &instance).unwrap();
    (store, stop, instance, worker)
}

/// Host A: an instance of the instrumented testbed (`original`) in mode `mode` on an engine
/// of its own, started (on-start called).
async fn started_instrumented(
    original: &[u8],
    backend: &Arc<dyn Backend>,
    account: &AccountName,
    mode: &str,
) -> (Store<InstanceState>, StopHandle, Instance, WorkerRole) {
    let engine = build_engine(&EngineOptions::default()).unwrap();
    let instrumented = freeze::instrument(original).expect("instrumented");
    let component = Component::new(&engine, &instrumented).unwrap();
    let (mut store, stop, instance, worker) =
        instance_of(&engine, &component, backend, account, mode).await;
    worker
        .rolehost_platform_worker()
        .call_on_start(&mut store)
        .await
        .unwrap()
        .unwrap();
    (store, stop, instance, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_after_n_messages_goes_on_at_n_plus_1_on_a_new_engine() {
    let (_dir, backend, account) = storage();
    let put = feeder(&backend, &account, "memcount");
    let original = std::fs::read(rolehost_tests::guest("testbed")).unwrap();

    // Host A: the instrumented component, 3 messages, then a stop (the quiet point).
    let (mut store, stop, instance, worker) =
        started_instrumented(&original, &backend, &account, "memcount").await;
    for _ in 0..3 {
        put();
    }
    run_until(&worker, &mut store, &stop, || {
        latest(&backend, &account) == Some(3)
    })
    .await;
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
        payload_blake3: String::new(),
    };
    let key = freeze::SnapshotKey::from_bytes([3; 32]);
    let file = freeze::encode(header, &snapshot, &key).unwrap();
    drop(store);

    // Damaged files are refused, naming what is wrong.
    assert!(
        freeze::decode(&file[..file.len() / 2], &key, u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("truncated")
    );
    let mut bad = file.clone();
    let mid = bad.len() - 100;
    bad[mid] ^= 1;
    assert!(
        freeze::decode(&bad, &key, u64::MAX)
            .unwrap_err()
            .to_string()
            .contains("signature does not match")
    );

    // Host B: a brand-new engine compiles the snapshot (instrumented, as a thaw does); no
    // on-start: its memory is the frozen instance's. One more message: the count goes on at 4.
    let (header, component_bytes) = freeze::decode(&file, &key, u64::MAX).expect("decoded");
    assert_eq!(header.deployment_id, "d1");
    assert_eq!(component_bytes, snapshot);
    let engine_b = build_engine(&EngineOptions::default()).unwrap();
    let component = freeze::compile_snapshot(&engine_b, &component_bytes).unwrap();
    let (mut store, stop, instance, worker) =
        instance_of(&engine_b, &component, &backend, &account, "memcount").await;
    // Before it runs, the thawed instance is the frozen one exactly: every byte of its memory,
    // its memory's size and its globals, so capturing it again gives the same snapshot.
    let again = freeze::capture(&original, &mut store, instance)
        .await
        .expect("captured again");
    assert!(
        again == snapshot,
        "a capture of the thawed instance differs from the snapshot ({} and {} bytes)",
        again.len(),
        snapshot.len()
    );
    // The count goes on at 4 (run_until fails the test if it never gets there).
    put();
    run_until(&worker, &mut store, &stop, || {
        latest(&backend, &account) == Some(4)
    })
    .await;
}

/// A snapshot file of format 02, written by an earlier rolehost, carries no signature: it is
/// refused by name, whatever key the host has, before anything is unpacked or compiled.
#[test]
fn a_snapshot_file_of_format_02_is_refused_as_unsigned() {
    let file = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/memcount-rhsnap02.snap"),
    )
    .unwrap();
    assert_eq!(&file[..8], b"RHSNAP02");
    let key = freeze::SnapshotKey::from_bytes([3; 32]);
    let e = freeze::check(&file, &key).unwrap_err().to_string();
    assert!(
        e.contains("format RHSNAP02") && e.contains("no host signature"),
        "{e}"
    );
}

/// Every byte of a heap of awkward runs of zeros and non-zeros (testbed mode `pattern`) is
/// where it was after a freeze and a thaw on a new engine: the snapshot's data segments leave
/// out runs of zeros, and none of what they keep may move or go missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_of_a_heap_with_runs_of_zeros_survives_a_thaw() {
    let (_dir, backend, account) = storage();
    let original = std::fs::read(rolehost_tests::guest("testbed")).unwrap();
    let verdict = || blob_text(&backend, &account, "pattern", "verdict");
    let (mut store, stop, instance, worker) =
        started_instrumented(&original, &backend, &account, "pattern").await;
    run_until(&worker, &mut store, &stop, || verdict().is_some()).await;
    assert_eq!(verdict().as_deref(), Some("filled 3145728"));
    let snapshot = freeze::capture(&original, &mut store, instance)
        .await
        .expect("captured");
    drop(store);
    backend
        .delete_blob(&account, "pattern", "verdict", &Default::default(), None)
        .unwrap();

    let engine_b = build_engine(&EngineOptions::default()).unwrap();
    let component = freeze::compile_snapshot(&engine_b, &snapshot).unwrap();
    let (mut store, stop, _, worker) =
        instance_of(&engine_b, &component, &backend, &account, "pattern").await;
    run_until(&worker, &mut store, &stop, || verdict().is_some()).await;
    assert_eq!(verdict().as_deref(), Some("intact 3145728"));
}

/// The status of instance `id` of `host`'s service.
fn status_of(
    host: &rolehost_runtime::service::Service,
    id: &str,
) -> rolehost_runtime::worker::InstanceStatus {
    host.status()
        .into_iter()
        .find(|s| s.instance_id == id)
        .unwrap_or_else(|| panic!("no instance {id}"))
}

/// Starts the service of `t` on its store, with local resources under `data`, deployment id
/// `deployment` and `instances` instances of role `role`.
async fn service_on(
    t: &rolehost_tests::TestService,
    data: &std::path::Path,
    deployment: &str,
    (role, instances): (&str, u32),
) -> rolehost_runtime::service::Service {
    let mut manifest = t.manifest.clone();
    if let Some(r) = manifest.roles.get_mut(role) {
        r.instances = instances;
    }
    let components = rolehost_runtime::service::resolve_components(&manifest, None).unwrap();
    let options = rolehost_runtime::service::ServiceOptions {
        data_dir: data.to_path_buf(),
        deployment_id: Some(deployment.into()),
        // The two "hosts" of these tests share a snapshot key, as hosts sharing storage do.
        snapshot_key: Some(freeze::SnapshotKey::from_bytes([9; 32])),
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
        [roles.Holder]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Holder.settings]
        mode = "hold-stdout"
        "#,
    );
    let backend: Arc<dyn Backend> = t.store.clone();
    let account = t.account.clone();
    let put = feeder(&backend, &account, "memcount");
    let host_a = service_on(&t, &t.dir.path().join("host-a"), "d1", ("Counter", 1)).await;
    for _ in 0..3 {
        put();
    }
    rolehost_tests::wait_for(Duration::from_secs(60), "3 counted", || {
        (latest(&backend, &account) == Some(3)).then_some(())
    })
    .await;

    // A role holding a stdout stream of its own cannot be frozen, and says why; it goes on
    // running: `run` is called again on the same memory (its run count goes to 2).
    rolehost_tests::wait_for(Duration::from_secs(30), "the holder's first run", || {
        (blob_text(&backend, &account, "hold-stdout", "Holder_IN_0")? == "1").then_some(())
    })
    .await;
    let refused = host_a.freeze("Holder_IN_0").await.unwrap_err().to_string();
    assert!(
        refused.contains("stdout") && refused.contains("env::log"),
        "{refused}"
    );
    rolehost_tests::wait_for(Duration::from_secs(30), "the holder's second run", || {
        (blob_text(&backend, &account, "hold-stdout", "Holder_IN_0")? == "2").then_some(())
    })
    .await;
    let holder = status_of(&host_a, "Holder_IN_0");
    assert_eq!(holder.phase, Phase::Running);
    assert_eq!(holder.restarts, 0, "a refused freeze recycles nothing");

    // The counter freezes: frozen in the status, its messages wait.
    let file = host_a.freeze("Counter_IN_0").await.expect("frozen");
    let frozen = status_of(&host_a, "Counter_IN_0");
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
    let host_other = service_on(&t, &t.dir.path().join("host-c"), "d2", ("Counter", 0)).await;
    let e = host_other.thaw(&file, "s1").await.unwrap_err().to_string();
    assert!(e.contains("deployment d1") && e.contains("d2"), "{e}");
    host_other.shutdown().await;
    let host_b = service_on(&t, &t.dir.path().join("host-b"), "d1", ("Counter", 0)).await;
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

/// An instance whose memory is at its VM size's cap can be frozen: the page wizer's accessor
/// grows the memory by is allowed past the cap for the capture. Thawed, it runs again at its
/// cap, with its memory. At wasm32's 4 GiB maximum (a Large VM size's cap) there is no page
/// to add: the freeze is refused before anything runs, saying so, and the instance goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_at_its_cap_freezes_and_one_at_the_wasm32_maximum_is_refused() {
    use rolehost_runtime::worker::Phase;
    let t = rolehost_tests::prepare(
        r#"
        [service]
        name = "full"
        [roles.Full]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Full.settings]
        mode = "memfull"
        [roles.Full.limits]
        memory-mb = 32
        [roles.Huge]
        kind = "worker"
        component = "{guest:testbed}"
        vm-size = "Large"
        [roles.Huge.settings]
        mode = "memfull"
        "#,
    );
    let backend: Arc<dyn Backend> = t.store.clone();
    let account = t.account.clone();
    let reported = |id: &str, what: &str| {
        let id = id.to_string();
        let what = what.to_string();
        let (backend, account) = (backend.clone(), account.clone());
        async move {
            rolehost_tests::wait_for(Duration::from_secs(60), &format!("{id}: {what}"), || {
                (blob_text(&backend, &account, "memfull", &id)? == what).then_some(())
            })
            .await
        }
    };
    let state = |host: &rolehost_runtime::service::Service, id: &str| {
        let s = status_of(host, id);
        (s.phase, s.restarts)
    };
    let host = service_on(&t, &t.dir.path().join("host"), "d1", ("Full", 1)).await;
    reported("Full_IN_0", "run 1: full").await;
    reported("Huge_IN_0", "run 1: full").await;

    let file = host.freeze("Full_IN_0").await.expect("frozen at its cap");
    assert_eq!(state(&host, "Full_IN_0"), (Phase::Frozen, 0));
    host.thaw(&file, "s1").await.expect("thawed");
    reported("Full_IN_0", "run 2: full").await;

    let refused = host.freeze("Huge_IN_0").await.unwrap_err().to_string();
    assert!(refused.contains("4 GiB"), "{refused}");
    reported("Huge_IN_0", "run 2: full").await;
    assert_eq!(
        state(&host, "Huge_IN_0"),
        (Phase::Running, 0),
        "the refusal recycled nothing"
    );
    host.shutdown().await;
}

/// The fields of a `stdlife` report (`key=value` separated by spaces).
fn stdlife_fields(report: &str) -> std::collections::BTreeMap<String, String> {
    report
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_environment_files_and_time_work_after_a_thaw_into_another_instance() {
    let logs = rolehost_tests::LogCapture::install("guest=info");
    let t = rolehost_tests::prepare(
        r#"
        [service]
        name = "life"
        [roles.Life]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Life.settings]
        mode = "stdlife"
        [[roles.Life.local-resources]]
        name = "scratch"
        size-mb = 1
        "#,
    );
    let backend: Arc<dyn Backend> = t.store.clone();
    let account = t.account.clone();
    let put = feeder(&backend, &account, "stdlife");
    let report = |instance: &str| {
        blob_text(&backend, &account, "stdlife", instance).map(|r| stdlife_fields(&r))
    };
    let host_a = service_on(&t, &t.dir.path().join("host-a"), "d1", ("Life", 1)).await;
    put();
    put();
    let before = rolehost_tests::wait_for(Duration::from_secs(60), "2 messages", || {
        report("Life_IN_0").filter(|r| r["n"] == "2")
    })
    .await;
    assert_eq!(before["env"], "Life_IN_0");
    assert_eq!(before["resumed"], "-");
    assert_eq!(before["file"], "1;2;");
    rolehost_tests::wait_for(Duration::from_secs(10), "stdout in the log", || {
        logs.text_from(0)
            .contains("stdlife 2 on Life_IN_0")
            .then_some(())
    })
    .await;
    let file = host_a
        .freeze("Life_IN_0")
        .await
        .expect("frozen: the SDK released stdio");
    host_a.shutdown().await;

    // Host B runs a fresh Life_IN_0, so the snapshot thaws into Life_IN_1: the environment
    // variable must say so (wasi-libc's copy was reset at the freeze), the file is in B's
    // fresh local resource, stdout reaches B's log, and the clock went on from where it was.
    let host_b = service_on(&t, &t.dir.path().join("host-b"), "d1", ("Life", 1)).await;
    let id = host_b.thaw(&file, "s1").await.expect("thawed");
    assert_eq!(id, "Life_IN_1");
    let after = rolehost_tests::wait_for(Duration::from_secs(60), "the thawed one counts", || {
        if report("Life_IN_1").is_none() {
            put();
            std::thread::sleep(Duration::from_millis(50));
        }
        report("Life_IN_1")
    })
    .await;
    let n: u64 = after["n"].parse().unwrap();
    assert!(n >= 3, "the count went on from 2: {after:?}");
    assert_eq!(after["env"], "Life_IN_1", "{after:?}");
    assert_eq!(after["resumed"], "s1");
    assert_eq!(
        after["file"],
        format!("{n};"),
        "a fresh local resource: {after:?}"
    );
    let (ms_before, ms_after): (u64, u64) =
        (before["ms"].parse().unwrap(), after["ms"].parse().unwrap());
    assert!(
        ms_after >= ms_before,
        "monotonic: {ms_before} then {ms_after}"
    );
    let line = format!("stdlife {n} on Life_IN_1");
    rolehost_tests::wait_for(Duration::from_secs(10), "stdout after the thaw", || {
        logs.text_from(0).contains(&line).then_some(())
    })
    .await;
    host_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_instance_keeps_its_cache_across_a_freeze_taken_between_requests() {
    use rolehost_runtime::worker::Phase;
    use rolehost_tests::http_get;
    let t = rolehost_tests::prepare(
        r#"
        [service]
        name = "webfreeze"
        [roles.Web]
        kind = "web"
        component = "{guest:hello_web}"
        [[roles.Web.endpoints]]
        port = 0
        [roles.Shout]
        kind = "web"
        component = "{guest:shout_web}"
        [[roles.Shout.endpoints]]
        port = 0
        "#,
    );
    let endpoint = |s: &rolehost_runtime::service::Service, role: &str| {
        s.endpoints()
            .into_iter()
            .find(|(r, _)| r == role)
            .map(|(_, a)| a)
            .unwrap()
    };
    let host_a = service_on(&t, &t.dir.path().join("host-a"), "d1", ("Web", 1)).await;
    let web = endpoint(&host_a, "Web");
    let first = http_get(web, "/cache?key=a").await.unwrap();
    assert!(first.body.starts_with("a: miss"), "{first:?}");
    let second = http_get(web, "/cache?key=a").await.unwrap();
    assert!(second.body.starts_with("a: hit"), "{second:?}");

    // A freeze that may wait 200 ms for a request taking 1.5 s is refused, and the request
    // is not cut short.
    let slow = tokio::spawn(http_get(web, "/slow?ms=1500"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = host_a
        .freeze_within("Web_IN_0", Some(Duration::from_millis(200)))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("busy"), "{refused}");
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status, 200, "{slow:?}");

    // With the default wait, the freeze waits for the request in flight, which finishes whole.
    let slow = tokio::spawn(http_get(web, "/slow?ms=1000"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = std::time::Instant::now();
    let file = host_a
        .freeze("Web_IN_0")
        .await
        .expect("frozen between requests");
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "it waited for the request"
    );
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status, 200, "{slow:?}");
    assert!(slow.body.contains("hello from Web_IN_0"), "{slow:?}");
    let frozen = status_of(&host_a, "Web_IN_0");
    assert_eq!(frozen.phase, Phase::Frozen);

    // A web role without the web-freeze export is refused, and goes on serving.
    let shout = endpoint(&host_a, "Shout");
    let refused = host_a.freeze("Shout_IN_0").await.unwrap_err().to_string();
    assert!(
        refused.contains("web-freeze") && refused.contains("web_freezable!"),
        "{refused}"
    );
    let after = http_get(shout, "/").await.unwrap();
    assert_ne!(after.status, 0, "{after:?}");
    assert!(after.status < 500, "{after:?}");
    host_a.shutdown().await;

    // Another host with no Web instance of its own thaws it: the cache is there, and the
    // request count goes on.
    let host_b = service_on(&t, &t.dir.path().join("host-b"), "d1", ("Web", 0)).await;
    assert_eq!(host_b.thaw(&file, "w1").await.expect("thawed"), "Web_IN_0");
    let web = endpoint(&host_b, "Web");
    // Requests wait in the queue until the thawed instance runs.
    let hit = http_get(web, "/cache?key=a").await.unwrap();
    assert!(
        hit.body
            .starts_with("a: hit (computed at request 1 on Web_IN_0; 1 cached)"),
        "{hit:?}"
    );
    let count = http_get(web, "/").await.unwrap();
    assert!(count.body.contains("(request 6"), "{count:?}");
    host_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_web_instances_freeze_and_a_request_thaws_the_warmest_with_its_memory() {
    use rolehost_runtime::worker::Phase;
    use rolehost_tests::http_get;
    let t = rolehost_tests::prepare(
        r#"
        [service]
        name = "tozero"
        [roles.Web]
        kind = "web"
        component = "{guest:hello_web}"
        instances = 2
        idle-freeze-ms = 300
        [[roles.Web.endpoints]]
        port = 0
        "#,
    );
    let host = service_on(&t, &t.dir.path().join("host"), "d1", ("Web", 2)).await;
    let web = host.endpoints()[0].1;
    let phases = || {
        host.status()
            .into_iter()
            .map(|s| (s.instance_id, s.phase))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    rolehost_tests::wait_for(Duration::from_secs(30), "both running", || {
        phases()
            .values()
            .all(|p| *p == Phase::Running)
            .then_some(())
    })
    .await;
    let miss = http_get(web, "/cache?key=a").await.unwrap();
    assert!(miss.body.starts_with("a: miss"), "{miss:?}");
    let served_by = miss
        .body
        .split(" on ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_string();

    // Scaled to zero: both frozen once idle for 300 ms.
    rolehost_tests::wait_for(Duration::from_secs(30), "both frozen", || {
        phases().values().all(|p| *p == Phase::Frozen).then_some(())
    })
    .await;

    // A request thaws one, the most recently used, with its cache; the other stays frozen.
    let hit = http_get(web, "/cache?key=a").await.unwrap();
    assert_eq!(hit.status, 200, "{hit:?}");
    assert!(
        hit.body.starts_with(&format!(
            "a: hit (computed at request 1 on {served_by}; 1 cached)"
        )),
        "{hit:?}"
    );
    let now = phases();
    assert_eq!(now[&served_by], Phase::Running, "{now:?}");
    assert_eq!(
        now.values().filter(|p| **p == Phase::Frozen).count(),
        1,
        "{now:?}"
    );

    // A thawed instance freezes again once idle, and thaws again with its memory.
    rolehost_tests::wait_for(Duration::from_secs(30), "both frozen again", || {
        phases().values().all(|p| *p == Phase::Frozen).then_some(())
    })
    .await;
    let again = http_get(web, "/cache?key=a").await.unwrap();
    assert!(
        again.body.starts_with(&format!(
            "a: hit (computed at request 1 on {served_by}; 1 cached)"
        )),
        "{again:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_freeze_and_a_message_in_their_queue_thaws_them_with_their_memory() {
    use rolehost_runtime::worker::Phase;
    let t = rolehost_tests::prepare(
        r#"
        [service]
        name = "sleepy"
        [roles.Counter]
        kind = "worker"
        component = "{guest:testbed}"
        idle-freeze-ms = 300
        [roles.Counter.settings]
        mode = "memcount"
        "#,
    );
    let backend: Arc<dyn Backend> = t.store.clone();
    let account = t.account.clone();
    let put = feeder(&backend, &account, "memcount");
    let host = service_on(&t, &t.dir.path().join("host"), "d1", ("Counter", 1)).await;
    let phase = || {
        host.status()
            .into_iter()
            .find(|s| s.instance_id == "Counter_IN_0")
            .map(|s| s.phase)
    };
    put();
    put();
    rolehost_tests::wait_for(Duration::from_secs(60), "2 counted", || {
        (latest(&backend, &account) == Some(2)).then_some(())
    })
    .await;
    // Idle (its queue empty) for 300 ms: frozen. A message thaws it, with its count; twice.
    for n in [3, 4] {
        rolehost_tests::wait_for(Duration::from_secs(30), "frozen while idle", || {
            (phase() == Some(Phase::Frozen)).then_some(())
        })
        .await;
        put();
        rolehost_tests::wait_for(Duration::from_secs(30), "counted after the thaw", || {
            (latest(&backend, &account) == Some(n)).then_some(())
        })
        .await;
    }
    host.shutdown().await;
}
