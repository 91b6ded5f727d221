//! Hostile tenants and clients against the real `rolehost serve`: each test is one attack that
//! once worked (issue "Hostile tenants"), made by a hostile guest (`guests/hostile`) or a
//! hostile client, and asserts what a user must see: the refusal and its message, the host
//! still serving, memory within a bound read from /proc, files' modes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Host, service_dir};

/// A worker that counts in memory (freezable), and a producer feeding it.
const ICY: &str = "[service]\nname = \"icy\"\n\
     [roles.Producer]\nkind = \"worker\"\ncomponent = \"{guest:producer}\"\n\
     [roles.Producer.settings]\ninterval-ms = 100\n\
     [roles.Counter]\nkind = \"worker\"\ncomponent = \"{guest:testbed}\"\ngrace-period-secs = 5\n\
     [roles.Counter.settings]\nmode = \"memcount\"\nqueue = \"increments\"\n";

/// A service `name` of one hostile worker in `mode`, with more settings.
fn hostile(dir: &Path, name: &str, mode: &str, instances: u32, settings: &str) -> String {
    service_dir(
        dir,
        &format!(
            "[service]\nname = \"{name}\"\n[roles.Attacker]\nkind = \"worker\"\n\
             component = \"{{guest:hostile}}\"\ninstances = {instances}\ngrace-period-secs = 2\n\
             [roles.Attacker.settings]\nmode = \"{mode}\"\n{settings}"
        ),
    )
}

/// A snapshot file's parts: (header JSON, signature, payload), cut by its frame.
fn frame(file: &[u8]) -> (serde_json::Value, Vec<u8>, Vec<u8>) {
    let len = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&file[12..12 + len]).unwrap();
    let signature = file[12 + len..12 + len + 32].to_vec();
    let payload = file[12 + len + 32..].to_vec();
    (header, signature, payload)
}

/// A snapshot file framed around `header`, with `signature` and `payload` as given.
fn reframe(
    magic: &[u8; 8],
    header: &serde_json::Value,
    signature: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let head = serde_json::to_vec(header).unwrap();
    let mut out = magic.to_vec();
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(signature);
    out.extend_from_slice(payload);
    out
}

fn wait_counting(host: &Host, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.last_count("icy", "Counter_IN_0").is_none_or(|c| c < n) {
        assert!(Instant::now() < deadline, "no counting: {}", host.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deploys [`ICY`] on `host`, lets it count, and freezes its counter into `dir`'s
/// `counter.snap`: the file and the snapshot's id.
fn counting_then_frozen(host: &Host, dir: &Path) -> (std::path::PathBuf, String) {
    host.ok(&["deploy", &service_dir(&dir.join("icy"), ICY)]);
    wait_counting(host, 2);
    let file = dir.join("counter.snap");
    let id = host.ok(&[
        "freeze",
        "icy",
        "Counter_IN_0",
        "-o",
        file.to_str().unwrap(),
    ]);
    (file, id)
}

/// Item 1 and 2: snapshots are out of every guest's reach, and a snapshot the host did not
/// sign (rewritten to name another service, crafted to abort the host, or of an unsigned
/// earlier format) is refused by name while the host serves on.
#[test]
fn snapshots_are_out_of_a_guests_reach_and_forged_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let (file, id) = counting_then_frozen(&host, dir.path());
    assert!(id.trim().starts_with("icy.Counter_IN_0."), "{id}");

    // The frozen service's own guests look where snapshots used to be, and in the host's
    // account: nothing there, nothing reachable.
    host.ok(&[
        "deploy",
        &hostile(&dir.path().join("snoop"), "icy-snoop", "snapshots", 1, ""),
    ]);
    let out = host.wait_log("icy-snoop", "report list-host-account");
    assert!(
        out.contains("report list-old-container: ContainerNotFound"),
        "{out}"
    );
    assert!(
        !out.contains("report containers: rolehost-snapshots"),
        "{out}"
    );
    assert!(!out.contains("report list-host-account: ok"), "{out}");

    // The attack that once ran one service's code inside another: the same file, its header
    // rewritten to name the other service and its deployment.
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], b"RHSNAP04");
    let (mut header, signature, payload) = frame(&bytes);
    let status = host.status();
    let victim = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "icy-snoop")
        .unwrap();
    header["service"] = "icy-snoop".into();
    header["role"] = "Attacker".into();
    header["instance_id"] = "Attacker_IN_0".into();
    header["deployment_id"] = victim["deployment_id"].clone();
    let refused = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = host.cli(&["thaw", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} was thawed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(
        "forged.snap",
        &reframe(b"RHSNAP04", &header, &signature, &payload),
    );
    assert!(e.contains("signature does not match"), "{e}");

    // A raw length of 2^60 and a digest of three characters (which aborted the host and
    // panicked the request): refused by name, before anything is allocated.
    let (mut header, signature, payload) = frame(&bytes);
    header["raw_len"] = (1u64 << 60).into();
    header["payload_blake3"] = "abc".into();
    let e = refused(
        "bomb.snap",
        &reframe(b"RHSNAP04", &header, &signature, &payload),
    );
    assert!(e.contains("not 64 hex digits"), "{e}");

    // Earlier, unsigned formats: refused, saying why.
    let (header, _, payload) = frame(&bytes);
    let e = refused("old.snap", &reframe(b"RHSNAP03", &header, &[], &payload));
    assert!(
        e.contains("RHSNAP03") && e.contains("no host signature"),
        "{e}"
    );

    // The host is untouched: its own snapshot still thaws, by id, and counting goes on.
    let out = host.ok(&["thaw", id.trim()]);
    assert!(out.contains("thawed Counter_IN_0"), "{out}");
    let snoop = host.status();
    let instances: usize = snoop
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instances"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        instances, 3,
        "no instance was added by a refused thaw: {snoop}"
    );
}

