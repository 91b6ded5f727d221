//! rolehost's benchmarks, one entry point:
//!
//! ```text
//! cargo run --release -p rolehost-bench -- storage [--backend redb|postgres|both]
//! cargo run --release -p rolehost-bench -- runtime
//! cargo run --release -p rolehost-bench -- web
//! cargo run --release -p rolehost-bench -- fabric
//! cargo run --release -p rolehost-bench -- verify
//! cargo run --release -p rolehost-bench -- freeze
//! cargo run --release -p rolehost-bench -- hostile
//! cargo run --release -p rolehost-bench -- rest
//! ```
//!
//! Each suite prints its figures as `key: value` lines, all measured in one run on the same disk,
//! so ratios between them are meaningful. Suites of later issues (runtime, web, fabric, freeze,
//! verify) join here.

mod fabric;
mod freeze;
mod hostile;
mod rest;
mod runtime;
mod verify;
mod web;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rolehost_storage::blob::{GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::PutMessageOptions;
use rolehost_storage::table::{EdmValue, Entity, TableOp};
use rolehost_storage::{AccountName, Backend, RedbStore, StorageOptions};

const PHASE: Duration = Duration::from_secs(3);
const GIB: u64 = 1024 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("storage") => storage(&args[1..]),
        Some("runtime") => runtime::runtime(),
        Some("web") => web::web(),
        Some("fabric") => fabric::fabric(),
        Some("verify") => verify::verify(),
        Some("freeze") => freeze::freeze(),
        Some("hostile") => hostile::hostile(),
        Some("rest") => rest::rest(),
        // Internal: rolehost's storage endpoints, in a process of its own (its peak RSS).
        Some("rest-host") => rest::host_child(&args[1]),
        // Internal: the web role `hostile` floods, in a process with 1,024 descriptors.
        Some("hostile-serve") => hostile::serve_child(),
        // Internal: the fabric measurement in a process of its own.
        Some("fabric-child") => fabric::fabric_child(&args[1]),
        // Internal: one idle-instances measurement in a process of its own.
        Some("runtime-idle") => runtime::idle_child(&args[1], &args[2]),
        // Internal: runs in a child process so its peak RSS is its own.
        Some("storage-blob-1gib") => blob_1gib(&args[1], args.get(2).map(String::as_str)),
        _ => {
            eprintln!(
                "usage: rolehost-bench <suite>\nsuites: storage, runtime, web, fabric, verify, freeze, hostile, rest"
            );
            std::process::exit(2);
        }
    }
}

pub(crate) fn line(key: &str, value: impl std::fmt::Display) {
    println!("{key}: {value}");
}

fn open(dir: &std::path::Path, name: &str) -> Arc<dyn Backend> {
    Arc::new(RedbStore::open(dir.join(name), StorageOptions::default()).expect("open store"))
}

