//! rolehost storage over HTTP: Blob, Queue and Table REST as Azure serves them, so that the
//! Azure SDKs, Storage Explorer and azcopy work against a rolehost host unchanged.
//!
//! The door ([`Door`]) turns one HTTP request into one storage operation on the same engine
//! the roles use ([`rolehost_storage::Backend`]): it authenticates the request
//! ([`auth`]: SharedKey, SharedKeyLite, account and service SAS, anonymous), authorizes it for
//! the operation, runs the operation on a blocking thread, and answers in Azure's shapes (XML
//! for blob and queue, JSON for table, `x-ms-error-code` on every failure). It knows nothing of
//! sockets: the host's listeners (`rolehost-runtime`'s `conn`) accept connections, hold them to
//! their limits and timeouts, and hand each request here.
//!
//! # Layout
//! - [`request`]: which service, account and resource a request names; `x-ms-version`.
//! - [`auth`]: signatures and what a SAS grants. [`keys`]: accounts' keys, kept 0600.
//! - [`blob`], [`queue`], [`table`]: the three services.
//! - [`body`]: bodies that stream both ways through bounded buffers. [`xml`]: XML in and out.
//! - [`error`]: [`RestError`], an Azure status, code and message.
//!
//! # Guarantees
//! - **Durable before acknowledged**: a 2xx is sent only after the engine's commit is on disk.
//! - **Accounts are isolated**: a request acts only on the account its URL names, and only
//!   when signed with that account's key (or a SAS signed with it).
//! - **Bounded**: every body, header and list a client sends is held to a named limit.

#![deny(missing_docs)]

pub mod acl;
pub mod auth;
pub mod blob;
pub mod body;
pub mod error;
pub mod keys;
pub mod properties;
pub mod queue;
pub mod request;
pub mod table;
pub mod xml;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use rolehost_storage::{AccountName, Backend};

pub use body::RestBody;
pub use error::RestError;
pub use keys::{AccountKeys, KeyFiles, KeyLookup};
pub use request::{Parsed, Service};

/// A request body as the door reads it (any body type, boxed).
pub type InBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the door tells the rest of the host.
pub trait Events: Send + Sync {
    /// A message was put (or made visible) on `queue` of `account`: wake its waiting workers.
    fn message_visible(&self, account: &AccountName, queue: &str);
}

/// Events nobody listens to.
#[derive(Debug, Default)]
pub struct NoEvents;

impl Events for NoEvents {
    fn message_visible(&self, _: &AccountName, _: &str) {}
}

/// The storage REST door: one per host, shared by its three listeners.
pub struct Door {
    store: Arc<dyn Backend>,
    keys: Arc<dyn KeyLookup>,
    events: Arc<dyn Events>,
    request_ids: RequestIds,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door").finish_non_exhaustive()
    }
}

impl Door {
    /// A door onto `store`, whose accounts' keys `keys` holds.
    pub fn new(store: Arc<dyn Backend>, keys: Arc<dyn KeyLookup>, events: Arc<dyn Events>) -> Door {
        Door {
            store,
            keys,
            events,
            request_ids: RequestIds::new(),
        }
    }

