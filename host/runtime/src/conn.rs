//! The connections a host accepts (web endpoints and the management API), held against
//! clients that would hold them for ever: a connection cap per listener and per host, a
//! deadline for every stage of a connection, and an accept loop that backs off when the
//! process runs out of descriptors instead of spinning.
//!
//! A connection moves through phases, watched at the byte level ([`Watched`]) and told by
//! the server when a request starts and is answered:
//!
//! | phase | what the host waits for | deadline |
//! |---|---|---|
//! | `Idle` (accepted, or between requests) | the first byte of a request | `idle_timeout` after the last byte moved |
//! | `Head` (a request head is arriving) | the rest of the head | `header_timeout` after its first byte |
//! | `Handling` (the handler runs) | the handler's answer | none here: the request timeout bounds it |
//! | `Answered` (the response body streams) | the next chunk | `idle_timeout` after the last byte moved |
//!
//! At the cap, a new connection takes the place of the one that has moved no byte for
//! longest and is not being handled: a flood of half-open connections (slowloris) only ever
//! evicts itself, while a client that sends its request is served. When every connection is
//! being handled, the newcomer gets a short `503` and is closed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Default most connections one web endpoint holds.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Largest `max-connections` a manifest may set.
pub const MAX_CONNECTIONS_LIMIT: usize = 100_000;
/// Default time a request head may take once its first byte arrived (nginx's
/// `client_header_timeout` is 60 s; a head is a few hundred bytes).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a connection may move no byte while no handler runs: between requests
/// (keep-alive) and between the chunks of a response body.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a TLS handshake may take.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest of these timeouts a manifest may set.
pub const MAX_CONN_TIMEOUT: Duration = Duration::from_secs(3600);
/// Descriptors a host keeps out of its connection budget: its storage, compiled code, the
/// management API, guests' local files and the logs need them when clients take the rest.
pub const FD_RESERVE: usize = 256;
/// Most connections the management API holds (its clients are the operator's tools).
pub const MANAGEMENT_CONNECTIONS: usize = 64;
/// Longest wait after an accept error (doubling from 10 ms): out of descriptors, the loop
/// sleeps instead of spinning. Short, because a client queued meanwhile waits up to this
/// long after descriptors come back (a flood's evicted sockets close a moment after they
/// are evicted); ten failed accepts a second cost nothing.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one log line per this period about accept errors (with how many there were).
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// Connections the kernel queues for a listener before its accept loop takes them. A burst
/// beyond the queue is dropped at the SYN and the client retries only after its 1 s
/// retransmission timeout, so under a flood a short queue makes a normal request wait a
/// second. 4,096 is Linux's default `somaxconn` cap (it is silently lowered to the cap);
/// a queued connection costs the kernel a few hundred bytes, no descriptor of ours.
pub const LISTEN_BACKLOG: u32 = 4096;

/// The deadlines and cap of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections held at once.
    pub max_connections: usize,
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// See [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// The connections all web endpoints of a host may hold together: the process's descriptor
/// limit less [`FD_RESERVE`].
#[derive(Debug)]
pub struct HostBudget {
    max: usize,
    open: AtomicUsize,
}

