//! The storage REST endpoints' flags, shared by `rolehost serve` and `rolehost run`, and
//! starting the endpoints for either.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rolehost_runtime::manifest::TlsFiles;
use rolehost_runtime::storage_rest::{self, EndpointSettings};

/// A listen address or `off`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Listen(pub(crate) Option<SocketAddr>);

fn parse(s: &str) -> Result<Listen, String> {
    storage_rest::parse_listen(s).map(Listen)
}

/// Where storage is served over REST.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct EndpointArgs {
    /// The Blob REST endpoint, HOST:PORT or `off` [default: 127.0.0.1:10000].
    #[arg(long, value_name = "ADDR|off", value_parser = parse, env = "ROLEHOST_BLOB_LISTEN")]
    pub(crate) blob_listen: Option<Listen>,
    /// The Queue REST endpoint, HOST:PORT or `off` [default: 127.0.0.1:10001].
    #[arg(long, value_name = "ADDR|off", value_parser = parse, env = "ROLEHOST_QUEUE_LISTEN")]
    pub(crate) queue_listen: Option<Listen>,
    /// The Table REST endpoint, HOST:PORT or `off` [default: 127.0.0.1:10002].
    #[arg(long, value_name = "ADDR|off", value_parser = parse, env = "ROLEHOST_TABLE_LISTEN")]
    pub(crate) table_listen: Option<Listen>,
    /// Serve the storage endpoints over HTTPS with this certificate chain (PEM, leaf first).
    #[arg(long, value_name = "FILE", requires = "storage_tls_key")]
    pub(crate) storage_tls_cert: Option<PathBuf>,
    /// The private key of --storage-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "storage_tls_cert")]
    pub(crate) storage_tls_key: Option<PathBuf>,
    /// Also serve the emulator's development account (devstoreaccount1 and its published key,
    /// so `UseDevelopmentStorage=true` works). Its key is public: refused unless every storage
    /// endpoint listens on loopback.
    #[arg(long)]
    pub(crate) dev_storage: bool,
}

impl EndpointArgs {
    /// The settings: each flag given, else `base`'s.
    pub(crate) fn settings(&self, base: EndpointSettings) -> EndpointSettings {
        let tls = match (&self.storage_tls_cert, &self.storage_tls_key) {
            (Some(certificate), Some(key)) => Some(TlsFiles {
                certificate: certificate.clone(),
                key: key.clone(),
            }),
            _ => base.tls,
        };
        EndpointSettings {
            blob: self.blob_listen.map_or(base.blob, |l| l.0),
            queue: self.queue_listen.map_or(base.queue, |l| l.0),
            table: self.table_listen.map_or(base.table, |l| l.0),
            tls,
            dev_storage: self.dev_storage || base.dev_storage,
            limits: base.limits,
        }
    }
}

/// Starts the endpoints on `door`, writes where they are into `data_dir` and says so.
pub(crate) async fn start(
    door: Arc<rolehost_rest::Door>,
    settings: &EndpointSettings,
    data_dir: &std::path::Path,
    stop: rolehost_runtime::stop::StopSignal,
) -> anyhow::Result<rolehost_runtime::storage_rest::Bound> {
    let bound = storage_rest::start(door, settings, None, stop)
        .await
        .context("starting the storage REST endpoints")?;
    storage_rest::write_endpoints(data_dir, &bound).context("writing where storage is served")?;
    let e = &bound.endpoints;
    for (name, addr) in [("blob", &e.blob), ("queue", &e.queue), ("table", &e.table)] {
        if let Some(a) = addr {
            eprintln!("rolehost: {name} storage on {}://{a}/<account>", e.scheme);
        }
    }
    if settings.dev_storage {
        eprintln!(
            "rolehost: serving the development account devstoreaccount1 (UseDevelopmentStorage=true)"
        );
    }
    Ok(bound)
}
