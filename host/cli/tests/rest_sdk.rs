//! The storage REST endpoints of a real `rolehost serve`, driven by the official Azure SDKs
//! (installed by `scripts/azure-sdks` from PyPI, pinned): every operation, condition, error
//! code, SharedKey and SAS case of each service, against a deployed service's account, with
//! the development account beside it to prove accounts are isolated.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Host, service_dir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What `scripts/azure-sdks <what>` installs the first time and prints: `python` (the SDKs'
/// virtual environment's Python), `node` (the JS SDKs' node_modules), `azurite` (its command).
fn sdk_tool(what: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/azure-sdks"))
        .arg(what)
        .output()
        .expect("running scripts/azure-sdks");
    assert!(
        out.status.success(),
        "scripts/azure-sdks {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The Python of the SDKs' virtual environment.
fn sdk_python() -> PathBuf {
    sdk_tool("python")
}

/// A host serving the development account too, with a web service deployed (its account is
/// the one under test).
fn host_with_service(dir: &Path, name: &str) -> (Host, String, String) {
    let host = Host::start_with(&dir.join("host"), &["--dev-storage".as_ref()]);
    let svc = service_dir(
        &dir.join("svc"),
        &format!(
            "[service]\nname = \"{name}\"\n[roles.Web]\nkind = \"web\"\ncomponent = \"{{guest:hello_web}}\"\n\
             instances = 1\n[[roles.Web.endpoints]]\nport = 0\n"
        ),
    );
    host.ok(&["deploy", &svc]);
    let conn = host
        .ok(&["storage", "connection-string", name])
        .trim()
        .to_string();
    assert!(conn.contains(&format!("AccountName={name};")), "{conn}");
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("host/storage-endpoints.json")).unwrap(),
    )
    .unwrap();
    let dev = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={};QueueEndpoint=http://{}/devstoreaccount1;BlobEndpoint=http://{}/devstoreaccount1;TableEndpoint=http://{}/devstoreaccount1;",
        rolehost_rest_dev_key(),
        endpoints["queue"].as_str().unwrap(),
        endpoints["blob"].as_str().unwrap(),
        endpoints["table"].as_str().unwrap(),
    );
    (host, conn, dev)
}

/// The development account's published key (the same in every Azure SDK).
fn rolehost_rest_dev_key() -> &'static str {
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
}

fn run_python(python: &Path, script: &str, conn: &str, other: &str) {
    run_python_env(python, script, conn, other, &[]);
}

fn run_python_env(python: &Path, script: &str, conn: &str, other: &str, env: &[(&str, &Path)]) {
    let out = Command::new(python)
        .envs(env.iter().copied())
        .arg(repo().join("tests/azure-sdk/python").join(script))
        .env("ROLEHOST_CONNECTION_STRING", conn)
        .env("ROLEHOST_OTHER_CONNECTION_STRING", other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stderr}");
    // unittest reports on stderr: every test ran, none was skipped.
    assert!(stderr.contains("\nOK"), "{stderr}");
    assert!(!stderr.contains("skipped"), "{stderr}");
}

#[test]
fn the_python_sdk_drives_the_queue_service() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let (mut host, conn, dev) = host_with_service(dir.path(), "sdkqueue");
    run_python(&python, "test_queue.py", &conn, &dev);
    host.stop();
}

#[test]
fn the_python_sdk_drives_the_blob_service() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let (mut host, conn, dev) = host_with_service(dir.path(), "sdkblob");
    run_python(&python, "test_blob.py", &conn, &dev);
    host.stop();
}

#[test]
fn the_python_sdk_drives_the_table_service() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let (mut host, conn, dev) = host_with_service(dir.path(), "sdktable");
    run_python(&python, "test_table.py", &conn, &dev);
    host.stop();
}

/// The demo's shout workers, fed by a Python script over REST while `rolehost serve` runs
/// them; the script reads their results back over REST too.
#[test]
fn a_python_script_feeds_the_demo_workers() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let mut host = Host::start(&dir.path().join("host"));
    let svc = service_dir(
        &dir.path().join("svc"),
        "[service]\nname = \"demo\"\n[roles.ShoutWorker]\nkind = \"worker\"\n\
         component = \"{guest:shout_worker}\"\ninstances = 2\ngrace-period-secs = 2\n",
    );
    host.ok(&["deploy", &svc]);
    let conn = host
        .ok(&["storage", "connection-string", "demo"])
        .trim()
        .to_string();
    run_python(&python, "test_demo_jobs.py", &conn, "");
    let logs = host.ok(&["logs", "demo"]);
    assert!(
        logs.contains("HELLO NUMBER 0!"),
        "the workers did the work: {logs}"
    );
    host.stop();
}

/// Headless Chromium on a page of another origin uploads into a blob with a SAS: the CORS
/// preflight and the PUT, allowed by the account's rule; a page of an origin no rule names
/// is blocked and writes nothing.
#[test]
fn a_browser_uploads_with_a_sas_after_a_cors_preflight() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let (mut host, conn, dev) = host_with_service(dir.path(), "sdkcors");
    run_python(&python, "test_browser_cors.py", &conn, &dev);
    host.stop();
}

