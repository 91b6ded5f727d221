//! Durability under SIGKILL, for any engine: a real writer process is killed at random moments,
//! many times, on the same store. After each kill the store opens again, every acknowledged
//! write is there, and every blob present is whole (nothing half-written is visible).

use std::collections::HashSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rolehost_storage::blob::{Conditions, GetBlobOptions};
use rolehost_storage::crash_writer::pattern;
use rolehost_storage::{AccountName, Backend, ListOptions};

/// Kills per run.
pub(crate) const KILLS: u64 = 12;

/// Kills the writer `writer` (given `location`) [`KILLS`] times at random moments; after each
/// kill, `open` opens the store again and every acknowledged write must be there, every blob
/// whole.
pub(crate) fn acknowledged_writes_survive_sigkill(
    writer: &std::path::Path,
    location: &str,
    open: impl Fn() -> std::sync::Arc<dyn Backend>,
) {
    let acct = AccountName::new("crash").unwrap();
    let mut acked_messages = HashSet::new();
    let mut total_acks = 0;
    // A small LCG: random kill points without a dependency, reproducible per seed.
    let mut seed: u64 = 0x5eed;
    for run in 0..KILLS {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = Duration::from_millis(150 + (seed >> 33) % 500);
        let mut child = Command::new(writer)
            .arg(location)
            .arg(format!("r{run}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        // The kill comes at a random moment once the writer is under way (a dozen writes
        // acknowledged, or 20 s): each thread's third write is a blob of 2.5 MB, which an
        // unoptimised build on a loaded machine takes longer to write than the whole random
        // wait, and kills before it test only the small writes.
        let stdout = child.stdout.take().unwrap();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = seen.clone();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut stdout = std::io::BufReader::new(stdout);
            loop {
                match std::io::BufRead::read_until(&mut stdout, b'\n', &mut out) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        });
        while seen.load(std::sync::atomic::Ordering::Relaxed) < 12
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(wait);
        child.kill().unwrap(); // SIGKILL on Unix
        let out = reader.join().unwrap();
        child.wait().unwrap();
        // Only complete lines are acknowledgements.
        let complete = match out.rfind('\n') {
            Some(i) => &out[..=i],
            None => "",
        };
        let store = open();
        let mut acks = 0;
        for line in complete.lines() {
            acks += 1;
            let parts: Vec<&str> = line.split(' ').collect();
            match parts[0] {
                "q" => {
                    acked_messages.insert(parts[1].to_string());
                }
                "e" => {
                    let e = store
                        .get_entity(&acct, "Rows", "p", parts[1], None)
                        .unwrap_or_else(|e| panic!("entity {line}: {e}"));
                    assert_eq!(e.properties.len(), 1);
                }
                "b" => {
                    let p = store
                        .get_blob_properties(&acct, "blobs", parts[1], &Conditions::none(), None)
                        .unwrap_or_else(|e| panic!("blob {line}: {e}"));
                    assert_eq!(p.size.to_string(), parts[2], "{line}");
                }
                other => panic!("unexpected line {other:?}"),
            }
        }
        total_acks += acks;
        // Every blob present, acknowledged or not, is whole and correct.
        let mut marker = None;
        loop {
            let page = store
                .list_blobs(
                    &acct,
                    "blobs",
                    &ListOptions {
                        marker,
                        ..Default::default()
                    },
                    None,
                )
                .unwrap();
            for item in &page.items {
                if let rolehost_storage::blob::BlobListItem::Blob(b) = item {
                    let mut r = store
                        .get_blob(&acct, "blobs", &b.name, &GetBlobOptions::default())
                        .unwrap();
                    let mut data = Vec::new();
                    r.reader.read_to_end(&mut data).unwrap();
                    assert_eq!(data.len() as u64, b.size);
                    assert!(
                        data.iter()
                            .enumerate()
                            .all(|(i, &x)| x == pattern(&b.name, i)),
                        "blob {} corrupt",
                        b.name
                    );
                }
            }
            marker = page.next_marker;
            if marker.is_none() {
                break;
            }
        }
        // Every acknowledged message is in the queue.
        let count = store
            .get_queue_properties(&acct, "acks")
            .unwrap()
            .approximate_message_count;
        assert!(
            count >= acked_messages.len() as u64,
            "run {run}: {count} messages < {} acknowledged",
            acked_messages.len()
        );
        let mut bodies = HashSet::new();
        loop {
            let got = store
                .get_messages(&acct, "acks", 32, Duration::from_secs(3600))
                .unwrap();
            if got.is_empty() {
                break;
            }
            bodies.extend(got.into_iter().map(|m| String::from_utf8(m.body).unwrap()));
        }
        for m in &acked_messages {
            assert!(
                bodies.contains(m),
                "run {run}: acknowledged message {m} lost"
            );
        }
        // Make them visible again for the next round's check.
        store.clear_messages(&acct, "acks").unwrap();
        acked_messages.clear();
        eprintln!(
            "kill {run} after {:?}: {acks} acknowledged writes verified",
            start.elapsed()
        );
    }
    assert!(
        total_acks > 100,
        "the writer made too little progress to test anything ({total_acks})"
    );
}
