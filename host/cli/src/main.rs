//! `rolehost`: run, build and inspect services of Wasm roles.

mod client;
mod endpoints;
mod fabric_cmd;
mod remote;
mod storage_cmd;
mod verify_cmd;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rolehost_runtime::manifest::{ComponentSource, MANIFEST_FILE, Manifest};
use rolehost_runtime::service::{self, Service, ServiceOptions};

/// rolehost: Windows Azure Cloud Services (2008) as a WebAssembly runtime.
#[derive(Parser, Debug)]
#[command(name = "rolehost", version, about, long_about = None)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

/// Where storage is (`run`, `serve` and `storage` take it alike).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct StorageChoice {
    /// The storage: a redb database file (one process at a time; hosts taking turns on it
    /// share their services' storage), or a PostgreSQL URL that several hosts use at once:
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (password and port may be left out).
    /// Default: `<data-dir>/storage.redb` (for `run`, the manifest's `[storage] url` first).
    #[arg(
        long,
        value_name = "FILE|URL",
        env = "ROLEHOST_STORAGE",
        global = true,
        hide_env_values = true
    )]
    storage: Option<String>,
    /// Connections to a PostgreSQL database (1-64; default 16). Each host opens this many:
    /// keep the hosts' sum under the server's max_connections.
    #[arg(long, value_name = "N", global = true, value_parser = clap::value_parser!(u16).range(1..=64))]
    storage_pool_size: Option<u16>,
}

impl StorageChoice {
    /// The location given, if any (a relative file against the working directory).
    pub(crate) fn location(
        &self,
    ) -> anyhow::Result<Option<rolehost_runtime::storage_location::StorageLocation>> {
        let cwd = std::env::current_dir().context("reading the working directory")?;
        Ok(self
            .storage
            .as_deref()
            .map(|s| rolehost_runtime::storage_location::StorageLocation::parse(s, &cwd)))
    }

