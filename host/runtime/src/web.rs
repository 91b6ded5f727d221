//! Web roles: the HTTP front end and the load balancer in front of a role's instances.
//!
//! Each instance is long-lived: one store, one instantiated handler, serving one request at a
//! time and keeping its memory between requests. A request goes to an idle instance; when all
//! are busy it waits, in a bounded queue, for one to come back; a full queue answers 503 with
//! `Retry-After`. A handler that traps, or runs past the request timeout, is discarded (the
//! client gets 500 or 504) and its slot gets a fresh instance. Nothing routes to a particular
//! instance.
//!
//! Requests are parsed by hyper before any guest sees them: malformed requests get a 400 from
//! the host. A request framed both by Content-Length and Transfer-Encoding is read by its
//! Transfer-Encoding and its connection closed after the answer (RFC 9112), so nothing
//! smuggled after it is ever read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::Store;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::instance::InstanceState;
use crate::manifest::TlsFiles;
use crate::quota::UsageCell;
use crate::stop::StopSignal;
use crate::worker::{InstanceStatus, Phase, RoleRuntime, describe_failure};
use tokio_rustls::TlsAcceptor;

/// How long a client is asked to wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// One instance of a web role, idle or serving.
struct WebInstance {
    index: usize,
    store: Store<InstanceState>,
    proxy: Proxy,
}

/// How a handler call ended, when it did not end well.
enum Failure {
    TimedOut,
    Trapped,
}

/// A web role's instances and the queue in front of them.
pub struct WebRole {
    role: Arc<RoleRuntime>,
    pre: ProxyPre<InstanceState>,
    /// Idle instances, most recently used first (its memory is warmest).
    idle: Mutex<Vec<WebInstance>>,
    /// Wakes one request waiting for an idle instance.
    returned: tokio::sync::Notify,
    waiting: Arc<Semaphore>,
    timeout: Duration,
    stop: StopSignal,
    statuses: Vec<Arc<Mutex<InstanceStatus>>>,
    usages: Vec<Arc<UsageCell>>,
}

fn text(status: StatusCode, body: &'static str) -> Response<HyperOutgoingBody> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r
}

impl WebRole {
    /// Starts the role's instances; they take requests through [`WebRole::serve`].
    pub async fn start(
        role: Arc<RoleRuntime>,
        pre: ProxyPre<InstanceState>,
        stop: StopSignal,
    ) -> Arc<WebRole> {
        let n = role.spec.instances as usize;
        let statuses = (0..n)
            .map(|i| {
                Arc::new(Mutex::new(InstanceStatus {
                    role: role.spec.name.clone(),
                    instance_id: format!("{}_IN_{i}", role.spec.name),
                    phase: Phase::Starting,
                    restarts: 0,
                    last_recycle_reason: None,
                    interrupted: false,
                    usage: Default::default(),
                }))
            })
            .collect();
        let web = Arc::new(WebRole {
            timeout: role.spec.web.request_timeout,
            waiting: Arc::new(Semaphore::new(role.spec.web.max_queued_requests)),
            role,
            pre,
            idle: Mutex::new(Vec::with_capacity(n)),
            returned: tokio::sync::Notify::new(),
            stop,
            statuses,
            usages: (0..n).map(|_| Arc::new(UsageCell::default())).collect(),
        });
        for index in 0..n {
            web.clone().spawn_instance(index, true, Duration::ZERO);
        }
        web
    }

    fn id(&self, index: usize) -> String {
        format!("{}_IN_{index}", self.role.spec.name)
    }

