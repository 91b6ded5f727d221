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
//! - `log-flood`: logs lines of `line-bytes` (16,384) for `secs` (3) as fast as it can:
//!   throttled by bytes, not only lines.

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

impl WorkerRole for Hostile {
    fn on_start() -> Result<Self, String> {
        let mode = env::setting("mode").ok_or("setting `mode` is missing")?;
        Ok(Hostile { mode })
    }

    fn run(&mut self) -> Result<(), String> {
        let lines = match self.mode.as_str() {
            "snapshots" => snapshots(),
            "queue-names" => queue_names(),
            "filter" => filters(),
            "log-inject" => log_inject(),
            "log-flood" => log_flood(),
            other => return Err(format!("unknown mode {other:?}")),
        };
        report(&self.mode, &lines);
        while !env::wait_for_stop(std::time::Duration::from_secs(60)) {}
        Ok(())
    }
}

rolehost_sdk::worker!(Hostile);
