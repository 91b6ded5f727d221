//! The blob service: containers (create, delete, properties, metadata, lease, list) and block
//! blobs (put, get with ranges, properties, metadata, delete, lease, put block, put block list,
//! get block list, list with prefix, delimiter and marker, copy within and across the host's
//! accounts), with Azure's conditional headers.
//!
//! Bodies stream: an upload is read by the engine straight from the connection, chunk by
//! chunk, and a download is written from the engine's reader; neither is held whole.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderName, HeaderValue, Method, Response};
use rolehost_storage::blob::{
    BlobListItem, BlobProperties, BlobRef, BlockListType, BlockRef, ByteRange, Conditions,
    ContainerAcl, ContentSettings, CopyOptions, ETagMatch, GetBlobOptions, LeaseAction, LeaseInfo,
    MAX_BLOCK_BYTES, MAX_COPY_SOURCE_BYTES, MAX_PUT_BLOB_BYTES, PublicAccess, PutBlobOptions,
};
use rolehost_storage::{AccountName, BlobError, Timestamp};

use crate::auth::{Access, Level, Need};
use crate::body::{BodyReader, TooLarge, collect_limited};
use crate::xml::{self, Xml};
use crate::{
    Ctx, InBody, Parsed, RestBody, RestError, Service, header, http_date, metadata_from,
    metadata_headers, reply, xml_reply,
};

/// Largest Put Block List body read: 50,000 block ids of 64 bytes in base64, in XML.
pub const MAX_BLOCK_LIST_BODY: usize = 16 * 1024 * 1024;

type Headers = Vec<(HeaderName, HeaderValue)>;

/// Answers a blob request.
pub async fn handle(
    ctx: &Ctx<'_>,
    req: Parsed,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    for unsupported in ["snapshot", "versionid"] {
        if req.q(unsupported).is_some() {
            return Err(RestError::unsupported("blob snapshots and versions"));
        }
    }
    let m = req.method.clone();
    let container = req.segments.first().cloned();
    let blob = (req.segments.len() > 1).then(|| req.segments[1..].join("/"));
    let comp = req.comp().map(str::to_string);
    let restype = req.restype().map(str::to_string);
    match (
        container.as_deref(),
        blob.as_deref(),
        &m,
        restype.as_deref(),
        comp.as_deref(),
    ) {
        (None, None, &Method::GET, _, Some("list")) => list_containers(ctx, &req).await,
        (None, None, &Method::GET | &Method::HEAD, Some("account"), Some("properties")) => {
            ctx.authorize(Service::Blob, &Need::new(Level::Service, "rwdlacup"))?;
            let mut h = Headers::new();
            h.extend(header("x-ms-sku-name", "Standard_LRS"));
            h.extend(header("x-ms-account-kind", "StorageV2"));
            Ok(reply(200, h, RestBody::empty()))
        }
        (None, None, m, Some("service"), _) => {
            crate::properties::handle(ctx, &req, m, Service::Blob, body).await
        }
        (Some(c), None, &Method::PUT, Some("container"), None) => {
            create_container(ctx, &req, c).await
        }
        (Some(c), None, &Method::DELETE, Some("container"), None) => {
            delete_container(ctx, &req, c).await
        }
        (
            Some(c),
            None,
            &Method::GET | &Method::HEAD,
            Some("container"),
            None | Some("metadata"),
        ) => container_properties(ctx, &req, c).await,
        (Some(c), None, &Method::PUT, Some("container"), Some("metadata")) => {
            set_container_metadata(ctx, &req, c).await
        }
        (Some(c), None, &Method::GET | &Method::HEAD, Some("container"), Some("acl")) => {
            get_acl(ctx, &req, c).await
        }
        (Some(c), None, &Method::PUT, Some("container"), Some("acl")) => {
            set_acl(ctx, &req, c, body).await
        }
        (Some(c), None, &Method::PUT, Some("container"), Some("lease")) => {
            lease(ctx, &req, c, None).await
        }
        (Some(c), None, &Method::GET, Some("container"), Some("list")) => {
            list_blobs(ctx, &req, c).await
        }
        (Some(c), Some(b), &Method::PUT, _, None) => {
            if req.header("x-ms-copy-source").is_some() {
                return copy_blob(ctx, &req, c, b).await;
            }
            put_blob(ctx, &req, c, b, body).await
        }
        (Some(c), Some(b), &Method::PUT, _, Some("copy")) => abort_copy(ctx, &req, c, b),
        (Some(c), Some(b), &Method::GET, _, None) => get_blob(ctx, &req, c, b).await,
        (Some(c), Some(b), &Method::HEAD, _, None) => blob_properties(ctx, &req, c, b, false).await,
        (Some(c), Some(b), &Method::GET | &Method::HEAD, _, Some("metadata")) => {
            blob_properties(ctx, &req, c, b, true).await
        }
        (Some(c), Some(b), &Method::DELETE, _, None) => delete_blob(ctx, &req, c, b).await,
        (Some(c), Some(b), &Method::PUT, _, Some("metadata")) => {
            set_blob_metadata(ctx, &req, c, b).await
        }
        (Some(c), Some(b), &Method::PUT, _, Some("properties")) => {
            set_blob_properties(ctx, &req, c, b).await
        }
        (Some(c), Some(b), &Method::PUT, _, Some("lease")) => lease(ctx, &req, c, Some(b)).await,
        (Some(c), Some(b), &Method::PUT, _, Some("block")) => {
            put_block(ctx, &req, c, b, body).await
        }
        (Some(c), Some(b), &Method::PUT, _, Some("blocklist")) => {
            put_block_list(ctx, &req, c, b, body).await
        }
        (Some(c), Some(b), &Method::GET, _, Some("blocklist")) => {
            get_block_list(ctx, &req, c, b).await
        }
        (
            Some(_),
            Some(_),
            _,
            _,
            Some(
                "appendblock"
                | "page"
                | "pagelist"
                | "snapshot"
                | "tier"
                | "tags"
                | "incrementalcopy"
                | "undelete"
                | "expiry"
                | "query"
                | "immutabilityPolicies"
                | "legalhold",
            ),
        ) => Err(RestError::unsupported(&format!(
            "this blob operation (comp={}): rolehost has block blobs only",
            comp.as_deref().unwrap_or("")
        ))),
        _ => Err(req.no_such_operation()),
    }
}

