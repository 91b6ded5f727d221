//! The storage REST endpoints of a host: the three listeners (blob, queue, table; 10000-10002
//! by the emulator's convention) that hand each request to the [`rolehost_rest::Door`], held
//! to the same connection caps and deadlines as web endpoints ([`crate::conn`]), HTTPS when a
//! certificate is given.
//!
//! What a client needs to reach them is written to the data directory: the endpoints bound
//! ([`ENDPOINTS_FILE`]) and each account's keys ([`KEYS_DIR`], 0600), so `rolehost storage`
//! can build a connection string for a running host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use rolehost_rest::keys::Endpoints;
use rolehost_rest::{Door, Service};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::io::TokioIo;

use crate::conn::{Acceptor, ConnLimits, Connections, HostBudget, Watched};
use crate::manifest::TlsFiles;
use crate::stop::StopSignal;

/// The file, in the data directory, naming the endpoints a running host serves storage on.
pub const ENDPOINTS_FILE: &str = "storage-endpoints.json";
/// The directory, in the data directory, of the storage accounts' keys.
pub const KEYS_DIR: &str = "storage-keys";
/// Default blob endpoint (the emulator's).
pub const DEFAULT_BLOB: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10000);
/// Default queue endpoint.
pub const DEFAULT_QUEUE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10001);
/// Default table endpoint.
pub const DEFAULT_TABLE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 10002);
/// Largest request head (request line and headers) the storage endpoints read: metadata is
/// at most 8 KiB, SAS URLs a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The read buffer of a storage connection: large enough that uploads move in big chunks.
const READ_BUFFER: usize = 256 * 1024;

/// Where a host serves storage, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSettings {
    /// The blob listener (`None`: off).
    pub blob: Option<SocketAddr>,
    /// The queue listener.
    pub queue: Option<SocketAddr>,
    /// The table listener.
    pub table: Option<SocketAddr>,
    /// HTTPS with this certificate and key.
    pub tls: Option<TlsFiles>,
    /// Also serve the well-known development account (`devstoreaccount1`); loopback only.
    pub dev_storage: bool,
    /// The connection cap and deadlines of each listener.
    pub limits: ConnLimits,
}

impl Default for EndpointSettings {
    fn default() -> Self {
        EndpointSettings {
            blob: Some(DEFAULT_BLOB),
            queue: Some(DEFAULT_QUEUE),
            table: Some(DEFAULT_TABLE),
            tls: None,
            dev_storage: false,
            limits: ConnLimits::default(),
        }
    }
}

/// Why the storage endpoints could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// A listener could not bind.
    #[error(
        "the {service} storage endpoint could not listen on {addr}: {source} (change it with --{service}-listen, or turn it off with --{service}-listen off)"
    )]
    Bind {
        /// blob, queue or table.
        service: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key could not be loaded.
    #[error("the storage endpoints' TLS: {0}")]
    Tls(String),
    /// The development account's key is public: it may only be served on loopback.
    #[error(
        "--dev-storage serves a public, well-known key: the {0} storage endpoint must listen on a loopback address, not {1}"
    )]
    DevNotLoopback(&'static str, SocketAddr),
    /// The endpoints file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The endpoints a host serves storage on, once bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// What clients put in connection strings.
    pub endpoints: Endpoints,
}

