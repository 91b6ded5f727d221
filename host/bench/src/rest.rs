//! `rest`: rolehost's storage REST endpoints against Azurite (the emulator users run today,
//! in memory, its fastest setting), driven by the same light load generator: a hyper client
//! that signs SharedKey with the door's own `auth::sign_shared_key`, so the client is not
//! what is measured. rolehost runs in a
//! child process (its peak RSS is its own) and is durable; Azurite is not.
//!
//! Figures: queue cycles (put + get + delete) per second with 1 and 64 connections, 4 KiB
//! blob puts and gets per second, table inserts per second and point-get p50/p99, a 1 GiB
//! blob up and down (MiB/s) and rolehost's peak RSS meanwhile, each with the ratio
//! rolehost/azurite; and the engine's own queue rate in-process, for what HTTP costs.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use rolehost_rest::Service;
use rolehost_rest::keys::{DEV_ACCOUNT, Key};
use wasmtime_wasi_http::io::TokioIo;

use crate::{PHASE, line};

const ACCOUNT: &str = DEV_ACCOUNT;
const VERSION: &str = "2025-11-05";

/// The three endpoints of a target.
#[derive(Clone, Copy, Debug)]
struct Target {
    blob: SocketAddr,
    queue: SocketAddr,
    table: SocketAddr,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One keep-alive connection.
struct Conn {
    addr: SocketAddr,
    send: http1::SendRequest<Body>,
    key: Arc<Key>,
}

impl Conn {
    async fn open(addr: SocketAddr, key: Arc<Key>) -> Conn {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.set_nodelay(true);
        let (send, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("rest bench: connection to {addr} ended: {e:?}");
            }
        });
        Conn { addr, send, key }
    }

    /// Sends a signed request; returns the status, the headers we need and the body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        (body, len): (Body, u64),
        table: bool,
    ) -> (u16, hyper::HeaderMap, Bytes) {
        let uri = if query.is_empty() {
            format!("/{ACCOUNT}{path}")
        } else {
            format!("/{ACCOUNT}{path}?{query}")
        };
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", self.addr.to_string())
            .header("x-ms-version", VERSION)
            .header("content-length", len.to_string());
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        // Signed by the door's own code: what the door checks first, and what Azurite checks.
        let (mut head, ()) = b.body(()).expect("request").into_parts();
        let service = if table { Service::Table } else { Service::Blob };
        rolehost_rest::auth::sign_shared_key(service, &mut head, ACCOUNT, &self.key)
            .expect("signing");
        let req = hyper::Request::from_parts(head, body);
        // An HTTP/1 connection takes the next request only once it has finished the last.
        if let Err(e) = self.send.ready().await {
            panic!(
                "{method} {path}?{query} on {}: the connection ended: {e}",
                self.addr
            );
        }
        let resp = match self.send.send_request(req).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}?{query} on {}: {e}", self.addr),
        };
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (status, parts.headers, bytes)
    }

    async fn simple(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        table: bool,
    ) -> (u16, Bytes) {
        let b = full(Bytes::copy_from_slice(body));
        let (s, _, bytes) = self
            .call(method, path, query, headers, (b, body.len() as u64), table)
            .await;
        (s, bytes)
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let i = s.find(open)? + open.len();
    let j = s[i..].find(close)? + i;
    Some(&s[i..j])
}

