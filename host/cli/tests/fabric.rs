//! The fabric end to end, through the real `rolehost` binary: a host started with
//! `rolehost serve`, services deployed, scaled and upgraded with the CLI under HTTP load,
//! refused deployments, the management token, and a restart of the host.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Host, service_dir};

/// A service directory: a web role running hello-web with a `version` setting.
fn web_service(dir: &Path, name: &str, instances: u32, version: &str) -> String {
    service_dir(
        dir,
        &format!(
            "[service]\nname = \"{name}\"\n[roles.Web]\nkind = \"web\"\ncomponent = \"{{guest:hello_web}}\"\n\
             instances = {instances}\ngrace-period-secs = 2\n[[roles.Web.endpoints]]\nport = 0\n\
             [roles.Web.settings]\nversion = \"{version}\"\n"
        ),
    )
}

/// What the load generator saw.
#[derive(Default)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
    bodies: Vec<String>,
}

/// Sends requests from `clients` tasks until `stop`, each on a fresh connection.
fn load(addr: SocketAddr, clients: usize, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let mut seen = Seen::default();
                    while !stop.load(Ordering::Relaxed) {
                        match rolehost_tests::http_get(addr, "/").await {
                            Ok(r) if r.status == 200 => {
                                seen.ok += 1;
                                seen.bodies.push(r.body);
                            }
                            Ok(r) => seen.failures.push(format!("{}: {}", r.status, r.body)),
                            Err(e) => seen.failures.push(format!("connection: {e}")),
                        }
                    }
                    seen
                }));
            }
            let mut all = Seen::default();
            for t in tasks {
                let s = t.await.unwrap();
                all.ok += s.ok;
                all.failures.extend(s.failures);
                all.bodies.extend(s.bodies);
            }
            all
        })
    })
}