fn date_header(req: &Parsed, name: &'static str) -> Result<Option<Timestamp>, RestError> {
    match req.header(name) {
        None => Ok(None),
        Some(v) => {
            let t = httpdate::parse_http_date(v)
                .map_err(|_| RestError::bad_header(name, format!("{v:?} is not an HTTP date")))?;
            let secs = t
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Ok(Some(Timestamp::from_secs(secs)))
        }
    }
}

fn etag_header(req: &Parsed, name: &'static str) -> Option<ETagMatch> {
    req.header(name).map(|v| {
        let v = v.trim();
        if v == "*" {
            ETagMatch::Any
        } else {
            ETagMatch::Tag(v.to_string())
        }
    })
}

/// The request's conditional headers.
fn conditions(req: &Parsed) -> Result<Conditions, RestError> {
    Ok(Conditions {
        if_match: etag_header(req, "if-match"),
        if_none_match: etag_header(req, "if-none-match"),
        if_modified_since: date_header(req, "if-modified-since")?,
        if_unmodified_since: date_header(req, "if-unmodified-since")?,
    })
}

fn lease_id(req: &Parsed) -> Option<String> {
    req.header("x-ms-lease-id").map(str::to_string)
}

fn lease_headers(l: &LeaseInfo, h: &mut Headers) {
    h.extend(header("x-ms-lease-state", l.state));
    h.extend(header("x-ms-lease-status", l.status));
    if let Some(d) = l.duration {
        h.extend(header("x-ms-lease-duration", d));
    }
}

fn lease_xml(l: &LeaseInfo, x: &mut Xml) {
    x.elem("LeaseStatus", l.status).elem("LeaseState", l.state);
    if let Some(d) = l.duration {
        x.elem("LeaseDuration", d);
    }
}

fn write_metadata_xml(md: &rolehost_storage::Metadata, x: &mut Xml) {
    x.open("Metadata");
    for (k, v) in md {
        x.elem(k, v);
    }
    x.close("Metadata");
}

async fn list_containers(ctx: &Ctx<'_>, req: &Parsed) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Service, "l"))?;
    let options = req.list_options()?;
    let (account, opts) = (ctx.account.clone(), options.clone());
    let page = ctx
        .blocking(move |s| s.list_containers(&account, &opts))
        .await?;
    let mut x = Xml::new();
    x.open_attrs(
        "EnumerationResults",
        &[("ServiceEndpoint", &format!("/{}/", ctx.account))],
    );
    x.opt("Prefix", options.prefix.as_deref())
        .opt("Marker", options.marker.as_deref());
    if let Some(m) = options.max_results {
        x.elem("MaxResults", &m.to_string());
    }
    x.open("Containers");
    for c in &page.items {
        x.open("Container").elem("Name", &c.name).open("Properties");
        x.elem("Last-Modified", &http_date(c.last_modified))
            .elem("Etag", &c.etag);
        lease_xml(&c.lease, &mut x);
        x.elem("HasImmutabilityPolicy", "false")
            .elem("HasLegalHold", "false");
        x.close("Properties");
        if options.include_metadata {
            write_metadata_xml(&c.metadata, &mut x);
        }
        x.close("Container");
    }
    x.close("Containers")
        .elem("NextMarker", page.next_marker.as_deref().unwrap_or(""));
    x.close("EnumerationResults");
    Ok(xml_reply(200, x))
}

fn etag_and_modified(etag: &str, last_modified: Timestamp, h: &mut Headers) {
    h.extend(header("etag", etag));
    h.extend(header("last-modified", &http_date(last_modified)));
}

/// Authorizes `need`; an anonymous caller is let through where the container's public
/// access level (`at_least`) allows it, and told the resource does not exist elsewhere.
async fn allow(
    ctx: &Ctx<'_>,
    need: Need<'_>,
    container: &str,
    at_least: PublicAccess,
) -> Result<(), RestError> {
    if ctx.access != Access::Anonymous {
        return ctx.authorize(Service::Blob, &need);
    }
    let (account, cn) = (ctx.account.clone(), container.to_string());
    let level = ctx
        .blocking(move |s| s.get_container_acl(&account, &cn, None))
        .await
        .map(|(_, acl)| acl.public_access)
        .unwrap_or(PublicAccess::Off);
    let rank = |p: PublicAccess| match p {
        PublicAccess::Off => 0,
        PublicAccess::Blob => 1,
        PublicAccess::Container => 2,
    };
    if at_least != PublicAccess::Off && rank(level) >= rank(at_least) {
        Ok(())
    } else {
        ctx.authorize(Service::Blob, &need)
    }
}