/// The official JavaScript SDKs: a smoke test of each service.
#[test]
fn the_javascript_sdks_reach_each_service() {
    let modules = sdk_tool("node");
    let dir = tempfile::tempdir().unwrap();
    let (mut host, conn, _) = host_with_service(dir.path(), "sdkjs");
    // Node resolves packages from the script's directory up: run a copy beside node_modules.
    let script = modules.parent().unwrap().join("smoke.mjs");
    std::fs::copy(repo().join("tests/azure-sdk/js/smoke.mjs"), &script).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .env("ROLEHOST_CONNECTION_STRING", &conn)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("blob, queue and table OK"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    host.stop();
}

/// The storage endpoints over HTTPS (`--storage-tls-cert`, `--storage-tls-key`): the SDKs
/// reach them with the host's CA, and a client that does not trust it is refused.
#[test]
fn the_storage_endpoints_speak_https() {
    let python = sdk_python();
    let dir = tempfile::tempdir().unwrap();
    let fixtures = repo().join("tests/fixtures");
    let cert = fixtures.join("localhost.crt");
    let key = fixtures.join("localhost.key");
    let mut host = Host::start_with(
        &dir.path().join("host"),
        &[
            "--storage-tls-cert".as_ref(),
            cert.as_os_str(),
            "--storage-tls-key".as_ref(),
            key.as_os_str(),
        ],
    );
    let svc = service_dir(
        &dir.path().join("svc"),
        "[service]\nname = \"sdktls\"\n[roles.Web]\nkind = \"web\"\ncomponent = \"{guest:hello_web}\"\n\
         instances = 1\n[[roles.Web.endpoints]]\nport = 0\n",
    );
    host.ok(&["deploy", &svc]);
    let conn = host
        .ok(&["storage", "connection-string", "sdktls"])
        .trim()
        .to_string();
    run_python_env(
        &python,
        "test_https.py",
        &conn,
        "",
        &[("ROLEHOST_CA", &fixtures.join("ca.crt"))],
    );
    host.stop();
}

/// Runs `rolehost storage ...` with `args`, and returns what it printed (asserting success).
fn storage(host: &Host, args: &[&str]) -> String {
    let mut all = vec!["storage"];
    all.extend_from_slice(args);
    host.ok(&all)
}

/// The same commands, run against a running host (through its endpoints) and then, once it has
/// stopped, against its data directory: both see the same storage and print the same.
#[test]
fn the_storage_cli_reaches_a_running_host_over_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, _conn, dev) = host_with_service(dir.path(), "clirest");
    let big = dir.path().join("big.bin");
    // Over several upload frames and engine chunks, and not a multiple of either.
    let content: Vec<u8> = (0..3 * 1024 * 1024 + 5)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    std::fs::write(&big, &content).unwrap();
    let a = ["--account", "clirest"];
    let cmd = |host: &Host, rest: &[&str]| {
        let mut args: Vec<&str> = a.to_vec();
        args.extend_from_slice(rest);
        storage(host, &args)
    };
    let put = cmd(
        &host,
        &[
            "blob",
            "put",
            "docs",
            "dir/big file.bin",
            "--file",
            big.to_str().unwrap(),
        ],
    );
    assert!(
        put.starts_with(&format!(
            "docs/dir/big file.bin: {} bytes, etag \"0x",
            content.len()
        )),
        "{put}"
    );
    cmd(
        &host,
        &[
            "blob",
            "put",
            "docs",
            "hello.txt",
            "--text",
            "héllo",
            "--content-type",
            "text/plain",
        ],
    );
    let out = dir.path().join("out.bin");
    cmd(
        &host,
        &[
            "blob",
            "get",
            "docs",
            "dir/big file.bin",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&out).unwrap() == content,
        "the blob came back whole"
    );
    assert_eq!(cmd(&host, &["blob", "get", "docs", "hello.txt"]), "héllo");
    let listing = cmd(&host, &["blob", "list", "docs", "--prefix", "dir/"]);
    assert!(
        listing.starts_with(&format!("dir/big file.bin\t{}\t\"0x", content.len())),
        "{listing}"
    );
    // A failure says what Azure said, and leaves no partial file behind.
    let missing = host.cli(&[
        "storage",
        "--account",
        "clirest",
        "blob",
        "get",
        "docs",
        "nope",
        "-o",
        out.with_extension("x").to_str().unwrap(),
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("404 BlobNotFound"), "{err}");
    assert!(!out.with_extension("x").exists() && !out.with_extension("rolehost-partial").exists());

    cmd(&host, &["queue", "put", "jobs", "job {n}", "--repeat", "3"]);
    assert_eq!(cmd(&host, &["queue", "count", "jobs"]).trim(), "3");
    let peek = cmd(&host, &["queue", "peek", "jobs", "-n", "2"]);
    let bodies: Vec<&str> = peek
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(bodies, ["job 0", "job 1"]);
    assert!(cmd(&host, &["queue", "list"]).contains("jobs\t3"));

    cmd(&host, &["table", "create", "People"]);
    cmd(
        &host,
        &[
            "table",
            "upsert",
            "People",
            "p1",
            "it's ada",
            "Name=Ada",
            "Age:int64=36",
            "When:datetime=2026-12-04T10:00:00Z",
        ],
    );
    cmd(
        &host,
        &[
            "table",
            "upsert",
            "People",
            "p1",
            "bob",
            "Name=Bob",
            "Age:int64=40",
        ],
    );
    let got = cmd(&host, &["table", "get", "People", "p1", "it's ada"]);
    assert!(
        got.contains("Age=Int64(36)") && got.contains("Name=String(\"Ada\")"),
        "{got}"
    );
    let query = cmd(
        &host,
        &["table", "query", "People", "--filter", "Age gt 38L"],
    );
    assert!(
        query.contains("\tbob\t") && !query.contains("ada"),
        "{query}"
    );
    assert_eq!(cmd(&host, &["table", "list"]).trim(), "People");

    // Another account through a connection string; this account's data is not there.
    assert_eq!(
        storage(&host, &["--connection-string", &dev, "queue", "list"]).trim(),
        ""
    );
    storage(
        &host,
        &["--connection-string", &dev, "queue", "put", "devq", "x"],
    );
    assert_eq!(
        storage(
            &host,
            &["--connection-string", &dev, "queue", "count", "devq"]
        )
        .trim(),
        "1"
    );

    // Stopped: the same commands open the data directory and see the same storage.
    let views = |host: &Host| {
        [
            cmd(host, &["blob", "list", "docs"]),
            cmd(host, &["queue", "peek", "jobs"]),
            cmd(host, &["table", "query", "People"]),
        ]
    };
    let remote_views = views(&host);
    host.stop();
    let local_views = views(&host);
    assert_eq!(remote_views[0], local_views[0]);
    assert_eq!(remote_views[1], local_views[1]);
    // Entities print the same but for their timestamps' rendering of the ETag.
    assert_eq!(
        remote_views[2].lines().count(),
        local_views[2].lines().count()
    );
    for (r, l) in remote_views[2].lines().zip(local_views[2].lines()) {
        let strip = |s: &str| {
            s.split('\t')
                .filter(|f| !f.starts_with("W/"))
                .collect::<Vec<_>>()
                .join("\t")
        };
        assert_eq!(strip(r), strip(l));
    }
}