/// Item 9: a thaw is admitted like a start. A host of three instances runs two; the snapshot
/// thaws into its own frozen slot, then (the slot taken) once more into a slot the host
/// chooses, and a third time is refused with the host's capacity named.
#[test]
fn a_thaw_is_admitted_against_the_hosts_capacity_into_a_slot_the_host_chooses() {
    let dir = tempfile::tempdir().unwrap();
    let more = [
        std::ffi::OsStr::new("--max-instances"),
        std::ffi::OsStr::new("3"),
    ];
    let host = Host::start_with(&dir.path().join("host"), &more);
    let (file, _) = counting_then_frozen(&host, dir.path());
    let path = file.to_str().unwrap();
    let out = host.ok(&["thaw", path]);
    assert!(out.contains("thawed Counter_IN_0"), "{out}");
    let out = host.ok(&["thaw", path]);
    assert!(out.contains("thawed Counter_IN_1"), "{out}");
    host.wait_running("icy", "Counter", 2);
    let out = host.cli(&["thaw", path]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a fourth instance on a host of three"
    );
    assert!(e.contains("capacity of 3"), "{e}");
    assert_eq!(host.running("icy", "Counter"), 2);
}

/// Item 11: the data directory and every secret in it are the owner's alone; a token file
/// that others can read stops the host with a message saying how to fix it.
#[test]
fn the_data_directory_and_its_secrets_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut host = Host::start(&data);
    host.ok(&["deploy", &service_dir(&dir.path().join("icy"), ICY)]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for f in ["storage.redb", "management.token", "snapshot.key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    for f in std::fs::read_dir(data.join("files")).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    host.stop();

    std::fs::set_permissions(
        data.join("management.token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolehost"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .envs(rolehost_tests::STORAGE_ON_ANY_PORT)
        .arg(&data)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served with an exposed token");
    assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
}

/// Item 11: garbage in the storage database (all of it, or inside a real one past its
/// header) stops the host with the file named, not a panic, and not a guess that another
/// host uses it.
#[test]
fn a_damaged_storage_database_is_named_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host");
    let mut host = Host::start(&data);
    host.ok(&["deploy", &service_dir(&dir.path().join("icy"), ICY)]);
    host.stop();
    let db = data.join("storage.redb");
    let real = std::fs::read(&db).unwrap();
    let noise = |n: usize| -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    };
    let mut inside = real.clone();
    let from = 4096.min(inside.len());
    let noisy = noise(inside.len() - from);
    inside[from..].copy_from_slice(&noisy);
    for (what, bytes) in [("all garbage", noise(1 << 16)), ("garbage inside", inside)] {
        std::fs::write(&db, bytes).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolehost"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .envs(rolehost_tests::STORAGE_ON_ANY_PORT)
            .arg(&data)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: served");
        assert_ne!(out.status.code(), Some(101), "{what}: a panic: {e}");
        assert!(
            e.contains("storage.redb") && e.contains("damaged"),
            "{what}: {e}"
        );
        assert!(!e.contains("another rolehost"), "{what}: {e}");
    }
}

/// Item 4(a) and 11: a guest reading thousands of queues of fresh, long, invalid names does
/// not grow the host's memory; a filter that panicked the parser gets an error code; and
/// lines that would forge host log lines stay one escaped line.
#[test]
fn guest_chosen_names_filters_and_log_lines_cannot_harm_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    host.ok(&[
        "deploy",
        &hostile(&dir.path().join("f"), "filters", "filter", 1, ""),
    ]);
    let out = host.wait_log("filters", "report n eq");
    for probe in ["b eq X'0é0'", "b eq binary'é'", "X'"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("report {probe}:")))
            .unwrap_or_else(|| panic!("no report of {probe}: {out}"));
        assert!(line.ends_with("InvalidInput"), "{line}");
    }

    host.ok(&[
        "deploy",
        &hostile(&dir.path().join("l"), "forger", "log-inject", 1, ""),
    ]);
    let out = host.wait_log("forger", "report logged");
    assert!(
        out.contains("benign\\n2026-12-03T00:00:00.000000Z"),
        "{out}"
    );
    assert!(out.contains("carriage\\rFORGED-CR \\u{1b}[2J"), "{out}");
    let log = host.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-03T00:00:00.000000Z")),
        "a forged line in the host's log:\n{log}"
    );

    let before = host.rss_kib();
    host.ok(&[
        "deploy",
        &hostile(
            &dir.path().join("q"),
            "names",
            "queue-names",
            2,
            "count = 3000\n",
        ),
    ]);
    let out = host.wait_log("names", "report reads");
    assert!(out.contains("reads: 3000 refused"), "{out}");
    // Two instances sent 2,000 names of 60 KB each (120 MB) between them: kept, they would
    // show here.
    let grown = host.rss_kib().saturating_sub(before);
    assert!(grown < 48 << 10, "the host grew {grown} KiB");
}

