//! Bodies that stream: a request body read by the (blocking) storage engine as a `Read`, and a
//! response body fed from a blocking reader. Neither holds more than a few chunks in memory,
//! so a 1 GiB blob goes up and down through a bounded buffer.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// Chunks in flight between the network and the engine, either way. With hyper's frames (at
/// most a few hundred KiB) and [`READ_CHUNK`] this bounds a transfer's buffer to about 1 MiB.
pub const CHANNEL_CHUNKS: usize = 4;

/// Longest a request body may send nothing: the connection's own idle deadline does not run
/// while a request is being handled, and a client trickling an upload must not hold a
/// connection and a storage transaction for ever.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Bytes a streamed response reads from the engine at a time.
pub const READ_CHUNK: usize = 256 * 1024;

/// A response body: whole bytes, or chunks streamed from a blocking reader.
pub struct RestBody(Inner);

enum Inner {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        len: u64,
    },
}

impl RestBody {
    /// No body.
    pub fn empty() -> Self {
        RestBody(Inner::Full(None))
    }

    /// These bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        RestBody(Inner::Full((!b.is_empty()).then_some(b)))
    }

    /// `len` bytes read from `reader` on a blocking thread, [`READ_CHUNK`] at a time. A read
    /// error ends the body early (the client sees a short response and retries).
    pub fn stream(mut reader: Box<dyn Read + Send>, len: u64) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let mut buf =
                    vec![0u8; READ_CHUNK.min(usize::try_from(left).unwrap_or(READ_CHUNK))];
                let r = reader.read(&mut buf);
                let chunk = match r {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob ended early",
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        left -= n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                // The client hung up: stop reading.
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        RestBody(Inner::Stream { rx, len })
    }
}

impl Body for RestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream { rx, .. } => rx.poll_recv(cx).map(|c| c.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.0, Inner::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream { len, .. } => SizeHint::with_exact(*len),
        }
    }
}

/// A request body read as a blocking `Read` by the engine: a task pumps the network body into
/// a bounded channel. Past `limit` bytes the read fails with [`TooLarge`] (the handler answers
/// 413); a client that sends fewer bytes than its Content-Length fails the read too, so a
/// short upload is never committed as a whole blob.
pub struct BodyReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    read: u64,
    limit: u64,
    /// The request's `Content-MD5`, and the hash of what was read so far.
    expect_md5: Option<([u8; 16], md5::Md5)>,
}

/// The error a [`BodyReader`] fails with at its end when the body is not what its
/// `Content-MD5` says: the engine then commits nothing.
#[derive(Debug, thiserror::Error)]
#[error("the body's MD5 is not the request's Content-MD5")]
pub struct Md5Mismatch;

/// The error a [`BodyReader`] fails with past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {limit} bytes")]
pub struct TooLarge {
    /// The limit.
    pub limit: u64,
}

impl BodyReader {
    /// Starts pumping `body` (at most `limit` bytes are accepted).
    pub fn new<B>(body: B, limit: u64) -> Self
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        tokio::spawn(async move {
            let mut body = body;
            loop {
                let Ok(next) = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await else {
                    let why = "the request body sent nothing for too long";
                    let _ = tx
                        .send(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
                        .await;
                    return;
                };
                let frame = match next {
                    None => return,
                    Some(Ok(f)) => f,
                    Some(Err(e)) => {
                        let why = format!("reading the request body: {e}");
                        let _ = tx
                            .send(Err(io::Error::new(io::ErrorKind::ConnectionAborted, why)))
                            .await;
                        return;
                    }
                };
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                    && tx.send(Ok(data)).await.is_err()
                {
                    return;
                }
            }
        });
        BodyReader {
            rx,
            current: Bytes::new(),
            read: 0,
            limit,
            expect_md5: None,
        }
    }

    /// Checks the body against `md5` (the request's `Content-MD5`) as it is read: at its end
    /// a body that does not match fails the read with [`Md5Mismatch`] instead of ending.
    pub fn expect_md5(mut self, md5: Option<[u8; 16]>) -> Self {
        use md5::Digest as _;
        self.expect_md5 = md5.map(|m| (m, md5::Md5::new()));
        self
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => {
                    if let Some((want, hasher)) = self.expect_md5.take() {
                        use md5::Digest as _;
                        if <[u8; 16]>::from(hasher.finalize()) != want {
                            return Err(io::Error::other(Md5Mismatch));
                        }
                    }
                    return Ok(0);
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.current = b,
            }
        }
        let n = buf.len().min(self.current.len());
        if self.read + n as u64 > self.limit {
            return Err(io::Error::other(TooLarge { limit: self.limit }));
        }
        buf[..n].copy_from_slice(&self.current[..n]);
        if let Some((_, hasher)) = &mut self.expect_md5 {
            use md5::Digest as _;
            hasher.update(&buf[..n]);
        }
        let _ = self.current.split_to(n);
        self.read += n as u64;
        Ok(n)
    }
}

/// Reads a whole small body (XML, JSON, a queue message) into memory, refusing more than
/// `limit` bytes with 413.
pub async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, crate::RestError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let mut body = body;
    let mut out = bytes::BytesMut::new();
    loop {
        let next = tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame())
            .await
            .map_err(|_| {
                crate::RestError::new(
                    408,
                    "RequestTimeout",
                    "The request body sent nothing for too long.",
                )
            })?;
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| {
            crate::RestError::bad(
                "InvalidInput",
                format!("reading the request body failed: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large(limit as u64));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// 400 Md5Mismatch, with Azure's message.
pub fn md5_mismatch() -> crate::RestError {
    crate::RestError::bad(
        "Md5Mismatch",
        "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
    )
}

/// An MD5 header's value (base64 of 16 bytes), or what is wrong with it.
pub fn md5_value(v: &str) -> Result<[u8; 16], &'static str> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(v.trim())
        .map_err(|_| "not base64")?;
    <[u8; 16]>::try_from(raw.as_slice()).map_err(|_| "not 16 bytes")
}

/// The request's `Content-MD5` (the body's own hash, checked as it is read), if it sent one.
pub fn content_md5(req: &crate::Parsed) -> Result<Option<[u8; 16]>, crate::RestError> {
    let Some(v) = req.header("content-md5") else {
        return Ok(None);
    };
    md5_value(v).map(Some).map_err(|_| {
        crate::RestError::bad(
            "InvalidMd5",
            "The MD5 value specified in the request is invalid. The MD5 value must be 128 bits and Base64-encoded.",
        )
    })
}

/// 413 RequestBodyTooLarge, with Azure's message.
pub fn too_large(limit: u64) -> crate::RestError {
    crate::RestError::new(
        413,
        "RequestBodyTooLarge",
        format!(
            "The request body is too large and exceeds the maximum permissible limit ({limit} bytes)."
        ),
    )
}