/// Azurite (the emulator), started for one test on ports of its own; killed when dropped.
struct Azurite(std::process::Child);

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `rolehost storage --connection-string` is an Azure client like any other: Azurite, which
/// checks SharedKey its own way, takes what it sends and the commands print what they print
/// against rolehost.
#[test]
fn the_storage_cli_speaks_to_azurite_too() {
    let bin = sdk_tool("azurite");
    let ports = [free_port(), free_port(), free_port()];
    let _azurite = Azurite(
        Command::new(bin)
            .args(["--inMemoryPersistence", "--silent", "--disableTelemetry"])
            .args([
                "--blobHost",
                "127.0.0.1",
                "--queueHost",
                "127.0.0.1",
                "--tableHost",
                "127.0.0.1",
            ])
            .args(["--blobPort", &ports[0].to_string()])
            .args(["--queuePort", &ports[1].to_string()])
            .args(["--tablePort", &ports[2].to_string()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting azurite"),
    );
    for p in ports {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "azurite did not listen on {p}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let cs = format!(
        "AccountName=devstoreaccount1;AccountKey={};BlobEndpoint=http://127.0.0.1:{}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
        rolehost_rest_dev_key(),
        ports[0],
        ports[1],
        ports[2]
    );
    let run = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_rolehost"))
            .args(["storage", "--connection-string", &cs])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rolehost storage {args:?} against azurite: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["queue", "put", "jobs", "job {n}", "--repeat", "2"]);
    let peek = run(&["queue", "peek", "jobs"]);
    let bodies: Vec<&str> = peek
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(bodies, ["job 0", "job 1"]);
    assert_eq!(run(&["queue", "count", "jobs"]).trim(), "2");
    run(&["blob", "put", "docs", "dir/a b.txt", "--text", "héllo"]);
    assert_eq!(run(&["blob", "get", "docs", "dir/a b.txt"]), "héllo");
    assert!(run(&["blob", "list", "docs"]).starts_with("dir/a b.txt\t6\t"));
    run(&["table", "create", "People"]);
    run(&[
        "table",
        "upsert",
        "People",
        "p1",
        "it's ada",
        "Name=Ada",
        "Age:int64=36",
    ]);
    let got = run(&["table", "get", "People", "p1", "it's ada"]);
    assert!(
        got.contains("Age=Int64(36)") && got.contains("Name=String(\"Ada\")"),
        "{got}"
    );
}
