//! Guest stdout and stderr, line by line, into the host's log, tagged with the instance.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept whole; a longer one is logged in pieces of this size.
const MAX_LINE: usize = 16 * 1024;
/// Lines per second an instance may log through stdout and stderr together; beyond it lines
/// are dropped (and counted), so a flooding guest cannot drown the host's log or its disk.
pub(crate) const LINES_PER_SEC: f64 = 200.0;
/// Lines an instance may log in a burst above [`LINES_PER_SEC`].
pub(crate) const LINE_BURST: f64 = 1000.0;

/// Which stream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// The log budget of one instance (shared by its stdout and stderr).
#[derive(Debug)]
pub(crate) struct LineBudget {
    tokens: f64,
    last: Instant,
    dropped: u64,
    last_report: Instant,
}

impl LineBudget {
    pub(crate) fn new() -> Arc<Mutex<LineBudget>> {
        let now = Instant::now();
        Arc::new(Mutex::new(LineBudget {
            tokens: LINE_BURST,
            last: now,
            dropped: 0,
            last_report: now,
        }))
    }

    /// Whether `instance` may log one more line now. Once a second, logs how many lines were
    /// dropped.
    pub(crate) fn admit(budget: &Mutex<LineBudget>, instance: &str) -> bool {
        let (allowed, dropped) = budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(Instant::now());
        if let Some(n) = dropped {
            tracing::warn!(
                target: "guest",
                instance,
                "dropped {n} lines of output: over {LINES_PER_SEC} lines per second"
            );
        }
        allowed
    }

    /// Whether one more line may be logged now; also returns how many were dropped since the
    /// last report, once a second.
    fn take(&mut self, now: Instant) -> (bool, Option<u64>) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * LINES_PER_SEC).min(LINE_BURST);
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        } else {
            self.dropped += 1;
        }
        let report = (self.dropped > 0
            && now.saturating_duration_since(self.last_report) >= Duration::from_secs(1))
        .then(|| {
            self.last_report = now;
            std::mem::take(&mut self.dropped)
        });
        (allowed, report)
    }
}

/// A guest output stream that ends in the log.
#[derive(Clone, Debug)]
pub(crate) struct GuestOutput {
    instance: Arc<str>,
    stream: Stream,
    budget: Arc<Mutex<LineBudget>>,
}

impl GuestOutput {
    pub(crate) fn new(instance: Arc<str>, stream: Stream, budget: Arc<Mutex<LineBudget>>) -> Self {
        GuestOutput {
            instance,
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
        })
    }
}

struct LineWriter {
    out: GuestOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if !LineBudget::admit(&self.out.budget, &self.out.instance) {
            self.line.clear();
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches(['\n', '\r']);
        let instance = &*self.out.instance;
        match self.out.stream {
            Stream::Stdout => {
                tracing::info!(target: "guest", instance, stream = "stdout", "{text}")
            }
            Stream::Stderr => {
                tracing::warn!(target: "guest", instance, stream = "stderr", "{text}")
            }
        }
        self.line.clear();
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
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
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
    fn a_flood_is_cut_to_the_rate_and_counted() {
        let budget = LineBudget::new();
        let mut b = budget.lock().unwrap();
        let start = Instant::now();
        let allowed = (0..5000).filter(|_| b.take(start).0).count();
        assert_eq!(allowed, LINE_BURST as usize);
        // A second later: the rate's worth more, and a report of what was dropped.
        let later = start + Duration::from_secs(1);
        let (ok, report) = b.take(later);
        assert!(ok);
        assert_eq!(report, Some(5000 - LINE_BURST as u64));
        let more = (0..1000).filter(|_| b.take(later).0).count();
        assert_eq!(more, LINES_PER_SEC as usize - 1);
    }
}