fn public_access_header(req: &Parsed) -> Result<PublicAccess, RestError> {
    match req.header("x-ms-blob-public-access") {
        None | Some("") => Ok(PublicAccess::Off),
        Some("blob") => Ok(PublicAccess::Blob),
        Some("container") => Ok(PublicAccess::Container),
        Some(v) => Err(RestError::bad_header(
            "x-ms-blob-public-access",
            format!("{v:?}: say blob or container"),
        )),
    }
}

fn public_access_value(p: PublicAccess) -> Option<&'static str> {
    match p {
        PublicAccess::Off => None,
        PublicAccess::Blob => Some("blob"),
        PublicAccess::Container => Some("container"),
    }
}

async fn get_acl(ctx: &Ctx<'_>, req: &Parsed, c: &str) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Container, "r").on(c))?;
    let lease = lease_id(req);
    let (account, cn) = (ctx.account.clone(), c.to_string());
    let (p, acl) = ctx
        .blocking(move |s| s.get_container_acl(&account, &cn, lease.as_deref()))
        .await?;
    let mut h = Headers::new();
    etag_and_modified(&p.etag, p.last_modified, &mut h);
    if let Some(v) = public_access_value(acl.public_access) {
        h.extend(header("x-ms-blob-public-access", v));
    }
    let x = crate::acl::policies_xml(&acl.policies);
    h.push((
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    ));
    Ok(reply(200, h, RestBody::full(x.finish())))
}

async fn set_acl(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Container, "w").on(c))?;
    let public_access = public_access_header(req)?;
    let policies = crate::acl::read_policies(body).await?;
    let acl = ContainerAcl {
        public_access,
        policies,
    };
    let conds = conditions(req)?;
    let lease = lease_id(req);
    let (account, cn) = (ctx.account.clone(), c.to_string());
    let p = ctx
        .blocking(move |s| s.set_container_acl(&account, &cn, acl, &conds, lease.as_deref()))
        .await?;
    let mut h = Headers::new();
    etag_and_modified(&p.etag, p.last_modified, &mut h);
    Ok(reply(200, h, RestBody::empty()))
}

async fn create_container(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Container, "cw").on(c))?;
    let public_access = public_access_header(req)?;
    let metadata = metadata_from(req)?;
    let (account, cn) = (ctx.account.clone(), c.to_string());
    let p = ctx
        .blocking(move |s| {
            let p = s.create_container(&account, &cn, metadata)?;
            if public_access == PublicAccess::Off {
                return Ok(p);
            }
            let acl = ContainerAcl {
                public_access,
                policies: Vec::new(),
            };
            s.set_container_acl(&account, &cn, acl, &Conditions::none(), None)
        })
        .await?;
    let mut h = Headers::new();
    etag_and_modified(&p.etag, p.last_modified, &mut h);
    Ok(reply(201, h, RestBody::empty()))
}

async fn delete_container(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Container, "d").on(c))?;
    let conds = conditions(req)?;
    let lease = lease_id(req);
    let (account, cn) = (ctx.account.clone(), c.to_string());
    ctx.blocking(move |s| s.delete_container(&account, &cn, &conds, lease.as_deref()))
        .await?;
    Ok(reply(202, Headers::new(), RestBody::empty()))
}

async fn container_properties(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
) -> Result<Response<RestBody>, RestError> {
    allow(
        ctx,
        Need::new(Level::Container, "r").on(c),
        c,
        PublicAccess::Container,
    )
    .await?;
    let lease = lease_id(req);
    let (account, cn) = (ctx.account.clone(), c.to_string());
    let (p, acl) = ctx
        .blocking(move |s| s.get_container_acl(&account, &cn, lease.as_deref()))
        .await?;
    let mut h = Headers::new();
    etag_and_modified(&p.etag, p.last_modified, &mut h);
    if let Some(v) = public_access_value(acl.public_access) {
        h.extend(header("x-ms-blob-public-access", v));
    }
    lease_headers(&p.lease, &mut h);
    metadata_headers(&p.metadata, &mut h);
    h.extend(header("x-ms-has-immutability-policy", "false"));
    h.extend(header("x-ms-has-legal-hold", "false"));
    Ok(reply(200, h, RestBody::empty()))
}

async fn set_container_metadata(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Container, "w").on(c))?;
    let metadata = metadata_from(req)?;
    let lease = lease_id(req);
    let (account, cn) = (ctx.account.clone(), c.to_string());
    let p = ctx
        .blocking(move |s| s.set_container_metadata(&account, &cn, metadata, lease.as_deref()))
        .await?;
    let mut h = Headers::new();
    etag_and_modified(&p.etag, p.last_modified, &mut h);
    Ok(reply(200, h, RestBody::empty()))
}

