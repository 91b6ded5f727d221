//! rolehost's benchmarks, one entry point:
//!
//! ```text
//! cargo run --release -p rolehost-bench -- storage
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

use rolehost_storage::blob::{BlobStore, GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::{PutMessageOptions, QueueStore};
use rolehost_storage::table::{EdmValue, Entity, TableOp, TableStore};
use rolehost_storage::{AccountName, RedbStore, StorageOptions};

const PHASE: Duration = Duration::from_secs(3);
const GIB: u64 = 1024 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("storage") => storage(),
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
        Some("storage-blob-1gib") => blob_1gib(&args[1]),
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

fn open(dir: &std::path::Path, name: &str) -> Arc<RedbStore> {
    Arc::new(RedbStore::open(dir.join(name), StorageOptions::default()).expect("open store"))
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
fn queue_cycles(store: &Arc<RedbStore>, clients: usize) -> f64 {
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

fn blob_rate(store: &RedbStore, size: usize, count: usize) -> (f64, f64) {
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

fn table_figures(store: &Arc<RedbStore>) -> (f64, f64, f64, f64) {
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

fn storage() {
    let dir = bench_dir();
    eprintln!(
        "storage bench in {} ({}s per phase)",
        dir.path().display(),
        PHASE.as_secs()
    );
    let single = single_commit_rate(dir.path());
    line("redb_single_commit_per_s", format!("{single:.0}"));
    let store = open(dir.path(), "bench.redb");
    let mut at64 = 0.0;
    for clients in [1, 8, 64] {
        let cycles = queue_cycles(&store, clients);
        line(
            &format!("queue_cycles_per_s_{clients}"),
            format!("{cycles:.0}"),
        );
        line(
            &format!("queue_ops_per_s_{clients}"),
            format!("{:.0}", cycles * 3.0),
        );
        if clients == 64 {
            at64 = cycles * 3.0;
        }
    }
    line("group_commit_ratio", format!("{:.1}", at64 / single));
    let (put, get) = blob_rate(&store, 4096, 2000);
    line("blob_4kib_put_mib_s", format!("{put:.1}"));
    line("blob_4kib_get_mib_s", format!("{get:.1}"));
    let (put, get) = blob_rate(&store, 256 << 20, 1);
    line("blob_256mib_put_mib_s", format!("{put:.1}"));
    line("blob_256mib_get_mib_s", format!("{get:.1}"));
    let (ins, single_ins, p50, p99) = table_figures(&store);
    line("table_inserts_per_s_64_clients", format!("{ins:.0}"));
    line("table_inserts_per_s_1_client", format!("{single_ins:.0}"));
    line("table_point_get_p50_us", format!("{p50:.1}"));
    line("table_point_get_p99_us", format!("{p99:.1}"));
    drop(store);
    // 1 GiB in a child process, so its peak RSS is measured alone.
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("storage-blob-1gib")
        .arg(dir.path().join("big.redb"))
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "1 GiB child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
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

fn blob_1gib(path: &str) {
    let store = RedbStore::open(path, StorageOptions::default()).expect("open");
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
    line("blob_1gib_put_mib_s", format!("{:.1}", 1024.0 / put_s));
    line("blob_1gib_get_mib_s", format!("{:.1}", 1024.0 / get_s));
    line("blob_1gib_peak_rss_mib", format!("{:.1}", peak_rss_mib()));
}
