//! The management API's client: what `deploy`, `scale`, `status`, `logs`, `stop`, `start`
//! and `delete` use to talk to a running host (`rolehost serve`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use rolehost_runtime::fabric::api::ApiBody;
use rolehost_runtime::fabric::{ADDRESS_FILE, TOKEN_FILE};
use tokio::sync::mpsc;

/// Where the host is and how to prove we may talk to it.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct HostArgs {
    /// The host's management API, e.g. http://127.0.0.1:7070. Default: the address the host
    /// wrote to its data directory, or http://127.0.0.1:7070.
    #[arg(long, env = "ROLEHOST_HOST")]
    pub(crate) host: Option<String>,
    /// The management token. Default: the one the host wrote to its data directory.
    #[arg(long, env = "ROLEHOST_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The host's data directory (where its token and address are).
    #[arg(long = "host-data-dir", env = "ROLEHOST_HOST_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// The default data directory of `rolehost serve`.
pub(crate) fn default_host_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/rolehost"),
        None => PathBuf::from(".rolehost-host"),
    }
}

/// The default address of the management API.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// A connection target: host:port and the token.
pub(crate) struct Client {
    authority: String,
    token: String,
}

impl Client {
    /// Finds the host and its token from the arguments, the environment or the data
    /// directory.
    pub(crate) fn new(args: &HostArgs) -> anyhow::Result<Client> {
        let dir = args.data_dir.clone().unwrap_or_else(default_host_data_dir);
        let url = match &args.host {
            Some(h) => h.clone(),
            None => std::fs::read_to_string(dir.join(ADDRESS_FILE))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| format!("http://{DEFAULT_LISTEN}")),
        };
        let authority = url
            .strip_prefix("http://")
            .with_context(|| {
                format!("--host {url:?}: the management API is plain http://host:port (loopback)")
            })?
            .trim_end_matches('/')
            .to_string();
        let token = match &args.token {
            Some(t) => t.clone(),
            None => std::fs::read_to_string(dir.join(TOKEN_FILE))
                .map(|s| s.trim().to_string())
                .with_context(|| {
                    format!(
                        "no management token: pass --token, set ROLEHOST_TOKEN, or point --host-data-dir at the host's data directory (no {} in {})",
                        TOKEN_FILE,
                        dir.display()
                    )
                })?,
        };
        Ok(Client { authority, token })
    }

    /// Sends a request and returns the response (any status).
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: ApiBody,
        content_type: Option<&str>,
    ) -> anyhow::Result<Response<Incoming>> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .with_context(|| {
                format!(
                    "connecting to the host at {} (is `rolehost serve` running?)",
                    self.authority
                )
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream))
                .await
                .context("talking to the host")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority)
            .header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            );
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        let req = req.body(body).context("building the request")?;
        sender
            .send_request(req)
            .await
            .context("sending the request to the host")
    }

    /// Sends JSON (or nothing) and reads a JSON answer; a 4xx/5xx becomes an error with the
    /// host's message.
    pub(crate) async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (body, ct) = match body {
            Some(v) => (
                ApiBody::Whole(Some(Bytes::from(v.to_string()))),
                Some("application/json"),
            ),
            None => (ApiBody::Whole(None), None),
        };
        let resp = self.send(method, path, body, ct).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the host's answer")?
            .to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(
            |_| serde_json::json!({ "error": String::from_utf8_lossy(&bytes).into_owned() }),
        );
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("(no message)");
            bail!("the host refused ({status}): {msg}");
        }
        Ok(value)
    }

    /// Uploads `path` under its digest unless the host has it; shows progress on stderr.
    pub(crate) async fn upload(&self, what: &str, path: &Path) -> anyhow::Result<String> {
        let bytes = tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let sha = rolehost_runtime::fabric::digest(&bytes);
        let head = self
            .send(
                Method::HEAD,
                &format!("/v1/files/{sha}"),
                ApiBody::Whole(None),
                None,
            )
            .await?;
        if head.status().is_success() {
            eprintln!("rolehost: {what}: {} already on the host", path.display());
            return Ok(sha);
        }
        let total = bytes.len();
        let (tx, rx) = mpsc::channel(4);
        let what_owned = what.to_string();
        let feeder = tokio::spawn(async move {
            const CHUNK: usize = 1 << 20;
            let mut last_shown = 0;
            for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
                if tx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                    return;
                }
                let sent = (i * CHUNK + chunk.len()) * 100 / total.max(1);
                if sent >= last_shown + 25 || sent == 100 {
                    eprintln!(
                        "rolehost: {what_owned}: uploading, {sent}% of {} KiB",
                        total >> 10
                    );
                    last_shown = sent;
                }
            }
        });
        let resp = self
            .send(
                Method::PUT,
                &format!("/v1/files/{sha}"),
                ApiBody::Stream(rx),
                Some("application/octet-stream"),
            )
            .await?;
        let _ = feeder.await;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "uploading {}: the host refused ({status}): {}",
                path.display(),
                String::from_utf8_lossy(&body)
            );
        }
        Ok(sha)
    }
}