fn lease_action(req: &Parsed) -> Result<LeaseAction, RestError> {
    let action = req.header("x-ms-lease-action").unwrap_or("");
    let id = || {
        lease_id(req).ok_or_else(|| {
            RestError::bad(
                "MissingRequiredHeader",
                "An HTTP header that's mandatory for this request is not specified: x-ms-lease-id.",
            )
        })
    };
    let seconds = |name: &'static str| -> Result<Option<i64>, RestError> {
        match req.header(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<i64>()
                .map(Some)
                .map_err(|_| RestError::bad_header(name, format!("{v:?} is not an integer"))),
        }
    };
    Ok(match action.to_ascii_lowercase().as_str() {
        "acquire" => {
            let duration = match seconds("x-ms-lease-duration")? {
                None | Some(-1) => None,
                Some(s) => Some(u32::try_from(s).map_err(|_| RestError::bad_header("x-ms-lease-duration", "must be 15 to 60 or -1"))?),
            };
            LeaseAction::Acquire {
                duration,
                proposed_id: req.header("x-ms-proposed-lease-id").map(str::to_string),
            }
        }
        "renew" => LeaseAction::Renew { id: id()? },
        "change" => LeaseAction::Change {
            id: id()?,
            proposed_id: req.header("x-ms-proposed-lease-id").map(str::to_string).ok_or_else(|| {
                RestError::bad("MissingRequiredHeader", "An HTTP header that's mandatory for this request is not specified: x-ms-proposed-lease-id.")
            })?,
        },
        "release" => LeaseAction::Release { id: id()? },
        "break" => LeaseAction::Break {
            period: match seconds("x-ms-lease-break-period")? {
                None => None,
                Some(s) => Some(u32::try_from(s).map_err(|_| RestError::bad_header("x-ms-lease-break-period", "must be 0 to 60"))?),
            },
        },
        _ => return Err(RestError::bad_header("x-ms-lease-action", format!("{action:?}: say acquire, renew, change, release or break"))),
    })
}

async fn lease(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: Option<&str>,
) -> Result<Response<RestBody>, RestError> {
    let need = match b {
        Some(b) => Need::new(Level::Object, "w").on(c).blob(b),
        None => Need::new(Level::Container, "w").on(c),
    };
    ctx.authorize(Service::Blob, &need)?;
    let action = lease_action(req)?;
    let status = match action {
        LeaseAction::Acquire { .. } => 201,
        LeaseAction::Break { .. } => 202,
        _ => 200,
    };
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.map(str::to_string));
    let out = ctx
        .blocking(move |s| match &bn {
            Some(b) => s.lease_blob(&account, &cn, b, action),
            None => s.lease_container(&account, &cn, action),
        })
        .await?;
    let mut h = Headers::new();
    if let Some(id) = &out.lease_id {
        h.extend(header("x-ms-lease-id", id));
    }
    if let Some(t) = out.lease_time {
        h.extend(header("x-ms-lease-time", &t.to_string()));
    }
    Ok(reply(status, h, RestBody::empty()))
}

async fn list_blobs(ctx: &Ctx<'_>, req: &Parsed, c: &str) -> Result<Response<RestBody>, RestError> {
    let need = Need::new(Level::Container, "l").on(c).by_service_sas();
    allow(ctx, need, c, PublicAccess::Container).await?;
    let options = req.list_options()?;
    let delimiter = req
        .q("delimiter")
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    let (account, cn, opts, delim) = (
        ctx.account.clone(),
        c.to_string(),
        options.clone(),
        delimiter.clone(),
    );
    let page = ctx
        .blocking(move |s| s.list_blobs(&account, &cn, &opts, delim.as_deref()))
        .await?;
    let mut x = Xml::new();
    x.open_attrs(
        "EnumerationResults",
        &[
            ("ServiceEndpoint", &format!("/{}/", ctx.account)),
            ("ContainerName", c),
        ],
    );
    x.opt("Prefix", options.prefix.as_deref())
        .opt("Marker", options.marker.as_deref());
    if let Some(m) = options.max_results {
        x.elem("MaxResults", &m.to_string());
    }
    x.opt("Delimiter", delimiter.as_deref());
    x.open("Blobs");
    for item in &page.items {
        match item {
            BlobListItem::Blob(p) => {
                x.open("Blob").elem("Name", &p.name).open("Properties");
                x.elem("Creation-Time", &http_date(p.created))
                    .elem("Last-Modified", &http_date(p.last_modified))
                    .elem("Etag", &p.etag)
                    .elem("Content-Length", &p.size.to_string())
                    .elem(
                        "Content-Type",
                        p.content
                            .content_type
                            .as_deref()
                            .unwrap_or("application/octet-stream"),
                    )
                    .elem(
                        "Content-Encoding",
                        p.content.content_encoding.as_deref().unwrap_or(""),
                    )
                    .elem(
                        "Content-Language",
                        p.content.content_language.as_deref().unwrap_or(""),
                    )
                    .elem(
                        "Content-MD5",
                        &p.content
                            .content_md5
                            .map(|m| B64.encode(m))
                            .unwrap_or_default(),
                    )
                    .elem(
                        "Cache-Control",
                        p.content.cache_control.as_deref().unwrap_or(""),
                    )
                    .elem(
                        "Content-Disposition",
                        p.content.content_disposition.as_deref().unwrap_or(""),
                    )
                    .elem("BlobType", "BlockBlob")
                    .elem("AccessTier", "Hot")
                    .elem("AccessTierInferred", "true");
                lease_xml(&p.lease, &mut x);
                if let Some(copy) = p.copy.as_ref().filter(|_| req.includes("copy")) {
                    x.elem("CopyId", &copy.id)
                        .elem("CopyStatus", "success")
                        .elem("CopySource", &copy.source)
                        .elem("CopyProgress", &format!("{0}/{0}", copy.bytes))
                        .elem("CopyCompletionTime", &http_date(copy.completed));
                }
                x.elem("ServerEncrypted", "false").close("Properties");
                if options.include_metadata {
                    write_metadata_xml(&p.metadata, &mut x);
                }
                x.close("Blob");
            }
            BlobListItem::Prefix(p) => {
                x.open("BlobPrefix").elem("Name", p).close("BlobPrefix");
            }
        }
    }
    x.close("Blobs")
        .elem("NextMarker", page.next_marker.as_deref().unwrap_or(""));
    x.close("EnumerationResults");
    Ok(xml_reply(200, x))
}