/// Runs `per_conn` on `conns` connections for [`PHASE`]; returns operations per second.
async fn rate<F, Fut>(addr: SocketAddr, key: &Arc<Key>, conns: usize, per_conn: F) -> f64
where
    F: Fn(Conn, usize, Arc<AtomicBool>, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let c = Conn::open(addr, key.clone()).await;
        tasks.push(tokio::spawn(per_conn(c, i, stop.clone(), ops.clone())));
    }
    let start = Instant::now();
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("client");
    }
    ops.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn queue_cycles(t: Target, key: &Arc<Key>, conns: usize) -> f64 {
    let q = format!("/bench{conns}");
    let mut c = Conn::open(t.queue, key.clone()).await;
    let (s, _) = c.simple("PUT", &q, "", &[], b"", false).await;
    assert!(s == 201 || s == 204, "create queue: {s}");
    rate(t.queue, key, conns, move |mut c, _, stop, ops| {
        let q = q.clone();
        async move {
            let msgs = format!("{q}/messages");
            let body = b"<QueueMessage><MessageText>work item</MessageText></QueueMessage>";
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = c
                    .simple(
                        "POST",
                        &msgs,
                        "",
                        &[("content-type", "application/xml")],
                        body,
                        false,
                    )
                    .await;
                assert_eq!(s, 201, "put");
                let (s, got) = c
                    .simple(
                        "GET",
                        &msgs,
                        "numofmessages=1&visibilitytimeout=30",
                        &[],
                        b"",
                        false,
                    )
                    .await;
                assert_eq!(s, 200, "get");
                let got = String::from_utf8_lossy(&got);
                if let (Some(id), Some(receipt)) = (
                    between(&got, "<MessageId>", "<"),
                    between(&got, "<PopReceipt>", "<"),
                ) {
                    let r = percent_encoding::utf8_percent_encode(
                        receipt,
                        percent_encoding::NON_ALPHANUMERIC,
                    )
                    .to_string();
                    let (s, _) = c
                        .simple(
                            "DELETE",
                            &format!("{msgs}/{id}"),
                            &format!("popreceipt={r}"),
                            &[],
                            b"",
                            false,
                        )
                        .await;
                    assert_eq!(s, 204, "delete");
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await
}

/// 4 KiB blob puts then gets per second, with 16 connections.
async fn blob_4kib(t: Target, key: &Arc<Key>) -> (f64, f64) {
    let mut c = Conn::open(t.blob, key.clone()).await;
    let (s, _) = c
        .simple("PUT", "/small", "restype=container", &[], b"", false)
        .await;
    assert!(s == 201 || s == 409, "create container: {s}");
    // What each connection wrote, so the gets read blobs that exist.
    let written: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(0)).collect());
    let w = written.clone();
    let put = rate(t.blob, key, 16, move |mut c, i, stop, ops| {
        let w = w.clone();
        async move {
            let data = vec![7u8; 4096];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = c
                    .simple(
                        "PUT",
                        &format!("/small/b{i}-{n}"),
                        "",
                        &[("x-ms-blob-type", "BlockBlob")],
                        &data,
                        false,
                    )
                    .await;
                assert_eq!(s, 201, "put blob");
                n += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
            w[i].store(n, Ordering::Relaxed);
        }
    })
    .await;
    let get = rate(t.blob, key, 16, move |mut c, i, stop, ops| {
        let w = written.clone();
        async move {
            let have = w[i].load(Ordering::Relaxed).clamp(1, 50);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (s, body) = c
                    .simple(
                        "GET",
                        &format!("/small/b{i}-{}", n % have),
                        "",
                        &[],
                        b"",
                        false,
                    )
                    .await;
                assert_eq!((s, body.len()), (200, 4096), "get blob");
                n += 1;
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .await;
    (put, get)
}

/// Table inserts per second (16 connections) and point-get latency (one connection).
async fn table(t: Target, key: &Arc<Key>) -> (f64, f64, f64) {
    let mut c = Conn::open(t.table, key.clone()).await;
    let json = [
        ("content-type", "application/json"),
        ("accept", "application/json;odata=nometadata"),
        ("prefer", "return-no-content"),
    ];
    let (s, _) = c
        .simple(
            "POST",
            "/Tables",
            "",
            &json,
            br#"{"TableName":"bench"}"#,
            true,
        )
        .await;
    assert!(s == 201 || s == 204 || s == 409, "create table: {s}");
    let inserts = rate(t.table, key, 16, move |mut c, i, stop, ops| async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let e = format!(
                r#"{{"PartitionKey":"p{i}","RowKey":"{n:08}","v":{n},"name":"entity {n}"}}"#
            );
            let (s, _) = c
                .simple("POST", "/bench", "", &json, e.as_bytes(), true)
                .await;
            assert_eq!(s, 204, "insert");
            n += 1;
            ops.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await;
    // A fresh connection: Azurite closes one idle for 5 s (Node's keep-alive default).
    let mut c = Conn::open(t.table, key.clone()).await;
    let mut lat = Vec::new();
    for n in 0..2000u64 {
        let path = format!("/bench(PartitionKey='p0',RowKey='{:08}')", n % 20);
        let start = Instant::now();
        let (s, _) = c
            .simple(
                "GET",
                &path,
                "",
                &[("accept", "application/json;odata=nometadata")],
                b"",
                true,
            )
            .await;
        lat.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(s, 200, "point get");
    }
    lat.sort_by(f64::total_cmp);
    (inserts, lat[lat.len() / 2], lat[lat.len() * 99 / 100])
}

/// A 1 GiB blob put (one streamed Put Blob) and got; MiB/s each.
async fn blob_1gib(t: Target, key: &Arc<Key>) -> (f64, f64) {
    const MIB: usize = 1 << 20;
    let mut c = Conn::open(t.blob, key.clone()).await;
    let (s, _) = c
        .simple("PUT", "/big", "restype=container", &[], b"", false)
        .await;
    assert!(s == 201 || s == 409, "create container: {s}");
    let chunk = Bytes::from(vec![0x5au8; MIB]);
    let stream = futures_stream(chunk, 1024);
    let start = Instant::now();
    let (s, _, _) = c
        .call(
            "PUT",
            "/big/one",
            "",
            &[("x-ms-blob-type", "BlockBlob")],
            (stream, crate::GIB),
            false,
        )
        .await;
    assert_eq!(s, 201, "put 1 GiB");
    let put = 1024.0 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (mut head, ()) = hyper::Request::builder()
        .uri(format!("/{ACCOUNT}/big/one"))
        .header("host", t.blob.to_string())
        .header("x-ms-version", VERSION)
        .body(())
        .expect("request")
        .into_parts();
    rolehost_rest::auth::sign_shared_key(Service::Blob, &mut head, ACCOUNT, key).expect("signing");
    let req = hyper::Request::from_parts(head, full(Bytes::new()));
    c.send.ready().await.expect("connection ready");
    let resp = c.send.send_request(req).await.expect("get 1 GiB");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.expect("frame").into_data() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, crate::GIB);
    (put, 1024.0 / start.elapsed().as_secs_f64())
}

/// `count` copies of `chunk` as a streamed body (generated, so the client holds one chunk).
fn futures_stream(chunk: Bytes, count: usize) -> Body {
    ChunkBody { chunk, left: count }.boxed()
}

struct ChunkBody {
    chunk: Bytes,
    left: usize,
}

impl hyper::body::Body for ChunkBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return std::task::Poll::Ready(None);
        }
        this.left -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(this.chunk.clone()))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact((self.chunk.len() * self.left) as u64)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_azurite() -> (Kill, Target) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/azure-sdks");
    let out = Command::new(script)
        .arg("azurite")
        .output()
        .expect("scripts/azure-sdks azurite");
    assert!(
        out.status.success(),
        "installing azurite: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (b, q, t) = (free_port(), free_port(), free_port());
    let child = Command::new(bin)
        .args([
            "--inMemoryPersistence",
            "--silent",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ])
        .args([
            "--blobHost",
            "127.0.0.1",
            "--queueHost",
            "127.0.0.1",
            "--tableHost",
            "127.0.0.1",
        ])
        .args([
            "--blobPort",
            &b.to_string(),
            "--queuePort",
            &q.to_string(),
            "--tablePort",
            &t.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting azurite");
    let target = Target {
        blob: SocketAddr::from(([127, 0, 0, 1], b)),
        queue: SocketAddr::from(([127, 0, 0, 1], q)),
        table: SocketAddr::from(([127, 0, 0, 1], t)),
    };
    let kill = Kill(child);
    for a in [target.blob, target.queue, target.table] {
        wait_for(a);
    }
    (kill, target)
}

fn start_rolehost(dir: &std::path::Path) -> (Kill, Target) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("rest-host")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the rolehost child");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("the child's endpoints");
    let v: serde_json::Value = serde_json::from_str(&line).expect("endpoints json");
    let a = |k: &str| v[k].as_str().expect("endpoint").parse().expect("addr");
    (
        Kill(child),
        Target {
            blob: a("blob"),
            queue: a("queue"),
            table: a("table"),
        },
    )
}

/// The child: rolehost's storage endpoints on a fresh database in `dir`, the development
/// account served, until its stdin closes.
pub(crate) fn host_child(dir: &str) {
    // As `rolehost` itself does at start.
    rolehost_runtime::process::bound_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async move {
        let dir = std::path::Path::new(dir);
        let store = Arc::new(
            rolehost_storage::RedbStore::open(
                dir.join("storage.redb"),
                rolehost_storage::StorageOptions::default(),
            )
            .expect("store"),
        );
        let keys = rolehost_rest::KeyFiles::open(dir.join("keys"), true).expect("keys");
        let door = Arc::new(rolehost_rest::Door::new(
            store,
            keys,
            Arc::new(rolehost_rest::NoEvents),
        ));
        let any = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let settings = rolehost_runtime::storage_rest::EndpointSettings {
            blob: any,
            queue: any,
            table: any,
            dev_storage: true,
            ..Default::default()
        };
        let (_stop, signal) = rolehost_runtime::stop::stop_signal();
        let bound = rolehost_runtime::storage_rest::start(door, &settings, None, signal)
            .await
            .expect("endpoints");
        println!("{}", serde_json::to_string(&bound.endpoints).expect("json"));
        // Until the parent closes stdin.
        let _ = tokio::task::spawn_blocking(|| {
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new())
        })
        .await;
    });
}

fn child_peak_rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The suite.
pub(crate) fn rest() {
    let dir = crate::bench_dir();
    let (azurite, az) = start_azurite();
    let (host, rh) = start_rolehost(dir.path());
    let key = Arc::new(Key::from_base64(rolehost_rest::keys::DEV_KEY).expect("dev key"));
    eprintln!("rest bench: rolehost on {rh:?}, azurite on {az:?}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let mut figures: Vec<(&str, f64, f64)> = Vec::new();
    rt.block_on(async {
        for (name, conns) in [
            ("rest_queue_1_cycles_per_s", 1usize),
            ("rest_queue_64_cycles_per_s", 64),
        ] {
            let r = queue_cycles(rh, &key, conns).await;
            let a = queue_cycles(az, &key, conns).await;
            figures.push((name, r, a));
        }
        eprintln!("rest bench: 4 KiB blobs");
        let (rp, rg) = blob_4kib(rh, &key).await;
        let (ap, ag) = blob_4kib(az, &key).await;
        figures.push(("rest_blob_4kib_put_per_s", rp, ap));
        figures.push(("rest_blob_4kib_get_per_s", rg, ag));
        eprintln!("rest bench: tables");
        let (ri, r50, r99) = table(rh, &key).await;
        let (ai, a50, a99) = table(az, &key).await;
        figures.push(("rest_table_insert_per_s", ri, ai));
        figures.push(("rest_table_get_p50_us", r50, a50));
        figures.push(("rest_table_get_p99_us", r99, a99));
        eprintln!("rest bench: a 1 GiB blob");
        let (rput, rget) = blob_1gib(rh, &key).await;
        let (aput, aget) = blob_1gib(az, &key).await;
        figures.push(("rest_blob_1gib_put_mib_s", rput, aput));
        figures.push(("rest_blob_1gib_get_mib_s", rget, aget));
    });
    let rss = child_peak_rss_mib(&host.0);
    drop(host);
    drop(azurite);
    for (name, r, a) in &figures {
        let (r, a) = (*r, *a);
        line(name, format!("{r:.1}"));
        line(&format!("{name}_azurite"), format!("{a:.1}"));
        line(
            &format!("{}_vs_azurite", ratio_name(name)),
            format!("{:.2}", r / a),
        );
    }
    line("rest_blob_1gib_peak_rss_mib", format!("{rss:.1}"));
    // What HTTP costs: the engine's own rate with 64 clients, on the same disk, now.
    let store = crate::open(dir.path(), "inprocess.redb");
    let inproc = crate::queue_cycles(&store, 64);
    let rest64 = figures
        .iter()
        .find(|f| f.0 == "rest_queue_64_cycles_per_s")
        .map_or(f64::NAN, |f| f.1);
    line("inprocess_queue_64_cycles_per_s", format!("{inproc:.1}"));
    line(
        "rest_queue_64_vs_inprocess",
        format!("{:.2}", rest64 / inproc),
    );
}

/// `rest_queue_64_cycles_per_s` -> `rest_queue_64`: the ratio keys the issue names.
fn ratio_name(name: &str) -> String {
    let mut n = name.to_string();
    for suffix in ["_cycles_per_s", "_per_s", "_mib_s", "_us"] {
        if let Some(s) = n.strip_suffix(suffix) {
            n = s.to_string();
            break;
        }
    }
    n
}
