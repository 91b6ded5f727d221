//! `rolehost storage` against a running host: the same commands sent to the host's storage
//! REST endpoints, signed with the account's key (SharedKey), as any Azure client would.
//!
//! Only what the commands need, kept small: one request per call on a fresh connection, bodies
//! streamed both ways (a large blob goes up from its file and down to its file through one
//! buffer), answers read through the door's own XML and entity JSON code. Plain HTTP only:
//! an HTTPS endpoint is refused with a message saying so.

use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use rolehost_rest::keys::{DEV_ACCOUNT, DEV_KEY, Key};
use rolehost_rest::xml;
use rolehost_rest::{Service, auth};
use rolehost_storage::table::{Entity, StoredEntity};
use tokio::io::{AsyncRead, ReadBuf};
use wasmtime_wasi_http::io::TokioIo;

/// Bytes read from a file per body frame of an upload.
const UPLOAD_FRAME: usize = 256 * 1024;
/// Largest answer read whole (listings, entities, errors): a page of 5,000 blobs with long
/// names fits many times over.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

type OutBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One service's endpoint: `host:port` and the path before the resource (`/<account>`).
#[derive(Clone, Debug)]
struct Endpoint {
    authority: String,
    base: String,
}

/// A running host's storage, reached over REST.
pub(crate) struct Remote {
    account: String,
    key: Key,
    blob: Option<Endpoint>,
    queue: Option<Endpoint>,
    table: Option<Endpoint>,
    rt: tokio::runtime::Runtime,
}

/// An answer: status, headers, and the body read whole.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn xml(&self) -> anyhow::Result<xml::Node> {
        xml::parse(&self.body).map_err(|e| anyhow::anyhow!("the host's answer: {}", e.message))
    }

    pub(crate) fn json(&self) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_slice(&self.body).context("the host's answer is not a JSON object")
    }
}

/// An endpoint URL of a connection string: `http://host:port/account` (path-style) or
/// `http://account.blob.host:port` (host-style).
fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => bail!(
            "{url}: `rolehost storage` speaks plain HTTP to a host; for an HTTPS endpoint use an Azure SDK or tool, or run the command on the host with --data-dir"
        ),
        _ => bail!("{url:?} is not an http URL"),
    }
    let authority = uri
        .authority()
        .with_context(|| format!("{url:?} has no host"))?
        .to_string();
    Ok(Endpoint {
        authority,
        base: uri.path().trim_end_matches('/').to_string(),
    })
}

impl Remote {
    /// From a connection string (`AccountName`, `AccountKey` and the endpoints, or
    /// `UseDevelopmentStorage=true`).
    pub(crate) fn from_connection_string(s: &str) -> anyhow::Result<Remote> {
        let mut fields = std::collections::HashMap::new();
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("connection string: {part:?} is not Name=value"))?;
            fields.insert(k.to_ascii_lowercase(), v.to_string());
        }
        if fields
            .get("usedevelopmentstorage")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            for (name, port) in [
                ("blobendpoint", 10000),
                ("queueendpoint", 10001),
                ("tableendpoint", 10002),
            ] {
                fields
                    .entry(name.into())
                    .or_insert(format!("http://127.0.0.1:{port}/{DEV_ACCOUNT}"));
            }
            fields
                .entry("accountname".into())
                .or_insert(DEV_ACCOUNT.into());
            fields.entry("accountkey".into()).or_insert(DEV_KEY.into());
        }
        let account = fields
            .get("accountname")
            .context("connection string: no AccountName")?
            .clone();
        let key = fields
            .get("accountkey")
            .and_then(|k| Key::from_base64(k))
            .context("connection string: no AccountKey, or not base64")?;
        let get = |name: &str| fields.get(name).map(|u| endpoint(u)).transpose();
        let (blob, queue, table) = (
            get("blobendpoint")?,
            get("queueendpoint")?,
            get("tableendpoint")?,
        );
        if blob.is_none() && queue.is_none() && table.is_none() {
            bail!(
                "connection string: no BlobEndpoint, QueueEndpoint or TableEndpoint (rolehost hosts name theirs)"
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Remote {
            account,
            key,
            blob,
            queue,
            table,
            rt,
        })
    }

    /// Sends one signed request; `path` is after the account (`/container/blob?comp=...`,
    /// already percent-encoded). The body is read whole unless `sink` takes it.
    pub(crate) fn call(
        &self,
        service: Service,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(OutBody, u64)>,
        sink: Option<&mut dyn Write>,
    ) -> anyhow::Result<Answer> {
        let ep = match service {
            Service::Blob => &self.blob,
            Service::Queue => &self.queue,
            Service::Table => &self.table,
        }
        .as_ref()
        .with_context(|| format!("the host serves no {} endpoint", service.as_str()))?;
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", ep.base))
            .header(hyper::header::HOST, &ep.authority);
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let (body, len) = body.unwrap_or_else(|| (full(Bytes::new()), 0));
        b = b.header(hyper::header::CONTENT_LENGTH, len);
        let (mut head, ()) = b.body(())?.into_parts();
        auth::sign_shared_key(service, &mut head, &self.account, &self.key)
            .map_err(|e| anyhow::anyhow!("signing the request: {}", e.message))?;
        let req = hyper::Request::from_parts(head, body);
        let authority = ep.authority.clone();
        self.rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(&authority)
                .await
                .with_context(|| format!("connecting to the host's storage at {authority}"))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(conn);
            let resp = send
                .send_request(req)
                .await
                .with_context(|| format!("{method} {path} on {authority}"))?;
            let status = resp.status().as_u16();
            let (parts, mut body) = resp.into_parts();
            let mut bytes = Vec::new();
            let mut sink = sink.filter(|_| (200..300).contains(&status));
            while let Some(frame) = body.frame().await {
                let frame = frame.context("reading the host's answer")?;
                if let Ok(data) = frame.into_data() {
                    match &mut sink {
                        Some(w) => w.write_all(&data).context("writing the blob out")?,
                        None if bytes.len() + data.len() > MAX_ANSWER_BYTES => {
                            bail!("the host's answer is longer than {MAX_ANSWER_BYTES} bytes")
                        }
                        None => bytes.extend_from_slice(&data),
                    }
                }
            }
            Ok(Answer {
                status,
                headers: parts.headers,
                body: Bytes::from(bytes),
            })
        })
    }

    /// [`Remote::call`], failing on anything but a 2xx with the host's error code and message.
    pub(crate) fn ok(
        &self,
        service: Service,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<(OutBody, u64)>,
    ) -> anyhow::Result<Answer> {
        let a = self.call(service, method, path, headers, body, None)?;
        check(a, method, path)
    }
}