impl HostBudget {
    /// A budget of `max` connections.
    pub fn new(max: usize) -> Arc<HostBudget> {
        Arc::new(HostBudget {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// The budget this process's descriptor limit allows.
    pub fn from_fd_limit() -> Arc<HostBudget> {
        HostBudget::new(fd_limit().saturating_sub(FD_RESERVE).max(16))
    }

    /// Most connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// The soft limit of open descriptors of this process.
pub fn fd_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass, nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if rc != 0 || limit.rlim_cur == libc::RLIM_INFINITY {
        return 1 << 20;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const HANDLING: u8 = 2;
const ANSWERED: u8 = 3;

/// What one connection is doing, shared by its reader, its server and its watchdog.
#[derive(Debug)]
pub struct ConnState {
    phase: AtomicU8,
    /// When the current head's first byte came ([`crate::quota::host_ms`]).
    head_ms: AtomicU64,
    /// When a byte last moved either way.
    io_ms: AtomicU64,
    evict: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        let now = crate::quota::host_ms();
        ConnState {
            phase: AtomicU8::new(IDLE),
            head_ms: AtomicU64::new(now),
            io_ms: AtomicU64::new(now),
            evict: Notify::new(),
        }
    }

    /// A request's head is complete and its handler starts.
    pub fn request_started(&self) {
        self.phase.store(HANDLING, Ordering::Relaxed);
    }

    /// The handler answered: its body streams from now on.
    pub fn answered(&self) {
        self.io_ms.store(crate::quota::host_ms(), Ordering::Relaxed);
        self.phase.store(ANSWERED, Ordering::Relaxed);
    }

    fn read(&self, n: usize) {
        if n == 0 {
            return;
        }
        let now = crate::quota::host_ms();
        self.io_ms.store(now, Ordering::Relaxed);
        let phase = self.phase.load(Ordering::Relaxed);
        if phase == IDLE || phase == ANSWERED {
            self.head_ms.store(now, Ordering::Relaxed);
            self.phase.store(HEAD, Ordering::Relaxed);
        }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.io_ms.store(crate::quota::host_ms(), Ordering::Relaxed);
        }
    }

    /// When this connection is due to be closed, in [`crate::quota::host_ms`] (`None`: its
    /// handler runs).
    fn deadline(&self, limits: &ConnLimits) -> Option<u64> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let idle = self
            .io_ms
            .load(Ordering::Relaxed)
            .saturating_add(ms(limits.idle_timeout));
        match self.phase.load(Ordering::Relaxed) {
            HANDLING => None,
            HEAD => Some(
                idle.min(
                    self.head_ms
                        .load(Ordering::Relaxed)
                        .saturating_add(ms(limits.header_timeout)),
                ),
            ),
            _ => Some(idle),
        }
    }
}

/// Why a connection was closed by the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// Its request head did not arrive in time.
    HeaderTimeout,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// A newer connection took its place at the cap.
    Evicted,
}

impl Closed {
    /// For the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "the request head did not arrive in time",
            Closed::IdleTimeout => "idle for too long",
            Closed::Evicted => "evicted for a newer connection at the connection cap",
        }
    }
}

/// The connections of one listener.
#[derive(Debug)]
pub struct Connections {
    limits: ConnLimits,
    host: Option<Arc<HostBudget>>,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
    next: AtomicU64,
    /// Connections evicted and refused so far (for the log and tests).
    pub evicted: AtomicU64,
    /// Connections refused (every held one was being handled).
    pub refused: AtomicU64,
}

/// An admitted connection: its place is given back when this is dropped.
#[derive(Debug)]
pub struct ConnGuard {
    conns: Arc<Connections>,
    id: u64,
    /// What it is doing.
    pub state: Arc<ConnState>,
}

