//! The queue service: list, create, delete, metadata; put, get, peek, delete, update and clear
//! messages, with Azure's URLs, XML bodies and error codes.
//!
//! Message text is what the client sent inside `<MessageText>`, unescaped, stored as UTF-8: a
//! role reading the message gets exactly those bytes. A message a role put that is not XML
//! text (binary, or a control character) is answered base64-encoded, since XML cannot carry it.

use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, HeaderValue, Method, Response};
use rolehost_storage::queue::{MessageTtl, PutMessageOptions};

use crate::auth::{Level, Need};
use crate::body::collect_limited;
use crate::xml::{self, Xml};
use crate::{
    Ctx, InBody, Parsed, RestBody, RestError, Service, empty, header, http_date, metadata_from,
    metadata_headers, reply, xml_reply,
};

/// Largest `<QueueMessage>` body read: the 64 KiB message limit with room for XML escapes
/// (`&amp;` is five bytes for one). The engine then holds the text to the service's limit.
pub const MAX_MESSAGE_BODY: usize = 512 * 1024;

/// Azure's "never expires" in a message's ExpirationTime.
const NEVER: &str = "Fri, 31 Dec 9999 23:59:59 GMT";

/// Answers a queue request.
pub async fn handle(
    ctx: &Ctx<'_>,
    req: Parsed,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let m = req.method.clone();
    match (segs.as_slice(), &m) {
        ([], &Method::GET) if req.comp() == Some("list") => list_queues(ctx, &req).await,
        ([], m) if req.restype() == Some("service") => {
            crate::properties::handle(ctx, &req, m, Service::Queue, body).await
        }
        ([q], &Method::PUT) if req.comp().is_none() => create_queue(ctx, &req, q).await,
        ([q], &Method::DELETE) if req.comp().is_none() => delete_queue(ctx, q).await,
        ([q], &Method::GET | &Method::HEAD) if req.comp() == Some("metadata") => {
            get_metadata(ctx, q).await
        }
        ([q], &Method::PUT) if req.comp() == Some("metadata") => set_metadata(ctx, &req, q).await,
        ([q], &Method::GET | &Method::HEAD) if req.comp() == Some("acl") => {
            crate::acl::get(ctx, Service::Queue, q, |s, a, q| s.get_queue_acl(a, q)).await
        }
        ([q], &Method::PUT) if req.comp() == Some("acl") => {
            crate::acl::set(ctx, Service::Queue, q, body, |s, a, q, p| {
                s.set_queue_acl(a, q, p)
            })
            .await
        }
        ([q, "messages"], &Method::POST) => put_message(ctx, &req, q, body).await,
        ([q, "messages"], &Method::GET) => {
            if req
                .q("peekonly")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                peek_messages(ctx, &req, q).await
            } else {
                get_messages(ctx, &req, q).await
            }
        }
        ([q, "messages"], &Method::DELETE) => clear_messages(ctx, q).await,
        ([q, "messages", id], &Method::DELETE) => delete_message(ctx, &req, q, id).await,
        ([q, "messages", id], &Method::PUT) => update_message(ctx, &req, q, id, body).await,
        _ => Err(req.no_such_operation()),
    }
}

fn seconds(
    req: &Parsed,
    name: &'static str,
    range: &'static str,
    min: i64,
    max: i64,
) -> Result<Option<Duration>, RestError> {
    match req.int_query(name)? {
        None => Ok(None),
        Some(s) if (min..=max).contains(&s) => Ok(Some(Duration::from_secs(s.unsigned_abs()))),
        Some(_) => Err(RestError::out_of_range(name, range)),
    }
}

const WEEK: i64 = 7 * 24 * 3600;

fn count(req: &Parsed) -> Result<u32, RestError> {
    match req.int_query("numofmessages")? {
        None => Ok(1),
        Some(n) if (1..=32).contains(&n) => Ok(n as u32),
        Some(_) => Err(RestError::out_of_range("numofmessages", "1 to 32")),
    }
}

