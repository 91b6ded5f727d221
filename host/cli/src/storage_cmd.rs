//! `rolehost storage ...`: the storage of a data directory from the command line. While a host
//! runs on the data directory (it holds the database), the commands go to its storage REST
//! endpoints instead ([`crate::remote`]), as they do with `--connection-string`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rolehost_runtime::manifest::{MANIFEST_FILE, Manifest};
use rolehost_runtime::service::DATABASE_FILE;
use rolehost_storage::blob::{BlobListItem, Conditions, GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::PutMessageOptions;
use rolehost_storage::table::{EdmValue, Entity, Query, StoredEntity, TableOp, UpdateMode};
use rolehost_storage::{AccountName, Backend, ListOptions, RedbStore, StorageOptions};

/// Where the storage is and which account to use.
#[derive(Args, Debug)]
pub(crate) struct StorageArgs {
    /// Talk to this storage endpoint (an Azure connection string, as `rolehost storage
    /// connection-string` prints) instead of a data directory. Without it, a data directory a
    /// host is running on is reached through that host's endpoints.
    #[arg(
        long,
        env = "AZURE_STORAGE_CONNECTION_STRING",
        global = true,
        hide_env_values = true
    )]
    connection_string: Option<String>,
    /// The data directory. Default: the manifest's `storage.data-dir`, else the host's
    /// (`ROLEHOST_HOST_DATA_DIR`, default ~/.local/share/rolehost).
    #[arg(long, env = "ROLEHOST_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The service (directory or manifest) whose storage to use.
    #[arg(long, default_value = ".", global = true)]
    service: PathBuf,
    /// The storage account. Default: the manifest's service name.
    #[arg(long, global = true)]
    account: Option<String>,
    #[command(flatten)]
    storage: crate::StorageChoice,
    #[command(subcommand)]
    command: StorageCommand,
}

#[derive(Subcommand, Debug)]
enum StorageCommand {
    /// Blobs and containers.
    #[command(subcommand)]
    Blob(BlobCmd),
    /// Queues and messages.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Tables and entities.
    #[command(subcommand)]
    Table(TableCmd),
    /// Print a service's storage account keys (primary, secondary), kept by the host in
    /// `<data dir>/storage-keys/` (owner-only). The data directory is `--data-dir`, else the
    /// host's (`ROLEHOST_HOST_DATA_DIR`, default ~/.local/share/rolehost).
    Keys {
        /// The service (its account).
        #[arg(value_name = "SERVICE")]
        name: String,
        /// Replace this key (primary or secondary) with a new random one first; requests
        /// signed with the old one are refused from then on, also by a running host.
        #[arg(long, value_name = "KEY")]
        regenerate: Option<rolehost_rest::keys::Which>,
    },
    /// Print a connection string for a service's account on the running host of the data
    /// directory: its storage endpoints and a key. Azure SDKs and tools take it as it is.
    ConnectionString {
        /// The service (its account).
        #[arg(value_name = "SERVICE")]
        name: String,
        /// Use the secondary key.
        #[arg(long)]
        secondary: bool,
    },
}

