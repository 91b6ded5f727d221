//! A worker for the host's tests; the `mode` setting picks its behaviour:
//!
//! - `record`: processes queue `record` (setting `queue`), writing for each message a blob
//!   `seen/<body>` whose content is `<instance id> <dequeue count>` (create-only: a second
//!   handling fails loudly). `work-ms` makes each handling take that long (heartbeating);
//!   `visibility-secs` sets the visibility timeout (default 30).
//! - `fail`: processes queue `fail` with a handler that records each attempt as blob
//!   `attempts/<body>-<dequeue count>` and always fails (poison after
//!   `max-dequeue`, default 5; failure delay `failure-delay-ms`, default 100).
//! - `env`: writes what the environment says to blob `env/<instance id>`, writes and reads a
//!   file in each local resource, then waits for a stop.
//! - `trap`: panics `trap-after-ms` (default 200) after `run` starts.
//! - `return`: returns from `run` at once without a stop request.
//! - `stuck`: ignores stop requests, sleeping in a loop.
//! - `spin`: ignores stop requests, spinning the CPU.
//! - `print`: prints a line to stdout and one to stderr, then waits for a stop.
//!
//! Benchmark modes (`run` does a fixed amount of work and returns):
//! - `idle`: waits for a stop and nothing else.
//! - `cpu-loop`: a tight integer loop of `iterations` (default 300,000,000) steps.
//! - `cpu-alloc`: builds, sorts, hashes and formats `items` (default 2,000,000) values.
//!
//! - `heap`: fills `heap-mib` MiB (64) of memory with cache-like text and waits (freeze bench).
//! - `pattern`: fills `pattern-kib` KiB (3072) with runs of bytes and runs of zeros of awkward
//!   lengths (a byte, around a 4 KiB page, past a 64 KiB Wasm page) the first time it runs, and
//!   checks every byte of it each later time (after a thaw); writes `filled <bytes>`, `intact
//!   <bytes>` or `differs at <offset>` to blob `pattern/verdict`, then waits for a stop.
//! - `memcount`: counts the messages of queue `queue` (`memcount`) in memory (a static), logs
//!   `counted <n>` and writes the count to blob `memcount/latest` after each: continuity across
//!   a freeze and thaw shows.
//! - `stdlife`: uses stdout, stderr, an environment variable, `std::fs` and the monotonic clock
//!   for each message of queue `stdlife`, and reports them in blob `stdlife/<instance id>` (all must
//!   work across a freeze and thaw).
//! - `hold-stdout`: keeps a stdout stream of its own, which a freeze cannot keep (refused); counts
//!   its runs in blob `hold-stdout/<instance id>`.
//! - `topology`: writes blob `topology/<instance id>` (`version N: Role=n,...`) whenever the
//!   service's topology changes, and `topology/<instance id>-stopped` when asked to stop.
//!
//! Misbehaving modes (the host must contain each):
//! - `membomb`: allocates without limit (infallibly): aborts when memory runs out.
//! - `memtry`: allocates with `try_reserve` until refused, writes blob `memtry/<instance id>`
//!   with how far it got, then keeps running.
//! - `memfull`: grows its memory a Wasm page at a time until refused (at its cap), then writes
//!   `run <n>: full` to blob `memfull/<instance id>` (`n` counts its runs, in memory) and waits
//!   for a stop.
//! - `stackoverflow`: recurses without end.
//! - `flood`: prints to stdout as fast as it can.
//! - `diskfill`: writes 64 KiB chunks into its first local resource until a write fails,
//!   writes blob `diskfill/<instance id>` with how far it got and the error, then waits.
//! - `disk`: a scripted sequence of writes, overwrites, truncations, renames and deletes in its
//!   first local resource (1 MiB quota expected), each outcome a line of blob
//!   `disk/<instance id>`, then waits.
//! - `marker`: notes in blob `marker/<instance id>-<found>` whether its first local resource
//!   holds the file `marker` left by an earlier incarnation, leaves it, and fails `run` (so it
//!   is recycled).
//! - `escape`: tries to reach files outside its local resource (`..`, absolute paths, a
//!   symlink), writes the outcome of each to blob `escape/<instance id>`, then waits.

