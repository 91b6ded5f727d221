//! `rolehost serve` and the commands that talk to a running host: deploy, scale, status,
//! logs, stop, start, delete.

use std::net::SocketAddr;
use std::path::Path;

use std::fmt::Write as _;

use anyhow::{Context, bail};
use http_body_util::BodyExt;
use hyper::Method;
use rolehost_runtime::fabric::api::{self, ApiBody};
use rolehost_runtime::fabric::{
    ADDRESS_FILE, DEFAULT_MAX_INSTANCES, Deployment, Fabric, FabricOptions, ServiceStatus,
    TlsDigests,
};
use rolehost_runtime::manifest::Manifest;
use rolehost_runtime::service;

use crate::client::{Client, HostArgs};

/// Runs a host until Ctrl-C or SIGTERM.
pub(crate) async fn serve(
    options: FabricOptions,
    listen: SocketAddr,
    endpoints: &rolehost_runtime::storage_rest::EndpointSettings,
    mut signals: crate::StopSignals,
) -> anyhow::Result<()> {
    let data_dir = options.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let progress = |line: String| eprintln!("rolehost: {line}");
    let fabric = Fabric::open(options, &progress)
        .await
        .context("opening the host's data directory")?;
    let token = api::ensure_token(fabric.data_dir()).context("making the management token")?;
    let listener = rolehost_runtime::conn::bind(listen)
        .with_context(|| format!("listening on {listen} (--listen)"))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let url_file = fabric.data_dir().join(ADDRESS_FILE);
    std::fs::write(&url_file, &url).with_context(|| format!("writing {}", url_file.display()))?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the management API listens beyond loopback; anyone with the token can deploy code");
    }
    let (stop, signal) = rolehost_runtime::stop::stop_signal();
    let server = tokio::spawn(api::serve(fabric.clone(), listener, token, signal.clone()));
    let door = std::sync::Arc::new(rolehost_rest::Door::new(
        fabric.storage(),
        fabric.storage_keys().clone(),
        std::sync::Arc::new(FabricEvents(std::sync::Arc::downgrade(&fabric))),
    ));
    crate::endpoints::start(door, endpoints, fabric.data_dir(), signal).await?;
    eprintln!(
        "rolehost: host ready; management API on {url} (token in {}), {} services running",
        fabric
            .data_dir()
            .join(rolehost_runtime::fabric::TOKEN_FILE)
            .display(),
        fabric.running().len()
    );
    signals.next().await;
    eprintln!("rolehost: stopping the host (services come back when it starts again)");
    stop.request();
    let _ = server.await;
    tokio::select! {
        () = fabric.shutdown() => {}
        () = signals.next() => bail!("interrupted before every instance stopped"),
    }
    let _ = std::fs::remove_file(&url_file);
    rolehost_runtime::storage_rest::remove_endpoints(fabric.data_dir());
    Ok(())
}

/// Wakes a service's waiting workers when a message is put over REST.
struct FabricEvents(std::sync::Weak<Fabric>);

impl rolehost_rest::Events for FabricEvents {
    fn message_visible(&self, account: &rolehost_storage::AccountName, queue: &str) {
        if let Some(f) = self.0.upgrade() {
            f.wake_queue(account, queue);
        }
    }
}

/// Uploads a service's files and deploys it, showing progress.
pub(crate) async fn deploy(
    host: &HostArgs,
    path: &Path,
    target_dir: Option<&Path>,
    adopt_storage: bool,
) -> anyhow::Result<()> {
    let client = Client::new(host)?;
    let manifest = Manifest::load(path)?;
    let manifest_file = manifest.path.clone();
    let text = std::fs::read_to_string(&manifest_file)
        .with_context(|| format!("reading {}", manifest_file.display()))?;
    eprintln!("rolehost: building the roles of {}", manifest.service);
    let components =
        tokio::task::block_in_place(|| service::resolve_components(&manifest, target_dir))?;
    let mut deployment = Deployment {
        manifest: text,
        ..Deployment::default()
    };
    for (role, file) in &components {
        let sha = client.upload(&format!("role {role}"), file).await?;
        deployment.components.insert(role.clone(), sha);
    }
    for (role, spec) in &manifest.roles {
        let mut tls = Vec::new();
        for e in &spec.web.endpoints {
            tls.push(match &e.tls {
                None => None,
                Some(files) => Some(TlsDigests {
                    certificate: client
                        .upload(&format!("role {role} certificate"), &files.certificate)
                        .await?,
                    key: client
                        .upload(&format!("role {role} key"), &files.key)
                        .await?,
                }),
            });
        }
        if tls.iter().any(Option::is_some) {
            deployment.tls.insert(role.clone(), tls);
        }
    }
    let body = serde_json::to_vec(&deployment)?;
    let resp = client
        .send(
            Method::POST,
            if adopt_storage {
                "/v1/deploy?adopt-storage=true"
            } else {
                "/v1/deploy"
            },
            ApiBody::Whole(Some(body.into())),
            Some("application/json"),
        )
        .await?;
    let mut body = accepted(resp).await?;
    // Progress lines as they come; the last says how it ended.
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("reading the host's progress")?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap_or_default();
            if let Some(p) = v.get("progress").and_then(|p| p.as_str()) {
                eprintln!("rolehost: {p}");
            } else if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                bail!("deployment refused: {e}");
            } else if let Some(name) = v.get("done").and_then(|d| d.as_str()) {
                println!("deployed {name}");
                return Ok(());
            }
        }
    }
    bail!("the host closed the connection before the deployment ended (see its log)")
}

