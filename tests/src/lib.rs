//! Shared harness of the integration tests: builds the guests of `guests/` once (on a fresh
//! machine too), and runs services on a temporary data directory.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rolehost_runtime::link::FaultPlan;
use rolehost_runtime::manifest::Manifest;
use rolehost_runtime::service::{self, Service, ServiceOptions};
use rolehost_runtime::worker::InstanceStatus;
use rolehost_storage::blob::{BlobListItem, GetBlobOptions};
use rolehost_storage::queue::PutMessageOptions;
use rolehost_storage::{AccountName, Backend, ListOptions};
use rolehost_storage_pg::scratch::ScratchDatabase;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The cargo target directory the tests run from (`<target>/debug/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Builds every guest of `guests/` (release, wasm32-wasip2) once per test process, in a target
/// directory shared by all test processes; returns component paths by crate name.
pub fn guests() -> &'static BTreeMap<String, PathBuf> {
    static GUESTS: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let built = rolehost_runtime::build::build_crate(
            &repo_root().join("guests"),
            Some(&target_dir().join("guests")),
        )
        .expect("building the guests of guests/");
        built
            .into_iter()
            .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
            .collect()
    })
}

/// The component of guest crate `name`.
pub fn guest(name: &str) -> PathBuf {
    guests()
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("no guest component named {name}"))
}

/// `text` with each `{guest:NAME}` replaced by that guest's component path.
pub fn with_guests(text: &str) -> String {
    let mut text = text.to_string();
    while let Some(start) = text.find("{guest:") {
        let end = start + text[start..].find('}').expect("unclosed {guest:");
        let name = &text[start + 7..end];
        let path = guest(name).display().to_string();
        text.replace_range(start..=end, &path);
    }
    text
}

/// A service running on a temporary data directory.
pub struct TestService {
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The storage, shared with the service.
    pub store: Arc<dyn Backend>,
    /// The service's account.
    pub account: AccountName,
    /// The manifest.
    pub manifest: Manifest,
    /// The service, until shut down.
    pub service: Option<Service>,
    /// The PostgreSQL database the storage is in, under [`STORAGE_VAR`]`=postgres`.
    pub db: Option<ScratchDatabase>,
}

/// Set to `postgres` to run the suite with every service's storage in PostgreSQL (a database
/// of its own on the test server) instead of redb: `scripts/test` runs it both ways.
pub const STORAGE_VAR: &str = "ROLEHOST_TEST_STORAGE";

/// Whether the suite runs on PostgreSQL storage ([`STORAGE_VAR`]).
pub fn on_postgres() -> bool {
    match std::env::var(STORAGE_VAR).as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{STORAGE_VAR}={other}: expected postgres or redb"),
    }
}

/// Parses `manifest` (TOML; `{guest:NAME}` stands for that guest's component path) and opens
/// its storage in a fresh directory, without starting it.
pub fn prepare(manifest: &str) -> TestService {
    let text = with_guests(manifest);
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = Manifest::parse(&text, &dir.path().join("rolehost.toml")).expect("manifest");
    let db = on_postgres().then(ScratchDatabase::on_test_server);
    let location = db.as_ref().map(|db| {
        rolehost_runtime::storage_location::StorageLocation::Postgres(db.url().to_string())
    });
    let store =
        service::open_storage(dir.path(), &manifest, location.as_ref(), None).expect("storage");
    let account = AccountName::new(manifest.service.clone()).expect("account");
    TestService {
        dir,
        store,
        account,
        manifest,
        service: None,
        db,
    }
}

impl TestService {
    /// Starts the service.
    pub async fn start(&mut self) {
        self.start_with_faults(None).await
    }

    /// Starts the service with a fault plan on every instance's link.
    pub async fn start_with_faults(&mut self, faults: Option<Arc<dyn FaultPlan>>) {
        let components = service::resolve_components(&self.manifest, None).expect("components");
        let options = ServiceOptions {
            data_dir: self.dir.path().to_path_buf(),
            cache_dir: Some(target_dir().join("rolehost-component-cache")),
            faults,
            ..ServiceOptions::default()
        };
        let svc = Service::start(&self.manifest, &components, self.store.clone(), options)
            .await
            .expect("service starts");
        self.service = Some(svc);
    }

    /// The running service.
    pub fn service(&self) -> &Service {
        self.service.as_ref().expect("service started")
    }

    /// A blob's content as text, if it exists.
    pub fn blob_text(&self, container: &str, name: &str) -> Option<String> {
        String::from_utf8(self.blob_bytes(container, name)?).ok()
    }

    /// A blob's content, if it exists.
    pub fn blob_bytes(&self, container: &str, name: &str) -> Option<Vec<u8>> {
        let mut read = self
            .store
            .get_blob(&self.account, container, name, &GetBlobOptions::default())
            .ok()?;
        let mut v = Vec::new();
        read.reader.read_to_end(&mut v).ok()?;
        Some(v)
    }

    /// The names of a container's blobs (empty if it does not exist).
    pub fn blob_names(&self, container: &str) -> Vec<String> {
        let Ok(page) =
            self.store
                .list_blobs(&self.account, container, &ListOptions::default(), None)
        else {
            return Vec::new();
        };
        page.items
            .into_iter()
            .filter_map(|i| match i {
                BlobListItem::Blob(b) => Some(b.name),
                BlobListItem::Prefix(_) => None,
            })
            .collect()
    }

    /// Puts messages on `queue` (created if missing).
    pub fn put_messages(&self, queue: &str, bodies: impl IntoIterator<Item = String>) {
        let _ = self.store.create_queue(&self.account, queue, Vec::new());
        for body in bodies {
            self.store
                .put_message(
                    &self.account,
                    queue,
                    body.as_bytes(),
                    PutMessageOptions::default(),
                )
                .expect("put message");
        }
    }

    /// A queue's approximate length (`u64::MAX` if it does not exist).
    pub fn queue_len(&self, queue: &str) -> u64 {
        self.store
            .get_queue_properties(&self.account, queue)
            .map_or(u64::MAX, |p| p.approximate_message_count)
    }

    /// The status of the (first) instance of `role`.
    pub fn status_of(&self, role: &str) -> InstanceStatus {
        self.service()
            .status()
            .into_iter()
            .find(|s| s.role == role)
            .expect("role exists")
    }

    /// Puts `n` messages for the `counter` guest (queue `increments`, counter `total`) and
    /// returns how long it took until the counter had counted them all.
    pub async fn feed_counter(&self, n: usize) -> Duration {
        let _ = self
            .store
            .create_queue(&self.account, "increments", Vec::new());
        let count =
            || -> Option<usize> { self.blob_text("counters", "total")?.trim().parse().ok() };
        let before = count().unwrap_or(0);
        let started = Instant::now();
        self.put_messages("increments", (0..n).map(|_| "total".to_string()));
        wait_for(
            Duration::from_secs(300),
            "the counter to count them",
            || (count()? == before + n).then_some(()),
        )
        .await;
        started.elapsed()
    }

    /// Stops the service and returns the instances' final status.
    pub async fn shutdown(&mut self) -> Vec<rolehost_runtime::worker::InstanceStatus> {
        self.service
            .take()
            .expect("service started")
            .shutdown()
            .await
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The test process's log, captured so a test can read it. Install once per test binary.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Captures `tracing` output at `filter` (e.g. `guest=info`) from now on.
    pub fn install(filter: &str) -> LogCapture {
        let capture = LogCapture::default();
        let sink = capture.clone();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .init();
        capture
    }

    /// Bytes captured so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was captured yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text captured from byte `from` on.
    pub fn text_from(&self, from: usize) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf[from.min(buf.len())..]).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A response read by [`http_request`].
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The head (status line and headers) as text.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Sends `raw` (a whole HTTP/1.1 request) to `addr` on a fresh connection and reads the
/// response until the server closes it. A plain socket, so malformed requests can be sent.
pub async fn http_request(addr: std::net::SocketAddr, raw: &[u8]) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(raw).await?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(RawResponse {
        status,
        head: head.to_string(),
        body: dechunk(body),
    })
}

/// `GET path` with `Connection: close`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<RawResponse> {
    let raw = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    http_request(addr, raw.as_bytes()).await
}

/// Decodes a chunked body (or returns the body as is).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || after.len() < n {
            return if n == 0 { out } else { body.to_string() };
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
}

/// The environment that puts a test host's storage REST endpoints on free ports, so that tests
/// running side by side do not fight over the emulator's 10000-10002.
pub const STORAGE_ON_ANY_PORT: [(&str, &str); 3] = [
    ("ROLEHOST_BLOB_LISTEN", "127.0.0.1:0"),
    ("ROLEHOST_QUEUE_LISTEN", "127.0.0.1:0"),
    ("ROLEHOST_TABLE_LISTEN", "127.0.0.1:0"),
];