impl Connections {
    /// The connections of a listener with `limits`, within `host`'s budget when given.
    pub fn new(limits: ConnLimits, host: Option<Arc<HostBudget>>) -> Arc<Connections> {
        Arc::new(Connections {
            limits,
            host,
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// The limits.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a new connection, evicting the quietest one not being handled when the
    /// listener or the host is at its cap; `None` when every held connection is being
    /// handled (the caller refuses the newcomer).
    pub fn admit(self: &Arc<Self>) -> Option<ConnGuard> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let host_full = self
            .host
            .as_ref()
            .is_some_and(|h| h.open.load(Ordering::Relaxed) >= h.max);
        if open.len() >= self.limits.max_connections || host_full {
            let quietest = open
                .iter()
                .filter(|(_, s)| s.phase.load(Ordering::Relaxed) != HANDLING)
                .min_by_key(|(_, s)| s.io_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            let Some(id) = quietest else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            // It is gone from the count at once; its task closes the socket when it sees
            // the signal.
            if let Some(s) = open.remove(&id) {
                s.evict.notify_one();
                if let Some(h) = &self.host {
                    h.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new());
        open.insert(id, state.clone());
        if let Some(h) = &self.host {
            h.open.fetch_add(1, Ordering::Relaxed);
        }
        Some(ConnGuard {
            conns: self.clone(),
            id,
            state,
        })
    }
}

impl ConnGuard {
    /// Resolves when the connection must be closed, saying why. The connection's task
    /// serves it until then.
    pub async fn watch(&self) -> Closed {
        let limits = self.conns.limits;
        loop {
            let wait = match self.state.deadline(&limits) {
                // The handler runs: look again after a while (the request timeout ends it).
                None => limits.idle_timeout.min(Duration::from_secs(1)),
                Some(at) => {
                    let now = crate::quota::host_ms();
                    if now >= at {
                        return match self.state.phase.load(Ordering::Relaxed) {
                            HEAD => Closed::HeaderTimeout,
                            _ => Closed::IdleTimeout,
                        };
                    }
                    Duration::from_millis(at - now)
                }
            };
            tokio::select! {
                biased;
                () = self.state.evict.notified() => return Closed::Evicted,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().unwrap_or_else(|p| p.into_inner());
        // An evicted connection was taken out of the count already.
        if open.remove(&self.id).is_some()
            && let Some(h) = &self.conns.host
        {
            h.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A connection's byte stream, noting when bytes move (for its deadlines).
pub struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S> Watched<S> {
    /// Watches `inner` for `state`.
    pub fn new(inner: S, state: Arc<ConnState>) -> Self {
        Watched { inner, state }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.state.read(buf.filled().len() - before);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.state.wrote(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.state.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Listens on `addr` with [`LISTEN_BACKLOG`] (tokio's `TcpListener::bind` queues 1,024).
/// Every listener of the host binds through here.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted host rebinds a port whose old connections
    // are still in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a refused connection is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
retry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 40\r\n\r\n\
too many connections; retry in a moment\n";

/// Tells `stream` that the host holds too many connections, without waiting on it.
pub fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(REFUSAL);
}

/// An accept loop's error handling: a back-off that doubles to [`MAX_ACCEPT_BACKOFF`] while
/// accepts fail (out of descriptors, they fail at once, and a loop that retried at once
/// would spin and flood the log), and a log line at most every [`ACCEPT_LOG_EVERY`] saying
/// how many failed.
#[derive(Debug)]
pub struct Acceptor {
    what: &'static str,
    delay: Duration,
    failed: u64,
    logged: Option<Instant>,
}

impl Acceptor {
    /// For the listener named `what` in the log.
    pub fn new(what: &'static str) -> Acceptor {
        Acceptor {
            what,
            delay: Duration::ZERO,
            failed: 0,
            logged: None,
        }
    }

    /// The next connection of `listener`, waiting out failures.
    pub async fn accept(&mut self, listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(a) => {
                    self.delay = Duration::ZERO;
                    return a;
                }
                Err(e) => {
                    self.failed += 1;
                    if self.logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_EVERY) {
                        tracing::warn!(
                            listener = self.what,
                            error = %e,
                            failures = self.failed,
                            "accepting connections fails; backing off"
                        );
                        self.logged = Some(Instant::now());
                        self.failed = 0;
                    }
                    self.delay = (self.delay * 2)
                        .max(Duration::from_millis(10))
                        .min(MAX_ACCEPT_BACKOFF);
                    tokio::time::sleep(self.delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> ConnLimits {
        ConnLimits {
            max_connections: max,
            ..ConnLimits::default()
        }
    }

    #[test]
    fn at_the_cap_the_quietest_unhandled_connection_makes_room() {
        let conns = Connections::new(limits(2), None);
        let a = conns.admit().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = conns.admit().unwrap();
        // `a` is handled: `b` (quieter among the others) is the one evicted.
        a.state.request_started();
        let c = conns.admit().unwrap();
        assert_eq!(conns.len(), 2);
        assert_eq!(conns.evicted.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(
            conns.len(),
            2,
            "an evicted connection's guard frees nothing twice"
        );
        // Both held ones handled: the newcomer is refused.
        c.state.request_started();
        assert!(conns.admit().is_none());
        assert_eq!(conns.refused.load(Ordering::Relaxed), 1);
        drop(a);
        drop(c);
        assert!(conns.is_empty());
    }

    #[test]
    fn the_host_budget_is_shared_and_given_back() {
        let host = HostBudget::new(2);
        let one = Connections::new(limits(10), Some(host.clone()));
        let two = Connections::new(limits(10), Some(host.clone()));
        let a = one.admit().unwrap();
        let b = two.admit().unwrap();
        assert_eq!(host.open(), 2);
        // Full: `two` evicts its own quietest to take a third.
        let c = two.admit().unwrap();
        assert_eq!(host.open(), 2);
        drop((a, b, c));
        assert_eq!(host.open(), 0);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let l = ConnLimits {
            max_connections: 1,
            header_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(1000),
            handshake_timeout: Duration::from_millis(1),
        };
        let s = ConnState::new();
        let idle = s.deadline(&l).unwrap();
        s.read(10);
        let head = s.deadline(&l).unwrap();
        assert!(head < idle, "a head arriving has the shorter deadline");
        s.request_started();
        assert_eq!(s.deadline(&l), None);
        s.read(10);
        assert_eq!(s.deadline(&l), None, "a request body does not start a head");
        s.answered();
        assert!(s.deadline(&l).unwrap() >= idle);
    }
}
