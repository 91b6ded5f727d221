//! The `rolehost` command line, end to end: messages put with the CLI are processed by a
//! service run with the CLI, and the result is read back with the CLI.

use std::path::Path;
use std::process::{Command, Output};

fn rolehost<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rolehost"))
        .args(args)
        .envs(rolehost_tests::STORAGE_ON_ANY_PORT)
        .env("RUST_LOG", "info")
        .env_remove("ROLEHOST_DATA_DIR")
        .output()
        .expect("running rolehost")
}

fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = rolehost(args);
    assert!(
        out.status.success(),
        "rolehost {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn write_manifest(dir: &Path, body: &str) -> String {
    std::fs::write(dir.join("rolehost.toml"), body).unwrap();
    dir.display().to_string()
}

#[test]
fn messages_put_with_the_cli_are_processed_by_a_service_run_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let counter = rolehost_tests::guest("counter");
    let svc = write_manifest(
        dir.path(),
        &format!(
            "[service]\nname = \"clisvc\"\n[storage]\ndata-dir = \"data\"\n\
             [roles.Counter]\nkind = \"worker\"\ncomponent = {:?}\ninstances = 2\n",
            counter.display().to_string()
        ),
    );
    let put = ok(&[
        "storage",
        "--service",
        &svc,
        "queue",
        "put",
        "increments",
        "total",
        "--repeat",
        "25",
    ]);
    assert_eq!(put.trim(), "put 25 message(s) on increments");
    assert_eq!(
        ok(&["storage", "--service", &svc, "queue", "count", "increments"]).trim(),
        "25"
    );

    let run = rolehost(&["run", &svc, "--stop-after", "6"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("counter total is now 25"), "{stderr}");
    assert!(
        stderr.contains("stopped 2 instances (0 interrupted"),
        "{stderr}"
    );

    assert_eq!(
        ok(&[
            "storage",
            "--service",
            &svc,
            "blob",
            "get",
            "counters",
            "total"
        ]),
        "25"
    );
    assert_eq!(
        ok(&["storage", "--service", &svc, "queue", "count", "increments"]).trim(),
        "0"
    );
    let listing = ok(&["storage", "--service", &svc, "blob", "list", "counters"]);
    assert!(listing.starts_with("total\t2\t"), "{listing}");
}

