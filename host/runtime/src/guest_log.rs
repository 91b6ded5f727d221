//! Guest stdout and stderr, line by line, into the host's log, tagged with the instance.
//!
//! Each instance has a budget of lines per second. A guest that writes faster is made to wait
//! (its writes block, like writes to a slow terminal): it is throttled, it loses nothing, and
//! it costs the host neither log volume nor CPU beyond its budget.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::pipe::AsyncWriteStream;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept whole; a longer one is logged in pieces of this size.
const MAX_LINE: usize = 16 * 1024;
/// Lines per second an instance may log through stdout and stderr together.
pub(crate) const LINES_PER_SEC: f64 = 200.0;
/// Lines an instance may log in a burst above [`LINES_PER_SEC`].
pub(crate) const LINE_BURST: f64 = 1000.0;
/// Bytes per second an instance may log (stdout, stderr and `env::log` together): lines of up
/// to 16 KiB made a line budget alone worth 3 MiB/s an instance; this keeps a host of many
/// noisy instances to a log it can write.
pub(crate) const BYTES_PER_SEC: f64 = 64.0 * 1024.0;
/// Bytes an instance may log in a burst above [`BYTES_PER_SEC`].
pub(crate) const BYTE_BURST: f64 = 1024.0 * 1024.0;

/// Which stream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The log budget of one instance: token buckets of lines and of bytes.
#[derive(Debug)]
pub(crate) struct LineBudget {
    tokens: f64,
    bytes: f64,
    last: Instant,
}

impl LineBudget {
    pub(crate) fn new() -> Arc<Mutex<LineBudget>> {
        Arc::new(Mutex::new(LineBudget {
            tokens: LINE_BURST,
            bytes: BYTE_BURST,
            last: Instant::now(),
        }))
    }

    /// Spends `lines` and `bytes` at `now`; returns how long the writer must wait before
    /// writing again (zero while within both budgets).
    fn spend(&mut self, lines: f64, bytes: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SEC).min(LINE_BURST) - lines;
        self.bytes = (self.bytes + elapsed * BYTES_PER_SEC).min(BYTE_BURST) - bytes;
        let owed = (-self.tokens / LINES_PER_SEC).max(-self.bytes / BYTES_PER_SEC);
        if owed <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(owed)
        }
    }

    /// Spends `lines` and `bytes` of a shared budget; see [`LineBudget::spend`].
    pub(crate) fn charge(budget: &Mutex<LineBudget>, lines: f64, bytes: usize) -> Duration {
        budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spend(lines, bytes as f64, Instant::now())
    }
}

/// `text` with every control character but a tab written as an escape (`\n`, `\r`,
/// `\u{1b}`): a guest's line stays one line of the host's log, and cannot forge another
/// line or drive the operator's terminal.
pub(crate) fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Lines a [`LogHub`] keeps for `rolehost logs` without `--follow`.
pub const RECENT_LINES: usize = 2000;

/// One line of guest output (stdout, stderr or the environment's `log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// Its place in the host's output: grows by one with every line.
    pub seq: u64,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The service.
    pub service: Arc<str>,
    /// The instance (its role is the part before `_IN_`).
    pub instance: Arc<str>,
    /// `stdout`, `stderr`, or the level of a `log` line.
    pub stream: &'static str,
    /// The text, without its newline.
    pub text: String,
}

impl LogLine {
    /// The instance's role.
    pub fn role(&self) -> &str {
        self.instance
            .rsplit_once("_IN_")
            .map_or(&*self.instance, |(role, _)| role)
    }
}

/// Where the guest lines of a host's services go besides the host's log: the most recent
/// [`RECENT_LINES`], and everyone following live. A slow follower misses lines (it is told
/// how many); it never slows a guest down.
#[derive(Debug)]
pub struct LogHub {
    recent: Mutex<std::collections::VecDeque<Arc<LogLine>>>,
    live: tokio::sync::broadcast::Sender<Arc<LogLine>>,
}

impl Default for LogHub {
    fn default() -> Self {
        LogHub {
            recent: Mutex::new(std::collections::VecDeque::with_capacity(RECENT_LINES)),
            live: tokio::sync::broadcast::channel(RECENT_LINES).0,
        }
    }
}

impl LogHub {
    /// Takes a line.
    pub fn push(&self, mut line: LogLine) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        line.seq = recent.back().map_or(0, |l| l.seq + 1);
        let line = Arc::new(line);
        if recent.len() == RECENT_LINES {
            recent.pop_front();
        }
        recent.push_back(line.clone());
        // Sent under the lock, so followers see lines in `seq` order. No follower is not an
        // error.
        let _ = self.live.send(line);
    }

    /// The most recent lines, oldest first.
    pub fn recent(&self) -> Vec<Arc<LogLine>> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().cloned().collect()
    }

    /// Lines from now on.
    pub fn follow(&self) -> tokio::sync::broadcast::Receiver<Arc<LogLine>> {
        self.live.subscribe()
    }

    /// Takes a line of `instance` of `service` now.
    pub fn line(&self, service: &Arc<str>, instance: &Arc<str>, stream: &'static str, text: &str) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.push(LogLine {
            seq: 0,
            at_ms,
            service: service.clone(),
            instance: instance.clone(),
            stream,
            text: text.to_string(),
        });
    }
}