async fn list_queues(ctx: &Ctx<'_>, req: &Parsed) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Service, "l"))?;
    let options = req.list_options()?;
    let max = options.max_results;
    let account = ctx.account.clone();
    let opts = options.clone();
    let page = ctx
        .blocking(move |s| s.list_queues(&account, &opts))
        .await?;
    let mut x = Xml::new();
    x.open_attrs(
        "EnumerationResults",
        &[("ServiceEndpoint", &format!("/{}/", ctx.account))],
    );
    x.opt("Prefix", options.prefix.as_deref());
    x.opt("Marker", options.marker.as_deref());
    if let Some(m) = max {
        x.elem("MaxResults", &m.to_string());
    }
    x.open("Queues");
    for q in &page.items {
        x.open("Queue").elem("Name", &q.name);
        if options.include_metadata {
            x.open("Metadata");
            for (k, v) in &q.metadata {
                x.elem(k, v);
            }
            x.close("Metadata");
        }
        x.close("Queue");
    }
    x.close("Queues");
    x.elem("NextMarker", page.next_marker.as_deref().unwrap_or(""));
    x.close("EnumerationResults");
    Ok(xml_reply(200, x))
}

async fn create_queue(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Container, "cw").on(q))?;
    let metadata = metadata_from(req)?;
    let (account, q) = (ctx.account.clone(), q.to_string());
    let outcome = ctx
        .blocking(move |s| s.create_queue(&account, &q, metadata))
        .await?;
    Ok(empty(match outcome {
        rolehost_storage::queue::CreateQueueOutcome::Created => 201,
        rolehost_storage::queue::CreateQueueOutcome::AlreadyExists => 204,
    }))
}

async fn delete_queue(ctx: &Ctx<'_>, q: &str) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Container, "d").on(q))?;
    let (account, q) = (ctx.account.clone(), q.to_string());
    ctx.blocking(move |s| s.delete_queue(&account, &q)).await?;
    Ok(empty(204))
}

async fn get_metadata(ctx: &Ctx<'_>, q: &str) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(
        Service::Queue,
        &Need::new(Level::Container, "r").on(q).by_service_sas(),
    )?;
    let (account, qn) = (ctx.account.clone(), q.to_string());
    let props = ctx
        .blocking(move |s| s.get_queue_properties(&account, &qn))
        .await?;
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    headers.extend(header(
        "x-ms-approximate-messages-count",
        &props.approximate_message_count.to_string(),
    ));
    metadata_headers(&props.metadata, &mut headers);
    Ok(reply(200, headers, RestBody::empty()))
}

async fn set_metadata(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Container, "w").on(q))?;
    let metadata = metadata_from(req)?;
    let (account, q) = (ctx.account.clone(), q.to_string());
    ctx.blocking(move |s| s.set_queue_metadata(&account, &q, metadata))
        .await?;
    Ok(empty(204))
}

/// The text of a `<QueueMessage><MessageText>` body.
async fn message_text(body: InBody) -> Result<Vec<u8>, RestError> {
    let raw = collect_limited(body, MAX_MESSAGE_BODY).await?;
    let root = xml::parse(&raw)?;
    if root.name != "QueueMessage" {
        return Err(RestError::bad_body(
            "InvalidXmlDocument",
            "the root element must be QueueMessage",
        ));
    }
    let text = root.child_text("MessageText").ok_or_else(|| {
        RestError::bad_body("InvalidXmlDocument", "QueueMessage has no MessageText")
    })?;
    Ok(text.as_bytes().to_vec())
}

/// A message's content as XML text: itself when it is XML text, else base64.
fn message_xml(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) if xml::is_xml_text(s) => s.to_string(),
        _ => base64::engine::general_purpose::STANDARD.encode(body),
    }
}

fn expiry(t: Option<rolehost_storage::Timestamp>) -> String {
    t.map_or_else(|| NEVER.to_string(), http_date)
}

async fn put_message(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Object, "a").on(q))?;
    let delay =
        seconds(req, "visibilitytimeout", "0 to 604800 seconds", 0, WEEK)?.unwrap_or_default();
    let ttl = match req.int_query("messagettl")? {
        None => MessageTtl::Default,
        Some(-1) => MessageTtl::Never,
        Some(s) if s >= 1 => MessageTtl::After(Duration::from_secs(s.unsigned_abs())),
        Some(_) => {
            return Err(RestError::out_of_range(
                "messagettl",
                "-1 or at least 1 second",
            ));
        }
    };
    let text = message_text(body).await?;
    let options = PutMessageOptions {
        visibility_delay: delay,
        ttl,
    };
    let receipt = ctx
        .submit(|s, done| s.put_message_then(&ctx.account, q, &text, options, done))
        .await?;
    if delay.is_zero() {
        ctx.message_visible(q);
    }
    let mut x = Xml::new();
    x.open("QueueMessagesList").open("QueueMessage");
    x.elem("MessageId", &receipt.id)
        .elem("InsertionTime", &http_date(receipt.insertion_time))
        .elem("ExpirationTime", &expiry(receipt.expiration_time))
        .elem("PopReceipt", &receipt.pop_receipt)
        .elem("TimeNextVisible", &http_date(receipt.time_next_visible));
    x.close("QueueMessage").close("QueueMessagesList");
    Ok(xml_reply(201, x))
}

