//! The management API: HTTP/1.1 + JSON, on loopback by default, every request carrying the
//! host's token (`Authorization: Bearer <token>`; the token is in `<data dir>/management.token`,
//! readable by its owner only).
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /v1/services` | every service's status (JSON) |
//! | `HEAD /v1/files/<sha256>` | 200 if the host has the file, 404 if not |
//! | `PUT /v1/files/<sha256>` | uploads a file (a component, a certificate); the digest is checked |
//! | `POST /v1/deploy[?adopt-storage=true]` | deploys a [`Deployment`] (taking over a deleted namesake's storage only when asked); answers progress as JSON lines, the last `{"done": name}` or `{"error": message}` |
//! | `POST /v1/services/<name>/scale` | `{"role": r, "instances": n}` |
//! | `POST /v1/services/<name>/stop`, `.../start` | stops or starts the service |
//! | `POST /v1/services/<name>/instances/<id>/freeze[?wait-ms=N]` | freezes an instance (a busy web instance: waiting at most N ms for its request); answers the snapshot file (id in `x-rolehost-snapshot`) |
//! | `POST /v1/thaw[?snapshot=<id>]` | thaws the snapshot in the body, or the one with that id |
//! | `DELETE /v1/services/<name>[?purge-storage=true]` | removes it (and its storage account when asked) |
//! | `GET /v1/logs[?service=&role=&instance=&follow=true]` | guest output, a line each |
//! | `GET /metrics` | Prometheus text format |
//!
//! Errors answer `{"error": message}` with a 4xx or 5xx status.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{Deployment, Fabric, TOKEN_FILE};
use crate::guest_log::LogLine;
use crate::stop::StopSignal;

/// Largest file a client may upload (a component, a certificate).
pub const MAX_UPLOAD_BYTES: u64 = 1 << 30;
/// Largest JSON request body.
const MAX_JSON_BYTES: usize = 16 << 20;

/// Chunks a streamed response holds for a client that is slow to read: a follower of the logs
/// that stops reading costs the host this many lines (of at most 16 KiB), not everything
/// that follows; past it, lines are skipped and the follower is told how many.
pub const STREAM_CHUNKS: usize = 256;

/// A response body: whole, or streamed from a bounded channel (progress, followed logs).
pub enum ApiBody {
    /// All of it.
    Whole(Option<Bytes>),
    /// Chunks as they come; ends when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
        }
    }
}

type Reply = Response<ApiBody>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(ApiBody::Whole(Some(body.into())));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

fn error(status: u16, message: impl std::fmt::Display) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

fn streamed(content_type: &str) -> (mpsc::Sender<Bytes>, Reply) {
    let (tx, rx) = mpsc::channel(STREAM_CHUNKS);
    let mut r = Response::new(ApiBody::Stream(rx));
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    (tx, r)
}

/// Reads the host's token from the data directory, making one (256 random bits, readable by
/// the owner only) the first time; a token file that others can read is refused.
pub fn ensure_token(data_dir: &std::path::Path) -> Result<String, crate::secret::SecretError> {
    crate::secret::read_or_create(&data_dir.join(TOKEN_FILE)).map(|t| crate::secret::hex(&t))
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the management API on `listener` until `stop`. Its connections are held apart
/// from the web endpoints' ([`crate::conn::MANAGEMENT_CONNECTIONS`], within the descriptors
/// the host keeps in reserve), so it answers while a web endpoint is flooded.
pub async fn serve(fabric: Arc<Fabric>, listener: TcpListener, token: String, stop: StopSignal) {
    let token: Arc<str> = Arc::from(token);
    let conns = crate::conn::Connections::new(
        crate::conn::ConnLimits {
            max_connections: crate::conn::MANAGEMENT_CONNECTIONS,
            // Its streamed answers (followed logs, a deploy's progress) may be quiet for long.
            idle_timeout: crate::conn::MAX_CONN_TIMEOUT,
            ..crate::conn::ConnLimits::default()
        },
        None,
    );
    let mut acceptor = crate::conn::Acceptor::new("management API");
    loop {
        let (stream, _) = tokio::select! {
            a = acceptor.accept(&listener) => a,
            () = stop.requested() => return,
        };
        let Some(guard) = conns.admit() else {
            crate::conn::refuse(&stream);
            continue;
        };
        let fabric = fabric.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let state = guard.state.clone();
            let service = service_fn(move |req| {
                let fabric = fabric.clone();
                let token = token.clone();
                let state = state.clone();
                state.request_started();
                // A call runs to its end in a task of its own, even when its client hangs up
                // (hyper then drops this future): a web freeze dropped half-way would lose the
                // instance it took, a scale the record it had not written yet.
                let call = tokio::spawn(async move { handle(fabric, &token, req).await });
                async move {
                    let r = call.await.unwrap_or_else(|e| {
                        error(500, format!("the call failed inside the host: {e}"))
                    });
                    state.answered();
                    Ok::<_, Infallible>(r)
                }
            });
            let stream = crate::conn::Watched::new(stream, guard.state.clone());
            let served = http1::Builder::new()
                .serve_connection(wasmtime_wasi_http::io::TokioIo::new(stream), service);
            tokio::select! {
                biased;
                r = served => if let Err(e) = r {
                    tracing::debug!(error = %e, "management API: connection ended with an error");
                },
                closed = guard.watch() => tracing::debug!(reason = closed.as_str(), "management API: connection closed"),
            }
        });
    }
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| v.to_string())
    })
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Reply> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_JSON_BYTES)
        .collect()
        .await
        .map_err(|e| error(400, format!("reading the request: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| {
        error(
            400,
            format!("the request is not valid JSON for this call: {e}"),
        )
    })
}

async fn handle(fabric: Arc<Fabric>, token: &str, req: Request<Incoming>) -> Reply {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.trim().as_bytes(), token.as_bytes()) => {}
        Some(_) => return error(401, "wrong management token"),
        None => {
            return error(
                401,
                format!(
                    "a management token is required (Authorization: Bearer; the host keeps it in <data dir>/{TOKEN_FILE})"
                ),
            );
        }
    }
    let path: Vec<String> = req
        .uri()
        .path()
        .trim_matches('/')
        .split('/')
        .map(str::to_string)
        .collect();
    let parts: Vec<&str> = path.iter().map(String::as_str).collect();
    match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["metrics"]) => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            super::metrics::render(&fabric),
        ),
        (Method::GET, ["v1", "services"]) => match serde_json::to_value(fabric.status()) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error(500, e),
        },
        (Method::HEAD, ["v1", "files", sha]) => {
            let status = if fabric.has_file(sha) {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            reply(status, "text/plain", Bytes::new())
        }
        (Method::PUT, ["v1", "files", sha]) => {
            let sha = sha.to_string();
            upload(&fabric, &sha, req).await
        }
        (Method::POST, ["v1", "deploy"]) => {
            let adopt = query(&req, "adopt-storage").is_some_and(|v| v == "true");
            let deployment: Deployment = match read_json(req).await {
                Ok(d) => d,
                Err(r) => return r,
            };
            let (tx, response) = streamed("application/x-ndjson");
            tokio::spawn(async move {
                let progress_tx = tx.clone();
                let progress = move |line: String| {
                    tracing::info!("{line}");
                    let mut l = serde_json::json!({ "progress": line }).to_string();
                    l.push('\n');
                    // A client that does not read its progress misses lines, not the end.
                    let _ = progress_tx.try_send(Bytes::from(l));
                };
                let last = match fabric.deploy_adopting(deployment, adopt, &progress).await {
                    Ok(name) => serde_json::json!({ "done": name }),
                    Err(e) => {
                        tracing::warn!(error = %e, "deployment refused");
                        serde_json::json!({ "error": e.to_string() })
                    }
                };
                let _ = tx.send(Bytes::from(format!("{last}\n"))).await;
            });
            response
        }
        (Method::POST, ["v1", "services", name, "scale"]) => {
            #[derive(serde::Deserialize)]
            struct Scale {
                role: String,
                instances: u32,
            }
            let name = name.to_string();
            let s: Scale = match read_json(req).await {
                Ok(s) => s,
                Err(r) => return r,
            };
            match fabric.scale(&name, &s.role, s.instances).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::POST, ["v1", "services", name, "instances", instance, "freeze"]) => {
            let wait = query(&req, "wait-ms")
                .and_then(|ms| ms.parse().ok())
                .map(std::time::Duration::from_millis);
            match fabric.freeze(name, instance, wait).await {
                Ok((id, file)) => {
                    let mut r = reply(StatusCode::OK, "application/vnd.rolehost.snapshot", file);
                    if let Ok(v) = hyper::header::HeaderValue::from_str(&id) {
                        r.headers_mut().insert("x-rolehost-snapshot", v);
                    }
                    r
                }
                Err(e) => error(e.status(), e),
            }
        }
        (Method::POST, ["v1", "thaw"]) => {
            let id = query(&req, "snapshot");
            let body =
                match http_body_util::Limited::new(req.into_body(), MAX_UPLOAD_BYTES as usize)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return error(400, format!("reading the snapshot: {e}")),
                };
            let file = (!body.is_empty()).then(|| body.to_vec());
            match fabric.thaw(id.as_deref(), file).await {
                Ok(instance) => json(StatusCode::OK, &serde_json::json!({ "instance": instance })),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::POST, ["v1", "services", name, "stop"]) => match fabric.stop(name).await {
            Ok(None) => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
            Ok(Some(warning)) => json(
                StatusCode::OK,
                &serde_json::json!({ "ok": true, "warning": warning }),
            ),
            Err(e) => error(e.status(), e),
        },
        (Method::POST, ["v1", "services", name, "start"]) => {
            match fabric.start(name, &|line| tracing::info!("{line}")).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::DELETE, ["v1", "services", name]) => {
            let purge = query(&req, "purge-storage").is_some_and(|v| v == "true");
            match fabric.delete(name, purge).await {
                Ok(()) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "ok": true, "storage_purged": purge }),
                ),
                Err(e) => error(e.status(), e),
            }
        }
        (Method::GET, ["v1", "logs"]) => logs(&fabric, &req),
        (_, ["v1", ..]) | (_, ["metrics"]) => error(
            404,
            format!("no such call: {} {}", req.method(), req.uri().path()),
        ),
        _ => error(
            404,
            format!("no such call: {} {}", req.method(), req.uri().path()),
        ),
    }
}

/// Streams the upload to a file in the data directory, hashing it on the way.
async fn upload(fabric: &Fabric, sha: &str, req: Request<Incoming>) -> Reply {
    if !super::valid_digest(sha) {
        return error(400, super::FabricError::BadDigest(sha.to_string()));
    }
    let tmp = fabric.upload_path();
    let mut file = match tokio::fs::File::create(&tmp).await {
        Ok(f) => f,
        Err(e) => return error(500, format!("{}: {e}", tmp.display())),
    };
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut body = req.into_body();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return error(400, format!("reading the upload: {e}"));
            }
        };
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > MAX_UPLOAD_BYTES {
                let _ = tokio::fs::remove_file(&tmp).await;
                return error(
                    413,
                    format!("an upload is at most {MAX_UPLOAD_BYTES} bytes"),
                );
            }
            sha2::Digest::update(&mut hasher, &data);
            if let Err(e) = file.write_all(&data).await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return error(500, format!("{}: {e}", tmp.display()));
            }
        }
    }
    if let Err(e) = file.sync_all().await {
        return error(500, format!("{}: {e}", tmp.display()));
    }
    drop(file);
    let actual: String = sha2::Digest::finalize(hasher)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match fabric.keep_file(sha, &tmp, &actual) {
        Ok(()) => json(
            StatusCode::CREATED,
            &serde_json::json!({ "sha256": sha, "bytes": total }),
        ),
        Err(e) => error(e.status(), e),
    }
}

fn format_line(l: &LogLine) -> Bytes {
    Bytes::from(format!(
        "{} {} {}: {}\n",
        l.at_ms, l.instance, l.stream, l.text
    ))
}

/// Recent guest output, filtered; with `follow=true`, then everything new as it comes.
fn logs(fabric: &Fabric, req: &Request<Incoming>) -> Reply {
    let service = query(req, "service");
    let role = query(req, "role");
    let instance = query(req, "instance");
    let follow = query(req, "follow").is_some_and(|v| v == "true");
    let wanted = move |l: &LogLine| {
        service.as_deref().is_none_or(|s| *l.service == *s)
            && role.as_deref().is_none_or(|r| l.role() == r)
            && instance.as_deref().is_none_or(|i| *l.instance == *i)
    };
    // Subscribe before reading the recent lines, so nothing falls between.
    let mut live = fabric.logs().follow();
    let recent = fabric.logs().recent();
    let (tx, response) = streamed("text/plain; charset=utf-8");
    let sent = recent.last().map(|l| l.seq);
    tokio::spawn(async move {
        for l in recent.iter().filter(|l| wanted(l)) {
            if tx.send(format_line(l)).await.is_err() {
                return;
            }
        }
        drop(recent);
        if follow {
            // Waits while the client does not read: the hub's channel then runs ahead of
            // this follower, which is told how many lines it lost.
            loop {
                match live.recv().await {
                    Ok(l) => {
                        // Lines pushed between subscribing and reading the recent ones come
                        // here again: skip what was sent.
                        if sent.is_some_and(|s| l.seq <= s) {
                            continue;
                        }
                        if wanted(&l) && tx.send(format_line(&l)).await.is_err() {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        if tx
                            .send(Bytes::from(format!(
                                "[{n} lines skipped: the follower fell behind]\n"
                            )))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    response
}