/// Where an instance's lines go: the host's log always, and a hub when the host has one.
#[derive(Clone, Debug)]
pub(crate) struct LogTarget {
    pub(crate) service: Arc<str>,
    pub(crate) instance: Arc<str>,
    pub(crate) hub: Option<Arc<LogHub>>,
    /// Told when the guest opens the stream (it then holds a handle no freeze can keep).
    pub(crate) usage: Arc<crate::quota::UsageCell>,
}

/// A guest output stream that ends in the log.
#[derive(Clone, Debug)]
pub(crate) struct GuestOutput {
    target: LogTarget,
    stream: Stream,
    budget: Arc<Mutex<LineBudget>>,
}

impl GuestOutput {
    pub(crate) fn new(target: LogTarget, stream: Stream, budget: Arc<Mutex<LineBudget>>) -> Self {
        GuestOutput {
            target,
            stream,
            budget,
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            line: Vec::new(),
            emitted: 0,
            wait: None,
        })
    }

    /// The default stream, counted in [`UsageCell::stdio_held`](crate::quota::UsageCell)
    /// while the guest holds it.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        let usage = self.target.usage.clone();
        usage.stdio_held.fetch_add(1, Ordering::Relaxed);
        Box::new(HeldStream {
            inner: AsyncWriteStream::new(STREAM_BUDGET, Pin::from(self.async_stream())),
            usage,
        })
    }
}

/// Bytes a guest's stdio stream takes before it must wait for the log (wasmtime's default).
const STREAM_BUDGET: usize = 8192;

/// A guest's stdio stream, counted as held until the guest drops it.
struct HeldStream {
    inner: AsyncWriteStream,
    usage: Arc<crate::quota::UsageCell>,
}

impl Drop for HeldStream {
    fn drop(&mut self) {
        self.usage.stdio_held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for HeldStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for HeldStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

struct LineWriter {
    out: GuestOutput,
    line: Vec<u8>,
    /// Lines emitted by the current write.
    emitted: u32,
    /// The wait owed before the next write is taken.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = escape_controls(text.trim_end_matches(['\n', '\r']));
        let text = &*text;
        let target = &self.out.target;
        let instance = &*target.instance;
        let stream = match self.out.stream {
            Stream::Stdout => {
                tracing::info!(target: "guest", instance, stream = "stdout", "{text}");
                "stdout"
            }
            Stream::Stderr => {
                tracing::warn!(target: "guest", instance, stream = "stderr", "{text}");
                "stderr"
            }
        };
        if let Some(hub) = &target.hub {
            hub.line(&target.service, &target.instance, stream, text);
        }
        self.line.clear();
        self.emitted += 1;
    }

    fn push(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let room = MAX_LINE - self.line.len();
            let take = match buf.iter().take(room).position(|&b| b == b'\n') {
                Some(nl) => nl + 1,
                None => buf.len().min(room),
            };
            self.line.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.line.last() == Some(&b'\n') || self.line.len() == MAX_LINE {
                self.emit();
            }
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // Pay for the previous write's lines first.
        if let Some(wait) = self.wait.as_mut() {
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        self.emitted = 0;
        self.push(buf);
        let owed = LineBudget::charge(&self.out.budget, f64::from(self.emitted), buf.len());
        if !owed.is_zero() {
            self.wait = Some(Box::pin(tokio::time::sleep(owed)));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_made_to_wait_for_its_budget() {
        let budget = LineBudget::new();
        let mut b = budget.lock().unwrap();
        let start = Instant::now();
        assert_eq!(
            b.spend(LINE_BURST, 0.0, start),
            Duration::ZERO,
            "the burst is free"
        );
        // 200 more lines at once: a second's worth of rate to wait.
        let wait = b.spend(LINES_PER_SEC, 0.0, start);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // After waiting it out, one line owes 5 ms.
        let wait = b.spend(1.0, 0.0, start + Duration::from_secs(1));
        assert!(
            (wait.as_secs_f64() - 1.0 / LINES_PER_SEC).abs() < 1e-6,
            "{wait:?}"
        );
    }

    /// Few lines, many bytes (16 KiB lines): the byte budget is what makes the writer wait.
    #[test]
    fn long_lines_are_charged_by_their_bytes() {
        let budget = LineBudget::new();
        let mut b = budget.lock().unwrap();
        let start = Instant::now();
        assert_eq!(b.spend(1.0, BYTE_BURST, start), Duration::ZERO);
        // Four 16 KiB lines past the burst: a second of the byte rate, far more than four
        // lines of the line rate.
        let wait = b.spend(4.0, 4.0 * 16384.0, start);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn control_characters_cannot_forge_a_log_line() {
        assert_eq!(escape_controls("plain\ttext"), "plain\ttext");
        assert_eq!(
            escape_controls("ok\n2026-12-03T00:00:00Z  INFO rolehost: fake\r\u{1b}[2J"),
            "ok\\n2026-12-03T00:00:00Z  INFO rolehost: fake\\r\\u{1b}[2J"
        );
    }
}