#[derive(Subcommand, Debug)]
enum BlobCmd {
    /// Create a container.
    CreateContainer {
        /// Container name.
        container: String,
    },
    /// List containers.
    Containers,
    /// Put a blob from a file or a string (creating the container if missing).
    Put {
        /// Container name.
        container: String,
        /// Blob name.
        name: String,
        /// Read the content from this file.
        #[arg(long, conflicts_with = "text", required_unless_present = "text")]
        file: Option<PathBuf>,
        /// Use this text as the content.
        #[arg(long)]
        text: Option<String>,
        /// Content-Type.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Write a blob's content to stdout or a file.
    Get {
        /// Container name.
        container: String,
        /// Blob name.
        name: String,
        /// Write here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the blobs of a container: name, size, ETag.
    List {
        /// Container name.
        container: String,
        /// Only names starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Delete a blob.
    Delete {
        /// Container name.
        container: String,
        /// Blob name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    /// Create a queue.
    Create {
        /// Queue name.
        queue: String,
    },
    /// List queues with their approximate message counts.
    List,
    /// Put messages (creating the queue if missing). With --repeat, `{n}` in a body becomes
    /// the message's number.
    Put {
        /// Queue name.
        queue: String,
        /// Message bodies.
        #[arg(required = true)]
        bodies: Vec<String>,
        /// Put each body this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Show up to N visible messages without changing them.
    Peek {
        /// Queue name.
        queue: String,
        /// How many (1..=32).
        #[arg(short = 'n', long, default_value_t = 32)]
        count: u32,
    },
    /// Print the approximate message count.
    Count {
        /// Queue name.
        queue: String,
    },
    /// Delete every message.
    Clear {
        /// Queue name.
        queue: String,
    },
}

#[derive(Subcommand, Debug)]
enum TableCmd {
    /// Create a table.
    Create {
        /// Table name.
        table: String,
    },
    /// List tables.
    List,
    /// Insert or replace an entity. Properties are `name=value` (a string) or
    /// `name:type=value` with type int32, int64, double, bool, guid, datetime (RFC 3339).
    Upsert {
        /// Table name.
        table: String,
        /// PartitionKey.
        partition_key: String,
        /// RowKey.
        row_key: String,
        /// Properties.
        properties: Vec<String>,
    },
    /// Print one entity.
    Get {
        /// Table name.
        table: String,
        /// PartitionKey.
        partition_key: String,
        /// RowKey.
        row_key: String,
    },
    /// Print the entities matching an OData filter (all pages).
    Query {
        /// Table name.
        table: String,
        /// E.g. `PartitionKey eq 'a' and Count gt 3`.
        #[arg(long)]
        filter: Option<String>,
    },
}

/// Where the commands act: a data directory opened here, or a running host over REST.
enum Target {
    Local(Arc<dyn Backend>, AccountName),
    Remote(Box<crate::remote::Remote>),
}

fn target(args: &StorageArgs) -> anyhow::Result<Target> {
    if let Some(cs) = &args.connection_string {
        return Ok(Target::Remote(Box::new(
            crate::remote::Remote::from_connection_string(cs)?,
        )));
    }
    let (data_dir, account) = locate(args)?;
    // Storage given by location (a PostgreSQL database is opened by any number of processes
    // at once; a file is opened here, failing while a host holds it).
    if let Some(location) = args.storage.location()? {
        let store = rolehost_runtime::storage_location::open(
            &location,
            StorageOptions::default(),
            args.storage.pool_size(),
        )
        .with_context(|| format!("opening the storage at {location}"))?;
        return Ok(Target::Local(store, account));
    }
    let Some(endpoints) = rolehost_runtime::storage_rest::read_endpoints(&data_dir) else {
        return Ok(Target::Local(open(&data_dir)?, account));
    };
    // A host wrote where it serves this data directory. If it still holds the database, it is
    // running: go through its endpoints. If not, it stopped without removing the file.
    if let Ok(store) = open(&data_dir) {
        tracing::debug!("no host holds {}: opened it here", data_dir.display());
        return Ok(Target::Local(store, account));
    }
    let keys = account_keys(&data_dir, account.as_str())?;
    let cs = rolehost_rest::keys::connection_string(account.as_str(), &keys.primary, &endpoints);
    tracing::debug!(
        "a host runs on {}: using its storage endpoints",
        data_dir.display()
    );
    Ok(Target::Remote(Box::new(
        crate::remote::Remote::from_connection_string(&cs)?,
    )))
}

/// The data directory and account the arguments name.
fn locate(args: &StorageArgs) -> anyhow::Result<(PathBuf, AccountName)> {
    let manifest_path = if args.service.is_dir() {
        args.service.join(MANIFEST_FILE)
    } else {
        args.service.clone()
    };
    let manifest = if manifest_path.is_file() {
        Some(Manifest::load(&manifest_path)?)
    } else {
        None
    };
    let data_dir = match (&args.data_dir, &manifest) {
        (Some(d), _) => d.clone(),
        (None, Some(m)) => m.storage.data_dir.clone(),
        // No service named: the host's data directory (where `rolehost serve` keeps it).
        (None, None) => key_dir(None),
    };
    let account = match (&args.account, &manifest) {
        (Some(a), _) => a.clone(),
        (None, Some(m)) => m.service.clone(),
        (None, None) => bail!("no manifest to take the account from; give --account"),
    };
    let account = AccountName::new(account).context("--account")?;
    Ok((data_dir, account))
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn Backend>> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(DATABASE_FILE);
    let store = RedbStore::open(&path, StorageOptions::default()).with_context(|| {
        format!(
            "opening {} (a running host holds it and serves no storage endpoints: stop it, or turn its endpoints on)",
            path.display()
        )
    })?;
    Ok(Arc::new(store))
}

pub(crate) fn run(args: StorageArgs) -> anyhow::Result<()> {
    match &args.command {
        StorageCommand::Keys { name, regenerate } => {
            return keys(args.data_dir.clone(), name, *regenerate);
        }
        StorageCommand::ConnectionString { name, secondary } => {
            return connection_string(args.data_dir.clone(), name, *secondary);
        }
        _ => {}
    }
    let target = target(&args)?;
    let mut out = std::io::stdout().lock();
    match (target, args.command) {
        (Target::Local(store, account), StorageCommand::Blob(cmd)) => {
            blob(&*store, &account, cmd, &mut out)
        }
        (Target::Local(store, account), StorageCommand::Queue(cmd)) => {
            queue(&*store, &account, cmd, &mut out)
        }
        (Target::Local(store, account), StorageCommand::Table(cmd)) => {
            table(&*store, &account, cmd, &mut out)
        }
        (Target::Remote(r), StorageCommand::Blob(cmd)) => remote_blob(&r, cmd, &mut out),
        (Target::Remote(r), StorageCommand::Queue(cmd)) => remote_queue(&r, cmd, &mut out),
        (Target::Remote(r), StorageCommand::Table(cmd)) => remote_table(&r, cmd, &mut out),
        (_, StorageCommand::Keys { .. } | StorageCommand::ConnectionString { .. }) => Ok(()),
    }
}

/// The data directory holding a host's (or `rolehost run`'s) keys and endpoints.
fn key_dir(data_dir: Option<PathBuf>) -> PathBuf {
    data_dir
        .or_else(|| std::env::var_os("ROLEHOST_HOST_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(crate::client::default_host_data_dir)
}

fn account_keys(
    data_dir: &std::path::Path,
    service: &str,
) -> anyhow::Result<rolehost_rest::AccountKeys> {
    let files = rolehost_rest::KeyFiles::open(
        data_dir.join(rolehost_runtime::storage_rest::KEYS_DIR),
        false,
    )?;
    files.read(service)?.with_context(|| {
        format!(
            "no storage keys for {service:?} in {}: is it deployed on the host of this data directory (--data-dir)?",
            data_dir.display()
        )
    })
}

fn keys(
    data_dir: Option<PathBuf>,
    service: &str,
    regenerate: Option<rolehost_rest::keys::Which>,
) -> anyhow::Result<()> {
    let dir = key_dir(data_dir);
    let mut keys = account_keys(&dir, service)?;
    if let Some(which) = regenerate {
        let files = rolehost_rest::KeyFiles::open(
            dir.join(rolehost_runtime::storage_rest::KEYS_DIR),
            false,
        )?;
        keys = files.rotate(service, which)?;
        eprintln!(
            "rolehost: regenerated the {which:?} key of {service}; the old one is refused from now on"
        );
    }
    println!("primary: {}", keys.primary.to_base64());
    println!("secondary: {}", keys.secondary.to_base64());
    Ok(())
}

fn connection_string(
    data_dir: Option<PathBuf>,
    service: &str,
    secondary: bool,
) -> anyhow::Result<()> {
    let dir = key_dir(data_dir);
    let keys = account_keys(&dir, service)?;
    let endpoints = rolehost_runtime::storage_rest::read_endpoints(&dir).with_context(|| {
        format!(
            "no storage endpoints in {}: is a host running on this data directory (--data-dir), with its storage endpoints on?",
            dir.display()
        )
    })?;
    let key = if secondary {
        &keys.secondary
    } else {
        &keys.primary
    };
    println!(
        "{}",
        rolehost_rest::keys::connection_string(service, key, &endpoints)
    );
    Ok(())
}

fn all_pages<T>(
    mut page: impl FnMut(&ListOptions) -> anyhow::Result<rolehost_storage::Page<T>>,
    prefix: Option<String>,
) -> anyhow::Result<Vec<T>> {
    let mut options = ListOptions {
        prefix,
        ..ListOptions::default()
    };
    let mut all = Vec::new();
    loop {
        let p = page(&options)?;
        all.extend(p.items);
        match p.next_marker {
            Some(m) => options.marker = Some(m),
            None => return Ok(all),
        }
    }
}

fn blob(
    store: &dyn Backend,
    account: &AccountName,
    cmd: BlobCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        BlobCmd::CreateContainer { container } => {
            store.create_container(account, &container, Vec::new())?;
            writeln!(out, "created container {container}")?;
        }
        BlobCmd::Containers => {
            for c in all_pages(|o| Ok(store.list_containers(account, o)?), None)? {
                writeln!(out, "{}", c.name)?;
            }
        }
        BlobCmd::Put {
            container,
            name,
            file,
            text,
            content_type,
        } => {
            match store.create_container(account, &container, Vec::new()) {
                Ok(_) | Err(rolehost_storage::BlobError::ContainerAlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let mut options = PutBlobOptions::default();
            options.content.content_type = content_type;
            let props = match (file, text) {
                (Some(f), _) => {
                    let mut r = std::fs::File::open(&f)
                        .with_context(|| format!("opening {}", f.display()))?;
                    store.put_blob(account, &container, &name, &mut r, options)?
                }
                (None, Some(t)) => {
                    store.put_blob(account, &container, &name, &mut t.as_bytes(), options)?
                }
                (None, None) => bail!("give --file or --text"),
            };
            writeln!(
                out,
                "{container}/{name}: {} bytes, etag {}",
                props.size, props.etag
            )?;
        }
        BlobCmd::Get {
            container,
            name,
            output,
        } => {
            let mut read =
                store.get_blob(account, &container, &name, &GetBlobOptions::default())?;
            match output {
                Some(path) => {
                    let mut f = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    std::io::copy(&mut read.reader, &mut f)?;
                }
                None => {
                    std::io::copy(&mut read.reader, out)?;
                }
            }
        }
        BlobCmd::List { container, prefix } => {
            let items = all_pages(
                |o| Ok(store.list_blobs(account, &container, o, None)?),
                prefix,
            )?;
            for item in items {
                if let BlobListItem::Blob(b) = item {
                    writeln!(out, "{}\t{}\t{}", b.name, b.size, b.etag)?;
                }
            }
        }
        BlobCmd::Delete { container, name } => {
            store.delete_blob(account, &container, &name, &Conditions::default(), None)?;
            writeln!(out, "deleted {container}/{name}")?;
        }
    }
    Ok(())
}

fn queue(
    store: &dyn Backend,
    account: &AccountName,
    cmd: QueueCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::Create { queue } => {
            store.create_queue(account, &queue, Vec::new())?;
            writeln!(out, "created queue {queue}")?;
        }
        QueueCmd::List => {
            for q in all_pages(|o| Ok(store.list_queues(account, o)?), None)? {
                let count = store
                    .get_queue_properties(account, &q.name)?
                    .approximate_message_count;
                writeln!(out, "{}\t{count}", q.name)?;
            }
        }
        QueueCmd::Put {
            queue,
            bodies,
            repeat,
        } => {
            store.create_queue(account, &queue, Vec::new())?;
            let mut n = 0u64;
            for body in &bodies {
                for i in 0..repeat {
                    let text = if repeat > 1 {
                        body.replace("{n}", &i.to_string())
                    } else {
                        body.clone()
                    };
                    store.put_message(
                        account,
                        &queue,
                        text.as_bytes(),
                        PutMessageOptions::default(),
                    )?;
                    n += 1;
                }
            }
            writeln!(out, "put {n} message(s) on {queue}")?;
        }
        QueueCmd::Peek { queue, count } => {
            for m in store.peek_messages(account, &queue, count)? {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    m.id,
                    m.dequeue_count,
                    String::from_utf8_lossy(&m.body)
                )?;
            }
        }
        QueueCmd::Count { queue } => {
            let p = store.get_queue_properties(account, &queue)?;
            writeln!(out, "{}", p.approximate_message_count)?;
        }
        QueueCmd::Clear { queue } => {
            store.clear_messages(account, &queue)?;
            writeln!(out, "cleared {queue}")?;
        }
    }
    Ok(())
}

/// Parses `name=value` or `name:type=value`.
fn property(spec: &str) -> anyhow::Result<(String, EdmValue)> {
    let (key, value) = spec
        .split_once('=')
        .with_context(|| format!("property {spec:?}: expected name=value or name:type=value"))?;
    let (name, ty) = key.split_once(':').unwrap_or((key, "string"));
    let bad = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("property {name}: {value:?} is not a {ty}: {e}")
    };
    let v = match ty {
        "string" => EdmValue::String(value.to_string()),
        "int32" => EdmValue::Int32(value.parse().map_err(|e| bad(&e))?),
        "int64" => EdmValue::Int64(value.parse().map_err(|e| bad(&e))?),
        "double" => EdmValue::Double(value.parse().map_err(|e| bad(&e))?),
        "bool" => EdmValue::Boolean(value.parse().map_err(|e| bad(&e))?),
        "guid" => EdmValue::Guid(value.to_lowercase()),
        "datetime" => EdmValue::DateTime(
            rolehost_storage::table::datetime::parse_rfc3339(value)
                .ok_or_else(|| bad(&"expected RFC 3339"))?,
        ),
        other => bail!(
            "property {name}: unknown type {other:?} (string, int32, int64, double, bool, guid, datetime)"
        ),
    };
    Ok((name.to_string(), v))
}

fn show(out: &mut impl Write, e: &StoredEntity) -> anyhow::Result<()> {
    write!(out, "{}\t{}\t{}", e.partition_key, e.row_key, e.etag)?;
    for (k, v) in &e.properties {
        write!(out, "\t{k}={v:?}")?;
    }
    writeln!(out)?;
    Ok(())
}

fn table(
    store: &dyn Backend,
    account: &AccountName,
    cmd: TableCmd,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match cmd {
        TableCmd::Create { table } => {
            store.create_table(account, &table)?;
            writeln!(out, "created table {table}")?;
        }
        TableCmd::List => {
            for t in all_pages(|o| Ok(store.list_tables(account, o)?), None)? {
                writeln!(out, "{t}")?;
            }
        }
        TableCmd::Upsert {
            table,
            partition_key,
            row_key,
            properties,
        } => {
            let mut entity = Entity::new(partition_key, row_key);
            for p in &properties {
                let (name, value) = property(p)?;
                entity = entity.with(name, value);
            }
            let etag = store.execute(
                account,
                &table,
                TableOp::Upsert {
                    entity,
                    mode: UpdateMode::Replace,
                },
            )?;
            writeln!(out, "etag {}", etag.unwrap_or_default())?;
        }
        TableCmd::Get {
            table,
            partition_key,
            row_key,
        } => {
            let e = store.get_entity(account, &table, &partition_key, &row_key, None)?;
            show(out, &e)?;
        }
        TableCmd::Query { table, filter } => {
            let mut query = Query {
                filter,
                ..Query::default()
            };
            loop {
                let page = store.query_entities(account, &table, &query)?;
                for e in &page.entities {
                    show(out, e)?;
                }
                match page.continuation {
                    Some(c) => query.continuation = Some(c),
                    None => break,
                }
            }
        }
    }
    Ok(())
}

// ---- The same commands against a running host, over its storage REST endpoints ----

use crate::remote::{Remote, enc, enc_blob, full, odata_key};
use rolehost_rest::Service;

/// Follows `NextMarker` through every page of an XML listing; `items` takes each page.
fn remote_pages(
    r: &Remote,
    service: Service,
    path: &str,
    mut items: impl FnMut(&rolehost_rest::xml::Node) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut marker = String::new();
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = if marker.is_empty() {
            path.to_string()
        } else {
            format!("{path}{sep}marker={}", enc(&marker))
        };
        let root = r.ok(service, "GET", &url, &[], None)?.xml()?;
        items(&root)?;
        match root.child_text("NextMarker") {
            Some(m) if !m.is_empty() => marker = m.to_string(),
            _ => return Ok(()),
        }
    }
}

fn remote_blob(r: &Remote, cmd: BlobCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let create = |c: &str| -> anyhow::Result<bool> {
        let path = format!("/{}?restype=container", enc(c));
        let a = r.call(Service::Blob, "PUT", &path, &[], None, None)?;
        if a.status == 409 {
            return Ok(false);
        }
        crate::remote::check(a, "PUT", &path).map(|_| true)
    };
    match cmd {
        BlobCmd::CreateContainer { container } => {
            if !create(&container)? {
                bail!("container {container} already exists");
            }
            writeln!(out, "created container {container}")?;
        }
        BlobCmd::Containers => remote_pages(r, Service::Blob, "/?comp=list", |root| {
            for c in root
                .child("Containers")
                .into_iter()
                .flat_map(|n| n.all("Container"))
            {
                writeln!(out, "{}", c.child_text("Name").unwrap_or(""))?;
            }
            Ok(())
        })?,
        BlobCmd::Put {
            container,
            name,
            file,
            text,
            content_type,
        } => {
            create(&container)?;
            let body = match (file, text) {
                (Some(f), _) => r.file_body(&f)?,
                (None, Some(t)) => {
                    let len = t.len() as u64;
                    (full(bytes::Bytes::from(t)), len)
                }
                (None, None) => bail!("give --file or --text"),
            };
            let size = body.1;
            let mut headers = vec![("x-ms-blob-type", "BlockBlob".to_string())];
            if let Some(t) = content_type {
                headers.push(("x-ms-blob-content-type", t));
            }
            let path = format!("/{}/{}", enc(&container), enc_blob(&name));
            let a = r.ok(Service::Blob, "PUT", &path, &headers, Some(body))?;
            writeln!(
                out,
                "{container}/{name}: {size} bytes, etag {}",
                a.header("etag").unwrap_or("")
            )?;
        }
        BlobCmd::Get {
            container,
            name,
            output,
        } => {
            let path = format!("/{}/{}", enc(&container), enc_blob(&name));
            let a = match &output {
                Some(p) => {
                    // Written to a temporary file and renamed once whole, so a failed
                    // download never leaves a partial file under the name asked for.
                    let tmp = p.with_extension("rolehost-partial");
                    let mut f = std::fs::File::create(&tmp)
                        .with_context(|| format!("creating {}", tmp.display()))?;
                    let a = r.call(Service::Blob, "GET", &path, &[], None, Some(&mut f))?;
                    if (200..300).contains(&a.status) {
                        f.sync_all()?;
                        std::fs::rename(&tmp, p)
                            .with_context(|| format!("renaming to {}", p.display()))?;
                    } else {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    a
                }
                None => r.call(Service::Blob, "GET", &path, &[], None, Some(out))?,
            };
            crate::remote::check(a, "GET", &path)?;
        }
        BlobCmd::List { container, prefix } => {
            let mut path = format!("/{}?restype=container&comp=list", enc(&container));
            if let Some(p) = prefix {
                path.push_str(&format!("&prefix={}", enc(&p)));
            }
            remote_pages(r, Service::Blob, &path, |root| {
                for b in root.child("Blobs").into_iter().flat_map(|n| n.all("Blob")) {
                    let props = b.child("Properties");
                    let prop = |n: &str| props.and_then(|p| p.child_text(n)).unwrap_or("");
                    writeln!(
                        out,
                        "{}\t{}\t{}",
                        b.child_text("Name").unwrap_or(""),
                        prop("Content-Length"),
                        prop("Etag")
                    )?;
                }
                Ok(())
            })?;
        }
        BlobCmd::Delete { container, name } => {
            let path = format!("/{}/{}", enc(&container), enc_blob(&name));
            r.ok(Service::Blob, "DELETE", &path, &[], None)?;
            writeln!(out, "deleted {container}/{name}")?;
        }
    }
    Ok(())
}

fn remote_queue(r: &Remote, cmd: QueueCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let count = |q: &str| -> anyhow::Result<String> {
        let a = r.ok(
            Service::Queue,
            "GET",
            &format!("/{}?comp=metadata", enc(q)),
            &[],
            None,
        )?;
        Ok(a.header("x-ms-approximate-messages-count")
            .unwrap_or("0")
            .to_string())
    };
    match cmd {
        QueueCmd::Create { queue } => {
            r.ok(
                Service::Queue,
                "PUT",
                &format!("/{}", enc(&queue)),
                &[],
                None,
            )?;
            writeln!(out, "created queue {queue}")?;
        }
        QueueCmd::List => {
            let mut names = Vec::new();
            remote_pages(r, Service::Queue, "/?comp=list", |root| {
                for q in root
                    .child("Queues")
                    .into_iter()
                    .flat_map(|n| n.all("Queue"))
                {
                    names.push(q.child_text("Name").unwrap_or("").to_string());
                }
                Ok(())
            })?;
            for name in names {
                writeln!(out, "{name}\t{}", count(&name)?)?;
            }
        }
        QueueCmd::Put {
            queue,
            bodies,
            repeat,
        } => {
            r.ok(
                Service::Queue,
                "PUT",
                &format!("/{}", enc(&queue)),
                &[],
                None,
            )?;
            let path = format!("/{}/messages", enc(&queue));
            let mut n = 0u64;
            for body in &bodies {
                for i in 0..repeat {
                    let text = if repeat > 1 {
                        body.replace("{n}", &i.to_string())
                    } else {
                        body.clone()
                    };
                    let mut x = rolehost_rest::xml::Xml::new();
                    x.open("QueueMessage")
                        .elem("MessageText", &text)
                        .close("QueueMessage");
                    let xml = x.finish();
                    let len = xml.len() as u64;
                    r.ok(
                        Service::Queue,
                        "POST",
                        &path,
                        &[("content-type", "application/xml".into())],
                        Some((full(bytes::Bytes::from(xml)), len)),
                    )?;
                    n += 1;
                }
            }
            writeln!(out, "put {n} message(s) on {queue}")?;
        }
        QueueCmd::Peek { queue, count } => {
            let path = format!(
                "/{}/messages?peekonly=true&numofmessages={count}",
                enc(&queue)
            );
            let root = r.ok(Service::Queue, "GET", &path, &[], None)?.xml()?;
            for m in root.all("QueueMessage") {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    m.child_text("MessageId").unwrap_or(""),
                    m.child_text("DequeueCount").unwrap_or(""),
                    m.child_text("MessageText").unwrap_or("")
                )?;
            }
        }
        QueueCmd::Count { queue } => writeln!(out, "{}", count(&queue)?)?,
        QueueCmd::Clear { queue } => {
            let path = format!("/{}/messages", enc(&queue));
            r.ok(Service::Queue, "DELETE", &path, &[], None)?;
            writeln!(out, "cleared {queue}")?;
        }
    }
    Ok(())
}

fn remote_table(r: &Remote, cmd: TableCmd, out: &mut impl Write) -> anyhow::Result<()> {
    let json = [
        (
            "accept",
            "application/json;odata=minimalmetadata".to_string(),
        ),
        ("content-type", "application/json".to_string()),
    ];
    let entity_path = |t: &str, pk: &str, rk: &str| {
        format!(
            "/{}(PartitionKey='{}',RowKey='{}')",
            enc(t),
            odata_key(pk),
            odata_key(rk)
        )
    };
    match cmd {
        TableCmd::Create { table } => {
            let body = serde_json::json!({ "TableName": table }).to_string();
            let len = body.len() as u64;
            r.ok(
                Service::Table,
                "POST",
                "/Tables",
                &json,
                Some((full(bytes::Bytes::from(body)), len)),
            )?;
            writeln!(out, "created table {table}")?;
        }
        TableCmd::List => {
            let mut next: Option<String> = None;
            loop {
                let path = match &next {
                    Some(n) => format!("/Tables?NextTableName={}", enc(n)),
                    None => "/Tables".to_string(),
                };
                let a = r.ok(Service::Table, "GET", &path, &json, None)?;
                for t in a
                    .json()?
                    .get("value")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    writeln!(out, "{}", t["TableName"].as_str().unwrap_or(""))?;
                }
                next = a
                    .header("x-ms-continuation-nexttablename")
                    .map(str::to_string);
                if next.is_none() {
                    break;
                }
            }
        }
        TableCmd::Upsert {
            table,
            partition_key,
            row_key,
            properties,
        } => {
            let mut entity = Entity::new(partition_key.clone(), row_key.clone());
            for p in &properties {
                let (name, value) = property(p)?;
                entity = entity.with(name, value);
            }
            let body = serde_json::Value::Object(rolehost_rest::table::entity_to_json(&entity))
                .to_string();
            let len = body.len() as u64;
            let a = r.ok(
                Service::Table,
                "PUT",
                &entity_path(&table, &partition_key, &row_key),
                &json,
                Some((full(bytes::Bytes::from(body)), len)),
            )?;
            writeln!(out, "etag {}", a.header("etag").unwrap_or(""))?;
        }
        TableCmd::Get {
            table,
            partition_key,
            row_key,
        } => {
            let a = r.ok(
                Service::Table,
                "GET",
                &entity_path(&table, &partition_key, &row_key),
                &json,
                None,
            )?;
            show(out, &crate::remote::stored_entity(&a.json()?)?)?;
        }
        TableCmd::Query { table, filter } => {
            let mut next: Option<(String, String)> = None;
            loop {
                let mut q = Vec::new();
                if let Some(f) = &filter {
                    q.push(format!("$filter={}", enc(f)));
                }
                if let Some((p, rk)) = &next {
                    q.push(format!(
                        "NextPartitionKey={}&NextRowKey={}",
                        enc(p),
                        enc(rk)
                    ));
                }
                let path = format!("/{}()?{}", enc(&table), q.join("&"));
                let a = r.ok(Service::Table, "GET", &path, &json, None)?;
                for e in a
                    .json()?
                    .get("value")
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let Some(o) = e.as_object() {
                        show(out, &crate::remote::stored_entity(o)?)?;
                    }
                }
                next = match (
                    a.header("x-ms-continuation-nextpartitionkey"),
                    a.header("x-ms-continuation-nextrowkey"),
                ) {
                    (Some(p), Some(rk)) => Some((p.to_string(), rk.to_string())),
                    _ => None,
                };
                if next.is_none() {
                    break;
                }
            }
        }
    }
    Ok(())
}