/// The HTTP properties of a Put Blob, Put Block List or Set Blob Properties.
fn content_settings(
    req: &Parsed,
    request_content_type: bool,
) -> Result<ContentSettings, RestError> {
    let get = |n: &str| req.header(n).map(str::to_string);
    let md5 = req
        .header("x-ms-blob-content-md5")
        .map(|v| {
            crate::body::md5_value(v)
                .map_err(|why| RestError::bad_header("x-ms-blob-content-md5", why))
        })
        .transpose()?;
    Ok(ContentSettings {
        content_type: get("x-ms-blob-content-type").or_else(|| {
            if request_content_type {
                get("content-type")
            } else {
                None
            }
        }),
        content_encoding: get("x-ms-blob-content-encoding").or_else(|| {
            if request_content_type {
                get("content-encoding")
            } else {
                None
            }
        }),
        content_language: get("x-ms-blob-content-language").or_else(|| {
            if request_content_type {
                get("content-language")
            } else {
                None
            }
        }),
        content_disposition: get("x-ms-blob-content-disposition"),
        cache_control: get("x-ms-blob-cache-control").or_else(|| {
            if request_content_type {
                get("cache-control")
            } else {
                None
            }
        }),
        content_md5: md5,
    })
}

fn content_length(req: &Parsed) -> Result<Option<u64>, RestError> {
    match req.header("content-length") {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| RestError::bad_header("Content-Length", format!("{v:?}"))),
    }
}

/// Maps a body read that failed on its limit to 413, and one that failed its Content-MD5 to
/// 400 Md5Mismatch, keeping other engine errors.
fn body_error(e: BlobError, limit: u64) -> RestError {
    if let BlobError::Storage(rolehost_storage::StorageError::BodyRead(io)) = &e {
        if io.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) {
            return crate::body::too_large(limit);
        }
        if io
            .get_ref()
            .is_some_and(|inner| inner.is::<crate::body::Md5Mismatch>())
        {
            return crate::body::md5_mismatch();
        }
    }
    e.into()
}

fn written_headers(p: &BlobProperties, md5: bool) -> Headers {
    let mut h = Headers::new();
    etag_and_modified(&p.etag, p.last_modified, &mut h);
    if md5 && let Some(m) = p.content.content_md5 {
        h.extend(header("content-md5", &B64.encode(m)));
    }
    h.extend(header("x-ms-request-server-encrypted", "false"));
    h
}

async fn put_blob(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "cw").on(c).blob(b))?;
    match req.header("x-ms-blob-type") {
        None | Some("BlockBlob") => {}
        Some(t @ ("PageBlob" | "AppendBlob")) => {
            return Err(RestError::unsupported(&format!(
                "{t}s: rolehost has block blobs only"
            )));
        }
        Some(t) => return Err(RestError::bad_header("x-ms-blob-type", format!("{t:?}"))),
    }
    if content_length(req)?.is_some_and(|n| n > MAX_PUT_BLOB_BYTES) {
        return Err(RestError::new(
            413,
            "RequestBodyTooLarge",
            format!(
                "The request body is too large and exceeds the maximum permissible limit ({MAX_PUT_BLOB_BYTES} bytes)."
            ),
        ));
    }
    let options = PutBlobOptions {
        content: content_settings(req, true)?,
        metadata: metadata_from(req)?,
        conditions: conditions(req)?,
        lease_id: lease_id(req),
    };
    let mut reader =
        BodyReader::new(body, MAX_PUT_BLOB_BYTES).expect_md5(crate::body::content_md5(req)?);
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let p = ctx
        .blocking(move |s| {
            s.put_blob(&account, &cn, &bn, &mut reader, options)
                .map_err(|e| body_error(e, MAX_PUT_BLOB_BYTES))
        })
        .await?;
    Ok(reply(201, written_headers(&p, true), RestBody::empty()))
}

/// `bytes=a-b` or `bytes=a-` of `x-ms-range` (preferred) or `Range`; anything else is ignored,
/// as Azure ignores a range it cannot read.
fn range(req: &Parsed) -> Option<ByteRange> {
    let v = req.header("x-ms-range").or_else(|| req.header("range"))?;
    let spec = v.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start = a.trim().parse::<u64>().ok()?;
    let end = match b.trim() {
        "" => None,
        e => Some(e.parse::<u64>().ok()?),
    };
    if end.is_some_and(|e| e < start) {
        return None;
    }
    Some(ByteRange { start, end })
}

fn blob_headers(p: &BlobProperties, h: &mut Headers) {
    etag_and_modified(&p.etag, p.last_modified, h);
    h.extend(header(
        "content-type",
        p.content
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    ));
    for (name, v) in [
        ("content-encoding", &p.content.content_encoding),
        ("content-language", &p.content.content_language),
        ("content-disposition", &p.content.content_disposition),
        ("cache-control", &p.content.cache_control),
    ] {
        if let Some(v) = v {
            h.extend(header(name, v));
        }
    }
    h.extend(header("x-ms-blob-type", "BlockBlob"));
    h.extend(header("x-ms-creation-time", &http_date(p.created)));
    h.extend(header("accept-ranges", "bytes"));
    h.extend(header("x-ms-server-encrypted", "true"));
    lease_headers(&p.lease, h);
    if let Some(copy) = &p.copy {
        h.extend(header("x-ms-copy-id", &copy.id));
        h.extend(header("x-ms-copy-source", &copy.source));
        h.extend(header("x-ms-copy-status", "success"));
        h.extend(header(
            "x-ms-copy-progress",
            &format!("{0}/{0}", copy.bytes),
        ));
        h.extend(header(
            "x-ms-copy-completion-time",
            &http_date(copy.completed),
        ));
    }
    metadata_headers(&p.metadata, h);
}