#[test]
fn storage_commands_round_trip_blobs_queues_and_entities() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let base = ["storage", "--data-dir", &data, "--account", "acct"];
    let with =
        |rest: &[&str]| -> Vec<String> { base.iter().chain(rest).map(|s| s.to_string()).collect() };

    ok(&with(&[
        "blob",
        "put",
        "docs",
        "hello.txt",
        "--text",
        "hello",
    ]));
    assert_eq!(ok(&with(&["blob", "get", "docs", "hello.txt"])), "hello");
    assert_eq!(ok(&with(&["blob", "containers"])).trim(), "docs");

    ok(&with(&["queue", "put", "jobs", "a", "b"]));
    let peek = ok(&with(&["queue", "peek", "jobs"]));
    let bodies: Vec<&str> = peek
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(bodies, ["a", "b"]);
    assert!(ok(&with(&["queue", "list"])).contains("jobs\t2"));

    ok(&with(&["table", "create", "People"]));
    ok(&with(&[
        "table",
        "upsert",
        "People",
        "p1",
        "ada",
        "Name=Ada",
        "Age:int32=36",
    ]));
    ok(&with(&[
        "table",
        "upsert",
        "People",
        "p1",
        "bob",
        "Name=Bob",
        "Age:int32=17",
    ]));
    let adults = ok(&with(&[
        "table",
        "query",
        "People",
        "--filter",
        "Age ge 18",
    ]));
    assert_eq!(adults.lines().count(), 1, "{adults}");
    assert!(adults.contains("Name=String(\"Ada\")"), "{adults}");
    let got = ok(&with(&["table", "get", "People", "p1", "bob"]));
    assert!(got.contains("Age=Int32(17)"), "{got}");

    // Errors name what was wrong.
    let out = rolehost(&with(&[
        "table",
        "upsert",
        "People",
        "p1",
        "x",
        "Age:int32=old",
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Age"));
    let out = rolehost(&with(&["blob", "get", "docs", "missing.txt"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));
}

#[test]
fn a_bad_manifest_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let svc = write_manifest(
        dir.path(),
        "[service]\nname = \"bad\"\n[roles.A]\nkind = \"worker\"\ncomponent = \"a.wasm\"\ninstancs = 2\n",
    );
    let out = rolehost(&["run", &svc]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("instancs") && stderr.contains("rolehost.toml"),
        "{stderr}"
    );

    let svc = write_manifest(
        dir.path(),
        "[service]\nname = \"bad\"\n[roles.A]\nkind = \"worker\"\ncomponent = \"a.wasm\"\nvm-size = \"Huge\"\n",
    );
    let stderr = String::from_utf8_lossy(&rolehost(&["run", &svc]).stderr).into_owned();
    assert!(stderr.contains("roles.A.vm-size"), "{stderr}");
}

/// A child process that is killed if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[test]
fn ctrl_c_stops_every_instance_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let testbed = rolehost_tests::guest("testbed");
    let svc = write_manifest(
        dir.path(),
        &format!(
            "[service]\nname = \"sigint\"\n[storage]\ndata-dir = \"data\"\n\
             [roles.Probe]\nkind = \"worker\"\ncomponent = {:?}\ninstances = 3\n\
             [roles.Probe.settings]\nmode = \"env\"\n",
            testbed.display().to_string()
        ),
    );
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_rolehost"))
            .args(["run", &svc])
            .envs(rolehost_tests::STORAGE_ON_ANY_PORT)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Follow the log until the three instances run.
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut running = 0;
    let mut up = false;
    while running < 3 || !up {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the service comes up");
        if line.contains(" running") && line.contains("Probe_IN_") {
            running += 1;
        }
        up |= line.contains("is running");
    }
    let pid = i32::try_from(child.0.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = child.0.wait().unwrap();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped 3 instances (0 interrupted"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("stopping cleanly").count(),
        3,
        "on-stop ran everywhere: {stderr}"
    );
}

#[test]
fn build_compiles_a_guest_crate_to_a_component() {
    let target = rolehost_tests::target_dir().join("guests");
    let crate_dir = rolehost_tests::repo_root().join("guests/counter");
    let out = ok(&[
        "build",
        &crate_dir.display().to_string(),
        "--target-dir",
        &target.display().to_string(),
    ]);
    let path = out
        .lines()
        .find(|l| l.ends_with("counter.wasm"))
        .expect("the component's path");
    let bytes = std::fs::read(path).unwrap();
    // A component (layer 1), not a core module.
    assert_eq!(&bytes[..8], b"\0asm\x0d\0\x01\0");
}

#[test]
fn the_log_shows_each_instances_use_of_its_quotas() {
    let dir = tempfile::tempdir().unwrap();
    let testbed = rolehost_tests::guest("testbed");
    let svc = write_manifest(
        dir.path(),
        &format!(
            "[service]\nname = \"usage\"\n[storage]\ndata-dir = \"data\"\n\
             [roles.Idle]\nkind = \"worker\"\ncomponent = {:?}\nvm-size = \"ExtraSmall\"\n\
             [roles.Idle.settings]\nmode = \"idle\"\n\
             [[roles.Idle.local-resources]]\nname = \"scratch\"\nsize-mb = 10\n\
             [roles.Web]\nkind = \"web\"\ncomponent = {:?}\n\
             [[roles.Web.endpoints]]\nport = 0\n",
            testbed.display().to_string(),
            rolehost_tests::guest("hello_web").display().to_string()
        ),
    );
    let out = rolehost(&["run", &svc, "--stop-after", "3", "--usage-every", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("usage: cpu") && l.contains("Idle_IN_0"))
        .unwrap_or_else(|| panic!("no usage line:\n{stderr}"));
    assert!(line.contains("of 0.62 cores"), "ExtraSmall's share: {line}");
    assert!(
        line.contains("of 768 MiB") && line.contains("of 10 MiB"),
        "{line}"
    );
    assert!(
        stderr.lines().any(|l| l.contains("usage: cpu")
            && l.contains("Web_IN_0")
            && l.contains("of 1700 MiB")),
        "web instances are in the usage log too:\n{stderr}"
    );
}

#[test]
fn verify_reports_the_counters_double_counts_and_reruns_a_case_by_its_id() {
    let guests = rolehost_tests::target_dir().join("guests");
    let example = |name: &str| {
        rolehost_tests::repo_root()
            .join("guests/verify")
            .join(name)
            .display()
            .to_string()
    };
    let target = guests.display().to_string();
    // The CAS counter: exit code 1, the failing cases first, each with its trace.
    let out = rolehost(&["verify", &example("counter"), "--target-dir", &target]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": 40 break the invariant"), "{stdout}");
    let first = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FAIL "))
        .expect("a failing case")
        .to_string();
    assert!(
        stdout
            .contains("expected blob counters/total is \"10\", but blob counters/total is \"11\"")
    );
    // Re-run alone by its id: it fails again, showing the faulted call.
    let out = rolehost(&[
        "verify",
        &example("counter"),
        "--target-dir",
        &target,
        "--case",
        &first,
    ]);
    let again = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(again.starts_with(&format!("FAIL {first}")), "{again}");
    assert!(
        again.lines().any(|l| l.trim_start().starts_with("=> #")),
        "{again}"
    );
    // The idempotent counter passes every case; --json for machines.
    let out = rolehost(&[
        "verify",
        &example("idempotent-counter"),
        "--target-dir",
        &target,
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let cases = report["cases"].as_array().unwrap();
    assert!(cases.len() > 200);
    assert!(cases.iter().all(|c| c["verdict"] == "pass"));
    // A case id that is not one is refused, naming it.
    let out = rolehost(&[
        "verify",
        &example("counter"),
        "--target-dir",
        &target,
        "--case",
        "c1-explode",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"c1-explode\": not a case id"));
}