/// Turns a non-2xx answer into an error naming Azure's code and message.
pub(crate) fn check(a: Answer, method: &str, path: &str) -> anyhow::Result<Answer> {
    if (200..300).contains(&a.status) {
        return Ok(a);
    }
    let code = a.header("x-ms-error-code").unwrap_or("").to_string();
    let message = xml::parse(&a.body)
        .ok()
        .and_then(|n| n.child_text("Message").map(str::to_string))
        .or_else(|| {
            let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
            v.pointer("/odata.error/message/value")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let message = message.lines().next().unwrap_or("").to_string();
    bail!("{method} {path}: {} {code}: {message}", a.status)
}

/// Percent-encodes one path segment or query value.
pub(crate) fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A blob name as a path: each `/`-separated part encoded, the slashes kept.
pub(crate) fn enc_blob(name: &str) -> String {
    name.split('/').map(enc).collect::<Vec<_>>().join("/")
}

/// An OData key literal: single quotes doubled, then encoded.
pub(crate) fn odata_key(s: &str) -> String {
    enc(&s.replace('\'', "''"))
}

pub(crate) fn full(b: Bytes) -> OutBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// A file as an upload body, read in [`UPLOAD_FRAME`] pieces.
pub(crate) async fn file_body(path: &Path) -> anyhow::Result<(OutBody, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata().await?.len();
    let body = FileBody {
        file,
        buf: vec![0; UPLOAD_FRAME].into_boxed_slice(),
        left: len,
    };
    Ok((body.boxed(), len))
}

impl Remote {
    /// [`file_body`] on this client's runtime.
    pub(crate) fn file_body(&self, path: &Path) -> anyhow::Result<(OutBody, u64)> {
        self.rt.block_on(file_body(path))
    }
}

struct FileBody {
    file: tokio::fs::File,
    buf: Box<[u8]>,
    left: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let want = this
            .buf
            .len()
            .min(usize::try_from(this.left).unwrap_or(usize::MAX));
        let mut rb = ReadBuf::new(&mut this.buf[..want]);
        match Pin::new(&mut this.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was being uploaded",
                    ))));
                }
                this.left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(rb.filled())))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// An entity of a table answer (minimal metadata).
pub(crate) fn stored_entity(
    o: &serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<StoredEntity> {
    let e: Entity = rolehost_rest::table::entity_from_json(o, None)
        .map_err(|e| anyhow::anyhow!("an entity of the answer: {}", e.message))?;
    let text = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let timestamp = rolehost_storage::table::datetime::parse_rfc3339(&text("Timestamp"))
        .and_then(|m| u64::try_from(m).ok())
        .map_or(rolehost_storage::Timestamp(0), rolehost_storage::Timestamp);
    Ok(StoredEntity {
        partition_key: e.partition_key,
        row_key: e.row_key,
        timestamp,
        etag: text("odata.etag"),
        properties: e.properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_name_the_endpoints() {
        let r = Remote::from_connection_string(&format!(
            "DefaultEndpointsProtocol=http;AccountName=demo;AccountKey={DEV_KEY};BlobEndpoint=http://127.0.0.1:10000/demo;QueueEndpoint=http://127.0.0.1:10001/demo;"
        ))
        .unwrap();
        assert_eq!(r.account, "demo");
        let b = r.blob.as_ref().unwrap();
        assert_eq!(
            (b.authority.as_str(), b.base.as_str()),
            ("127.0.0.1:10000", "/demo")
        );
        assert!(r.table.is_none());
        let dev = Remote::from_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(dev.account, DEV_ACCOUNT);
        assert_eq!(dev.table.unwrap().authority, "127.0.0.1:10002");
        for bad in [
            "AccountName=a",
            "AccountName=a;AccountKey=!!;BlobEndpoint=http://h/a",
            "AccountName=a;AccountKey=AAAA;BlobEndpoint=https://h/a",
            "AccountName=a;AccountKey=AAAA",
            "nonsense",
        ] {
            assert!(Remote::from_connection_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_encoded_for_paths_and_odata() {
        assert_eq!(enc_blob("a b/c%d"), "a%20b/c%25d");
        assert_eq!(odata_key("it's"), "it%27%27s");
    }
}