use std::time::Duration;

use rolehost_sdk::{Container, PutOptions, QueueProcessor, WorkerRole, env};

struct Testbed {
    mode: String,
}

/// `size` bytes of alternating runs: non-zero bytes (which depend on their offset) and zeros,
/// their lengths cycling through values around the sizes a snapshot works with.
fn pattern(size: usize) -> Vec<u8> {
    const BYTES: [usize; 6] = [1, 7, 5000, 4096, 300, 9000];
    const ZEROS: [usize; 10] = [1, 3, 4095, 4096, 4097, 8191, 12288, 65536, 70000, 100];
    let mut out = vec![0u8; size];
    let (mut at, mut i) = (0, 0);
    while at < size {
        let end = (at + BYTES[i % BYTES.len()]).min(size);
        for (p, b) in out[at..end].iter_mut().enumerate() {
            *b = ((at + p) * 31 % 255 + 1) as u8;
        }
        at = end + ZEROS[i % ZEROS.len()];
        i += 1;
    }
    out
}

fn setting_u64(name: &str, default: u64) -> u64 {
    env::setting(name)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

impl WorkerRole for Testbed {
    fn on_start() -> Result<Self, String> {
        let mode = env::setting("mode").ok_or("setting `mode` is missing")?;
        if mode == "fail-start" {
            return Err("on-start refused, as asked".into());
        }
        Ok(Testbed { mode })
    }

    fn run(&mut self) -> Result<(), String> {
        match self.mode.as_str() {
            "record" => record(),
            "fail" => {
                Container::new("attempts")
                    .create_if_not_exists()
                    .map_err(|e| e.to_string())?;
                QueueProcessor::new(&env::setting("queue").unwrap_or_else(|| "fail".into()))
                    .max_dequeue_count(setting_u64("max-dequeue", 5) as u32)
                    .failure_delay(Duration::from_millis(setting_u64("failure-delay-ms", 100)))
                    .visibility_timeout(Duration::from_secs(2))
                    .poll_wait(Duration::from_millis(200))
                    .run(|job| {
                        // Leave a trace of every attempt, then fail.
                        let attempt = format!("{}-{}", job.body_str().trim(), job.dequeue_count());
                        Container::new("attempts")
                            .blob(attempt)
                            .put(b"")
                            .map_err(|e| e.to_string())?;
                        Err(format!("always failing on {}", job.body_str()))
                    })
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
            "env" => environment(),
            "trap" => {
                env::wait_for_stop(Duration::from_millis(setting_u64("trap-after-ms", 200)));
                panic!("testbed trapping as asked");
            }
            "return" => Ok(()),
            "heap" => {
                // Fills `heap-mib` MiB (default 64) with text a cache might hold, keeps it, and
                // waits for a stop: a freeze captures it all.
                static HEAP: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
                let mib = setting_u64("heap-mib", 64) as usize;
                {
                    let mut heap = HEAP.lock().map_err(|e| e.to_string())?;
                    if heap.is_empty() {
                        // Allocated whole and written in place: growing would leave freed
                        // copies in memory, which a snapshot would carry too.
                        let size = mib << 20;
                        *heap = vec![0u8; size];
                        let mut at = 0;
                        let mut i = 0u64;
                        while at < size {
                            let line = format!(
                                "key-{i:08}=value {} of the cache\n",
                                i.wrapping_mul(2654435761) % 100_000
                            );
                            let n = line.len().min(size - at);
                            heap[at..at + n].copy_from_slice(&line.as_bytes()[..n]);
                            at += n;
                            i += 1;
                        }
                    }
                }
                while !env::wait_for_stop(Duration::from_secs(3600)) {}
                Ok(())
            }
            "pattern" => {
                static PATTERN: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
                let size = setting_u64("pattern-kib", 3072) as usize * 1024;
                let verdict = {
                    let mut kept = PATTERN.lock().map_err(|e| e.to_string())?;
                    let expected = pattern(size);
                    if kept.is_empty() {
                        *kept = expected;
                        format!("filled {size}")
                    } else {
                        match kept.iter().zip(&expected).position(|(a, b)| a != b) {
                            None if kept.len() == size => format!("intact {size}"),
                            None => format!("differs in length: {}", kept.len()),
                            Some(at) => format!("differs at {at}"),
                        }
                    }
                };
                let out = Container::new("pattern");
                out.create_if_not_exists().map_err(|e| e.to_string())?;
                out.blob("verdict")
                    .put(verdict.as_bytes())
                    .map_err(|e| e.to_string())?;
                while !env::wait_for_stop(Duration::from_secs(3600)) {}
                Ok(())
            }
            "memcount" => {
                // Counts in memory only (a static): writes the count so far to blob
                // `memcount/latest` after each message of queue `memcount`. Its count survives
                // only if its memory does (a freeze and thaw).
                static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let out = Container::new("memcount");
                out.create_if_not_exists().map_err(|e| e.to_string())?;
                let queue = env::setting("queue").unwrap_or_else(|| "memcount".into());
                QueueProcessor::new(&queue)
                    .poll_wait(Duration::from_millis(100))
                    .run(|_job| {
                        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        env::info(&format!("counted {n}"));
                        out.blob("latest").put(n.to_string().as_bytes()).map(|_| ())
                    })
                    .map_err(|e| e.to_string())?;
                Ok(())
            }
            "topology" => {
                // Writes what it sees each time the topology changes, and on stop, so the
                // test can tell it was told (and stopped gracefully).
                let out = Container::new("topology");
                out.create_if_not_exists().map_err(|e| e.to_string())?;
                let mut seen = None;
                loop {
                    let t = env::topology();
                    if seen != Some(t.version) {
                        seen = Some(t.version);
                        let counts: Vec<String> = t
                            .roles
                            .iter()
                            .map(|r| format!("{}={}", r.role, r.instances))
                            .collect();
                        let text = format!("version {}: {}", t.version, counts.join(","));
                        out.blob(env::instance_id())
                            .put(text.as_bytes())
                            .map_err(|e| e.to_string())?;
                    }
                    if env::wait_for_stop(Duration::from_millis(20)) {
                        out.blob(format!("{}-stopped", env::instance_id()))
                            .put(b"")
                            .map_err(|e| e.to_string())?;
                        return Ok(());
                    }
                }
            }
            "stuck" => loop {
                std::thread::sleep(Duration::from_millis(50));
            },
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if x == 0 {
                        return Ok(());
                    }
                }
            }
            "print" => {
                println!("hello from stdout of {}", env::instance_id());
                eprintln!("hello from stderr of {}", env::instance_id());
                while !env::wait_for_stop(Duration::from_secs(5)) {}
                Ok(())
            }
            "stdlife" => stdlife(),
            "hold-stdout" => {
                // Keeps a stdout stream of its own across calls: no freeze can keep it, so a
                // freeze is refused, and `run` is called again. Counts its runs in blob
                // `hold-stdout/<instance id>`.
                thread_local! {
                    static HELD: std::cell::RefCell<Option<wasip2::io::streams::OutputStream>> =
                        const { std::cell::RefCell::new(None) };
                    static RUNS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
                }
                let runs = RUNS.with(|r| {
                    r.set(r.get() + 1);
                    r.get()
                });
                HELD.with(|h| {
                    let mut h = h.borrow_mut();
                    let out = h.get_or_insert_with(wasip2::cli::stdout::get_stdout);
                    let _ = out.blocking_write_and_flush(format!("run {runs}\n").as_bytes());
                });
                report("hold-stdout", &[runs.to_string()])
            }
            "membomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    // Touch the pages so the allocation is real.
                    hoard.push(vec![1u8; 16 << 20]);
                }
            }
            "memtry" => memtry(),
            "memfull" => {
                static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                // What the report needs is allocated first: at the cap, nothing more can be.
                let c = Container::new("memfull");
                c.create_if_not_exists().map_err(|e| e.to_string())?;
                let blob = c.blob(env::instance_id());
                let report = format!("run {n}: full");
                while core::arch::wasm32::memory_grow(0, 1) != usize::MAX {}
                blob.put(report.as_bytes()).map_err(|e| e.to_string())?;
                while !env::wait_for_stop(Duration::from_secs(3600)) {}
                Ok(())
            }
            "idle" => {
                while !env::wait_for_stop(Duration::from_secs(3600)) {}
                Ok(())
            }
            "cpu-loop" => {
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                for _ in 0..setting_u64("iterations", 300_000_000) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                std::hint::black_box(x);
                Ok(())
            }
            "cpu-alloc" => {
                let n = setting_u64("items", 2_000_000);
                let mut v: Vec<u64> = (0..n)
                    .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7)
                    .collect();
                v.sort_unstable();
                let mut m = std::collections::HashMap::with_capacity(v.len());
                for (i, x) in v.iter().enumerate() {
                    m.insert(*x, i);
                }
                let text: usize = v.iter().step_by(16).map(|x| format!("{x:x}").len()).sum();
                std::hint::black_box((m.len(), text));
                Ok(())
            }
            "stackoverflow" => {
                #[allow(unconditional_recursion)]
                fn deeper(n: u64, pad: &mut [u8; 256]) -> u64 {
                    pad[(n % 256) as usize] = n as u8;
                    let mut next = [0u8; 256];
                    deeper(n + 1, &mut next) + u64::from(pad[0])
                }
                let mut pad = [0u8; 256];
                let depth = deeper(0, &mut pad);
                Err(format!("returned from endless recursion at {depth}?"))
            }
            "flood" => {
                let mut n: u64 = 0;
                loop {
                    println!("flood line {n}");
                    n += 1;
                }
            }
            "escape" => escape(),
            "diskfill" => diskfill(),
            "disk" => disk_script(),
            "marker" => {
                let root = first_local()?;
                let marker = format!("{root}/marker");
                let found = std::fs::metadata(&marker).is_ok();
                let c = Container::new("marker");
                c.create_if_not_exists().map_err(|e| e.to_string())?;
                c.blob(format!("{}-{found}", env::instance_id()))
                    .put(b"")
                    .map_err(|e| e.to_string())?;
                std::fs::write(&marker, b"left by an earlier incarnation")
                    .map_err(|e| e.to_string())?;
                Err("recycle me".into())
            }
            other => Err(format!("unknown mode {other:?}")),
        }
    }

    fn on_stop(&mut self) {
        env::info(&format!("{} stopping cleanly", env::instance_id()));
    }
}