/// A web service of `instances` hello-web instances, with more role keys.
fn web(dir: &Path, name: &str, instances: u32, keys: &str) -> String {
    service_dir(
        dir,
        &format!(
            "[service]\nname = \"{name}\"\n[roles.Web]\nkind = \"web\"\n\
             component = \"{{guest:hello_web}}\"\ninstances = {instances}\n\
             grace-period-secs = 1\n{keys}\n[[roles.Web.endpoints]]\nport = 0\n"
        ),
    )
}

/// A GET of `/` on a fresh connection: the status and how long it took.
fn timed_get(addr: std::net::SocketAddr) -> (u16, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let r = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), rolehost_tests::http_get(addr, "/")).await
    });
    let status = match r {
        Ok(Ok(r)) => r.status,
        _ => 0,
    };
    (status, started.elapsed())
}

/// Item 5: a half-sent head, an idle keep-alive connection and a response body whose
/// handler stops writing are each closed at their deadline; a head over `max-header-bytes`
/// by a byte is refused (431), one at the limit is not.
#[test]
fn slow_clients_and_stalled_bodies_are_closed_at_their_deadlines() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let keys = "header-timeout-ms = 500\nidle-timeout-ms = 1000\nmax-header-bytes = 8192\n\
                request-timeout-ms = 30000";
    host.ok(&["deploy", &web(&dir.path().join("w"), "slow", 2, keys)]);
    let addr = host.endpoint("slow", "Web");
    // How long until the host closes `stream` after `sent` was written (reading what comes).
    let closes_after = |sent: &[u8]| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let started = Instant::now();
        s.write_all(sent).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        (
            started.elapsed(),
            String::from_utf8_lossy(&got).into_owned(),
        )
    };
    let (t, _) = closes_after(b"GET / HTTP/1.1\r\nHost: x\r\n");
    assert!(
        t >= Duration::from_millis(400) && t < Duration::from_secs(3),
        "a half-sent head stayed {t:?}"
    );
    let (t, got) = closes_after(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.contains("hello from"), "{got}");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(4),
        "an idle keep-alive connection stayed {t:?}"
    );
    let (t, got) = closes_after(b"GET /stall HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.contains("first line"), "{got}");
    assert!(
        t < Duration::from_secs(5),
        "a stalled body kept the client {t:?}"
    );

    // The documented head limit, exactly: the request line, the header lines and the blank
    // line count.
    let head = |total: usize| {
        let fixed = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \r\nConnection: close\r\n\r\n".len();
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(total - fixed)
        )
    };
    let (_, at) = closes_after(head(8192).as_bytes());
    assert!(at.starts_with("HTTP/1.1 200"), "{at}");
    let (_, over) = closes_after(head(8193).as_bytes());
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
}