async fn get_blob(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    allow(
        ctx,
        Need::new(Level::Object, "r").on(c).blob(b),
        c,
        PublicAccess::Blob,
    )
    .await?;
    let options = GetBlobOptions {
        range: range(req),
        conditions: conditions(req)?,
        lease_id: lease_id(req),
    };
    let ranged = options.range.is_some();
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let read = ctx
        .blocking(move |s| s.get_blob(&account, &cn, &bn, &options))
        .await?;
    let p = &read.properties;
    let mut h = Headers::new();
    blob_headers(p, &mut h);
    h.extend(header("content-length", &read.len.to_string()));
    if let Some(m) = p.content.content_md5 {
        // The whole blob's MD5: Content-MD5 for a whole read, x-ms-blob-content-md5 for a range.
        h.extend(header(
            if ranged {
                "x-ms-blob-content-md5"
            } else {
                "content-md5"
            },
            &B64.encode(m),
        ));
    }
    if ranged {
        let last = (read.offset + read.len).saturating_sub(1);
        h.extend(header(
            "content-range",
            &format!("bytes {}-{last}/{}", read.offset, p.size),
        ));
    }
    let status = if ranged { 206 } else { 200 };
    Ok(reply(status, h, RestBody::stream(read.reader, read.len)))
}

async fn blob_properties(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
    metadata_only: bool,
) -> Result<Response<RestBody>, RestError> {
    allow(
        ctx,
        Need::new(Level::Object, "r").on(c).blob(b),
        c,
        PublicAccess::Blob,
    )
    .await?;
    let conds = conditions(req)?;
    let lease = lease_id(req);
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let p = ctx
        .blocking(move |s| s.get_blob_properties(&account, &cn, &bn, &conds, lease.as_deref()))
        .await?;
    let mut h = Headers::new();
    if metadata_only {
        etag_and_modified(&p.etag, p.last_modified, &mut h);
        metadata_headers(&p.metadata, &mut h);
    } else {
        blob_headers(&p, &mut h);
        h.extend(header("content-length", &p.size.to_string()));
        if let Some(m) = p.content.content_md5 {
            h.extend(header("content-md5", &B64.encode(m)));
        }
    }
    Ok(reply(200, h, RestBody::empty()))
}

async fn delete_blob(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "d").on(c).blob(b))?;
    if req.header("x-ms-delete-snapshots") == Some("only") {
        return Err(RestError::unsupported("blob snapshots"));
    }
    let conds = conditions(req)?;
    let lease = lease_id(req);
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    ctx.blocking(move |s| s.delete_blob(&account, &cn, &bn, &conds, lease.as_deref()))
        .await?;
    let mut h = Headers::new();
    h.extend(header("x-ms-delete-type-permanent", "true"));
    Ok(reply(202, h, RestBody::empty()))
}

async fn set_blob_metadata(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "w").on(c).blob(b))?;
    let metadata = metadata_from(req)?;
    let conds = conditions(req)?;
    let lease = lease_id(req);
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let p = ctx
        .blocking(move |s| {
            s.set_blob_metadata(&account, &cn, &bn, metadata, &conds, lease.as_deref())
        })
        .await?;
    Ok(reply(200, written_headers(&p, false), RestBody::empty()))
}

async fn set_blob_properties(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "w").on(c).blob(b))?;
    let content = content_settings(req, false)?;
    let conds = conditions(req)?;
    let lease = lease_id(req);
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let p = ctx
        .blocking(move |s| {
            s.set_blob_properties(&account, &cn, &bn, content, &conds, lease.as_deref())
        })
        .await?;
    Ok(reply(200, written_headers(&p, false), RestBody::empty()))
}

fn block_id(req: &Parsed) -> Result<Vec<u8>, RestError> {
    let v = req.q("blockid").ok_or_else(|| {
        RestError::bad(
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified: blockid.",
        )
    })?;
    B64.decode(v)
        .map_err(|_| RestError::bad_query("blockid", "not base64"))
}

async fn put_block(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "cw").on(c).blob(b))?;
    let id = block_id(req)?;
    if content_length(req)?.is_some_and(|n| n > MAX_BLOCK_BYTES) {
        return Err(crate::body::too_large(MAX_BLOCK_BYTES));
    }
    let lease = lease_id(req);
    let mut reader =
        BodyReader::new(body, MAX_BLOCK_BYTES).expect_md5(crate::body::content_md5(req)?);
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    ctx.blocking(move |s| {
        s.put_block(&account, &cn, &bn, &id, &mut reader, lease.as_deref())
            .map_err(|e| body_error(e, MAX_BLOCK_BYTES))
    })
    .await?;
    let mut h = Headers::new();
    h.extend(header("x-ms-request-server-encrypted", "false"));
    Ok(reply(201, h, RestBody::empty()))
}