/// The body of a response the host accepted; otherwise an error with its message.
async fn accepted(
    resp: hyper::Response<hyper::body::Incoming>,
) -> anyhow::Result<hyper::body::Incoming> {
    let status = resp.status();
    let body = resp.into_body();
    if status.is_success() {
        return Ok(body);
    }
    let bytes = body.collect().await?.to_bytes();
    bail!(
        "the host refused ({status}): {}",
        String::from_utf8_lossy(&bytes)
    )
}

/// `rolehost scale`.
pub(crate) async fn scale(
    host: &HostArgs,
    service: &str,
    role: &str,
    n: u32,
) -> anyhow::Result<()> {
    Client::new(host)?
        .json(
            Method::POST,
            &format!("/v1/services/{service}/scale"),
            Some(serde_json::json!({ "role": role, "instances": n })),
        )
        .await?;
    println!("{service}/{role}: {n} instances");
    Ok(())
}

/// `rolehost freeze`: the snapshot is kept in the service's storage; `-o` writes it too.
pub(crate) async fn freeze(
    host: &HostArgs,
    service: &str,
    instance: &str,
    out: Option<&Path>,
    wait_ms: Option<u64>,
) -> anyhow::Result<()> {
    let wait = wait_ms.map_or_else(String::new, |ms| format!("?wait-ms={ms}"));
    let resp = Client::new(host)?
        .send(
            Method::POST,
            &format!("/v1/services/{service}/instances/{instance}/freeze{wait}"),
            ApiBody::Whole(None),
            None,
        )
        .await?;
    let id = resp
        .headers()
        .get("x-rolehost-snapshot")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let file = accepted(resp).await?.collect().await?.to_bytes();
    if let Some(path) = out {
        std::fs::write(path, &file).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "rolehost: snapshot written to {} ({} KiB)",
            path.display(),
            file.len() >> 10
        );
    }
    println!("{id}");
    Ok(())
}

/// `rolehost thaw`: a snapshot id (kept in the service's storage) or a snapshot file.
pub(crate) async fn thaw(host: &HostArgs, snapshot: &str) -> anyhow::Result<()> {
    let client = Client::new(host)?;
    let path = Path::new(snapshot);
    let resp = if path.is_file() {
        let file = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        client
            .send(
                Method::POST,
                "/v1/thaw",
                ApiBody::Whole(Some(file.into())),
                Some("application/vnd.rolehost.snapshot"),
            )
            .await?
    } else {
        client
            .send(
                Method::POST,
                &format!("/v1/thaw?snapshot={snapshot}"),
                ApiBody::Whole(None),
                None,
            )
            .await?
    };
    let body = accepted(resp).await?.collect().await?.to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!("thawed {}", v["instance"].as_str().unwrap_or("?"));
    Ok(())
}