async fn get_messages(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Object, "p").on(q))?;
    let n = count(req)?;
    let vt = seconds(req, "visibilitytimeout", "1 to 604800 seconds", 1, WEEK)?
        .unwrap_or(rolehost_storage::queue::DEFAULT_VISIBILITY_TIMEOUT);
    let msgs = ctx
        .submit(|s, done| s.get_messages_then(&ctx.account, q, n, vt, done))
        .await?;
    let mut x = Xml::new();
    x.open("QueueMessagesList");
    for m in &msgs {
        x.open("QueueMessage")
            .elem("MessageId", &m.id)
            .elem("InsertionTime", &http_date(m.insertion_time))
            .elem("ExpirationTime", &expiry(m.expiration_time))
            .elem("PopReceipt", &m.pop_receipt)
            .elem("TimeNextVisible", &http_date(m.time_next_visible))
            .elem("DequeueCount", &m.dequeue_count.to_string())
            .elem("MessageText", &message_xml(&m.body))
            .close("QueueMessage");
    }
    x.close("QueueMessagesList");
    Ok(xml_reply(200, x))
}

async fn peek_messages(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Object, "r").on(q))?;
    let n = count(req)?;
    let (account, qn) = (ctx.account.clone(), q.to_string());
    let msgs = ctx
        .blocking(move |s| s.peek_messages(&account, &qn, n))
        .await?;
    let mut x = Xml::new();
    x.open("QueueMessagesList");
    for m in &msgs {
        x.open("QueueMessage")
            .elem("MessageId", &m.id)
            .elem("InsertionTime", &http_date(m.insertion_time))
            .elem("ExpirationTime", &expiry(m.expiration_time))
            .elem("DequeueCount", &m.dequeue_count.to_string())
            .elem("MessageText", &message_xml(&m.body))
            .close("QueueMessage");
    }
    x.close("QueueMessagesList");
    Ok(xml_reply(200, x))
}

async fn clear_messages(ctx: &Ctx<'_>, q: &str) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Object, "d").on(q))?;
    let (account, qn) = (ctx.account.clone(), q.to_string());
    ctx.blocking(move |s| s.clear_messages(&account, &qn))
        .await?;
    Ok(empty(204))
}

fn pop_receipt(req: &Parsed) -> Result<String, RestError> {
    match req.q("popreceipt") {
        Some(p) if !p.is_empty() => Ok(p.to_string()),
        _ => Err(RestError::bad(
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified: popreceipt.",
        )),
    }
}

async fn delete_message(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
    id: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Object, "p").on(q))?;
    let receipt = pop_receipt(req)?;
    ctx.submit(|s, done| s.delete_message_then(&ctx.account, q, id, &receipt, done))
        .await?;
    Ok(empty(204))
}

async fn update_message(
    ctx: &Ctx<'_>,
    req: &Parsed,
    q: &str,
    id: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Queue, &Need::new(Level::Object, "u").on(q))?;
    let receipt = pop_receipt(req)?;
    let vt = seconds(req, "visibilitytimeout", "0 to 604800 seconds", 0, WEEK)?.ok_or_else(|| {
        RestError::bad(
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified: visibilitytimeout.",
        )
    })?;
    let has_body = req.header("content-length").is_some_and(|l| l != "0")
        || req.header("transfer-encoding").is_some();
    let text = if has_body {
        Some(message_text(body).await?)
    } else {
        None
    };
    let (account, qn, id) = (ctx.account.clone(), q.to_string(), id.to_string());
    let updated = ctx
        .blocking(move |s| s.update_message(&account, &qn, &id, &receipt, vt, text.as_deref()))
        .await?;
    if vt.is_zero() {
        ctx.message_visible(q);
    }
    let mut headers = Vec::new();
    headers.extend(header("x-ms-popreceipt", &updated.pop_receipt));
    headers.extend(header(
        "x-ms-time-next-visible",
        &http_date(updated.time_next_visible),
    ));
    Ok(reply(204, headers, RestBody::empty()))
}