fn record() -> Result<(), String> {
    let seen = Container::new("seen");
    seen.create_if_not_exists().map_err(|e| e.to_string())?;
    let me = env::instance_id();
    let work = Duration::from_millis(setting_u64("work-ms", 0));
    QueueProcessor::new(&env::setting("queue").unwrap_or_else(|| "record".into()))
        .poll_wait(Duration::from_millis(500))
        .visibility_timeout(Duration::from_secs(setting_u64("visibility-secs", 30)))
        .run(|job| {
            // Work in slices, keeping the message invisible meanwhile.
            let started = std::time::Instant::now();
            while started.elapsed() < work {
                std::thread::sleep(Duration::from_millis(20).min(work));
                job.heartbeat();
            }
            let content = format!("{me} {}", job.dequeue_count());
            seen.blob(job.body_str().trim())
                .put_with(content.as_bytes(), &PutOptions::default().create_only())
                .map(drop)
        })
        .map(drop)
        .map_err(|e| e.to_string())
}

fn environment() -> Result<(), String> {
    let mut report = vec![
        format!("service={}", env::service_name()),
        format!("role={}", env::role_name()),
        format!("instance={}", env::instance_id()),
        format!("deployment={}", env::deployment_id()),
    ];
    for (k, v) in env::settings() {
        report.push(format!("setting {k}={v}"));
    }
    for r in env::local_resources() {
        let file = format!("{}/probe.txt", r.path);
        let outcome = std::fs::write(&file, b"probe")
            .and_then(|()| std::fs::read(&file))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("error: {e}"));
        report.push(format!(
            "local {}={} quota={} read={outcome}",
            r.name, r.path, r.quota_bytes
        ));
    }
    let c = Container::new("env");
    c.create_if_not_exists().map_err(|e| e.to_string())?;
    c.blob(env::instance_id())
        .put(report.join("\n").as_bytes())
        .map_err(|e| e.to_string())?;
    while !env::wait_for_stop(Duration::from_secs(5)) {}
    Ok(())
}