/// `rolehost stop`, `start`, `delete`.
pub(crate) async fn lifecycle(
    host: &HostArgs,
    service: &str,
    action: &str,
    purge: bool,
) -> anyhow::Result<()> {
    let client = Client::new(host)?;
    match action {
        "delete" => {
            let q = if purge { "?purge-storage=true" } else { "" };
            client
                .json(Method::DELETE, &format!("/v1/services/{service}{q}"), None)
                .await?;
            if purge {
                println!("deleted {service} and its storage account");
            } else {
                println!(
                    "deleted {service} (its storage account is kept; --purge-storage deletes it)"
                );
            }
        }
        _ => {
            let answer = client
                .json(
                    Method::POST,
                    &format!("/v1/services/{service}/{action}"),
                    None,
                )
                .await?;
            println!("{action}: {service}");
            if let Some(w) = answer["warning"].as_str() {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / f64::from(1u32 << 20))
}

/// `rolehost status`: a table, or the JSON with `--json`.
pub(crate) async fn status(
    host: &HostArgs,
    service: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let value = Client::new(host)?
        .json(Method::GET, "/v1/services", None)
        .await?;
    let mut all: Vec<ServiceStatus> =
        serde_json::from_value(value).context("reading the status")?;
    if let Some(name) = service {
        all.retain(|s| s.name == name);
        if all.is_empty() {
            bail!("no service named {name} is deployed");
        }
    }
    if as_json {
        return print(format!("{}\n", serde_json::to_string_pretty(&all)?));
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    macro_rules! line { ($($t:tt)*) => { let _ = writeln!(out, $($t)*); } }
    if all.is_empty() {
        line!("no services deployed");
    }
    let core = rolehost_runtime::quota::REFERENCE_CORE_FUEL_PER_SEC as f64;
    for s in &all {
        line!(
            "service {} ({}) deployment {}",
            s.name,
            s.state,
            if s.deployment_id.is_empty() {
                "-"
            } else {
                &s.deployment_id
            }
        );
        for r in &s.roles {
            let endpoints = if r.endpoints.is_empty() {
                String::new()
            } else {
                format!(" on {}", r.endpoints.join(", "))
            };
            line!(
                "  role {} ({}): {} instances{endpoints}",
                r.name,
                r.kind,
                r.instances
            );
        }
        if !s.instances.is_empty() {
            line!(
                "  {:<24} {:<10} {:>8} {:>10} {:>18} {:>16} {:>9} {:>9}",
                "INSTANCE",
                "STATE",
                "RESTARTS",
                "CPU (s)",
                "MEMORY (MiB)",
                "DISK (MiB)",
                "REQUESTS",
                "MESSAGES"
            );
        }
        for i in &s.instances {
            line!(
                "  {:<24} {:<10} {:>8} {:>10.2} {:>18} {:>16} {:>9} {:>9}",
                i.id,
                i.state,
                i.restarts,
                i.fuel as f64 / core,
                format!("{}/{}", mib(i.memory_bytes), mib(i.memory_cap)),
                format!("{}/{}", mib(i.disk_bytes), mib(i.disk_quota)),
                i.requests,
                i.messages_processed,
            );
        }
    }
    print(out)
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends quietly.
fn print(text: String) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// `rolehost logs`: recent guest output, and with `--follow` what comes next.
pub(crate) async fn logs(
    host: &HostArgs,
    service: &str,
    role: Option<&str>,
    instance: Option<&str>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut q = format!("/v1/logs?service={service}");
    if let Some(r) = role {
        q.push_str(&format!("&role={r}"));
    }
    if let Some(i) = instance {
        q.push_str(&format!("&instance={i}"));
    }
    if follow {
        q.push_str("&follow=true");
    }
    let resp = Client::new(host)?
        .send(Method::GET, &q, ApiBody::Whole(None), None)
        .await?;
    let mut body = accepted(resp).await?;
    use std::io::Write;
    let mut out = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            match out.write_all(&data).and_then(|()| out.flush()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                other => other?,
            }
        }
    }
    Ok(())
}

/// The default `--max-instances`.
pub(crate) const MAX_INSTANCES: u32 = DEFAULT_MAX_INSTANCES;

/// Parses `--account-quota KEY=N` (the keys of a manifest's `[storage.quota]`).
pub(crate) fn parse_quota(s: &str) -> Result<(rolehost_storage::Resource, u64), String> {
    use rolehost_storage::Resource;
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=N, e.g. max-mb=10240"))?;
    let n: u64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{key}: {value:?} is not a whole number"))?;
    let key = key.trim();
    Resource::ALL
        .into_iter()
        .find(|r| r.quota_key() == key)
        .map(|r| match r {
            Resource::Bytes => (r, n.saturating_mul(1 << 20)),
            _ => (r, n),
        })
        .ok_or_else(|| {
            format!(
                "{key}: not a quota; use max-mb, max-containers, max-blobs, max-queues, \
                 max-messages, max-tables or max-entities"
            )
        })
}