    /// Answers one request to `service` from `peer`. Never fails: every failure is an Azure
    /// error response.
    pub async fn handle<B>(
        &self,
        service: Service,
        req: Request<B>,
        peer: IpAddr,
        https: bool,
    ) -> Response<RestBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let request_id = self.request_ids.next();
        let (head, body) = req.into_parts();
        let body: InBody = body.map_err(Into::into).boxed_unsync();
        let method = head.method.clone();
        let head_only = method == Method::HEAD;
        let client_id = head.headers.get("x-ms-client-request-id").cloned();
        let mut cors_origin = None;
        let result = match Parsed::new(service, head, peer, https) {
            Ok(parsed) if parsed.method == Method::OPTIONS => {
                let served = self.keys.keys(&parsed.account).is_some();
                properties::preflight(self.store.clone(), &parsed, served).await
            }
            Ok(parsed) => {
                if let Some(o) = parsed.header("origin") {
                    cors_origin = Some((o.to_string(), parsed.account.clone()));
                }
                self.route(parsed, body).await
            }
            Err(e) => Err(e),
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => error_response(service, e, &request_id, head_only),
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert("x-ms-request-id", v);
        }
        h.insert(
            "x-ms-version",
            HeaderValue::from_static(request::SERVED_VERSION),
        );
        h.insert("server", HeaderValue::from_static("rolehost"));
        if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::now())) {
            h.insert(http::header::DATE, v);
        }
        if let Some(id) = client_id {
            h.insert("x-ms-client-request-id", id);
        }
        // A cross-origin request: the account's CORS rules say whether the page may read the
        // answer (its errors too), once every header is set so the rule can expose them. Only
        // for an account this host serves.
        if let Some((origin, account)) = cors_origin
            && self.keys.keys(&account).is_some()
            && let Ok(account) = AccountName::new(account)
        {
            let store = self.store.clone();
            let props =
                tokio::task::spawn_blocking(move || properties::load(&*store, &account, service))
                    .await
                    .unwrap_or_default();
            properties::decorate(&props, &origin, &method, &mut resp);
        }
        resp
    }

    async fn route(&self, req: Parsed, body: InBody) -> Result<Response<RestBody>, RestError> {
        let keys = self.keys.keys(&req.account);
        let mut access = auth::authenticate(&req, keys.as_ref(), SystemTime::now())?;
        // Past authentication the account is one this host serves, so its name is valid.
        let account =
            AccountName::new(req.account.clone()).map_err(|_| RestError::auth_failed())?;
        if let auth::Access::Sas(grant) = &mut access {
            self.apply_stored_policy(&account, grant).await?;
        }
        let ctx = Ctx {
            door: self,
            account,
            access,
        };
        match req.service {
            Service::Queue => queue::handle(&ctx, req, body).await,
            Service::Blob => blob::handle(&ctx, req, body).await,
            Service::Table => table::handle(&ctx, req, body).await,
        }
    }

    /// Applies the stored access policy a service SAS names (`si`), if it names one, of the
    /// container, queue or table the SAS covers: looked up now, so revoking the policy revokes
    /// every token naming it.
    async fn apply_stored_policy(
        &self,
        account: &AccountName,
        grant: &mut auth::Grant,
    ) -> Result<(), RestError> {
        let Some(id) = grant.policy.clone() else {
            return Ok(());
        };
        let (store, a, scope) = (self.store.clone(), account.clone(), grant.scope.clone());
        let found = tokio::task::spawn_blocking(move || -> Option<Vec<_>> {
            match &scope {
                auth::Scope::Container(c) | auth::Scope::Blob(c, _) => store
                    .get_container_acl(&a, c, None)
                    .ok()
                    .map(|acl| acl.1.policies),
                auth::Scope::Queue(q) => store.get_queue_acl(&a, q).ok(),
                auth::Scope::Table { table, .. } => store.get_table_acl(&a, table).ok(),
                auth::Scope::Account { .. } => None,
            }
        })
        .await
        .map_err(|_| RestError::auth_failed())?
        .ok_or_else(RestError::auth_failed)?;
        grant.apply_policy(found.iter().find(|p| p.id == id), SystemTime::now())
    }
}

/// What a handler has: the door, the account, and what the caller proved.
pub struct Ctx<'a> {
    door: &'a Door,
    /// The account the request acts on.
    pub account: AccountName,
    /// What the caller proved.
    pub access: auth::Access,
}

impl Ctx<'_> {
    /// The storage engine.
    pub fn store(&self) -> Arc<dyn Backend> {
        self.door.store.clone()
    }

    /// Runs a storage call on a blocking thread (the engine blocks until its commit is on disk).
    pub async fn blocking<T, E>(
        &self,
        f: impl FnOnce(&dyn Backend) -> Result<T, E> + Send + 'static,
    ) -> Result<T, RestError>
    where
        T: Send + 'static,
        E: Into<RestError> + Send + 'static,
    {
        let store = self.store();
        match tokio::task::spawn_blocking(move || f(&*store)).await {
            Ok(r) => r.map_err(Into::into),
            Err(e) => {
                tracing::error!(error = %e, "a storage call panicked");
                Err(RestError::new(
                    500,
                    "InternalError",
                    "The server encountered an internal error. Please retry the request.",
                ))
            }
        }
    }

    /// Runs a queue operation that answers through a callback (`QueueStore::*_then`): the
    /// engine queues it without blocking this task's thread and wakes the task once its
    /// commit is durable. A hot path costs one wakeup instead of a blocking thread's two.
    pub async fn submit<T>(
        &self,
        f: impl FnOnce(&dyn Backend, rolehost_storage::queue::Answer<T>),
    ) -> Result<T, RestError>
    where
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        f(
            &*self.door.store,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.await {
            Ok(r) => r.map_err(Into::into),
            // The engine dropped the operation unanswered: it is shutting down.
            Err(_) => Err(RestError::new(
                503,
                "ServerBusy",
                "The server is shutting down. Please retry the request.",
            )),
        }
    }

    /// Authorizes the operation described by `need`.
    pub fn authorize(&self, service: Service, need: &auth::Need<'_>) -> Result<(), RestError> {
        auth::authorize(service, &self.access, need)
    }

    /// The keys of `account`, if this host serves it.
    pub fn keys_of(&self, account: &str) -> Option<AccountKeys> {
        self.door.keys.keys(account)
    }

    /// Applies the stored access policy `grant` names in `account`, if any.
    pub async fn apply_stored_policy(
        &self,
        account: &AccountName,
        grant: &mut auth::Grant,
    ) -> Result<(), RestError> {
        self.door.apply_stored_policy(account, grant).await
    }

    /// Tells the host a message became visible.
    pub fn message_visible(&self, queue: &str) {
        self.door.events.message_visible(&self.account, queue);
    }
}

