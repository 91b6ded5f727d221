//! `rolehost storage ...`: the storage of a data directory from the command line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rolehost_runtime::manifest::{MANIFEST_FILE, Manifest};
use rolehost_runtime::service::DATABASE_FILE;
use rolehost_storage::blob::{BlobListItem, BlobStore, Conditions, GetBlobOptions, PutBlobOptions};
use rolehost_storage::queue::{PutMessageOptions, QueueStore};
use rolehost_storage::table::{
    EdmValue, Entity, Query, StoredEntity, TableOp, TableStore, UpdateMode,
};
use rolehost_storage::{AccountName, ListOptions, RedbStore, StorageOptions};

/// Where the storage is and which account to use.
#[derive(Args, Debug)]
pub(crate) struct StorageArgs {
    /// The data directory. Default: the manifest's `storage.data-dir`.
    #[arg(long, env = "ROLEHOST_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The service (directory or manifest) whose storage to use.
    #[arg(long, default_value = ".", global = true)]
    service: PathBuf,
    /// The storage account. Default: the manifest's service name.
    #[arg(long, global = true)]
    account: Option<String>,
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

fn open(args: &StorageArgs) -> anyhow::Result<(RedbStore, AccountName)> {
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
        (None, None) => bail!(
            "no {MANIFEST_FILE} in {}; give --service or --data-dir",
            args.service.display()
        ),
    };
    let account = match (&args.account, &manifest) {
        (Some(a), _) => a.clone(),
        (None, Some(m)) => m.service.clone(),
        (None, None) => bail!("no manifest to take the account from; give --account"),
    };
    let account = AccountName::new(account).context("--account")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(DATABASE_FILE);
    let store = RedbStore::open(&path, StorageOptions::default()).with_context(|| {
        format!(
            "opening {} (a running `rolehost run` holds it; stop it first)",
            path.display()
        )
    })?;
    Ok((store, account))
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
    let (store, account) = open(&args)?;
    let mut out = std::io::stdout().lock();
    match args.command {
        StorageCommand::Blob(cmd) => blob(&store, &account, cmd, &mut out),
        StorageCommand::Queue(cmd) => queue(&store, &account, cmd, &mut out),
        StorageCommand::Table(cmd) => table(&store, &account, cmd, &mut out),
        StorageCommand::Keys { .. } | StorageCommand::ConnectionString { .. } => Ok(()),
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
    store: &RedbStore,
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
    store: &RedbStore,
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
    store: &RedbStore,
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
