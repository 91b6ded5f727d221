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

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
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

use crate::conn::{Acceptor, ConnGuard, Connections, Watched};
use crate::instance::InstanceState;
use crate::manifest::TlsFiles;
use crate::quota::UsageCell;
use crate::stop::StopSignal;
use crate::worker::{FreezeFailure, InstanceStatus, Phase, Resume, RoleRuntime, describe_failure};
use tokio_rustls::TlsAcceptor;

/// The export a web role readies itself for a freeze with (`rolehost_sdk::web_freezable!`).
pub const WEB_FREEZE_EXPORT: &str = "rolehost:platform/web-freeze@0.1.0";

/// How long a client is asked to wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

/// One instance of a web role, idle or serving.
struct WebInstance {
    index: usize,
    /// The slot's generation it was made for: an upgrade or a scale-down makes it stale, and
    /// a stale instance is dropped instead of going back to the idle stack.
    generation: u64,
    store: Store<InstanceState>,
    proxy: Proxy,
    /// The raw instance, for a freeze's capture.
    instance: wasmtime::component::Instance,
    /// When it last went back to the idle stack.
    idle_since: std::time::Instant,
}

/// A version of the role: its runtime (spec, engine, storage) and its linked component.
pub struct WebVersion {
    /// The role's runtime.
    pub role: Arc<RoleRuntime>,
    /// The role's component, linked.
    pub pre: ProxyPre<InstanceState>,
}

/// An instance slot of the role: what the host shows of it, and which version it runs.
struct WebSlot {
    status: Arc<Mutex<InstanceStatus>>,
    usage: Arc<UsageCell>,
    generation: u64,
    version: Arc<WebVersion>,
    /// A freeze waiting for this slot's instance to come back from its request.
    freezing: Option<oneshot::Sender<WebInstance>>,
}

/// How a handler call ended, when it did not end well.
enum Failure {
    TimedOut,
    Trapped,
}

/// A request's handler: it owns its instance, and ends by putting it back or recycling it.
type Handler = std::pin::Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// A handler run where it is polled until it ends; dropped or detached before that, it
/// finishes in a task of its own (dropping it half-way would lose the instance from its slot).
struct FinishOnDrop(Option<Handler>);

impl FinishOnDrop {
    /// Lets the handler finish in a task of its own.
    fn detach(&mut self) {
        if let Some(work) = self.0.take() {
            // Only when shutting down is there no runtime: the instance goes with it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(work);
            }
        }
    }
}

impl Future for FinishOnDrop {
    type Output = Result<(), Failure>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(work) = self.0.as_mut() else {
            // Polled after it was detached or ended: never, by construction.
            return std::task::Poll::Pending;
        };
        let out = work.as_mut().poll(cx);
        if out.is_ready() {
            self.0 = None;
        }
        out
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.detach();
    }
}

/// One unit of a counter while it lives: a request waiting in [`WebRole::acquire`], or a thaw
/// on demand until its instance exists (or failed to start).
struct Counted(Arc<AtomicU64>);