/// Unique request ids, shaped like Azure's (a GUID).
struct RequestIds {
    seed: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        RequestIds {
            seed,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let s = self.seed;
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (s >> 32) as u32,
            (s >> 16) as u16,
            s as u16,
            (n >> 48) as u16,
            n & 0xffff_ffff_ffff
        )
    }
}

/// A response with `status`, `headers` and `body`.
pub fn reply(
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: RestBody,
) -> Response<RestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    for (k, v) in headers {
        h.append(k, v);
    }
    r
}

/// An XML answer.
pub fn xml_reply(status: u16, x: xml::Xml) -> Response<RestBody> {
    reply(
        status,
        vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        RestBody::full(x.finish()),
    )
}

/// An answer with no body and no headers of its own.
pub fn empty(status: u16) -> Response<RestBody> {
    reply(status, Vec::new(), RestBody::empty())
}

/// A header value from text a client or the engine chose; one that cannot be a header value
/// (a control character) is left out rather than failing the response.
pub fn hv(s: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(s).ok()
}

/// `name: value` for [`reply`]'s header list, if `value` can be a header value.
pub fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    hv(value).map(|v| (HeaderName::from_static(name), v))
}

fn error_response(
    service: Service,
    e: RestError,
    request_id: &str,
    head_only: bool,
) -> Response<RestBody> {
    if e.status.is_server_error() {
        tracing::warn!(status = %e.status, code = %e.code, message = %e.message, "storage request failed");
    } else {
        tracing::debug!(status = %e.status, code = %e.code, message = %e.message, "storage request refused");
    }
    let time = rolehost_storage::table::datetime::format_micros(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64),
    );
    let message = format!("{}\nRequestId:{request_id}\nTime:{time}", e.message);
    let (content_type, body) = match service {
        Service::Table => (
            "application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
            serde_json::json!({"odata.error": {"code": e.code, "message": {"lang": "en-US", "value": message}}}).to_string(),
        ),
        _ => {
            let mut x = xml::Xml::new();
            x.open("Error").elem("Code", &e.code).elem("Message", &message).close("Error");
            ("application/xml", x.finish())
        }
    };
    let bodyless = head_only || e.status == StatusCode::NOT_MODIFIED;
    let mut headers = e.headers.clone();
    if let Some(code) = hv(&e.code) {
        headers.push((HeaderName::from_static("x-ms-error-code"), code));
    }
    if !bodyless {
        headers.push((
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        ));
    }
    reply(
        e.status.as_u16(),
        headers,
        if bodyless {
            RestBody::empty()
        } else {
            RestBody::full(body)
        },
    )
}

/// RFC 1123, as Azure's headers and queue bodies carry times.
pub fn http_date(t: rolehost_storage::Timestamp) -> String {
    httpdate::fmt_http_date(
        SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(t.as_micros()),
    )
}

/// The metadata of `x-ms-meta-*` headers (names as the HTTP layer gives them: lowercase).
pub fn metadata_from(req: &Parsed) -> Result<rolehost_storage::Metadata, RestError> {
    let mut out = Vec::new();
    for (name, value) in &req.headers {
        if let Some(n) = name.as_str().strip_prefix("x-ms-meta-") {
            let v = value.to_str().map_err(|_| {
                RestError::bad(
                    "InvalidMetadata",
                    format!("the value of metadata {n:?} is not visible ASCII"),
                )
            })?;
            out.push((n.to_string(), v.to_string()));
        }
    }
    rolehost_storage::names::check_metadata(&out)?;
    Ok(out)
}

/// `x-ms-meta-*` response headers.
pub fn metadata_headers(
    metadata: &rolehost_storage::Metadata,
    out: &mut Vec<(HeaderName, HeaderValue)>,
) {
    for (k, v) in metadata {
        if let (Ok(name), Some(value)) = (
            HeaderName::from_bytes(format!("x-ms-meta-{k}").as_bytes()),
            hv(v),
        ) {
            out.push((name, value));
        }
    }
}