    /// Makes instance `index` after `delay` and puts it in the idle queue; retries with
    /// backoff while it fails.
    fn spawn_instance(self: Arc<Self>, index: usize, first: bool, delay: Duration) {
        tokio::spawn(async move {
            let mut backoff = if delay.is_zero() {
                self.role.spec.recycle_backoff
            } else {
                delay
            };
            let mut wait = delay;
            let mut first = first;
            loop {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = self.stop.requested() => return,
                }
                match self.new_instance(index, first).await {
                    Ok(instance) => {
                        self.set_phase(index, Phase::Running);
                        self.release(instance);
                        return;
                    }
                    Err(reason) => {
                        tracing::warn!(instance = %self.id(index), %reason, "web instance failed to start");
                        self.recycled(index, reason);
                        wait = backoff;
                        backoff = (backoff * 2).min(crate::worker::MAX_BACKOFF);
                        first = false;
                    }
                }
            }
        });
    }

    async fn new_instance(&self, index: usize, first: bool) -> Result<WebInstance, String> {
        let id = self.id(index);
        let mut store = self
            .role
            .new_store(&id, first, &self.stop, &self.usages[index])?;
        let proxy = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| describe_failure("instantiation", &e, Some(store.data())))?;
        Ok(WebInstance {
            index,
            store,
            proxy,
        })
    }

    fn set_phase(&self, index: usize, phase: Phase) {
        self.statuses[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .phase = phase;
    }

    fn recycled(&self, index: usize, reason: String) {
        let mut s = self.statuses[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        s.restarts += 1;
        s.last_recycle_reason = Some(reason);
        s.phase = Phase::Recycling;
    }

    /// Every instance's status.
    pub fn status(&self) -> Vec<InstanceStatus> {
        self.statuses
            .iter()
            .zip(&self.usages)
            .map(|(s, u)| {
                let mut s = s.lock().unwrap_or_else(|p| p.into_inner()).clone();
                s.usage = u.read(
                    &self.role.spec.limits,
                    self.role.spec.local_resource_bytes(),
                );
                s
            })
            .collect()
    }

    /// Serves one request on an idle instance.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        scheme: Scheme,
    ) -> Response<HyperOutgoingBody> {
        let limit = self.role.spec.web.max_body_bytes;
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        // A body without a length is cut off at the limit: the guest's read fails there.
        let req = req.map(move |body| {
            Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).map_err(move |e| {
                if e.is::<LengthLimitError>() {
                    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
                } else {
                    match e.downcast::<hyper::Error>() {
                        Ok(h) => wasmtime_wasi_http::Error::Hyper(*h),
                        Err(_) => wasmtime_wasi_http::Error::ConnectionTerminated,
                    }
                }
            })
        });
        // Wait in the bounded queue for an idle instance; a full queue is a 503.
        let Ok(permit) = self.waiting.clone().try_acquire_owned() else {
            return self.busy();
        };
        // Fast path: an idle instance is there (no timer needed).
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut instance = match idle {
            Some(i) => i,
            None => match tokio::time::timeout(self.timeout, self.acquire()).await {
                Ok(i) => i,
                Err(_) => return self.busy(),
            },
        };
        drop(permit);
        let (tx, rx) = oneshot::channel();
        let prepared = instance
            .store
            .data_mut()
            .http()
            .new_incoming_request(scheme, req)
            .and_then(|req| {
                let out = instance.store.data_mut().http().new_response_outparam(tx)?;
                Ok((req, out))
            });
        let (req, out) = match prepared {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "could not hand a request to a guest");
                self.release(instance);
                return text(StatusCode::BAD_REQUEST, "bad request\n");
            }
        };
        let this = self.clone();
        let task = tokio::spawn(async move {
            let index = instance.index;
            let call = instance.proxy.wasi_http_incoming_handler().call_handle(
                &mut instance.store,
                req,
                out,
            );
            match tokio::time::timeout(this.timeout, call).await {
                Ok(Ok(())) => {
                    this.release(instance);
                    Ok(())
                }
                Ok(Err(e)) => {
                    let reason = describe_failure("the handler", &e, Some(instance.store.data()));
                    tracing::warn!(instance = %this.id(index), %reason, "recycling web instance");
                    drop(instance);
                    this.recycled(index, reason);
                    this.clone()
                        .spawn_instance(index, false, this.role.spec.recycle_backoff);
                    Err(Failure::Trapped)
                }
                Err(_) => {
                    let reason = format!(
                        "the handler ran past the request timeout of {:?}",
                        this.timeout
                    );
                    tracing::warn!(instance = %this.id(index), %reason, "interrupted; recycling web instance");
                    drop(instance);
                    this.recycled(index, reason);
                    this.clone()
                        .spawn_instance(index, false, this.role.spec.recycle_backoff);
                    Err(Failure::TimedOut)
                }
            }
        });
        match rx.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(code)) => {
                tracing::debug!(?code, "the guest answered with an error");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the role failed to answer\n",
                )
            }
            Err(_) => match task.await {
                Ok(Err(Failure::TimedOut)) => text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the role did not answer in time\n",
                ),
                _ => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the role failed to answer\n",
                ),
            },
        }
    }

    /// Waits for an idle instance and takes it.
    async fn acquire(&self) -> WebInstance {
        loop {
            // Register for a wake-up before looking, so a release in between is not missed.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(i) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                return i;
            }
            returned.await;
        }
    }

    /// Puts an instance back and wakes one waiting request.
    fn release(&self, instance: WebInstance) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
        self.returned.notify_one();
    }

    fn busy(&self) -> Response<HyperOutgoingBody> {
        let mut r = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "all instances are busy; retry later\n",
        );
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(RETRY_AFTER_SECS),
        );
        r
    }

    /// Accepts connections on `listener` (TLS first when `tls` is given) until the service
    /// stops.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Option<TlsAcceptor>) {
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                () = self.stop.requested() => return,
            };
            let _ = stream.set_nodelay(true);
            let web = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => web.connection(stream, Scheme::Http).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => web.connection(stream, Scheme::Https).await,
                        Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                    },
                }
            });
        }
    }

    /// Serves the requests of one connection.
    async fn connection<S>(self: Arc<Self>, stream: S, scheme: Scheme)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let max_head = self.role.spec.web.max_header_bytes;
        let web = self.clone();
        let service = service_fn(move |req| {
            let web = web.clone();
            let scheme = scheme.clone();
            async move { Ok::<_, Infallible>(web.handle(req, scheme).await) }
        });
        if let Err(e) = http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(max_head)
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }

    /// Wipes the instances' local resources (after the service stopped).
    pub fn wipe(&self) {
        for i in 0..self.statuses.len() {
            self.role.wipe(&self.id(i));
            self.set_phase(i, Phase::Stopped);
        }
    }
}

/// Binds an endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Loads an HTTPS endpoint's certificate chain and key. The error names the file.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("certificate {}: {e}", files.certificate.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate {}: no certificate in it",
            files.certificate.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "certificate {} and key {}: {e}",
                files.certificate.display(),
                files.key.display()
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