impl Counted {
    fn new(counter: &Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a slot's next instance thaws from; `covering` counts it among the thaws on demand in
/// progress until that instance exists.
struct Thaw {
    resume: Resume,
    covering: Option<Counted>,
}

/// A web role's instances and the queue in front of them.
pub struct WebRole {
    /// The version new instances run.
    current: Mutex<Arc<WebVersion>>,
    /// Idle instances, most recently used first (its memory is warmest).
    idle: Mutex<Vec<WebInstance>>,
    /// Wakes one request waiting for an idle instance.
    returned: tokio::sync::Notify,
    waiting: Arc<Semaphore>,
    stop: StopSignal,
    slots: Mutex<BTreeMap<usize, WebSlot>>,
    generations: AtomicU64,
    metrics: WebMetrics,
    /// Slots frozen for idleness (`idle-freeze-ms`), with their snapshots compiled: a request
    /// that finds no idle instance thaws one.
    warm: Mutex<Vec<(usize, Resume)>>,
    /// Requests waiting in [`WebRole::acquire`], and thaws on demand not yet running: a
    /// waiting request thaws a slot only while thaws do not already cover the waiters.
    waiters: Arc<AtomicU64>,
    thawing: Arc<AtomicU64>,
}

/// Request counts and latencies of a web role, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct WebMetrics {
    /// Requests answered, by status class (index 1 = 1xx ... 5 = 5xx).
    pub by_class: [AtomicU64; 6],
    /// Latency histogram: counts of requests over [`LATENCY_BUCKETS`]`[i-1]` and at most
    /// `[i]` seconds (the last: over all bounds). Cumulated when rendered.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies, microseconds.
    pub sum_us: AtomicU64,
    /// Requests in all.
    pub count: AtomicU64,
}

/// Upper bounds of the latency histogram's buckets, seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl WebMetrics {
    fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).min(5);
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < secs);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
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
    /// Starts the role's instances, but for the slots in `frozen` (shown frozen, running
    /// nothing until a thaw); they take requests through [`WebRole::serve`].
    pub async fn start(
        role: Arc<RoleRuntime>,
        pre: ProxyPre<InstanceState>,
        stop: StopSignal,
        frozen: &[usize],
    ) -> Arc<WebRole> {
        let n = role.spec.instances as usize;
        let web = Arc::new(WebRole {
            waiting: Arc::new(Semaphore::new(role.spec.web.max_queued_requests)),
            current: Mutex::new(Arc::new(WebVersion { role, pre })),
            idle: Mutex::new(Vec::with_capacity(n)),
            returned: tokio::sync::Notify::new(),
            stop,
            slots: Mutex::new(BTreeMap::new()),
            generations: AtomicU64::new(0),
            metrics: WebMetrics::default(),
            warm: Mutex::new(Vec::new()),
            waiters: Arc::new(AtomicU64::new(0)),
            thawing: Arc::new(AtomicU64::new(0)),
        });
        {
            let version = web.current();
            let mut slots = web.slots.lock().unwrap_or_else(|p| p.into_inner());
            for index in frozen {
                let slot = web.new_slot(*index, version.clone());
                set(&slot.status, Phase::Frozen);
                slots.insert(*index, slot);
            }
        }
        web.scale(n);
        if let Some(after) = web.current().role.spec.idle_freeze {
            tokio::spawn(web.clone().freeze_idle(after));
        }
        web
    }

    /// The version new instances run.
    fn current(&self) -> Arc<WebVersion> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The role's runtime (of the current version).
    pub fn runtime(&self) -> Arc<RoleRuntime> {
        self.current().role.clone()
    }

    /// Request counts and latencies.
    pub fn metrics(&self) -> &WebMetrics {
        &self.metrics
    }

    fn id(&self, index: usize) -> String {
        format!("{}_IN_{index}", self.current().role.spec.name)
    }

    fn new_slot(&self, index: usize, version: Arc<WebVersion>) -> WebSlot {
        WebSlot {
            status: Arc::new(Mutex::new(InstanceStatus {
                role: version.role.spec.name.clone(),
                instance_id: self.id(index),
                phase: Phase::Starting,
                restarts: 0,
                last_recycle_reason: None,
                interrupted: false,
                usage: Default::default(),
            })),
            usage: Arc::new(UsageCell::default()),
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            version,
            freezing: None,
        }
    }

    /// Sets the number of instances to `n`: new slots start at once; removed ones take no
    /// more requests, and an instance serving one finishes it first (then it is dropped).
    pub fn scale(self: &Arc<Self>, n: usize) {
        let version = self.current();
        let mut spawn = Vec::new();
        // Lock order: `warm` before `slots` (as `thaw`).
        self.warm
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(i, _)| *i < n);
        {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            for index in 0..n {
                if let std::collections::btree_map::Entry::Vacant(e) = slots.entry(index) {
                    let slot = self.new_slot(index, version.clone());
                    spawn.push((index, slot.generation));
                    e.insert(slot);
                }
            }
            let removed: Vec<usize> = slots.range(n..).map(|(i, _)| *i).collect();
            for index in removed {
                if let Some(slot) = slots.remove(&index) {
                    set(&slot.status, Phase::Stopped);
                }
            }
        }
        self.drop_stale_idle();
        for (index, generation) in spawn {
            self.clone()
                .spawn_instance(index, generation, true, Duration::ZERO, None);
        }
    }

    /// Replaces every instance with one of `version`, `batch` slots at a time (upgrade
    /// domains): a slot's old instance takes no new request once its domain is reached, and
    /// the next domain starts when this one's new instances are running (or `settle` has
    /// passed). The others serve meanwhile, so the role keeps answering.
    pub async fn upgrade(
        self: &Arc<Self>,
        version: Arc<WebVersion>,
        batch: usize,
        settle: Duration,
        progress: &(dyn Fn(String) + Send + Sync),
    ) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = version.clone();
        // Idle snapshots are of the old version: their slots start afresh in their domain.
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let indices: Vec<usize> = self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let role = version.role.spec.name.clone();
        for domain in crate::worker::upgrade_domains(&role, &indices, batch, progress) {
            let mut started = Vec::new();
            {
                let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                for index in domain {
                    if let Some(slot) = slots.get_mut(index) {
                        let restarts = slot
                            .status
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .restarts;
                        let fresh = self.new_slot(*index, version.clone());
                        fresh
                            .status
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .restarts = restarts;
                        // The usage counters carry on: they are the slot's, not the version's.
                        let fresh = WebSlot {
                            usage: slot.usage.clone(),
                            ..fresh
                        };
                        started.push((*index, fresh.generation, fresh.status.clone()));
                        *slot = fresh;
                    }
                }
            }
            self.drop_stale_idle();
            for (index, generation, _) in &started {
                self.clone()
                    .spawn_instance(*index, *generation, false, Duration::ZERO, None);
            }
            let deadline = tokio::time::Instant::now() + settle;
            while tokio::time::Instant::now() < deadline
                && started.iter().any(|(_, _, s)| {
                    s.lock().unwrap_or_else(|p| p.into_inner()).phase != Phase::Running
                })
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Whether the instance of slot `index` made for `generation` is still wanted.
    fn is_current(&self, index: usize, generation: u64) -> bool {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .is_some_and(|s| s.generation == generation)
    }

    /// Drops idle instances whose slot was removed or upgraded.
    fn drop_stale_idle(&self) {
        let stale: Vec<WebInstance> = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let (keep, stale) = idle.drain(..).partition(|i: &WebInstance| {
                slots
                    .get(&i.index)
                    .is_some_and(|s| s.generation == i.generation)
            });
            *idle = keep;
            stale
        };
        for instance in stale {
            self.retire(instance);
        }
    }

    /// Drops a stale instance; wipes its local resources when its slot is gone.
    fn retire(&self, instance: WebInstance) {
        let index = instance.index;
        drop(instance);
        let gone = !self
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&index);
        if gone {
            self.current().role.wipe(&self.id(index));
        }
    }

    /// Makes the instance of slot `index` (for `generation`) after `delay` and puts it in the
    /// idle stack; retries with backoff while it fails. Gives up once the slot moved on. With
    /// `resume`, the first attempt thaws that snapshot (later ones start afresh).
    fn spawn_instance(
        self: Arc<Self>,
        index: usize,
        generation: u64,
        first: bool,
        delay: Duration,
        mut thaw: Option<Thaw>,
    ) {
        tokio::spawn(async move {
            let recycle_backoff = self.current().role.spec.recycle_backoff;
            let mut backoff = if delay.is_zero() {
                recycle_backoff
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
                if !self.is_current(index, generation) {
                    return;
                }
                // A thaw's covering ends with this attempt (once the instance is idle).
                let (resume, _covering) = match thaw.take() {
                    Some(t) => (Some(t.resume), t.covering),
                    None => (None, None),
                };
                match self.new_instance(index, generation, first, resume).await {
                    Ok(instance) => {
                        if self.is_current(index, generation) {
                            self.set_phase(index, generation, Phase::Running);
                        }
                        self.release(instance);
                        return;
                    }
                    Err(reason) => {
                        tracing::warn!(instance = %self.id(index), %reason, "web instance failed to start");
                        self.recycled(index, generation, reason);
                        wait = backoff;
                        backoff = (backoff * 2).min(crate::worker::MAX_BACKOFF);
                        first = false;
                    }
                }
            }
        });
    }

    async fn new_instance(
        &self,
        index: usize,
        generation: u64,
        first: bool,
        resume: Option<Resume>,
    ) -> Result<WebInstance, String> {
        let (version, usage) = {
            let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots.get(&index).ok_or("the slot was removed")?;
            (slot.version.clone(), slot.usage.clone())
        };
        let id = self.id(index);
        let mut store = version
            .role
            .new_store(&id, first, &self.stop, &usage, resume.as_ref())?;
        // A thawed instance starts from its snapshot; any other from the role's component.
        let pre = match &resume {
            None => version.pre.instance_pre().clone(),
            Some(r) => version
                .role
                .linker
                .instantiate_pre(&r.component)
                .map_err(|e| format!("linking the snapshot: {e:#}"))?,
        };
        let instance = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| describe_failure("instantiation", &e, Some(store.data())))?;
        let proxy = Proxy::new(&mut store, &instance)
            .map_err(|e| format!("the component is not a web role: {e:#}"))?;
        Ok(WebInstance {
            index,
            generation,
            store,
            proxy,
            instance,
            idle_since: std::time::Instant::now(),
        })
    }

    fn set_phase(&self, index: usize, generation: u64, phase: Phase) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(&index).filter(|s| s.generation == generation) {
            set(&s.status, phase);
        }
    }

    fn recycled(&self, index: usize, generation: u64, reason: String) {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get(&index).filter(|s| s.generation == generation) {
            let mut s = slot.status.lock().unwrap_or_else(|p| p.into_inner());
            s.restarts += 1;
            s.last_recycle_reason = Some(reason);
            s.phase = Phase::Recycling;
        }
    }

    /// Every instance's status.
    pub fn status(&self) -> Vec<InstanceStatus> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .map(|slot| {
                let mut s = slot
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let spec = &slot.version.role.spec;
                s.usage = slot.usage.read(&spec.limits, spec.local_resource_bytes());
                s
            })
            .collect()
    }

    /// Every instance's usage counters: (instance id, counters).
    pub fn usage_cells(&self) -> Vec<(String, Arc<UsageCell>)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|(i, s)| (self.id(*i), s.usage.clone()))
            .collect()
    }

    /// Serves one request on an idle instance.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        scheme: Scheme,
    ) -> Response<HyperOutgoingBody> {
        let started = std::time::Instant::now();
        let response = self.clone().dispatch(req, scheme).await;
        self.metrics.record(response.status(), started.elapsed());
        response
    }

    /// Finds an idle instance for `req` and has it answer.
    async fn dispatch(
        self: Arc<Self>,
        req: Request<Incoming>,
        scheme: Scheme,
    ) -> Response<HyperOutgoingBody> {
        let version = self.current();
        let limit = version.role.spec.web.max_body_bytes;
        let timeout = version.role.spec.web.request_timeout;
        // hyper's read buffer bounds the head only roughly (it reads in 8 KiB steps and
        // keeps what it read): the documented limit is enforced here, exactly.
        if head_len(&req) > version.role.spec.web.max_header_bytes {
            return text(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large\n",
            );
        }
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
            None => match tokio::time::timeout(timeout, self.acquire()).await {
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
        let deadline = tokio::time::Instant::now() + timeout;
        let work: Handler = Box::pin(async move {
            let (index, generation) = (instance.index, instance.generation);
            // Most handlers finish in their first poll: the timer is armed only for one that
            // does not (its deadline still counts from the start), sparing the others a timer
            // registered and removed.
            let outcome = {
                let mut call =
                    std::pin::pin!(instance.proxy.wasi_http_incoming_handler().call_handle(
                        &mut instance.store,
                        req,
                        out
                    ));
                let first =
                    std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx)));
                match first.await {
                    std::task::Poll::Ready(result) => Ok(result),
                    std::task::Poll::Pending => tokio::time::timeout_at(deadline, call).await,
                }
            };
            instance
                .store
                .data()
                .usage
                .requests
                .fetch_add(1, Ordering::Relaxed);
            match outcome {
                Ok(Ok(())) => {
                    this.release(instance);
                    Ok(())
                }
                Ok(Err(e)) => {
                    let reason = describe_failure("the handler", &e, Some(instance.store.data()));
                    tracing::warn!(instance = %this.id(index), %reason, "recycling web instance");
                    drop(instance);
                    this.recycle(index, generation, reason);
                    Err(Failure::Trapped)
                }
                Err(_) => {
                    let reason = format!("the handler ran past the request timeout of {timeout:?}");
                    tracing::warn!(instance = %this.id(index), %reason, "interrupted; recycling web instance");
                    drop(instance);
                    this.recycle(index, generation, reason);
                    Err(Failure::TimedOut)
                }
            }
        });
        // The handler runs here until it answers. One that goes on after its answer (a body
        // it is still writing) goes on in a task of its own, so the answer can be sent; one
        // that finishes first (the usual case) costs no task. If the client hangs up, hyper
        // drops this future, and the guard lets the handler finish in a task of its own too:
        // its instance goes back (or is recycled) as usual.
        let mut work = FinishOnDrop(Some(work));
        let mut rx = rx;
        let (answer, ended) = tokio::select! {
            biased;
            // An answer is sent during the call, so it is there now or never will be (a guest
            // that returned keeping its response-outparam must not hang the client).
            ended = &mut work => (rx.try_recv().map_err(|_| ()), Some(ended)),
            answer = &mut rx => {
                work.detach();
                (answer.map_err(|_| ()), None)
            }
        };
        match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(code)) => {
                tracing::debug!(?code, "the guest answered with an error");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the role failed to answer\n",
                )
            }
            Err(_) => match ended {
                Some(Err(Failure::TimedOut)) => text(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the role did not answer in time\n",
                ),
                Some(Ok(())) => {
                    tracing::warn!(role = %version.role.spec.name, "the handler returned without answering");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the role returned without answering\n",
                    )
                }
                _ => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the role failed to answer\n",
                ),
            },
        }
    }

    /// Notes that the instance of slot `index` failed, and makes a new one after the backoff
    /// (unless the slot moved on meanwhile).
    fn recycle(self: &Arc<Self>, index: usize, generation: u64, reason: String) {
        if !self.is_current(index, generation) {
            return;
        }
        self.recycled(index, generation, reason);
        let backoff = self.current().role.spec.recycle_backoff;
        self.clone()
            .spawn_instance(index, generation, false, backoff, None);
    }

    /// Waits for an idle instance and takes it.
    async fn acquire(self: &Arc<Self>) -> WebInstance {
        let _waiting = Counted::new(&self.waiters);
        loop {
            // Register for a wake-up before looking, so a release in between is not missed.
            let returned = self.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(i) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
                return i;
            }
            // Demand: a slot frozen for idleness thaws (its instance comes to the idle stack),
            // the most recently used first.
            let covered =
                self.thawing.load(Ordering::Relaxed) >= self.waiters.load(Ordering::Relaxed);
            let warm = if covered {
                None
            } else {
                self.warm.lock().unwrap_or_else(|p| p.into_inner()).pop()
            };
            if let Some((index, resume)) = warm {
                tracing::debug!(instance = %self.id(index), "thawing on demand");
                let covering = Some(Counted::new(&self.thawing));
                self.thaw_into(Thaw { resume, covering }, Some(index));
            }
            returned.await;
        }
    }

    /// Puts an instance back and wakes one waiting request; a stale one is dropped instead,
    /// and one a freeze waits for goes to the freeze.
    fn release(&self, mut instance: WebInstance) {
        instance.idle_since = std::time::Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = slots
            .get_mut(&instance.index)
            .filter(|s| s.generation == instance.generation)
        else {
            drop(slots);
            self.retire(instance);
            return;
        };
        let instance = match slot.freezing.take() {
            Some(freeze) => match freeze.send(instance) {
                Ok(()) => return,
                // The freeze gave up meanwhile: back to work.
                Err(instance) => instance,
            },
            None => instance,
        };
        // Under the slots lock, so a freeze registering for this slot cannot miss it.
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
        drop(slots);
        self.returned.notify_one();
    }

    /// Freezes the instance of slot `index` at its quiet point: between two requests. An idle
    /// instance is taken at once; a busy one when its request ends, waiting at most `wait`
    /// (then nothing happens to it, and its request is never cut short). The role's
    /// `web-freeze` export readies it, then it is captured: the snapshot component and the
    /// guest's monotonic time (ns). The slot then shows frozen and takes no request. When the
    /// freeze is refused the instance goes back to work as it was.
    pub async fn freeze(
        self: &Arc<Self>,
        index: usize,
        wait: Duration,
    ) -> Result<(Vec<u8>, u64), String> {
        let id = self.id(index);
        // The instance now if idle, else a receiver for it when its request ends.
        let taken: Result<WebInstance, oneshot::Receiver<WebInstance>> = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slots
                .get_mut(&index)
                .ok_or_else(|| format!("{id} does not exist"))?;
            if slot.status.lock().unwrap_or_else(|p| p.into_inner()).phase == Phase::Frozen {
                return Err(format!("{id} is frozen already"));
            }
            let generation = slot.generation;
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            match idle
                .iter()
                .position(|i| i.index == index && i.generation == generation)
            {
                Some(at) => Ok(idle.remove(at)),
                None => {
                    let (tx, rx) = oneshot::channel();
                    slot.freezing = Some(tx);
                    Err(rx)
                }
            }
        };
        let instance = match taken {
            Ok(instance) => instance,
            Err(mut rx) => match tokio::time::timeout(wait, &mut rx).await {
                Ok(Ok(instance)) => instance,
                Ok(Err(_)) => return Err(format!("{id} was replaced or removed; not frozen")),
                Err(_) => {
                    if let Some(slot) = self
                        .slots
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_mut(&index)
                    {
                        slot.freezing = None;
                    }
                    // It may have come back just now.
                    if let Ok(instance) = rx.try_recv() {
                        self.release(instance);
                    }
                    return Err(format!(
                        "{id} was busy with a request for {wait:?}: not frozen (the request \
                         goes on); try again"
                    ));
                }
            },
        };
        self.freeze_taken(instance, true).await
    }

    /// Freezes an instance taken out of service: captured, its local resources wiped and (with
    /// `show`) its slot shown frozen; or, refused, back to work; or, failed, recycled.
    async fn freeze_taken(
        self: &Arc<Self>,
        mut instance: WebInstance,
        show: bool,
    ) -> Result<(Vec<u8>, u64), String> {
        let (index, generation) = (instance.index, instance.generation);
        match self.capture(&mut instance).await {
            Ok(snapshot) => {
                drop(instance);
                if show {
                    self.set_phase(index, generation, Phase::Frozen);
                }
                let id = self.id(index);
                self.current().role.wipe(&id);
                tracing::info!(instance = %id, "frozen");
                Ok(snapshot)
            }
            Err(FreezeFailure::Refused(reason)) => {
                self.release(instance);
                Err(reason)
            }
            Err(FreezeFailure::Failed(reason)) => {
                drop(instance);
                self.recycle(index, generation, reason.clone());
                Err(reason)
            }
        }
    }

    /// Scale to zero with warm memory (`idle-freeze-ms`): every so often, freezes the
    /// instances idle for `after`, compiles their snapshots and keeps them on this host; a
    /// request that finds no idle instance thaws one ([`WebRole::acquire`]). Stops with the
    /// role, or at the first refusal (the role cannot be frozen: a warning says why).
    async fn freeze_idle(self: Arc<Self>, after: Duration) {
        let every = (after / 4).clamp(Duration::from_millis(25), Duration::from_secs(5));
        loop {
            tokio::select! {
                biased;
                () = self.stop.requested() => return,
                () = tokio::time::sleep(every) => {}
            }
            let expired: Vec<WebInstance> = {
                let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (expired, keep) = idle.drain(..).partition(|i: &WebInstance| {
                    i.idle_since.elapsed() >= after
                        && slots
                            .get(&i.index)
                            .is_some_and(|s| s.generation == i.generation && s.freezing.is_none())
                });
                *idle = keep;
                expired
            };
            for instance in expired {
                let (index, generation) = (instance.index, instance.generation);
                let id = self.id(index);
                // Shown frozen once it can be thawed (its snapshot compiled).
                let (component, monotonic_ns) = match self.freeze_taken(instance, false).await {
                    Ok(snapshot) => snapshot,
                    Err(reason) => {
                        tracing::warn!(instance = %id, %reason, "idle instances of this role stay running");
                        return;
                    }
                };
                let engine = self.current().role.engine.clone();
                match Resume::for_idle(&engine, &id, component, monotonic_ns).await {
                    Ok(resume) => {
                        tracing::debug!(instance = %id, "frozen while idle");
                        self.warm
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((index, resume));
                        self.set_phase(index, generation, Phase::Frozen);
                    }
                    // Nothing is lost but the instance's memory: it starts afresh.
                    Err(reason) => {
                        tracing::warn!(instance = %id, %reason, "its idle snapshot did not compile; starting it afresh");
                        self.restart_frozen(index);
                    }
                }
                // A request may be waiting for this very slot.
                self.returned.notify_waiters();
            }
        }
    }

    /// Gives a frozen slot a fresh instance (no snapshot).
    fn restart_frozen(self: &Arc<Self>, index: usize) {
        let version = self.current();
        let generation = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = self.new_slot(index, version);
            let generation = slot.generation;
            slots.insert(index, slot);
            generation
        };
        self.clone()
            .spawn_instance(index, generation, true, Duration::ZERO, None);
    }

    /// `web-freeze.on-freeze`, then the capture.
    async fn capture(&self, instance: &mut WebInstance) -> Result<(Vec<u8>, u64), FreezeFailure> {
        let version = self.current();
        let source = version.role.freeze_source.clone().ok_or_else(|| {
            FreezeFailure::Refused(format!(
                "role {} runs a component that cannot be frozen",
                version.role.spec.name
            ))
        })?;
        let store = &mut instance.store;
        let hook = instance
            .instance
            .get_export_index(&mut *store, None, WEB_FREEZE_EXPORT)
            .and_then(|i| {
                instance
                    .instance
                    .get_export_index(&mut *store, Some(&i), "on-freeze")
            })
            .and_then(|f| {
                instance
                    .instance
                    .get_typed_func::<(), ()>(&mut *store, &f)
                    .ok()
            })
            .ok_or_else(|| {
                FreezeFailure::Refused(format!(
                    "role {} does not export {WEB_FREEZE_EXPORT}, so it cannot be readied for a \
                     freeze: add rolehost_sdk::web_freezable!() to it",
                    version.role.spec.name
                ))
            })?;
        let grace = version.role.spec.grace_period;
        let readied = tokio::time::timeout(grace, hook.call_async(&mut *store, ())).await;
        crate::worker::on_freeze_outcome(readied, store.data())?;
        crate::worker::capture_quiet(&source, store, instance.instance).await
    }

    /// Thaws a snapshot of this role into slot `wanted` when that is frozen, else another
    /// frozen slot, else the lowest free index, and returns the slot's index. Its instance starts at once, from the
    /// snapshot, with fresh local resources, and takes requests once it runs.
    pub fn thaw(self: &Arc<Self>, resume: Resume, wanted: Option<usize>) -> usize {
        self.thaw_into(
            Thaw {
                resume,
                covering: None,
            },
            wanted,
        )
    }

    fn thaw_into(self: &Arc<Self>, thaw: Thaw, wanted: Option<usize>) -> usize {
        let version = self.current();
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        let (index, generation) = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let frozen: Vec<u32> = slots
                .iter()
                .filter(|(_, s)| {
                    s.status.lock().unwrap_or_else(|p| p.into_inner()).phase == Phase::Frozen
                })
                .filter_map(|(i, _)| u32::try_from(*i).ok())
                .collect();
            let wanted = wanted.and_then(|i| u32::try_from(i).ok());
            let index =
                crate::worker::thaw_slot(wanted, &frozen, |i| slots.contains_key(&(i as usize)))
                    as usize;
            let mut slot = self.new_slot(index, version);
            if let Some(old) = slots.get(&index) {
                slot.usage = old.usage.clone();
                slot.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restarts = old
                    .status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restarts;
            }
            let generation = slot.generation;
            slots.insert(index, slot);
            // Its idle snapshot, if it had one, is superseded.
            warm.retain(|(i, _)| *i != index);
            (index, generation)
        };
        drop(warm);
        self.drop_stale_idle();
        self.clone()
            .spawn_instance(index, generation, true, Duration::ZERO, Some(thaw));
        index
    }

    /// Slots, frozen ones included.
    pub fn slot_count(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Instances serving or able to (every slot not frozen).
    pub fn running_count(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.status.lock().unwrap_or_else(|p| p.into_inner()).phase != Phase::Frozen)
            .count()
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
    /// stops, holding them within `conns` (its cap and deadlines, [`crate::conn`]).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        conns: Arc<Connections>,
    ) {
        let mut acceptor = Acceptor::new("web endpoint");
        loop {
            let (stream, _peer) = tokio::select! {
                accepted = acceptor.accept(&listener) => accepted,
                () = self.stop.requested() => return,
            };
            let Some(guard) = conns.admit() else {
                crate::conn::refuse(&stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let web = self.clone();
            let tls = tls.clone();
            let handshake = conns.limits().handshake_timeout;
            tokio::spawn(async move {
                let stream = Watched::new(stream, guard.state.clone());
                match tls {
                    None => web.connection(stream, Scheme::Http, &guard).await,
                    Some(acceptor) => {
                        let shaken = tokio::select! {
                            biased;
                            closed = guard.watch() => Err(closed.as_str().to_string()),
                            r = tokio::time::timeout(handshake, acceptor.accept(stream)) => match r {
                                Ok(Ok(s)) => Ok(s),
                                Ok(Err(e)) => Err(e.to_string()),
                                Err(_) => Err("the TLS handshake took too long".into()),
                            },
                        };
                        match shaken {
                            Ok(stream) => web.connection(stream, Scheme::Https, &guard).await,
                            Err(e) => tracing::debug!(error = %e, "TLS handshake failed"),
                        }
                    }
                }
            });
        }
    }

    /// Serves the requests of one connection until it ends or `guard` says it must close.
    async fn connection<S>(self: Arc<Self>, stream: S, scheme: Scheme, guard: &ConnGuard)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let max_head = self.current().role.spec.web.max_header_bytes;
        let web = self.clone();
        let state = guard.state.clone();
        let service = service_fn(move |req| {
            let web = web.clone();
            let scheme = scheme.clone();
            let state = state.clone();
            state.request_started();
            async move {
                let response = web.handle(req, scheme).await;
                state.answered();
                Ok::<_, Infallible>(response)
            }
        });
        let served = http1::Builder::new()
            .keep_alive(true)
            // Room past the limit: `dispatch` enforces the limit exactly, and a head right at
            // it must not fail in hyper's buffer first.
            .max_buf_size(max_head.saturating_add(8192))
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            biased;
            r = served => if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            },
            closed = guard.watch() => tracing::debug!(reason = closed.as_str(), "connection closed by the host"),
        }
    }

    /// Drops the idle instances and wipes every instance's local resources (after the
    /// service stopped).
    pub fn wipe(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for (i, slot) in slots.iter() {
            slot.version.role.wipe(&self.id(*i));
            set(&slot.status, Phase::Stopped);
        }
    }
}

fn set(status: &Mutex<InstanceStatus>, phase: Phase) {
    status.lock().unwrap_or_else(|p| p.into_inner()).phase = phase;
}

/// The size of a request's head as sent: the request line and every header line
/// (`name: value\r\n`), and the blank line that ends it.
fn head_len<B>(req: &Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1\r\n".len();
    req.headers()
        .iter()
        .fold(line + 2, |n, (k, v)| n + k.as_str().len() + 2 + v.len() + 2)
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