async fn put_block_list(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "cw").on(c).blob(b))?;
    let expected = crate::body::content_md5(req)?;
    let raw = collect_limited(body, MAX_BLOCK_LIST_BODY).await?;
    if let Some(want) = expected {
        use md5::Digest as _;
        if <[u8; 16]>::from(md5::Md5::digest(&raw)) != want {
            return Err(crate::body::md5_mismatch());
        }
    }
    let root = xml::parse(&raw)?;
    if root.name != "BlockList" {
        return Err(RestError::bad_body(
            "InvalidXmlDocument",
            "the root element must be BlockList",
        ));
    }
    let mut blocks = Vec::with_capacity(root.children.len());
    for n in &root.children {
        let id = B64.decode(n.text.trim()).map_err(|_| {
            RestError::bad_body(
                "InvalidBlockList",
                format!("block id {:?} is not base64", n.text),
            )
        })?;
        blocks.push(match n.name.as_str() {
            "Latest" => BlockRef::Latest(id),
            "Committed" => BlockRef::Committed(id),
            "Uncommitted" => BlockRef::Uncommitted(id),
            other => {
                return Err(RestError::bad_body(
                    "InvalidXmlNodeValue",
                    format!("unknown element {other:?} in BlockList"),
                ));
            }
        });
    }
    let options = PutBlobOptions {
        content: content_settings(req, false)?,
        metadata: metadata_from(req)?,
        conditions: conditions(req)?,
        lease_id: lease_id(req),
    };
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let p = ctx
        .blocking(move |s| s.put_block_list(&account, &cn, &bn, &blocks, options))
        .await?;
    Ok(reply(201, written_headers(&p, false), RestBody::empty()))
}

async fn get_block_list(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "r").on(c).blob(b))?;
    let which = match req
        .q("blocklisttype")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("committed") => BlockListType::Committed,
        Some("uncommitted") => BlockListType::Uncommitted,
        Some("all") => BlockListType::All,
        Some(v) => {
            return Err(RestError::bad_query(
                "blocklisttype",
                format!("{v:?}: say committed, uncommitted or all"),
            ));
        }
    };
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let list = ctx
        .blocking(move |s| s.get_block_list(&account, &cn, &bn, which))
        .await?;
    let mut x = Xml::new();
    x.open("BlockList");
    for (tag, blocks) in [
        ("CommittedBlocks", &list.committed),
        ("UncommittedBlocks", &list.uncommitted),
    ] {
        x.open(tag);
        for (id, size) in blocks {
            x.open("Block")
                .elem("Name", &B64.encode(id))
                .elem("Size", &size.to_string())
                .close("Block");
        }
        x.close(tag);
    }
    x.close("BlockList");
    Ok(xml_reply(200, x))
}

// ---- Copy Blob, Copy Blob From URL ----

/// Copy Blob (`x-ms-copy-source`) and, with `x-ms-requires-sync: true`, Copy Blob From URL.
/// Both finish before answering: rolehost copies within the host, so the answer already says
/// `success` and there is nothing to poll or abort.
async fn copy_blob(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "cw").on(c).blob(b))?;
    if req.header("x-ms-copy-source-authorization").is_some() {
        return Err(RestError::unsupported(
            "x-ms-copy-source-authorization: authorize the copy source with a SAS in its URL",
        ));
    }
    if req.header("x-ms-incremental-copy").is_some() {
        return Err(RestError::unsupported(
            "incremental copy: rolehost has block blobs only",
        ));
    }
    let from_url = req
        .header("x-ms-requires-sync")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let url = req
        .header("x-ms-copy-source")
        .unwrap_or_default()
        .to_string();
    let (src_account, src_container, src_blob) = copy_source(ctx, req, &url, from_url).await?;
    let metadata = metadata_from(req)?;
    let options = CopyOptions {
        source_url: url,
        // No metadata given: the source's is copied.
        metadata: (!metadata.is_empty()).then_some(metadata),
        source_conditions: source_conditions(req)?,
        conditions: conditions(req)?,
        lease_id: lease_id(req),
    };
    let (account, cn, bn) = (ctx.account.clone(), c.to_string(), b.to_string());
    let p = ctx
        .blocking(move |s| {
            s.copy_blob(
                BlobRef {
                    account: &src_account,
                    container: &src_container,
                    blob: &src_blob,
                },
                BlobRef {
                    account: &account,
                    container: &cn,
                    blob: &bn,
                },
                options,
            )
        })
        .await?;
    let mut h = written_headers(&p, from_url);
    if let Some(copy) = &p.copy {
        h.extend(header("x-ms-copy-id", &copy.id));
    }
    h.extend(header("x-ms-copy-status", "success"));
    Ok(reply(202, h, RestBody::empty()))
}

/// Abort Copy Blob: every copy has finished by the time its id is known.
fn abort_copy(
    ctx: &Ctx<'_>,
    req: &Parsed,
    c: &str,
    b: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Blob, &Need::new(Level::Object, "w").on(c).blob(b))?;
    if req.header("x-ms-copy-action") != Some("abort") || req.q("copyid").is_none() {
        return Err(RestError::bad(
            "MissingRequiredHeader",
            "Abort Copy Blob needs x-ms-copy-action: abort and a copyid.",
        ));
    }
    Err(RestError::new(
        409,
        "NoPendingCopyOperation",
        "There is currently no pending copy operation.",
    ))
}

/// The source conditions of a copy (`x-ms-source-if-*`).
fn source_conditions(req: &Parsed) -> Result<Conditions, RestError> {
    Ok(Conditions {
        if_match: etag_header(req, "x-ms-source-if-match"),
        if_none_match: etag_header(req, "x-ms-source-if-none-match"),
        if_modified_since: date_header(req, "x-ms-source-if-modified-since")?,
        if_unmodified_since: date_header(req, "x-ms-source-if-unmodified-since")?,
    })
}

/// Azure's answer for a copy source that does not exist or may not be read: the same for
/// both, so that a copy cannot probe which private blobs exist.
fn unverifiable_source() -> RestError {
    RestError::new(
        404,
        "CannotVerifyCopySource",
        "The specified resource does not exist.",
    )
}

