//! The `hostile` suite: what attackers cost their neighbours, measured in one run.
//!
//! - `hostcall_burn_cores`: host CPU (this process's user + system time over wall time) used
//!   by two instances limited to 0.05 core each, reading a 4 MiB blob in a loop (target
//!   <= 0.15: host calls are charged to the caller's share).
//! - `neighbour_p50_ratio`: a web role's median latency with the attackers running (the blob
//!   readers, a guest reading thousands of invalid queue names, a log flood, 500 half-open
//!   connections on its own endpoint) over its median alone (target <= 2).
//! - `slowloris_ok`: 1 when a normal request is answered within 1 s while 2,000 half-open
//!   connections are held against a host whose descriptor limit is 1,024 (the host runs in a
//!   child process with that limit; the connections come from this one).
//! - `hostcall_read_4mib_cpu_ms`, `hostcall_small_cpu_us`: the host CPU of a 4 MiB blob read
//!   and of a small storage call, measured on the engine directly: the calibration of what
//!   a call is charged (its measured CPU plus `HOSTCALL_BASE_FUEL` and a fuel per byte).

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rolehost_storage::blob::{BlobStore, GetBlobOptions, PutBlobOptions};
use rolehost_storage::{AccountName, RedbStore, StorageOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::line;
use crate::runtime::{guest, start_service};

/// How long each latency measurement runs.
const SAMPLE: Duration = Duration::from_secs(3);

/// This process's CPU time (user and system), seconds.
fn process_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage overwrites it.
    #[allow(unsafe_code)]
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct we pass, nothing else.
    #[allow(unsafe_code)]
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Sequential GETs of `/` on one keep-alive connection for `time` (at least one): the
/// median latency.
async fn p50(addr: SocketAddr, time: Duration) -> Duration {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let end = Instant::now() + time;
    let mut latencies = Vec::new();
    let mut buf = vec![0u8; 4096];
    while latencies.is_empty() || Instant::now() < end {
        let sent = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await
            .expect("write");
        // hello-web answers with a Content-Length body in one small write.
        let mut got = Vec::new();
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the web role closed the connection");
            got.extend_from_slice(&buf[..n]);
            if let Some(head) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&got[..head]).to_ascii_lowercase();
                let len: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= head + 4 + len {
                    break;
                }
            }
        }
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    latencies[latencies.len() / 2]
}

/// Opens `n` connections to `addr`, each sending half a request head, and holds them.
async fn half_open(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
        {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
            held.push(s);
        }
    }
    held
}

/// A service `name` of two hello-web instances on a free port.
fn web_manifest(name: &str, hello: &std::path::Path) -> String {
    format!(
        "[service]\nname = \"{name}\"\n[roles.Web]\nkind = \"web\"\ncomponent = {hello:?}\n\
         instances = 2\n[[roles.Web.endpoints]]\nport = 0\n"
    )
}

fn attackers(component: &std::path::Path) -> String {
    let role = |name: &str, mode: &str, n: u32, extra: &str| {
        format!(
            "[roles.{name}]\nkind = \"worker\"\ncomponent = {component:?}\ninstances = {n}\n\
             grace-period-secs = 1\n{extra}[roles.{name}.settings]\nmode = \"{mode}\"\n"
        )
    };
    format!(
        "[service]\nname = \"attackers\"\n{}{}{}",
        role(
            "Burn",
            "blob-read-loop",
            2,
            "[roles.Burn.limits]\ncpu-cores = 0.05\n"
        ),
        role("Names", "queue-names", 1, ""),
        role("Flood", "log-flood", 1, ""),
    )
}

