//! The `web` suite: the same hello-world component served three ways, each driven by the same
//! load generator (16 keep-alive connections for a fixed time):
//!
//! - rolehost: a web role of 4 long-lived instances behind the load balancer;
//! - per request: a fresh store and instance for every request, the way `wasmtime serve`
//!   serves WASIp2 components (`ProxyPre::instantiate_async` per request, pooling allocator);
//! - native: a hyper hello-world, the ceiling.
//!
//! The three take turns in one-second rounds, so drift in the machine's speed hits all alike.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use rolehost_runtime::engine::{EngineOptions, build_engine};
use rolehost_runtime::instance::{InstanceState, linker, new_store};
use rolehost_runtime::manifest::VmSize;
use rolehost_runtime::quota::Limits;
use rolehost_runtime::service::prepare_role;
use rolehost_runtime::worker::RolePre;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::line;
use crate::runtime::{Bed, guest, start_service};

const CONNECTIONS: usize = 16;
const WARMUP: Duration = Duration::from_millis(500);
/// Each server is measured in rounds of this long, taking turns, so a change in the machine's
/// speed during the run (seen here: 2-core VMs drift by a third) hits all three alike.
const ROUND: Duration = Duration::from_secs(1);
const ROUNDS: usize = 6;

pub(crate) fn web() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let component = guest("hello_web");
    rt.block_on(async {
        let text = format!(
            "[service]\nname = \"webbench\"\n[roles.Web]\nkind = \"web\"\ncomponent = {component:?}\n\
             instances = 4\n[[roles.Web.endpoints]]\nport = 0\n"
        );
        let (_dir, svc) = start_service(&text).await;
        let servers = [
            svc.endpoints()[0].1,
            per_request_server(&component).await,
            native_server().await,
        ];
        let mut latencies: [Vec<Duration>; 3] = Default::default();
        for addr in servers {
            drive(addr, WARMUP).await;
        }
        for _ in 0..ROUNDS {
            for (i, addr) in servers.iter().enumerate() {
                latencies[i].extend(drive(*addr, ROUND).await);
            }
        }
        svc.shutdown().await;
        let measured = ROUND.as_secs_f64() * ROUNDS as f64;
        let [rolehost, per_request, native] = latencies.map(|mut l| {
            l.sort();
            let p99 = l.get(l.len() * 99 / 100).copied().unwrap_or_default();
            (l.len() as f64 / measured, p99)
        });
        let (rolehost_rps, rolehost_p99) = rolehost;
        let (per_request_rps, per_request_p99) = per_request;
        let (native_rps, native_p99) = native;
        line("rolehost_rps", format!("{rolehost_rps:.0}"));
        line("rolehost_p99_ms", format!("{:.3}", rolehost_p99.as_secs_f64() * 1e3));
        line("per_request_rps", format!("{per_request_rps:.0}"));
        line("per_request_p99_ms", format!("{:.3}", per_request_p99.as_secs_f64() * 1e3));
        line("native_rps", format!("{native_rps:.0}"));
        line("native_p99_ms", format!("{:.3}", native_p99.as_secs_f64() * 1e3));
        line("vs_per_request_ratio", format!("{:.2}", rolehost_rps / per_request_rps));
        line("vs_native_ratio", format!("{:.2}", rolehost_rps / native_rps));
        line(
            "p99_vs_per_request_ratio",
            format!("{:.2}", rolehost_p99.as_secs_f64() / per_request_p99.as_secs_f64()),
        );
    });
}

/// Drives `addr` with [`CONNECTIONS`] keep-alive connections for `time`; returns each
/// request's latency.
async fn drive(addr: SocketAddr, time: Duration) -> Vec<Duration> {
    let end = Instant::now() + time;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut buf = Vec::with_capacity(4096);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                    .await
                    .expect("write");
                read_response(&mut stream, &mut buf).await;
                latencies.push(sent.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all
}

/// Reads one response (Content-Length or chunked) from a keep-alive connection.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = complete(buf) {
            buf.drain(..end);
            return;
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The length of the first complete response in `buf`, if there is one.
fn complete(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return (buf.len() >= head_end + len).then_some(head_end + len);
    }
    // Chunked: done at the last chunk.
    let body = &buf[head_end..];
    body.windows(5)
        .position(|w| w == b"0\r\n\r\n")
        .map(|p| head_end + p + 5)
}

/// A server that makes a fresh store and instance for every request.
async fn per_request_server(component: &std::path::Path) -> SocketAddr {
    // As `wasmtime serve` runs without `--timeout` or fuel: pooling, no metering.
    let engine = build_engine(&EngineOptions {
        pool_capacity: Some(256),
        metering: false,
        cache_dir: None,
    })
    .expect("engine");
    let linker = linker(&engine).expect("linker");
    let bytes = std::fs::read(component).expect("component");
    let RolePre::Web(pre) = prepare_role(
        &engine,
        &linker,
        bytes,
        rolehost_runtime::manifest::RoleKind::Web,
    )
    .await
    .expect("web role") else {
        panic!("not a web role")
    };
    let state = Arc::new((engine, pre, Bed::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move {
                        Ok::<_, Infallible>(per_request(&state.0, &state.1, &state.2, req).await)
                    }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn per_request(
    engine: &wasmtime::Engine,
    pre: &ProxyPre<InstanceState>,
    bed: &Bed,
    req: Request<hyper::body::Incoming>,
) -> Response<HyperOutgoingBody> {
    let mut store =
        new_store(engine, bed.parts(&[], false), &Limits::of(VmSize::Small)).expect("store");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .expect("request");
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(tx)
        .expect("outparam");
    let pre = pre.clone();
    tokio::spawn(async move {
        let proxy = pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiate");
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
            .expect("handle");
    });
    rx.await.expect("response").expect("ok response")
}

/// A native hyper hello-world.
async fn native_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(
                        Full::new(Bytes::from_static(b"hello from native (request 1)\n"))
                            .map_err(|never: Infallible| match never {})
                            .boxed_unsync(),
                    ))
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