/// The PostgreSQL pool size the benchmark uses: `ROLEHOST_BENCH_PG_POOL`, else the engine's
/// default (to size a pool for a machine, run the suite with a few).
fn bench_pool_size() -> usize {
    std::env::var("ROLEHOST_BENCH_PG_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(rolehost_storage_pg::DEFAULT_POOL_SIZE)
}

/// A PostgreSQL store on `url` with the benchmark's pool size.
fn open_pg(url: &str) -> Arc<dyn Backend> {
    let pg = rolehost_storage_pg::PgOptions {
        pool_size: bench_pool_size(),
        ..rolehost_storage_pg::PgOptions::default()
    };
    Arc::new(
        rolehost_storage_pg::PgStore::open(url, &StorageOptions::default(), &pg)
            .expect("open the PostgreSQL store"),
    )
}

/// A PostgreSQL server for the benchmark: the one `ROLEHOST_TEST_POSTGRES` names, else a
/// throwaway one `scripts/postgres` starts (and stops when this is dropped).
struct BenchServer {
    url: String,
    started: Option<tempfile::TempDir>,
}

impl BenchServer {
    fn get() -> BenchServer {
        if let Ok(url) = std::env::var(rolehost_storage_pg::scratch::TEST_SERVER_VAR) {
            return BenchServer { url, started: None };
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres");
        // The postgres user must reach the directory (initdb runs as it under root).
        let _ = std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        );
        let out = std::process::Command::new(script)
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .expect("scripts/postgres");
        assert!(
            out.status.success(),
            "scripts/postgres start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        BenchServer {
            url,
            started: Some(dir),
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.started {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/postgres");
            let _ = std::process::Command::new(script)
                .arg("stop")
                .arg(dir.path().join("pg"))
                .status();
        }
    }
}

/// Durable single-key redb commits per second: the rate without group commit.
fn single_commit_rate(dir: &std::path::Path) -> f64 {
    const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
    let db = redb::Database::create(dir.join("raw.redb")).expect("raw db");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < PHASE {
        let txn = db.begin_write().expect("begin");
        txn.open_table(T)
            .expect("table")
            .insert(n, n)
            .expect("insert");
        txn.commit().expect("commit");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Queue cycles (put + get + delete, each durable) per second with `clients` threads.
fn queue_cycles(store: &Arc<dyn Backend>, clients: usize) -> f64 {
    let acct = AccountName::new("bench").expect("acct");
    let q = format!("q-{clients}");
    store.create_queue(&acct, &q, vec![]).expect("queue");
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (store, acct, q, stop, cycles) = (
                store.clone(),
                acct.clone(),
                q.clone(),
                stop.clone(),
                cycles.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    store
                        .put_message(&acct, &q, b"work item", PutMessageOptions::default())
                        .expect("put");
                    for m in store
                        .get_messages(&acct, &q, 1, Duration::from_secs(30))
                        .expect("get")
                    {
                        store
                            .delete_message(&acct, &q, &m.id, &m.pop_receipt)
                            .expect("delete");
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(PHASE);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("client");
    }
    cycles.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn blob_rate(store: &dyn Backend, size: usize, count: usize) -> (f64, f64) {
    let acct = AccountName::new("bench").expect("acct");
    let c = format!("c-{size}");
    store
        .create_container(&acct, &c, vec![])
        .expect("container");
    let body = vec![0xAB; size];
    let start = Instant::now();
    for i in 0..count {
        store
            .put_blob(
                &acct,
                &c,
                &format!("b{i}"),
                &mut &body[..],
                PutBlobOptions::default(),
            )
            .expect("put");
    }
    let put = (size * count) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut sink = vec![0; 1 << 20];
    for i in 0..count {
        let mut r = store
            .get_blob(&acct, &c, &format!("b{i}"), &GetBlobOptions::default())
            .expect("get");
        while r.reader.read(&mut sink).expect("read") > 0 {}
    }
    let get = (size * count) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
    (put, get)
}

fn table_figures(store: &Arc<dyn Backend>) -> (f64, f64, f64, f64) {
    let acct = AccountName::new("bench").expect("acct");
    store.create_table(&acct, "Bench").expect("table");
    let entity = |t: usize, i: u64| {
        Entity::new(format!("p{t}"), format!("r{i:08}"))
            .with("V", EdmValue::Int64(i as i64))
            .with("S", EdmValue::String("payload".into()))
    };
    // Concurrent inserts (64 clients) share group commits.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..64)
        .map(|t| {
            let (store, acct, stop, count) =
                (store.clone(), acct.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    store
                        .execute(&acct, "Bench", TableOp::Insert(entity(t, i)))
                        .expect("insert");
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(PHASE);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("client");
    }
    let inserted = count.load(Ordering::Relaxed);
    let inserts_per_s = inserted as f64 / start.elapsed().as_secs_f64();
    // Single-client inserts: one commit each.
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < PHASE {
        store
            .execute(&acct, "Bench", TableOp::Insert(entity(999, n)))
            .expect("insert");
        n += 1;
    }
    let single_inserts_per_s = n as f64 / start.elapsed().as_secs_f64();
    // Point gets of existing entities.
    let mut lat = Vec::with_capacity(20_000);
    for i in 0..20_000u64 {
        let (pk, rk) = (format!("p{}", i % 64), format!("r{:08}", i % 10));
        let t = Instant::now();
        store
            .get_entity(&acct, "Bench", &pk, &rk, None)
            .expect("get");
        lat.push(t.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2].as_secs_f64() * 1e6;
    let p99 = lat[lat.len() * 99 / 100].as_secs_f64() * 1e6;
    (inserts_per_s, single_inserts_per_s, p50, p99)
}

/// A temporary directory on the disk `ROLEHOST_BENCH_DIR` names (default: here).
pub(crate) fn bench_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(std::env::var_os("ROLEHOST_BENCH_DIR").unwrap_or_else(|| ".".into()))
        .expect("tempdir")
}

/// The figures of one engine, prefixed `prefix` (`""` for redb, `pg_` for PostgreSQL).
struct Figures {
    queue_ops: [f64; 3],
}

fn engine_figures(
    prefix: &str,
    store: &Arc<dyn Backend>,
    big: &[String],
    single: Option<f64>,
) -> Figures {
    let mut queue_ops = [0.0; 3];
    for (i, clients) in [1, 8, 64].into_iter().enumerate() {
        let cycles = queue_cycles(store, clients);
        line(
            &format!("{prefix}queue_cycles_per_s_{clients}"),
            format!("{cycles:.0}"),
        );
        line(
            &format!("{prefix}queue_ops_per_s_{clients}"),
            format!("{:.0}", cycles * 3.0),
        );
        queue_ops[i] = cycles * 3.0;
    }
    match single {
        // redb: over the raw durable commit rate.
        Some(single) => line(
            "group_commit_ratio",
            format!("{:.1}", queue_ops[2] / single),
        ),
        // PostgreSQL: 64 clients over one, the same operations.
        None => line(
            &format!("{prefix}group_commit_ratio"),
            format!("{:.1}", queue_ops[2] / queue_ops[0]),
        ),
    }
    let (put, get) = blob_rate(&**store, 4096, 2000);
    line(&format!("{prefix}blob_4kib_put_mib_s"), format!("{put:.1}"));
    line(&format!("{prefix}blob_4kib_get_mib_s"), format!("{get:.1}"));
    let (put, get) = blob_rate(&**store, 256 << 20, 1);
    line(
        &format!("{prefix}blob_256mib_put_mib_s"),
        format!("{put:.1}"),
    );
    line(
        &format!("{prefix}blob_256mib_get_mib_s"),
        format!("{get:.1}"),
    );
    let (ins, single_ins, p50, p99) = table_figures(store);
    line(
        &format!("{prefix}table_inserts_per_s_64_clients"),
        format!("{ins:.0}"),
    );
    line(
        &format!("{prefix}table_inserts_per_s_1_client"),
        format!("{single_ins:.0}"),
    );
    line(
        &format!("{prefix}table_point_get_p50_us"),
        format!("{p50:.1}"),
    );
    line(
        &format!("{prefix}table_point_get_p99_us"),
        format!("{p99:.1}"),
    );
    // 1 GiB in a child process, so its peak RSS is measured alone.
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("storage-blob-1gib")
        .args(big)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "1 GiB child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Figures { queue_ops }
}

fn storage(args: &[String]) {
    let backend = match args {
        [] => "redb",
        [flag, b] if flag == "--backend" => b.as_str(),
        _ => {
            eprintln!("usage: rolehost-bench storage [--backend redb|postgres|both]");
            std::process::exit(2);
        }
    };
    let (redb, pg) = match backend {
        "redb" => (true, false),
        "postgres" => (false, true),
        "both" => (true, true),
        other => {
            eprintln!("--backend {other}: expected redb, postgres or both");
            std::process::exit(2);
        }
    };
    let dir = bench_dir();
    eprintln!(
        "storage bench in {} ({}s per phase)",
        dir.path().display(),
        PHASE.as_secs()
    );
    let mut redb_figures = None;
    if redb {
        let single = single_commit_rate(dir.path());
        line("redb_single_commit_per_s", format!("{single:.0}"));
        let store = open(dir.path(), "bench.redb");
        let big = vec![dir.path().join("big.redb").display().to_string()];
        redb_figures = Some(engine_figures("", &store, &big, Some(single)));
    }
    if pg {
        let server = BenchServer::get();
        let db = rolehost_storage_pg::scratch::ScratchDatabase::create(&server.url)
            .expect("a database for the benchmark");
        let big_db = rolehost_storage_pg::scratch::ScratchDatabase::create(&server.url)
            .expect("a database for the 1 GiB blob");
        line("pg_pool_size", bench_pool_size());
        let store = open_pg(db.url());
        let big = vec!["-".to_string(), big_db.url().to_string()];
        let pg_figures = engine_figures("pg_", &store, &big, None);
        drop(store);
        line("pg_wake_hint_ms", format!("{:.2}", wake_hint_ms(db.url())));
        if let Some(r) = &redb_figures {
            line(
                "pg_vs_redb_queue_64",
                format!("{:.2}", pg_figures.queue_ops[2] / r.queue_ops[2]),
            );
            line(
                "pg_vs_redb_queue_1",
                format!("{:.2}", pg_figures.queue_ops[0] / r.queue_ops[0]),
            );
        }
    }
}

/// Median time from a put's answer in one store to a watcher's hint in another store on the
/// same database (each has its own connections, as two hosts have), ms.
fn wake_hint_ms(url: &str) -> f64 {
    let (watching, putting) = (open_pg(url), open_pg(url));
    let acct = AccountName::new("wake").expect("acct");
    putting.create_queue(&acct, "hints", vec![]).expect("queue");
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let _watch = watching.watch_puts(Arc::new(move |_: &str, _: &str| {
        let _ = tx.send(Instant::now());
    }));
    // Until the listener listens, hints are lost: warm up until one arrives.
    let warm = Instant::now();
    loop {
        putting
            .put_message(&acct, "hints", b"x", PutMessageOptions::default())
            .expect("put");
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            break;
        }
        assert!(warm.elapsed() < Duration::from_secs(20), "no hint arrives");
    }
    let mut lat = Vec::new();
    for _ in 0..50 {
        while rx.try_recv().is_ok() {}
        putting
            .put_message(&acct, "hints", b"x", PutMessageOptions::default())
            .expect("put");
        let answered = Instant::now();
        if let Ok(heard) = rx.recv_timeout(Duration::from_secs(2)) {
            lat.push(heard.saturating_duration_since(answered).as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    lat.sort_by(f64::total_cmp);
    lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A memory figure of this process from `/proc/self/status` (`VmHWM`, `VmRSS`), in MiB.
pub(crate) fn proc_status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// This process's peak RSS so far, MiB.
fn peak_rss_mib() -> f64 {
    proc_status_mib("VmHWM")
}

/// `rolehost-bench storage-blob-1gib FILE` (redb) or `... - URL` (PostgreSQL).
fn blob_1gib(path: &str, url: Option<&str>) {
    // As the host process does (`rolehost` and the `rest` suite's host): the peak is the
    // host's, not glibc's default arenas'.
    rolehost_runtime::process::bound_malloc_arenas();
    let store: Arc<dyn Backend> = match url {
        Some(url) => open_pg(url),
        None => Arc::new(RedbStore::open(path, StorageOptions::default()).expect("open")),
    };
    let prefix = if url.is_some() { "pg_" } else { "" };
    let acct = AccountName::new("bench").expect("acct");
    store
        .create_container(&acct, "big", vec![])
        .expect("container");
    let start = Instant::now();
    let mut body = std::io::repeat(0x5A).take(GIB);
    store
        .put_blob(
            &acct,
            "big",
            "one-gib",
            &mut body,
            PutBlobOptions::default(),
        )
        .expect("put 1 GiB");
    let put_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut r = store
        .get_blob(&acct, "big", "one-gib", &GetBlobOptions::default())
        .expect("get");
    let mut sink = vec![0; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = r.reader.read(&mut sink).expect("read");
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert_eq!(total, GIB);
    let get_s = start.elapsed().as_secs_f64();
    line(
        &format!("{prefix}blob_1gib_put_mib_s"),
        format!("{:.1}", 1024.0 / put_s),
    );
    line(
        &format!("{prefix}blob_1gib_get_mib_s"),
        format!("{:.1}", 1024.0 / get_s),
    );
    line(
        &format!("{prefix}blob_1gib_peak_rss_mib"),
        format!("{:.1}", peak_rss_mib()),
    );
}