pub(crate) fn hostile() {
    calibrate();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let hostile = guest("hostile");
    let hello = guest("hello_web");
    rt.block_on(async {
        let (_web_dir, web) = start_service(&web_manifest("neighbour", &hello)).await;
        let addr = web.endpoints()[0].1;
        p50(addr, Duration::from_millis(500)).await;
        let alone = p50(addr, SAMPLE).await;

        // The blob readers alone first: the host CPU they cost.
        let idle_cpu = {
            let (c0, t0) = (process_cpu(), Instant::now());
            tokio::time::sleep(Duration::from_secs(2)).await;
            (process_cpu() - c0) / t0.elapsed().as_secs_f64()
        };
        let (_att_dir, att) = start_service(&attackers(&hostile)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (c0, t0) = (process_cpu(), Instant::now());
        tokio::time::sleep(SAMPLE).await;
        let busy = (process_cpu() - c0) / t0.elapsed().as_secs_f64();

        let held = half_open(addr, 500).await;
        let beside = p50(addr, SAMPLE).await;
        drop(held);
        att.shutdown().await;
        web.shutdown().await;
        line(
            "web_p50_alone_ms",
            format!("{:.3}", alone.as_secs_f64() * 1e3),
        );
        line(
            "web_p50_beside_ms",
            format!("{:.3}", beside.as_secs_f64() * 1e3),
        );
        line(
            "neighbour_p50_ratio",
            format!("{:.2}", beside.as_secs_f64() / alone.as_secs_f64()),
        );
        line("idle_cores", format!("{idle_cpu:.3}"));
        line("attackers_cores", format!("{busy:.3}"));
        line(
            "hostcall_burn_cores",
            format!("{:.3}", (busy - idle_cpu).max(0.0)),
        );
    });
    slowloris();
}

/// The host CPU of storage calls, on the engine directly (no guest): the calibration.
fn calibrate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open(dir.path().join("c.redb"), StorageOptions::default()).expect("db");
    let acct = AccountName::new("calib").expect("account");
    store
        .create_container(&acct, "calib", Vec::new())
        .expect("container");
    let data = vec![7u8; 4 << 20];
    store
        .put_blob(
            &acct,
            "calib",
            "b",
            &mut data.as_slice(),
            PutBlobOptions::default(),
        )
        .expect("put");
    let reads = 50;
    let (c0, t0) = (process_cpu(), Instant::now());
    for _ in 0..reads {
        let mut r = store
            .get_blob(&acct, "calib", "b", &GetBlobOptions::default())
            .expect("get");
        let mut out = Vec::with_capacity(4 << 20);
        r.reader.read_to_end(&mut out).expect("read");
    }
    let read_ms = (process_cpu() - c0) * 1e3 / f64::from(reads);
    let _ = t0;
    let small = 2000;
    let c0 = process_cpu();
    for _ in 0..small {
        let _ = store.get_blob_properties(&acct, "calib", "b", &Default::default(), None);
    }
    let small_us = (process_cpu() - c0) * 1e6 / f64::from(small);
    line("hostcall_read_4mib_cpu_ms", format!("{read_ms:.3}"));
    line("hostcall_small_cpu_us", format!("{small_us:.2}"));
}

/// Serves a web role in a child process whose descriptor limit is 1,024 and holds 2,000
/// half-open connections against it from here; `slowloris_ok` says whether a normal request
/// was answered within a second.
fn slowloris() {
    let exe = std::env::current_exe().expect("exe");
    let mut child = std::process::Command::new("prlimit")
        .args(["--nofile=1024:1024", "--"])
        .arg(exe)
        .arg("hostile-serve")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the child host (prlimit, from util-linux)");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr: SocketAddr = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| l.parse().ok())
        .expect("the child's address");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let (ok, took) = rt.block_on(async {
        let held = half_open(addr, 2000).await;
        let started = Instant::now();
        let ok = tokio::time::timeout(Duration::from_secs(1), p50(addr, Duration::ZERO))
            .await
            .is_ok();
        let took = started.elapsed();
        drop(held);
        (ok, took)
    });
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"stop\n");
    }
    let _ = child.wait();
    line(
        "slowloris_request_ms",
        format!("{:.1}", took.as_secs_f64() * 1e3),
    );
    line("slowloris_ok", u8::from(ok));
}

/// The child of [`slowloris`]: a web role, its address on stdout, until stdin closes.
pub(crate) fn serve_child() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let hello = guest("hello_web");
    rt.block_on(async {
        let (_dir, svc) = start_service(&web_manifest("flooded", &hello)).await;
        println!("{}", svc.endpoints()[0].1);
        let _ = std::io::stdout().flush();
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
        svc.shutdown().await;
    });
}