fn instance_of(body: &str) -> String {
    body.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

/// A management call runs to its end when its client hangs up: a freeze asked for while the
/// web instance is busy, whose client goes away before the request ends, still freezes it.
#[test]
fn a_freeze_whose_client_hangs_up_still_freezes_the_instance() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let svc = web_service(&dir.path().join("svc"), "hangup", 1, "v1");
    host.ok(&["deploy", &svc]);
    host.wait_running("hangup", "Web", 1);
    let addr = host.endpoint("hangup", "Web");
    let slow = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(rolehost_tests::http_get(addr, "/slow?ms=1500"))
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    {
        let token = std::fs::read_to_string(host.dir.join("management.token")).unwrap();
        let api = host.url();
        let api = api.strip_prefix("http://").unwrap();
        let mut s = std::net::TcpStream::connect(api).unwrap();
        write!(
            s,
            "POST /v1/services/hangup/instances/Web_IN_0/freeze HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    } // hung up while the freeze waits for the request in flight
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the request in flight finished whole");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = host.ok(&["status"]);
        if status
            .lines()
            .any(|l| l.contains("Web_IN_0") && l.contains("frozen"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not frozen:\n{status}\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_web_role_scales_1_to_8_to_2_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let svc = web_service(&dir.path().join("svc"), "scaly", 1, "v1");
    let out = host.ok(&["deploy", &svc]);
    assert!(out.contains("deployed scaly"), "{out}");
    host.wait_running("scaly", "Web", 1);
    let addr = host.endpoint("scaly", "Web");

    let stop = Arc::new(AtomicBool::new(false));
    let load = load(addr, 4, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    host.ok(&["scale", "scaly", "Web", "8"]);
    host.wait_running("scaly", "Web", 8);
    std::thread::sleep(Duration::from_millis(1500));
    let at_8 = Instant::now();
    host.ok(&["scale", "scaly", "Web", "2"]);
    host.wait_running("scaly", "Web", 2);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    assert!(seen.ok > 100, "only {} requests went through", seen.ok);
    let instances: BTreeSet<String> = seen.bodies.iter().map(|b| instance_of(b)).collect();
    // Idle instances are taken most recently used first, so 4 clients keep about 4 busy:
    // new instances took traffic when the first one was busy.
    assert!(
        instances.len() >= 2 && instances.iter().any(|i| i != "Web_IN_0"),
        "requests reached only {instances:?} (8 instances ran from {at_8:?})"
    );
    // The status shows the new count, and the instances removed are gone.
    let st = host.status();
    let ids: Vec<&str> = st[0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["Web_IN_0", "Web_IN_1"]);
    assert_eq!(st[0]["roles"][0]["instances"], 2);
}

#[test]
fn a_rolling_upgrade_under_load_fails_no_request_and_answers_old_or_new() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let v1 = web_service(&dir.path().join("v1"), "rolling", 4, "v1");
    host.ok(&["deploy", &v1]);
    host.wait_running("rolling", "Web", 4);
    let before = host.status()[0]["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let addr = host.endpoint("rolling", "Web");

    let stop = Arc::new(AtomicBool::new(false));
    let load = load(addr, 4, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let v2 = web_service(&dir.path().join("v2"), "rolling", 4, "v2");
    let out = host.cli(&["deploy", &v2]);
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{progress}");
    assert!(
        progress.contains("upgrade domain 1/4"),
        "the upgrade goes domain by domain:\n{progress}"
    );
    assert!(progress.contains("upgrade domain 4/4"), "{progress}");
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let seen = load.join().unwrap();

    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        &seen.failures[..seen.failures.len().min(5)]
    );
    let v1_count = seen
        .bodies
        .iter()
        .filter(|b| b.contains("version v1"))
        .count();
    let v2_count = seen
        .bodies
        .iter()
        .filter(|b| b.contains("version v2"))
        .count();
    assert_eq!(
        v1_count + v2_count,
        seen.ok,
        "every answer is from v1 or v2"
    );
    assert!(v1_count > 0 && v2_count > 0, "v1 {v1_count}, v2 {v2_count}");
    // Once the upgrade is over, only v2 answers.
    let last = seen.bodies.last().unwrap();
    assert!(last.contains("version v2"), "{last}");
    let after = host.status()[0]["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(before, after, "a new deployment id");
    assert_eq!(host.running("rolling", "Web"), 4);
}

#[test]
fn invalid_components_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let good = web_service(&dir.path().join("good"), "guarded", 1, "v1");
    host.ok(&["deploy", &good]);
    host.wait_running("guarded", "Web", 1);
    let addr = host.endpoint("guarded", "Web");

    // Each refused deployment names what is wrong.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let refused = |service: &str, kind: &str, component: &Path| -> String {
        let endpoint = if kind == "web" {
            "[[roles.R.endpoints]]\nport = 0\n"
        } else {
            ""
        };
        std::fs::write(
            bad.join("rolehost.toml"),
            format!(
                "[service]\nname = \"{service}\"\n[roles.R]\nkind = \"{kind}\"\ncomponent = {:?}\n{endpoint}",
                component.display().to_string()
            ),
        )
        .unwrap();
        let out = host.cli(&["deploy", bad.to_str().unwrap()]);
        assert!(!out.status.success(), "deployed {component:?} as {kind}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Not a component at all.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm").unwrap();
    let err = refused("guarded", "web", &junk);
    assert!(
        err.contains("role R") && err.contains("not a valid component"),
        "{err}"
    );
    // A worker role's component deployed as a web role: the export is named.
    let err = refused("guarded", "web", &rolehost_tests::guest("counter"));
    assert!(
        err.contains("must export wasi:http/incoming-handler"),
        "{err}"
    );
    // A web component deployed as a worker: the missing world is named.
    let err = refused("other", "worker", &rolehost_tests::guest("hello_web"));
    assert!(
        err.contains("is not a worker role (rolehost:platform/worker-role)"),
        "{err}"
    );
    // A component that imports what no host provides: the import is named.
    let err = refused("other", "worker", &rolehost_tests::guest("stray_import"));
    assert!(
        err.contains("imports something the host does not provide")
            && err.contains("test:stray/thing"),
        "{err}"
    );

    // The running version was not touched, and the refused service never appeared.
    let r = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(rolehost_tests::http_get(addr, "/"))
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("version v1"), "{}", r.body);
    let st = host.status();
    assert_eq!(st.as_array().unwrap().len(), 1, "{st}");
}

#[test]
fn management_calls_without_the_token_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    let url = host.url();
    let addr: SocketAddr = url.strip_prefix("http://").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (path, auth) in [
        ("/v1/services", ""),
        ("/metrics", ""),
        ("/v1/services", "Authorization: Bearer not-the-token\r\n"),
    ] {
        let raw = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
        let r = rt
            .block_on(rolehost_tests::http_request(addr, raw.as_bytes()))
            .unwrap();
        assert_eq!(r.status, 401, "{path} {auth:?}: {}", r.body);
        assert!(r.body.contains("token"), "{}", r.body);
    }
    // A deploy without the token is refused too, before anything is read.
    let raw =
        "POST /v1/deploy HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let r = rt
        .block_on(rolehost_tests::http_request(addr, raw.as_bytes()))
        .unwrap();
    assert_eq!(r.status, 401);
    // The CLI with a wrong token says so.
    let out = Command::new(env!("CARGO_BIN_EXE_rolehost"))
        .args(["status", "--host", &url, "--token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong management token"));
    // With the token (read from the data directory), it works; the token file is private.
    assert_eq!(host.api_get("/v1/services").trim(), "[]");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("host/management.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the token is readable by its owner only: {mode:o}"
    );
}

#[test]
fn a_restarted_host_brings_its_services_back_with_their_instance_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host");
    let mut host = Host::start(&data);
    let svc = web_service(&dir.path().join("svc"), "lasting", 1, "v1");
    host.ok(&["deploy", &svc]);
    host.ok(&["scale", "lasting", "Web", "3"]);
    host.wait_running("lasting", "Web", 3);
    let id = host.status()[0]["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A second service, stopped: it stays stopped.
    let other = web_service(&dir.path().join("other"), "resting", 1, "v1");
    host.ok(&["deploy", &other]);
    host.ok(&["stop", "resting"]);
    host.stop();

    let host = Host::start(&data);
    host.wait_running("lasting", "Web", 3);
    let st = host.status();
    let lasting = st
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "lasting")
        .unwrap();
    assert_eq!(lasting["deployment_id"], id.as_str(), "the same deployment");
    assert_eq!(lasting["roles"][0]["instances"], 3);
    let resting = st
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "resting")
        .unwrap();
    assert_eq!(resting["state"], "stopped");
    let addr = host.endpoint("lasting", "Web");
    let r = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(rolehost_tests::http_get(addr, "/"))
        .unwrap();
    assert_eq!(r.status, 200);
    // Logs and metrics see the service.
    let metrics = host.api_get("/metrics");
    assert!(
        metrics.contains(
            "rolehost_instance_up{service=\"lasting\",role=\"Web\",instance=\"Web_IN_2\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "rolehost_http_requests_total{service=\"lasting\",role=\"Web\",code=\"2xx\"} 1"
        ),
        "{metrics}"
    );
    // Deleting it keeps its storage unless asked; the service is gone after.
    let out = host.ok(&["delete", "lasting"]);
    assert!(out.contains("storage account is kept"), "{out}");
    assert_eq!(host.status().as_array().unwrap().len(), 1);
}

#[test]
fn metrics_and_logs_follow_a_working_service_and_delete_can_purge_its_storage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host");
    let mut host = Host::start(&data);
    let svc = service_dir(
        &dir.path().join("svc"),
        "[service]\nname = \"busy\"\n\
         [roles.Producer]\nkind = \"worker\"\ncomponent = \"{guest:producer}\"\n\
         [roles.Producer.settings]\ninterval-ms = 100\n\
         [roles.Counter]\nkind = \"worker\"\ncomponent = \"{guest:counter}\"\ninstances = 2\n",
    );
    host.ok(&["deploy", &svc]);

    // Metrics: the counters process messages, the thumbnail queue (no consumer) fills.
    let metrics = || host.api_get("/metrics");
    let value = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = metrics();
        let processed = value(
            &m,
            "rolehost_instance_messages_processed_total{service=\"busy\",role=\"Counter\"",
        );
        let waiting = value(
            &m,
            "rolehost_queue_messages{service=\"busy\",queue=\"thumbnails\"}",
        );
        let fuel = value(
            &m,
            "rolehost_instance_fuel_total{service=\"busy\",role=\"Producer\"",
        );
        if processed >= 3 && waiting >= 3 && fuel > 0 {
            assert!(
                m.contains("# TYPE rolehost_instance_redeliveries_total counter"),
                "{m}"
            );
            assert!(m.contains("rolehost_instance_memory_bytes{service=\"busy\",role=\"Counter\",instance=\"Counter_IN_1\"}"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "metrics did not move:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Logs: recent lines, filtered by role; following sees new lines as they come.
    let logs = host.ok(&["logs", "busy", "--role", "Producer"]);
    assert!(
        logs.lines()
            .any(|l| l.contains("Producer_IN_0") && l.contains("asked for its thumbnail")),
        "{logs}"
    );
    assert!(
        !logs.contains("Counter_IN_"),
        "filtered to the role: {logs}"
    );
    let mut follow = Command::new(env!("CARGO_BIN_EXE_rolehost"))
        .args(["logs", "busy", "--instance", "Producer_IN_0", "--follow"])
        .env("ROLEHOST_HOST_DATA_DIR", &data)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    // A line the first listing did not have must arrive: the producer makes one every 100 ms.
    let before: BTreeSet<String> = logs.lines().map(str::to_string).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if !before.contains(&line) && tx.send(line).is_err() {
                return;
            }
        }
    });
    let new = rx.recv_timeout(Duration::from_secs(30));
    let _ = follow.kill();
    let _ = follow.wait();
    let new = new.expect("a new line while following");
    assert!(
        new.contains("Producer_IN_0") && new.contains("made"),
        "{new}"
    );

    // Delete with --purge-storage removes the account's queues and containers.
    let out = host.ok(&["delete", "busy", "--purge-storage"]);
    assert!(out.contains("and its storage account"), "{out}");
    host.stop();
    let out = Command::new(env!("CARGO_BIN_EXE_rolehost"))
        .args(["storage", "--account", "busy", "--data-dir"])
        .arg(&data)
        .args(["queue", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "no queues left"
    );
}

/// Service `icy`: a producer of increments, and a counter that counts them in memory (logging
/// `counted <n>`), so its count shows whether its memory survived a freeze.
const ICY: &str = "[service]\nname = \"icy\"\n\
     [roles.Producer]\nkind = \"worker\"\ncomponent = \"{guest:producer}\"\n\
     [roles.Producer.settings]\ninterval-ms = 100\n\
     [roles.Counter]\nkind = \"worker\"\ncomponent = \"{guest:testbed}\"\ngrace-period-secs = 5\n\
     [roles.Counter.settings]\nmode = \"memcount\"\nqueue = \"increments\"\n";

#[test]
fn a_frozen_worker_is_thawed_by_id_stays_frozen_across_a_restart_and_counts_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host");
    let mut host = Host::start(&data);
    let svc = service_dir(&dir.path().join("svc"), ICY);
    host.ok(&["deploy", &svc]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.last_count("icy", "Counter_IN_0").unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "no counting: {}", host.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // Freeze: the snapshot's id, a file too; the instance shows as frozen.
    let file = dir.path().join("counter.snap");
    let id = host.ok(&[
        "freeze",
        "icy",
        "Counter_IN_0",
        "-o",
        file.to_str().unwrap(),
    ]);
    let id = id.trim().to_string();
    assert!(id.starts_with("icy.Counter_IN_0."), "{id}");
    assert!(file.metadata().unwrap().len() > 0);
    let before = host.last_count("icy", "Counter_IN_0").unwrap();
    let st = host.ok(&["status", "icy"]);
    assert!(
        st.lines()
            .any(|l| l.contains("Counter_IN_0") && l.contains("frozen")),
        "{st}"
    );

    // Thaw by id on the same host: it counts on from where it was, not from 1.
    let out = host.ok(&["thaw", &id]);
    assert!(out.contains("thawed Counter_IN_0"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = host.last_count("icy", "Counter_IN_0").unwrap();
        if now > before {
            // Its first count after the thaw went on from its memory.
            let logs = host.ok(&["logs", "icy", "--instance", "Counter_IN_0"]);
            let counts: Vec<u64> = logs
                .lines()
                .filter_map(|l| l.rsplit("counted ").next()?.trim().parse().ok())
                .collect();
            let at = counts.iter().rposition(|c| *c == before).unwrap();
            assert_eq!(counts[at + 1], before + 1, "{counts:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no count after the thaw");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A corrupt file is refused: its signature no longer matches.
    let mut bad = std::fs::read(&file).unwrap();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let bad_path = dir.path().join("bad.snap");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = host.cli(&["thaw", bad_path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Frozen again, it stays frozen across a restart of the host (a new process, the same
    // storage), and its snapshot thaws there by id, going on from where it was.
    let again = host
        .ok(&["freeze", "icy", "Counter_IN_0"])
        .trim()
        .to_string();
    let before_again = host.last_count("icy", "Counter_IN_0").unwrap();
    host.stop();
    let host = Host::start(&data);
    host.wait_running("icy", "Producer", 1);
    let st = host.ok(&["status", "icy"]);
    assert!(
        st.lines()
            .any(|l| l.contains("Counter_IN_0") && l.contains("frozen")),
        "{st}"
    );
    assert_eq!(host.running("icy", "Counter"), 0, "{st}");
    let out = host.ok(&["thaw", &again]);
    assert!(out.contains("thawed Counter_IN_0"), "{out}");
    wait_count_past(&host, "Counter_IN_0", before_again);

    // The first snapshot, from its file, thaws next to it (its slot is taken) and counts on
    // from its own memory.
    let out = host.ok(&["thaw", file.to_str().unwrap()]);
    assert!(out.contains("thawed Counter_IN_1"), "{out}");
    wait_count_past(&host, "Counter_IN_1", before);
}

/// Waits until `instance` of service `icy` has counted past `n`.
fn wait_count_past(host: &Host, instance: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while host.last_count("icy", instance).is_none_or(|c| c <= n) {
        assert!(
            Instant::now() < deadline,
            "{instance} did not count past {n}: {}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_worker_frozen_on_one_host_counts_on_where_another_host_with_its_own_data_dir_thaws_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("shared.redb");
    let shared = [std::ffi::OsStr::new("--storage"), storage.as_os_str()];
    let svc = service_dir(&dir.path().join("svc"), ICY);
    let mut a = Host::start_with(&dir.path().join("host-a"), &shared);
    a.ok(&["deploy", &svc]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.last_count("icy", "Counter_IN_0").unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "no counting: {}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = a.ok(&["freeze", "icy", "Counter_IN_0"]).trim().to_string();
    let n = a.last_count("icy", "Counter_IN_0").unwrap();
    a.stop();

    // Host B: another process, its own data directory, the same storage, but a snapshot key
    // of its own: A's snapshot is refused, saying how hosts share a key.
    let mut b = Host::start_with(&dir.path().join("host-b"), &shared);
    b.ok(&["deploy", &svc]);
    let out = b.cli(&["thaw", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--snapshot-key"),
        "{err}"
    );
    b.stop();

    // With A's key, the same service deployed there has the same deployment id, so the
    // snapshot (read from the shared storage by its id) thaws, next to B's own fresh
    // Counter_IN_0, and counts on at n+1.
    let key = dir.path().join("host-a").join("snapshot.key");
    let with_key = [
        shared[0],
        shared[1],
        std::ffi::OsStr::new("--snapshot-key"),
        key.as_os_str(),
    ];
    let b = Host::start_with(&dir.path().join("host-b"), &with_key);
    b.wait_running("icy", "Counter", 1);
    let out = b.ok(&["thaw", &id]);
    assert!(out.contains("thawed Counter_IN_1"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let logs = b.ok(&["logs", "icy", "--instance", "Counter_IN_1"]);
        if let Some(c) = logs
            .lines()
            .find_map(|l| l.rsplit("counted ").next()?.trim().parse::<u64>().ok())
        {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "no count after the thaw: {}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        first,
        n + 1,
        "the thawed instance counts on from its memory"
    );
}