/// Resolves a copy source URL to a blob of this host and checks the copy may read it: a SAS in
/// the URL (signed by the source account's key), a public container, or, for Copy Blob within
/// one account, the destination request's own key. rolehost fetches no other URL: a source
/// must be addressed through the endpoint the request came to (path-style or host-style), so
/// a copy can never make the host call out.
async fn copy_source(
    ctx: &Ctx<'_>,
    req: &Parsed,
    url: &str,
    from_url: bool,
) -> Result<(AccountName, String, String), RestError> {
    let bad = |why: &str| RestError::bad_header("x-ms-copy-source", why.to_string());
    if url.len() > MAX_COPY_SOURCE_BYTES {
        return Err(bad(&format!("longer than {MAX_COPY_SOURCE_BYTES} bytes")));
    }
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("not an http or https URL")),
    };
    let authority = uri.authority().ok_or_else(|| bad("not an absolute URL"))?;
    if !same_endpoint(
        authority,
        req.header("host").unwrap_or(""),
        https,
        req.https,
    ) {
        return Err(RestError::bad(
            "CannotVerifyCopySource",
            "rolehost copies only blobs of this host, addressed through the blob endpoint the request came to; it fetches no other URL.",
        ));
    }
    let head = http::Request::builder()
        .method(Method::GET)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority.as_str())
        .header("x-ms-version", crate::request::SERVED_VERSION)
        .body(())
        .map_err(|_| bad("not a URL"))?
        .into_parts()
        .0;
    let src = Parsed::new(Service::Blob, head, req.peer, https)
        .map_err(|_| bad("does not name a blob of this host"))?;
    if src.segments.len() < 2 || src.segments[1..].join("/").is_empty() {
        return Err(bad("does not name a blob"));
    }
    if src.q("snapshot").is_some() || src.q("versionid").is_some() {
        return Err(RestError::unsupported(
            "copies of blob snapshots and versions",
        ));
    }
    let container = src.segments[0].clone();
    let blob = src.segments[1..].join("/");
    let keys = ctx.keys_of(&src.account).ok_or_else(unverifiable_source)?;
    let account = AccountName::new(src.account.clone()).map_err(|_| unverifiable_source())?;
    let need = Need::new(Level::Object, "r").on(&container).blob(&blob);
    if src.q("sig").is_some() {
        let mut access = crate::auth::authenticate(&src, Some(&keys), std::time::SystemTime::now())
            .map_err(|_| unverifiable_source())?;
        if let Access::Sas(grant) = &mut access {
            ctx.apply_stored_policy(&account, grant)
                .await
                .map_err(|_| unverifiable_source())?;
        }
        return crate::auth::authorize(Service::Blob, &access, &need)
            .map(|()| (account, container, blob))
            .map_err(|_| unverifiable_source());
    }
    // Copy Blob within one account may ride on the request's own key; Copy Blob From URL
    // needs the source authorized in its URL, as Azure requires.
    if !from_url && ctx.access == Access::Key && account == ctx.account {
        return Ok((account, container, blob));
    }
    let (a, cn) = (account.clone(), container.clone());
    let public = ctx
        .blocking(move |s| s.get_container_acl(&a, &cn, None))
        .await
        .map(|(_, acl)| acl.public_access != PublicAccess::Off)
        .unwrap_or(false);
    if public {
        Ok((account, container, blob))
    } else {
        Err(unverifiable_source())
    }
}

/// Whether a copy source's authority is the endpoint the request came to: the same port, and
/// the same host, another loopback name for it, or a host-style name on it
/// (`<account>.blob.localhost`).
fn same_endpoint(
    src: &http::uri::Authority,
    req_host: &str,
    src_https: bool,
    req_https: bool,
) -> bool {
    let port = |p: Option<u16>, https: bool| p.unwrap_or(if https { 443 } else { 80 });
    let Ok(req) = req_host.parse::<http::uri::Authority>() else {
        return false;
    };
    if port(src.port_u16(), src_https) != port(req.port_u16(), req_https) {
        return false;
    }
    let (s, r) = (
        src.host().to_ascii_lowercase(),
        req.host().to_ascii_lowercase(),
    );
    let loopback = |h: &str| {
        h == "localhost"
            || h.ends_with(".localhost")
            || h.trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    // `<account>.blob.<host>` is `<host>` with the account in front.
    let base = |h: &str| {
        h.split_once(".blob.")
            .map_or(h, |(_, rest)| rest)
            .to_string()
    };
    base(&s) == base(&r) || (loopback(&s) && loopback(&r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(src: &str, host: &str) -> bool {
        same_endpoint(&src.parse().unwrap(), host, false, false)
    }

    #[test]
    fn a_copy_source_must_be_this_endpoint() {
        assert!(same("127.0.0.1:10000", "127.0.0.1:10000"));
        assert!(same("localhost:10000", "127.0.0.1:10000"), "loopback names");
        assert!(same("acct.blob.localhost:10000", "127.0.0.1:10000"));
        assert!(
            same("a.blob.example.com", "b.blob.example.com"),
            "host-style"
        );
        assert!(same("example.com:80", "example.com"), "default port");
        assert!(!same("127.0.0.1:10001", "127.0.0.1:10000"), "another port");
        assert!(
            !same("169.254.169.254:10000", "127.0.0.1:10000"),
            "another host"
        );
        assert!(!same("evil.example:10000", "127.0.0.1:10000"));
        assert!(!same("a.blob.evil.example", "b.blob.example.com"));
        assert!(!same("127.0.0.1:10000", "not a host"));
    }
}