    /// The pool size given, if any.
    pub(crate) fn pool_size(&self) -> Option<usize> {
        self.storage_pool_size.map(usize::from)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build what needs building and run a service in the foreground on embedded storage.
    /// Ctrl-C stops every instance gracefully.
    Run {
        /// The service: a directory holding rolehost.toml, or the manifest file itself.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The data directory (storage, local resources); default: the manifest's
        /// `storage.data-dir`, or `.rolehost` next to it.
        #[arg(long, env = "ROLEHOST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Cargo target directory for guest builds.
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Stop gracefully after this many seconds instead of waiting for Ctrl-C.
        #[arg(long, value_name = "SECONDS")]
        stop_after: Option<u64>,
        /// Log each instance's CPU, memory and local-disk use against its quotas this often
        /// (0: never).
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        usage_every: u64,
        #[command(flatten)]
        storage: StorageChoice,
        #[command(flatten)]
        endpoints: endpoints::EndpointArgs,
    },
    /// Compile the service's guest crates (or one crate) to wasm32-wasip2 components,
    /// installing the target if it is missing.
    Build {
        /// A service directory or manifest, or a guest crate directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Cargo target directory.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Create, put, get, peek and list blobs, queue messages and table entities in a data
    /// directory (while no host is running on it).
    Storage(storage_cmd::StorageArgs),
    /// Replay the service's worker roles under every lost message and every crash point, and
    /// report which break the scenario's invariant (exit code 1 if any does).
    Verify(verify_cmd::VerifyArgs),
    /// Run a host that services are deployed to (the fabric), until Ctrl-C or SIGTERM.
    /// Deployed services come back when it starts again.
    Serve {
        /// The host's data directory: storage, uploaded files, service records, local
        /// resources, the management token. Default: ~/.local/share/rolehost.
        #[arg(long, env = "ROLEHOST_HOST_DATA_DIR")]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        storage: StorageChoice,
        /// The key snapshots are signed with (made, mode 0600, the first time), when not
        /// `<data-dir>/snapshot.key`. Hosts that share storage must share it to thaw each
        /// other's snapshots; a snapshot it did not sign is never thawed.
        #[arg(long, value_name = "FILE", env = "ROLEHOST_SNAPSHOT_KEY")]
        snapshot_key: Option<PathBuf>,
        /// Address of the management API (keep it on loopback: the token is its only guard).
        #[arg(long, default_value = client::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// Most instances the host runs, all services together.
        #[arg(long, default_value_t = fabric_cmd::MAX_INSTANCES)]
        max_instances: u32,
        /// A service's storage quota, KEY=N, repeatable: max-mb (default 10240),
        /// max-containers (1000), max-blobs (1000000), max-queues (1000), max-messages
        /// (1000000), max-tables (1000), max-entities (1000000). A manifest's
        /// `[storage.quota]` may lower these for its service, never raise them.
        #[arg(long, value_name = "KEY=N", value_parser = fabric_cmd::parse_quota)]
        account_quota: Vec<(rolehost_storage::Resource, u64)>,
        /// Megabytes of the storage disk no write may take: past it, writes are refused
        /// (503 ServerBusy) and deletes still work.
        #[arg(long, value_name = "MB", default_value_t = rolehost_storage::DEFAULT_HEADROOM_BYTES >> 20)]
        storage_headroom_mb: u64,
        #[command(flatten)]
        endpoints: endpoints::EndpointArgs,
    },
    /// Build a service's roles, upload them to a running host and deploy it; a service that
    /// runs there already is upgraded in place, a few instances at a time.
    Deploy {
        /// The service: a directory holding rolehost.toml, or the manifest file itself.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Cargo target directory for guest builds.
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// Take over the storage account a deleted service of the same name left (deleted
        /// without --purge-storage): without this, such a deployment is refused.
        #[arg(long)]
        adopt_storage: bool,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Change the number of instances of a role while the service runs.
    Scale {
        /// The service.
        service: String,
        /// The role.
        role: String,
        /// The new instance count.
        instances: u32,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Show the host's services, their roles and each instance's state and use.
    Status {
        /// Only this service.
        service: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Show a service's guest output (stdout, stderr, log lines).
    Logs {
        /// The service.
        service: String,
        /// Only this role.
        #[arg(long)]
        role: Option<String>,
        /// Only this instance.
        #[arg(long)]
        instance: Option<String>,
        /// Keep following new lines.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Freeze an instance of a running service: at its quiet point (a worker's run returned, a
    /// web instance between requests) its memory is captured into a snapshot, signed and kept
    /// in the host's own snapshot store (no guest can reach it; any host sharing its storage
    /// and snapshot key can thaw it); its local resources are discarded.
    /// Prints the snapshot's id.
    Freeze {
        /// The service.
        service: String,
        /// The instance, e.g. Counter_IN_0.
        instance: String,
        /// Also write the snapshot (compressed) to this file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// For a web instance busy with a request: how long to wait for it to finish, in
        /// milliseconds (default: the role's request timeout and a second). Past it the freeze
        /// is refused and the request goes on.
        #[arg(long, value_name = "MS")]
        wait_ms: Option<u64>,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Resume a frozen instance from its snapshot (an id from `rolehost freeze`, or a file), on
    /// this host or the one `--host` names: fresh local resources, its memory as it was.
    Thaw {
        /// A snapshot id, or a snapshot file.
        snapshot: String,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Stop every instance of a service (it stays deployed; `rolehost start` runs it again).
    Stop {
        /// The service.
        service: String,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Start a stopped service again.
    Start {
        /// The service.
        service: String,
        #[command(flatten)]
        host: client::HostArgs,
    },
    /// Stop a service and remove it from the host.
    Delete {
        /// The service.
        service: String,
        /// Also delete its storage account (every blob, queue and table). Without this flag
        /// the data stays.
        #[arg(long)]
        purge_storage: bool,
        #[command(flatten)]
        host: client::HostArgs,
    },
}

fn init_logging(verbose: u8, quiet: bool) {
    let default = match verbose {
        // Enumerating thousands of runs: their logs would drown the report.
        0 if quiet => "error",
        0 => "info,cranelift=warn,wasmtime=warn",
        1 => "debug,cranelift=warn,wasmtime=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    rolehost_runtime::process::bound_malloc_arenas();
    let cli = Cli::parse();
    let quiet = matches!(&cli.command, Command::Verify(a) if !a.single_case());
    init_logging(cli.verbose, quiet);
    // Storage commands block (on the engine, or on their own client's runtime when they go to a
    // running host), so they run outside the async runtime.
    let command = match cli.command {
        Command::Storage(args) => return storage_cmd::run(args),
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            Command::Run {
                path,
                data_dir,
                target_dir,
                stop_after,
                usage_every,
                storage,
                endpoints,
            } => {
                let usage = (usage_every > 0).then(|| Duration::from_secs(usage_every));
                run(
                    &path,
                    data_dir,
                    target_dir.as_deref(),
                    stop_after,
                    usage,
                    &storage,
                    &endpoints,
                )
                .await
            }
            Command::Build { path, target_dir } => build(&path, target_dir.as_deref()),
            Command::Storage(_) => unreachable!("storage commands ran above"),
            Command::Verify(args) => {
                if !verify_cmd::verify(args).await? {
                    std::process::exit(1);
                }
                Ok(())
            }
            Command::Serve {
                data_dir,
                storage,
                snapshot_key,
                listen,
                max_instances,
                account_quota,
                storage_headroom_mb,
                endpoints,
            } => {
                let signals = StopSignals::install()?;
                let mut quota = rolehost_storage::AccountQuota::HOST_DEFAULT;
                for (r, n) in account_quota {
                    quota.set(r, n);
                }
                let options = rolehost_runtime::fabric::FabricOptions {
                    data_dir: data_dir.unwrap_or_else(client::default_host_data_dir),
                    storage: storage.location()?,
                    storage_pool_size: storage.pool_size(),
                    max_instances,
                    snapshot_key,
                    account_quota: quota,
                    storage_headroom: storage_headroom_mb.saturating_mul(1 << 20),
                    dev_storage: endpoints.dev_storage,
                };
                let endpoints = endpoints.settings(Default::default());
                fabric_cmd::serve(options, listen, &endpoints, signals).await
            }
            Command::Deploy {
                path,
                target_dir,
                adopt_storage,
                host,
            } => fabric_cmd::deploy(&host, &path, target_dir.as_deref(), adopt_storage).await,
            Command::Scale {
                service,
                role,
                instances,
                host,
            } => fabric_cmd::scale(&host, &service, &role, instances).await,
            Command::Status {
                service,
                json,
                host,
            } => fabric_cmd::status(&host, service.as_deref(), json).await,
            Command::Logs {
                service,
                role,
                instance,
                follow,
                host,
            } => {
                fabric_cmd::logs(
                    &host,
                    &service,
                    role.as_deref(),
                    instance.as_deref(),
                    follow,
                )
                .await
            }
            Command::Freeze {
                service,
                instance,
                output,
                wait_ms,
                host,
            } => fabric_cmd::freeze(&host, &service, &instance, output.as_deref(), wait_ms).await,
            Command::Thaw { snapshot, host } => fabric_cmd::thaw(&host, &snapshot).await,
            Command::Stop { service, host } => {
                fabric_cmd::lifecycle(&host, &service, "stop", false).await
            }
            Command::Start { service, host } => {
                fabric_cmd::lifecycle(&host, &service, "start", false).await
            }
            Command::Delete {
                service,
                purge_storage,
                host,
            } => fabric_cmd::lifecycle(&host, &service, "delete", purge_storage).await,
        }
    })
}

async fn run(
    path: &Path,
    data_dir: Option<PathBuf>,
    target_dir: Option<&Path>,
    stop_after: Option<u64>,
    usage_log: Option<Duration>,
    storage: &StorageChoice,
    endpoint_args: &endpoints::EndpointArgs,
) -> anyhow::Result<()> {
    // Take over Ctrl-C and SIGTERM before anything starts, so a signal arriving while the
    // service starts stops it gracefully too.
    let mut stop_signals = StopSignals::install()?;
    let mut manifest = Manifest::load(path)?;
    if let Some(n) = storage.pool_size() {
        manifest.storage.pool_size = Some(n);
    }
    let location = storage.location()?;
    let data_dir = data_dir.unwrap_or_else(|| manifest.storage.data_dir.clone());
    let components =
        tokio::task::block_in_place(|| service::resolve_components(&manifest, target_dir))?;
    let store = service::open_storage(&data_dir, &manifest, location.as_ref(), None).context(
        "opening the service's storage (a redb file: is another rolehost using it? only one process may open it)",
    )?;
    let options = ServiceOptions {
        data_dir: data_dir.clone(),
        cache_dir: Some(data_dir.join("cache")),
        usage_log,
        ..ServiceOptions::default()
    };
    let service = Service::start(&manifest, &components, store, options).await?;
    eprintln!(
        "rolehost: service {} is running ({} instances, data in {}). Ctrl-C stops it.",
        service.name(),
        service.status().len(),
        data_dir.display()
    );
    for (role, addr) in service.endpoints() {
        eprintln!("rolehost: {role} answers on http://{addr}/");
    }
    let endpoint_settings = endpoint_args.settings(manifest.storage.endpoints.clone());
    let (rest_stop, rest_signal) = rolehost_runtime::stop::stop_signal();
    let keys = rolehost_rest::KeyFiles::open(
        data_dir.join(rolehost_runtime::storage_rest::KEYS_DIR),
        endpoint_settings.dev_storage,
    )?;
    let account_keys = keys
        .ensure(service.name())
        .context("making the storage account's keys")?;
    let service = Arc::new(service);
    let door = Arc::new(rolehost_rest::Door::new(
        service.storage().0,
        keys,
        Arc::new(ServiceEvents(Arc::downgrade(&service))),
    ));
    let bound = endpoints::start(door, &endpoint_settings, &data_dir, rest_signal).await?;
    if bound.endpoints.blob.is_some()
        || bound.endpoints.queue.is_some()
        || bound.endpoints.table.is_some()
    {
        eprintln!(
            "rolehost: connection string: {}",
            rolehost_rest::keys::connection_string(
                service.name(),
                &account_keys.primary,
                &bound.endpoints
            )
        );
    }
    let stop_timer = async {
        match stop_after {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = stop_signals.next() => {}
        () = stop_timer => {}
    }
    eprintln!("rolehost: stopping (Ctrl-C again to quit at once)");
    rest_stop.request();
    rolehost_runtime::storage_rest::remove_endpoints(&data_dir);
    let service = Arc::try_unwrap(service)
        .map_err(|_| anyhow::anyhow!("the service is still in use by the storage endpoints"))?;
    let shutdown = tokio::spawn(service.shutdown());
    tokio::select! {
        statuses = shutdown => {
            let statuses = statuses.context("waiting for the instances")?;
            let interrupted = statuses.iter().filter(|s| s.interrupted).count();
            let restarts: u32 = statuses.iter().map(|s| s.restarts).sum();
            eprintln!(
                "rolehost: stopped {} instances ({interrupted} interrupted after their grace period, {restarts} recycles in all)",
                statuses.len()
            );
        }
        () = stop_signals.next() => bail!("interrupted before every instance stopped"),
    }
    Ok(())
}

/// Wakes the service's waiting workers when a message is put over REST.
struct ServiceEvents(std::sync::Weak<Service>);

impl rolehost_rest::Events for ServiceEvents {
    fn message_visible(&self, _: &rolehost_storage::AccountName, queue: &str) {
        if let Some(s) = self.0.upgrade() {
            s.wake_queue(queue);
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, listened to from the moment they are installed.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals {
                interrupt: signal(SignalKind::interrupt()).context("listening for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Completes at the next Ctrl-C or SIGTERM.
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn build(path: &Path, target_dir: Option<&Path>) -> anyhow::Result<()> {
    let is_service =
        path.join(MANIFEST_FILE).is_file() || path.extension().is_some_and(|e| e == "toml");
    if is_service {
        let manifest = Manifest::load(path)?;
        for (name, role) in &manifest.roles {
            if let ComponentSource::Crate(dir) = &role.source {
                let built = rolehost_runtime::build::build_crate(dir, target_dir)?;
                for p in built {
                    println!("{name}: {}", p.display());
                }
            }
        }
    } else {
        for p in rolehost_runtime::build::build_crate(path, target_dir)? {
            println!("{}", p.display());
        }
    }
    Ok(())
}