/// Item 5 (`slowloris_ok`): 2,000 half-open connections against a host whose descriptor limit
/// is 1,024. A normal request is still answered within a second, the management API answers,
/// and the host's log holds no flood of accept errors.
#[test]
fn a_flood_of_half_open_connections_does_not_stop_a_web_role() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_limited(&dir.path().join("host"), &[], Some(1024));
    host.ok(&["deploy", &web(&dir.path().join("w"), "flooded", 2, "")]);
    let addr = host.endpoint("flooded", "Web");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let held = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        for _ in 0..2000 {
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
            {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
                held.push(s);
            }
        }
        held
    });
    assert!(held.len() >= 1500, "only {} connections opened", held.len());
    let (status, took) = timed_get(addr);
    assert_eq!(status, 200, "a normal request under the flood");
    assert!(took < Duration::from_secs(1), "it took {took:?}");
    let st = host.ok(&["status", "flooded"]);
    assert!(st.contains("Web_IN_0"), "{st}");
    let log = host.log();
    let accept_errors = log.matches("accepting connections fails").count();
    assert!(accept_errors <= 3, "{accept_errors} accept error lines");
    drop(held);
}

/// Item 8: two instances limited to 0.05 core, each reading a 4 MiB blob in a loop (the
/// work is the host's, inside the call), cost the host about their share, not a core: host
/// calls are charged to the caller's CPU share.
#[test]
fn work_inside_host_calls_is_charged_to_the_callers_cpu_share() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let svc = service_dir(
        &dir.path().join("burn"),
        "[service]\nname = \"burn\"\n[roles.Burn]\nkind = \"worker\"\n\
         component = \"{guest:hostile}\"\ninstances = 2\ngrace-period-secs = 1\n\
         [roles.Burn.limits]\ncpu-cores = 0.05\n[roles.Burn.settings]\nmode = \"blob-read-loop\"\n",
    );
    host.ok(&["deploy", &svc]);
    host.wait_log("burn", "report reads: 1\n");
    let (c0, t0) = (host.cpu_seconds(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let cores = (host.cpu_seconds() - c0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "DEBUG {}\n{}",
        host.ok(&["status", "burn"]),
        host.ok(&["logs", "burn"])
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Their share is 0.1 core together; the host's own work (logs, status) is a little more.
    assert!(
        cores < 0.25,
        "two 0.05-core instances cost the host {cores:.2} cores"
    );
}

/// Item 7: directories and empty files cost quota (a 1 MiB resource holds at most 256
/// entries, where 422 MB of directories once fitted), removing them gives it back (three
/// rounds fill it to the same count), and stopping the service is quick.
#[test]
fn local_disk_entries_cost_quota_and_removing_them_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let svc = service_dir(
        &dir.path().join("bomb"),
        "[service]\nname = \"bomb\"\n[roles.Bomb]\nkind = \"worker\"\n\
         component = \"{guest:hostile}\"\ngrace-period-secs = 2\n\
         [[roles.Bomb.local-resources]]\nname = \"scratch\"\nsize-mb = 1\n\
         [roles.Bomb.settings]\nmode = \"dir-bomb\"\n",
    );
    host.ok(&["deploy", &svc]);
    let out = host.wait_log("bomb", "report round 2");
    let rounds: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("report round ").map(|(_, r)| r))
        .collect();
    assert_eq!(rounds.len(), 3, "{out}");
    for r in &rounds {
        let count = |what: &str| -> u64 {
            r.split_once(&format!("{what} "))
                .and_then(|(_, rest)| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{r}"))
        };
        // 256 entries of 4 KiB fill 1 MiB; the directories take them all.
        assert_eq!(count("dirs") + count("files"), 256, "{r}");
    }
    assert_eq!(
        rounds[0].split_once(':').unwrap().1,
        rounds[2].split_once(':').unwrap().1
    );
    let started = Instant::now();
    host.ok(&["stop", "bomb"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}

/// A component whose one module defines `memories` linear memories, instantiated once.
fn many_memories(memories: u32) -> Vec<u8> {
    use wasm_encoder::{
        Component, InstanceSection, MemorySection, MemoryType, Module, ModuleArg, ModuleSection,
    };
    let mut module = Module::new();
    let mut mem = MemorySection::new();
    for _ in 0..memories {
        mem.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
    }
    module.section(&mem);
    let mut component = Component::new();
    component.section(&ModuleSection(&module));
    let mut instances = InstanceSection::new();
    instances.instantiate(0, Vec::<(&str, ModuleArg)>::new());
    component.section(&instances);
    component.finish()
}

/// Item 6: a component that takes eight memories per instance is admitted by what it takes:
/// enough of its instances to exhaust the pool are refused, naming the role and the figures,
/// and an ordinary service still deploys beside what is running.
#[test]
fn a_component_is_admitted_by_the_pool_slots_it_really_takes() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    host.ok(&["deploy", &service_dir(&dir.path().join("icy"), ICY)]);
    let big = dir.path().join("big.wasm");
    std::fs::write(&big, many_memories(8)).unwrap();
    // --max-instances 64: a pool of 88 instance slots, 110 memories.
    let svc = service_dir(
        &dir.path().join("big"),
        &format!(
            "[service]\nname = \"big\"\n[roles.Big]\nkind = \"worker\"\ncomponent = {:?}\n\
             instances = 14\n",
            big.display().to_string()
        ),
    );
    let out = host.cli(&["deploy", &svc]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deployed");
    assert!(
        e.contains("role Big: each instance takes 8 memories") && e.contains("of the 110"),
        "{e}"
    );
    // Nothing changed: the running service runs, and another ordinary one deploys.
    host.wait_running("icy", "Counter", 1);
    host.ok(&[
        "deploy",
        &hostile(&dir.path().join("f"), "filters", "filter", 2, ""),
    ]);
    host.wait_log("filters", "report n eq");
}

/// Item 11: a new service with a deleted service's name does not silently get the storage it
/// left: the deploy is refused, saying how to take it over; `--adopt-storage` does; after a
/// delete with `--purge-storage` the name is free again.
#[test]
fn a_deleted_services_storage_is_not_inherited_silently() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let svc = service_dir(&dir.path().join("icy"), ICY);
    host.ok(&["deploy", &svc]);
    host.ok(&["delete", "icy"]);
    let out = host.cli(&["deploy", &svc]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "deployed over kept storage");
    assert!(
        e.contains("was deleted here") && e.contains("--adopt-storage"),
        "{e}"
    );
    host.ok(&["deploy", &svc, "--adopt-storage"]);
    host.wait_running("icy", "Counter", 1);
    host.ok(&["delete", "icy", "--purge-storage"]);
    host.ok(&["deploy", &svc]);
    host.wait_running("icy", "Counter", 1);
}

/// A service of one `storage-fill` worker, with `[storage.quota]` keys and more settings.
fn filler(dir: &Path, name: &str, quota: &str, settings: &str) -> String {
    service_dir(
        dir,
        &format!(
            "[service]\nname = \"{name}\"\n[storage.quota]\n{quota}\
             [roles.Attacker]\nkind = \"worker\"\ncomponent = \"{{guest:hostile}}\"\n\
             grace-period-secs = 2\n[roles.Attacker.settings]\nmode = \"storage-fill\"\n{settings}"
        ),
    )
}

/// The value of report line `probe: ...` in `out`.
fn probe<'a>(out: &'a str, probe: &str) -> &'a str {
    let needle = format!("report {probe}: ");
    out.lines()
        .find_map(|l| l.split_once(&needle).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no report of {probe}:\n{out}"))
}

#[test]
fn a_tenant_filling_its_storage_meets_its_quota_and_can_always_make_room() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_with(
        &dir.path().join("host"),
        &["--account-quota".as_ref(), "max-mb=16".as_ref()],
    );
    // A manifest may lower the host's quota, never raise it.
    let greedy = host.cli(&[
        "deploy",
        &filler(&dir.path().join("g"), "greedy", "max-mb = 64\n", ""),
    ]);
    let e = String::from_utf8_lossy(&greedy.stderr);
    assert!(!greedy.status.success(), "{e}");
    assert!(
        e.contains("storage.quota.max-mb") && e.contains("more than this host allows (16 MB)"),
        "{e}"
    );

    host.ok(&[
        "deploy",
        &filler(
            &dir.path().join("f"),
            "filler",
            "max-mb = 2\nmax-messages = 40\n",
            "blob-kib = 128\n",
        ),
    ]);
    let out = host.wait_log("filler", "report messages:");
    let blobs = probe(&out, "blobs");
    let (n, code) = blobs.split_once(" refused ").unwrap();
    let n: u64 = n.parse().unwrap();
    assert_eq!(code, "InsufficientAccountPermissions", "{out}");
    // 2 MiB of 128 KiB blobs, less the container and a blob's own overhead.
    assert!((12..=16).contains(&n), "{n} blobs under a 2 MiB quota");
    let refusal = probe(&out, "blob-refusal");
    assert!(
        refusal.contains("account filler") && refusal.contains("max-mb"),
        "{refusal}"
    );
    assert_eq!(probe(&out, "delete"), "ok", "the culprit can always delete");
    assert_eq!(probe(&out, "after-delete"), "ok", "a delete makes room");
    assert_eq!(
        probe(&out, "messages"),
        "40 refused InsufficientAccountPermissions"
    );

    // A neighbour on the host's quota is not touched by the filler's.
    host.ok(&[
        "deploy",
        &filler(
            &dir.path().join("n"),
            "roomy",
            "",
            "blob-kib = 1024\nmax-blobs = 8\nmax-messages = 100\n",
        ),
    ]);
    let out = host.wait_log("roomy", "report messages:");
    assert_eq!(probe(&out, "blobs"), "8 refused none", "{out}");
    assert_eq!(probe(&out, "messages"), "100 refused none", "{out}");

    // Stopping never depends on writing the service's record: with its temporary file made
    // unwritable (a directory stands in its place), the stop goes through and says so.
    let blocker = host.dir.join("services").join("filler.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let stop = host.cli(&["stop", "filler"]);
    let e = String::from_utf8_lossy(&stop.stderr);
    assert!(stop.status.success(), "{e}\n{}", host.log());
    assert!(
        e.contains("warning") && e.contains("runs again when the host restarts"),
        "{e}"
    );
    let status = host.status();
    let filler = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "filler")
        .unwrap();
    assert_eq!(filler["state"], "stopped", "{status}");
    std::fs::remove_dir(&blocker).unwrap();
}
