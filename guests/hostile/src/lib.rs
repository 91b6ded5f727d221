//! A hostile worker for the host's containment tests: each `mode` setting is one attack, run
//! with the platform's imports as any guest may call them (the raw bindings, not only the
//! SDK's polite wrappers). Each mode logs what it saw, a line per probe (`report <probe>:
//! <outcome>`), and writes the same lines to blob `hostile/<mode>` of its own account, then
//! waits for a stop, so a test can read the outcome and check the host and its neighbours.
//!
//! - `snapshots`: looks for the host's snapshots where a guest could once reach them (the
//!   container `rolehost-snapshots` of its own account) and lists every container it has.
//! - `queue-names`: reads from `count` (setting, default 2,000) queues of fresh, invalid and
//!   very long names, as fast as it can: the host must not remember them.
//! - `filter`: queries a table with filters that once panicked the parser (`X'0é0'`).
//! - `log-inject`: logs lines with newlines, carriage returns and terminal escapes that would
//!   forge host log lines if kept raw.
//! - `blob-read-loop`: writes a 4 MiB blob, then reads it whole (one 4 MiB `read-blob`) in a
//!   loop for ever, logging the first read and every 100th: the work is the host's, inside the call.
//! - `dir-bomb`: in its first local resource, makes directories until refused, then empty
//!   files until refused, then removes them all and makes them again (`rounds`, default 3):
//!   entries cost quota, and removing them gives it back without a walk of the tree.
//! - `log-flood`: logs lines of `line-bytes` (16,384) for `secs` (3) as fast as it can:
//!   throttled by bytes, not only lines.
//! - `storage-fill`: writes blobs of `blob-kib` (256) until refused (at most `max-blobs`,
//!   100,000), deletes one and writes it again, then puts queue messages until refused (at most
//!   `max-messages`, 10,000): a tenant filling the disk meets its quota or the host's headroom,
//!   and can always make room.

use rolehost_sdk::__private::bindings::rolehost::platform::{blob, queue, table, types};
use rolehost_sdk::{Container, WorkerRole, env};

struct Hostile {
    mode: String,
}

/// The error's Azure code, as the bindings spell its variant (`ContainerNotFound`).
fn code(e: &types::StorageError) -> String {
    let debug = format!("{:?}", e.code);
    debug.rsplit("::").next().unwrap_or(&debug).to_string()
}

fn outcome<T>(r: &Result<T, types::StorageError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => code(e),
    }
}

fn report(mode: &str, lines: &[String]) {
    for line in lines {
        env::info(&format!("report {line}"));
    }
    let c = Container::new("hostile");
    let _ = c.create_if_not_exists();
    let _ = c.blob(mode).put(lines.join("\n").as_bytes());
}