rolehost_sdk::worker!(Testbed);

fn memtry() -> Result<(), String> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    let mut total: usize = 0;
    loop {
        let mut chunk: Vec<u8> = Vec::new();
        if chunk.try_reserve_exact(16 << 20).is_err() {
            break;
        }
        chunk.resize(16 << 20, 1);
        total += chunk.len();
        hoard.push(chunk);
    }
    drop(hoard);
    let c = Container::new("memtry");
    c.create_if_not_exists().map_err(|e| e.to_string())?;
    c.blob(env::instance_id())
        .put(format!("refused after {} MiB", total >> 20).as_bytes())
        .map_err(|e| e.to_string())?;
    // Still alive, and memory works again once freed.
    let again: Vec<u8> = vec![2; 1 << 20];
    env::info(&format!(
        "allocation refused after {} MiB; still running ({} bytes again)",
        total >> 20,
        again.len()
    ));
    while !env::wait_for_stop(Duration::from_secs(5)) {}
    Ok(())
}

fn escape() -> Result<(), String> {
    let root = env::local_resources()
        .into_iter()
        .next()
        .map(|r| r.path)
        .ok_or("escape mode needs a local resource")?;
    let outcome = |r: std::io::Result<Vec<u8>>| match r {
        Ok(bytes) => format!("READ {} bytes", bytes.len()),
        Err(e) => format!("refused: {e}"),
    };
    let mut report = Vec::new();
    report.push(format!(
        "dotdot {}",
        outcome(std::fs::read(format!("{root}/../../../../etc/passwd")))
    ));
    report.push(format!(
        "absolute {}",
        outcome(std::fs::read("/etc/passwd"))
    ));
    // std has no stable symlink on WASI: use the filesystem interface directly.
    let dir = wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, path)| *path == root)
        .map(|(d, _)| d)
        .ok_or("the local resource is not preopened")?;
    let made = dir.symlink_at("/etc", "link").map_err(|e| format!("{e:?}"));
    report.push(format!("symlink-create {made:?}"));
    report.push(format!(
        "symlink-read {}",
        outcome(std::fs::read(format!("{root}/link/passwd")))
    ));
    let rel = dir
        .symlink_at("../../../../../../etc", "rel")
        .map_err(|e| format!("{e:?}"));
    drop(dir);
    report.push(format!("relative-symlink-create {rel:?}"));
    report.push(format!(
        "relative-symlink-read {}",
        outcome(std::fs::read(format!("{root}/rel/passwd")))
    ));
    report.push(format!(
        "inside {}",
        outcome(
            std::fs::write(format!("{root}/ok.txt"), b"fine")
                .and_then(|()| std::fs::read(format!("{root}/ok.txt")))
        )
    ));
    let c = Container::new("escape");
    c.create_if_not_exists().map_err(|e| e.to_string())?;
    c.blob(env::instance_id())
        .put(report.join("\n").as_bytes())
        .map_err(|e| e.to_string())?;
    while !env::wait_for_stop(Duration::from_secs(5)) {}
    Ok(())
}

