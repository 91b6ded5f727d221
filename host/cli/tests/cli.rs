//! The `rolehost` command line, end to end: messages put with the CLI are processed by a
//! service run with the CLI, and the result is read back with the CLI.

use std::path::Path;
use std::process::{Command, Output};

fn rolehost<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rolehost"))
        .args(args)
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