/// Binds the listeners `settings` asks for and serves `door` on them until `stop`.
pub async fn start(
    door: Arc<Door>,
    settings: &EndpointSettings,
    budget: Option<Arc<HostBudget>>,
    stop: StopSignal,
) -> Result<Bound, EndpointError> {
    let tls = match &settings.tls {
        Some(files) => Some(crate::web::tls_acceptor(files).map_err(EndpointError::Tls)?),
        None => None,
    };
    let mut endpoints = Endpoints {
        scheme: if tls.is_some() { "https" } else { "http" }.to_string(),
        blob: None,
        queue: None,
        table: None,
    };
    let wanted = [
        (Service::Blob, settings.blob),
        (Service::Queue, settings.queue),
        (Service::Table, settings.table),
    ];
    if settings.dev_storage {
        for (service, addr) in wanted {
            if let Some(addr) = addr
                && !addr.ip().is_loopback()
            {
                return Err(EndpointError::DevNotLoopback(service.as_str(), addr));
            }
        }
    }
    let mut listeners = Vec::new();
    for (service, addr) in wanted {
        let Some(addr) = addr else { continue };
        let listener = crate::conn::bind(addr).map_err(|source| EndpointError::Bind {
            service: service.as_str(),
            addr,
            source,
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| EndpointError::Bind {
                service: service.as_str(),
                addr,
                source,
            })?;
        let shown = Some(local.to_string());
        match service {
            Service::Blob => endpoints.blob = shown,
            Service::Queue => endpoints.queue = shown,
            Service::Table => endpoints.table = shown,
        }
        listeners.push((service, listener));
    }
    for (service, listener) in listeners {
        let conns = Connections::new(settings.limits, budget.clone());
        tokio::spawn(serve(
            door.clone(),
            service,
            listener,
            tls.clone(),
            conns,
            stop.clone(),
        ));
    }
    Ok(Bound { endpoints })
}

async fn serve(
    door: Arc<Door>,
    service: Service,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    conns: Arc<Connections>,
    stop: StopSignal,
) {
    let mut acceptor = Acceptor::new(match service {
        Service::Blob => "blob storage endpoint",
        Service::Queue => "queue storage endpoint",
        Service::Table => "table storage endpoint",
    });
    loop {
        let (stream, peer) = tokio::select! {
            a = acceptor.accept(&listener) => a,
            () = stop.requested() => return,
        };
        let Some(guard) = conns.admit() else {
            crate::conn::refuse(&stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        let tls = tls.clone();
        let handshake = conns.limits().handshake_timeout;
        tokio::spawn(async move {
            let stream = Watched::new(stream, guard.state.clone());
            let state = guard.state.clone();
            let https = tls.is_some();
            let svc = service_fn(move |req| {
                let door = door.clone();
                let state = state.clone();
                state.request_started();
                async move {
                    let r = door.handle(service, req, peer.ip(), https).await;
                    state.answered();
                    Ok::<_, Infallible>(r)
                }
            });
            match tls {
                None => connection(stream, svc, &guard).await,
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
                        Ok(stream) => connection(stream, svc, &guard).await,
                        Err(e) => tracing::debug!(error = %e, "storage TLS handshake failed"),
                    }
                }
            }
        });
    }
}

/// Serves one connection's requests until it ends or the host closes it.
async fn connection<S, F>(stream: S, svc: F, guard: &crate::conn::ConnGuard)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<rolehost_rest::RestBody>,
            Error = Infallible,
        >,
    F::Future: Send + 'static,
{
    let served = http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(READ_BUFFER.max(MAX_HEAD_BYTES))
        .serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        biased;
        r = served => if let Err(e) = r {
            tracing::debug!(error = %e, "storage connection ended with an error");
        },
        closed = guard.watch() => tracing::debug!(reason = closed.as_str(), "storage connection closed by the host"),
    }
}

/// Writes what clients need to find the endpoints into `data_dir` ([`ENDPOINTS_FILE`], 0600).
pub fn write_endpoints(data_dir: &Path, bound: &Bound) -> Result<(), EndpointError> {
    let path = data_dir.join(ENDPOINTS_FILE);
    let io = |source| EndpointError::Io {
        path: path.display().to_string(),
        source,
    };
    let text =
        serde_json::to_string_pretty(&bound.endpoints).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = data_dir.join(format!(".{ENDPOINTS_FILE}.tmp"));
    {
        use std::io::Write as _;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Removes the endpoints file (the host stopped serving).
pub fn remove_endpoints(data_dir: &Path) {
    let _ = std::fs::remove_file(data_dir.join(ENDPOINTS_FILE));
}

/// The endpoints a running host wrote into `data_dir`, if any.
pub fn read_endpoints(data_dir: &Path) -> Option<Endpoints> {
    let text = std::fs::read_to_string(data_dir.join(ENDPOINTS_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Parses `ADDR` or `off` (the storage endpoint flags).
pub fn parse_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| format!("{s:?} is not an address (HOST:PORT) or \"off\": {e}"))
}