/// Mode `stdlife`: for each message of queue `stdlife`, uses what `std` gives a role (stdout,
/// stderr, an environment variable, a file in its first local resource, the monotonic clock)
/// and writes blob `stdlife/<instance id>` (the id the host gives now):
/// `n=<count> env=<ROLEHOST_INSTANCE_ID> resumed=<snapshot id or -> ms=<ms since its first
/// message> file=<the file's contents>`. Its count and first instant are in memory, so they
/// carry across a freeze and thaw; the file does not (local resources are wiped).
fn stdlife() -> Result<(), String> {
    use std::io::Write;
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let out = Container::new("stdlife");
    out.create_if_not_exists().map_err(|e| e.to_string())?;
    let dir = first_local()?;
    QueueProcessor::new("stdlife")
        .poll_wait(Duration::from_millis(100))
        .run(|_job| {
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let first = *FIRST.get_or_init(std::time::Instant::now);
            let id = std::env::var("ROLEHOST_INSTANCE_ID").unwrap_or_else(|e| e.to_string());
            println!("stdlife {n} on {id}");
            eprintln!("stdlife {n} (stderr)");
            let path = format!("{dir}/stdlife.txt");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| write!(f, "{n};"))
                .and_then(|()| std::fs::read_to_string(&path))
                .unwrap_or_else(|e| format!("error {e}"));
            let line = format!(
                "n={n} env={id} resumed={} ms={} file={file}",
                env::resumed_from().unwrap_or_else(|| "-".into()),
                first.elapsed().as_millis(),
            );
            out.blob(&env::instance_id())
                .put(line.as_bytes())
                .map(|_| ())
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn first_local() -> Result<String, String> {
    env::local_resources()
        .into_iter()
        .next()
        .map(|r| r.path)
        .ok_or_else(|| "this mode needs a local resource".to_string())
}

fn report(container: &str, lines: &[String]) -> Result<(), String> {
    let c = Container::new(container);
    c.create_if_not_exists().map_err(|e| e.to_string())?;
    c.blob(env::instance_id())
        .put(lines.join("\n").as_bytes())
        .map_err(|e| e.to_string())?;
    while !env::wait_for_stop(Duration::from_secs(5)) {}
    Ok(())
}

fn diskfill() -> Result<(), String> {
    use std::io::Write;
    let root = first_local()?;
    let chunk = vec![7u8; 64 << 10];
    let mut written: u64 = 0;
    let mut n = 0;
    let error = 'fill: loop {
        let mut f = match std::fs::File::create(format!("{root}/fill-{n}.bin")) {
            Ok(f) => f,
            Err(e) => break 'fill e,
        };
        for _ in 0..16 {
            if let Err(e) = f.write_all(&chunk).and_then(|()| f.flush()) {
                break 'fill e;
            }
            written += chunk.len() as u64;
        }
        n += 1;
    };
    report(
        "diskfill",
        &[format!(
            "wrote {written} bytes; then {error} (os error {:?})",
            error.raw_os_error()
        )],
    )
}

fn disk_script() -> Result<(), String> {
    const KIB: usize = 1024;
    let root = first_local()?;
    let path = |name: &str| format!("{root}/{name}");
    let mut lines = Vec::new();
    let mut step = |label: &str, r: std::io::Result<()>| {
        lines.push(match r {
            Ok(()) => format!("{label}: ok"),
            Err(e) => format!(
                "{label}: refused (os error {})",
                e.raw_os_error().unwrap_or(-1)
            ),
        });
    };
    step(
        "write a 600k",
        std::fs::write(path("a"), vec![1u8; 600 * KIB]),
    );
    step(
        "write b 600k",
        std::fs::write(path("b"), vec![2u8; 600 * KIB]),
    );
    step("remove b", std::fs::remove_file(path("b")));
    step(
        "overwrite a 900k",
        std::fs::write(path("a"), vec![3u8; 900 * KIB]),
    );
    step(
        "write c 200k",
        std::fs::write(path("c"), vec![4u8; 200 * KIB]),
    );
    step(
        "truncate a 100k",
        std::fs::OpenOptions::new()
            .write(true)
            .open(path("a"))
            .and_then(|f| f.set_len(100 * KIB as u64)),
    );
    step(
        "write c 200k again",
        std::fs::write(path("c"), vec![4u8; 200 * KIB]),
    );
    step(
        "grow c to 2m",
        std::fs::OpenOptions::new()
            .write(true)
            .open(path("c"))
            .and_then(|f| f.set_len(2048 * KIB as u64)),
    );
    step("rename c over a", std::fs::rename(path("c"), path("a")));
    step(
        "write d 800k",
        std::fs::write(path("d"), vec![5u8; 800 * KIB]),
    );
    step(
        "write e 100k",
        std::fs::write(path("e"), vec![6u8; 100 * KIB]),
    );
    step("remove d", std::fs::remove_file(path("d")));
    step(
        "write e 100k again",
        std::fs::write(path("e"), vec![6u8; 100 * KIB]),
    );
    step("hard link e", std::fs::hard_link(path("e"), path("e2")));
    report("disk", &lines)
}