fn setting_u64(name: &str, default: u64) -> u64 {
    env::setting(name)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn snapshots() -> Vec<String> {
    let mut lines = Vec::new();
    let options = types::ListOptions {
        prefix: None,
        marker: None,
        max_results: None,
        include_metadata: false,
    };
    lines.push(format!(
        "list-old-container: {}",
        outcome(&blob::list_blobs("rolehost-snapshots", &options, None))
    ));
    match blob::list_containers(&options) {
        Ok(page) => {
            let names: Vec<String> = page.items.into_iter().map(|c| c.name).collect();
            lines.push(format!("containers: {}", names.join(",")));
        }
        Err(e) => lines.push(format!("containers: {}", code(&e))),
    }
    // The host's own account is not a container name a guest can give either.
    lines.push(format!(
        "list-host-account: {}",
        outcome(&blob::list_blobs("$rolehost", &options, None))
    ));
    lines
}

fn queue_names() -> Vec<String> {
    let count = setting_u64("count", 2000);
    let long = "q".repeat(60_000);
    let mut refused = 0u64;
    let mut answered = 0u64;
    for i in 0..count {
        // Invalid (too long, upper case) and valid-but-missing names, all different.
        let name = match i % 3 {
            0 => format!("{long}{i}"),
            1 => format!("Queue-{i}"),
            _ => format!("missing-{i}"),
        };
        match queue::get_messages(&name, 1, 30) {
            Ok(_) => answered += 1,
            Err(_) => refused += 1,
        }
    }
    vec![format!(
        "reads: {count} refused {refused} answered {answered}"
    )]
}

fn filters() -> Vec<String> {
    let t = "hostiletable";
    let _ = table::create_table(t);
    let mut lines = Vec::new();
    for filter in [
        "b eq X'0é0'",
        "b eq binary'é'",
        "X'",
        "n eq 99999999999999999999999",
    ] {
        let q = table::Query {
            filter: Some(filter.into()),
            select: None,
            top: None,
            continuation: None,
        };
        lines.push(format!(
            "{filter}: {}",
            outcome(&table::query_entities(t, &q))
        ));
    }
    lines
}

fn log_inject() -> Vec<String> {
    env::info("benign\n2026-12-03T00:00:00.000000Z  INFO rolehost: FORGED host line");
    env::info("carriage\rFORGED-CR \u{1b}[2J");
    vec!["logged: 2".into()]
}

fn blob_read_loop() -> Result<(), String> {
    let c = Container::new("burn");
    c.create_if_not_exists().map_err(|e| e.to_string())?;
    c.blob("4mib")
        .put(&vec![7u8; 4 << 20])
        .map_err(|e| e.to_string())?;
    let none = types::Conditions {
        if_match: None,
        if_none_match: None,
        if_modified_since: None,
        if_unmodified_since: None,
    };
    let mut n = 0u64;
    while !env::stop_requested() {
        let chunk = blob::read_blob("burn", "4mib", 0, 4 << 20, &none, None);
        if chunk.is_err() {
            return Err(format!("read {n}: {}", outcome(&chunk)));
        }
        n += 1;
        if n == 1 || n.is_multiple_of(100) {
            env::info(&format!("report reads: {n}"));
        }
    }
    Ok(())
}

fn dir_bomb() -> Vec<String> {
    let Some(root) = env::local_resources().into_iter().next().map(|r| r.path) else {
        return vec!["dir-bomb: no local resource".into()];
    };
    let mut lines = Vec::new();
    for round in 0..setting_u64("rounds", 3) {
        let mut dirs = 0u64;
        let dir_error = loop {
            match std::fs::create_dir(format!("{root}/d{dirs}")) {
                Ok(()) => dirs += 1,
                Err(e) => break e.raw_os_error().unwrap_or(-1),
            }
            if dirs > 1_000_000 {
                break 0;
            }
        };
        let mut files = 0u64;
        let file_error = loop {
            match std::fs::File::create(format!("{root}/f{files}")) {
                Ok(_) => files += 1,
                Err(e) => break e.raw_os_error().unwrap_or(-1),
            }
            if files > 1_000_000 {
                break 0;
            }
        };
        lines.push(format!(
            "round {round}: dirs {dirs} (os error {dir_error}) files {files} (os error {file_error})"
        ));
        for i in 0..dirs {
            let _ = std::fs::remove_dir(format!("{root}/d{i}"));
        }
        for i in 0..files {
            let _ = std::fs::remove_file(format!("{root}/f{i}"));
        }
    }
    lines
}

fn log_flood() -> Vec<String> {
    let line = "x".repeat(setting_u64("line-bytes", 16 * 1024) as usize);
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(setting_u64("secs", 3)) {
        env::info(&line);
        n += 1;
    }
    vec![format!("lines: {n}")]
}

/// An SDK call's outcome: `ok`, or the code.
fn sdk_outcome<T>(r: &rolehost_sdk::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => {
            let debug = format!("{:?}", e.code);
            debug.rsplit("::").next().unwrap_or(&debug).to_string()
        }
    }
}

fn storage_fill() -> Vec<String> {
    let c = Container::new("fill");
    let mut lines = vec![format!(
        "container: {}",
        sdk_outcome(&c.create_if_not_exists())
    )];
    let body = vec![0x5au8; setting_u64("blob-kib", 256) as usize * 1024];
    let mut n = 0u64;
    let refused = loop {
        if n >= setting_u64("max-blobs", 100_000) {
            break "none".to_string();
        }
        let put = c.blob(&format!("f{n}")).put(&body);
        match &put {
            Ok(_) => n += 1,
            Err(e) => {
                lines.push(format!("blob-refusal: {}", e.message));
                break sdk_outcome(&put);
            }
        }
    };
    lines.push(format!("blobs: {n} refused {refused}"));
    if n > 0 {
        let last = c.blob(&format!("f{}", n - 1));
        lines.push(format!("delete: {}", sdk_outcome(&last.delete_if_exists())));
        lines.push(format!("after-delete: {}", sdk_outcome(&last.put(&body))));
    }
    let q = rolehost_sdk::Queue::new("fillq");
    let _ = q.create_if_not_exists();
    let mut m = 0u64;
    let refused = loop {
        if m >= setting_u64("max-messages", 10_000) {
            break "none".to_string();
        }
        let put = q.put(b"x");
        if put.is_ok() {
            m += 1;
        } else {
            break sdk_outcome(&put);
        }
    };
    lines.push(format!("messages: {m} refused {refused}"));
    lines
}

impl WorkerRole for Hostile {
    fn on_start() -> Result<Self, String> {
        let mode = env::setting("mode").ok_or("setting `mode` is missing")?;
        Ok(Hostile { mode })
    }

    fn run(&mut self) -> Result<(), String> {
        if self.mode == "blob-read-loop" {
            return blob_read_loop();
        }
        let lines = match self.mode.as_str() {
            "snapshots" => snapshots(),
            "queue-names" => queue_names(),
            "filter" => filters(),
            "log-inject" => log_inject(),
            "log-flood" => log_flood(),
            "dir-bomb" => dir_bomb(),
            "storage-fill" => storage_fill(),
            other => return Err(format!("unknown mode {other:?}")),
        };
        report(&self.mode, &lines);
        while !env::wait_for_stop(std::time::Duration::from_secs(60)) {}
        Ok(())
    }
}

rolehost_sdk::worker!(Hostile);
