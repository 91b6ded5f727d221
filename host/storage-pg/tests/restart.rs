//! The database restarting under load: operations in flight and made while it is down fail
//! with an unknown outcome (guests see `timeout`), nothing acknowledged is lost, and the
//! store goes on by itself once the server is back. The test runs a PostgreSQL server of its
//! own (`scripts/postgres`): restarting the shared test server would fail other tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rolehost_storage::queue::{PutMessageOptions, QueueStore};
use rolehost_storage::{AccountName, StorageOptions};
use rolehost_storage_pg::{PgOptions, PgStore};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

fn server(cmd: &str, dir: &Path) -> String {
    let out = Command::new(script()).arg(cmd).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "scripts/postgres {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct OwnServer(PathBuf);

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.0).status();
    }
}

#[test]
fn a_restart_under_load_loses_nothing_acknowledged_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pg_dir = dir.path().join("pg");
    let url = server("start", &pg_dir);
    let _server = OwnServer(pg_dir.clone());
    let store =
        Arc::new(PgStore::open(&url, &StorageOptions::default(), &PgOptions::default()).unwrap());
    let a = AccountName::new("restart").unwrap();
    store.create_queue(&a, "jobs", vec![]).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let (unknown, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (store, a, stop, acked, unknown, other) = (
                store.clone(),
                a.clone(),
                stop.clone(),
                acked.clone(),
                unknown.clone(),
                other.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("{t}-{i}");
                    i += 1;
                    match store.put_message(
                        &a,
                        "jobs",
                        body.as_bytes(),
                        PutMessageOptions::default(),
                    ) {
                        Ok(_) => {
                            acked.lock().unwrap().insert(body);
                        }
                        Err(e) if e.code() == "OperationTimedOut" => {
                            unknown.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => other.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let before = acked.lock().unwrap().len();
    server("stop", &pg_dir);
    std::thread::sleep(Duration::from_millis(1500));
    let during = unknown.load(Ordering::Relaxed);
    server("start", &pg_dir);
    // Back: writes are acknowledged again, without anyone reopening the store.
    let back = Instant::now();
    let after_restart = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < after_restart + 50 {
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the store did not go on after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(before > 0, "nothing was written before the restart");
    assert!(during > 0, "no operation failed while the server was down");
    let other = other.lock().unwrap();
    assert!(
        other.is_empty(),
        "failures other than an unknown outcome: {:?}",
        &other[..other.len().min(5)]
    );
    // Every acknowledged put is there (an unknown one may be there too).
    let mut bodies = HashSet::new();
    loop {
        let got = store
            .get_messages(&a, "jobs", 32, Duration::from_secs(3600))
            .unwrap();
        if got.is_empty() {
            break;
        }
        bodies.extend(got.into_iter().map(|m| String::from_utf8(m.body).unwrap()));
    }
    let acked = acked.lock().unwrap();
    let lost: Vec<_> = acked.difference(&bodies).take(5).collect();
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
    eprintln!(
        "{} acknowledged, {} unknown while down, all acknowledged found",
        acked.len(),
        during
    );
}
