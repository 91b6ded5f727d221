//! Guest stdout and stderr, line by line, into the host's log, tagged with the instance.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept whole; a longer one is logged in pieces of this size.
const MAX_LINE: usize = 16 * 1024;

/// Which stream.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

/// A guest output stream that ends in the log.
#[derive(Clone, Debug)]
pub(crate) struct GuestOutput {
    instance: Arc<str>,
    stream: Stream,
}

impl GuestOutput {
    pub(crate) fn new(instance: Arc<str>, stream: Stream) -> Self {
        GuestOutput { instance, stream }
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
