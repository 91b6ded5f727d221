//! The table service: query, create and delete tables; insert, update, merge, upsert, delete
//! and point-read entities with `If-Match`; query entities with `$filter`, `$select`, `$top`
//! and continuation headers; entity group transactions (`$batch`, multipart/mixed). JSON with
//! `nometadata`, `minimalmetadata` (the default) or `fullmetadata`.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::{HeaderName, HeaderValue, Response};
use rolehost_storage::table::datetime::{format_micros, parse_rfc3339};
use rolehost_storage::table::{
    EdmValue, Entity, Filter, IfMatch, Query, StoredEntity, TableOp, UpdateMode,
};
use rolehost_storage::{ListOptions, TableError};
use serde_json::{Map, Value};

use crate::auth::{Access, Level, Need, Scope};
use crate::body::collect_limited;
use crate::{Ctx, InBody, Parsed, RestBody, RestError, Service, header, reply};

/// Largest entity body read: a 1 MiB entity as JSON, whose escapes (`\u0001` is six bytes for
/// one) and base64 make it larger than it is stored.
pub const MAX_ENTITY_BODY: usize = 8 * 1024 * 1024;
/// Largest `$batch` body (Azure's limit on an entity group transaction's payload).
pub const MAX_BATCH_BODY: usize = 4 * 1024 * 1024;
/// Most parts a `$batch` body may hold: Azure's 100 operations, one more so the engine can
/// say the batch is too large rather than the parser.
pub const MAX_BATCH_PARTS: usize = 101;

type Headers = Vec<(HeaderName, HeaderValue)>;

/// How much OData metadata a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Meta {
    None,
    Minimal,
    Full,
}

fn meta(req: &Parsed) -> Meta {
    let accept = req.header("accept").unwrap_or("");
    if accept.contains("odata=nometadata") {
        Meta::None
    } else if accept.contains("odata=fullmetadata") {
        Meta::Full
    } else {
        Meta::Minimal
    }
}

fn content_type(m: Meta) -> &'static str {
    match m {
        Meta::None => "application/json;odata=nometadata;streaming=true;charset=utf-8",
        Meta::Minimal => "application/json;odata=minimalmetadata;streaming=true;charset=utf-8",
        Meta::Full => "application/json;odata=fullmetadata;streaming=true;charset=utf-8",
    }
}

/// `scheme://host/account`, the base of `odata.metadata` links.
fn base_url(ctx: &Ctx<'_>, req: &Parsed) -> String {
    let host = req.header("host").unwrap_or("localhost");
    let scheme = if req.https { "https" } else { "http" };
    let path_style =
        req.raw_path.trim_start_matches('/').split('/').next() == Some(ctx.account.as_str());
    if path_style {
        format!("{scheme}://{host}/{}", ctx.account)
    } else {
        format!("{scheme}://{host}")
    }
}

fn prefer_no_content(req: &Parsed) -> bool {
    req.header("prefer")
        .is_some_and(|p| p.contains("return-no-content"))
}

/// What the last path segment names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// `Tables`.
    Tables,
    /// `Tables('name')`.
    OneTable(String),
    /// `name` or `name()`.
    Table(String),
    /// `name(PartitionKey='p',RowKey='r')`.
    Entity(String, String, String),
    /// `$batch`.
    Batch,
}

/// Parses `name(PartitionKey='p',RowKey='r')` and the other shapes of [`Target`].
fn target(seg: &str) -> Result<Target, RestError> {
    let bad = || {
        RestError::bad(
            "InvalidUri",
            format!("The requested URI does not represent any resource on the server ({seg:?})."),
        )
    };
    if seg == "$batch" {
        return Ok(Target::Batch);
    }
    let Some(open) = seg.find('(') else {
        return Ok(if seg == "Tables" {
            Target::Tables
        } else {
            Target::Table(seg.to_string())
        });
    };
    let name = &seg[..open];
    let inner = seg[open + 1..].strip_suffix(')').ok_or_else(bad)?;
    if inner.is_empty() {
        return Ok(if name == "Tables" {
            Target::Tables
        } else {
            Target::Table(name.to_string())
        });
    }
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut rest = inner;
    loop {
        let (key, after) = rest.split_once('=').ok_or_else(bad)?;
        let (value, after) = quoted(after).ok_or_else(bad)?;
        values.insert(key.trim().to_string(), value);
        let after = after.trim_start();
        if after.is_empty() {
            break;
        }
        rest = after.strip_prefix(',').ok_or_else(bad)?;
    }
    if name == "Tables" {
        return Err(bad());
    }
    match (values.remove("PartitionKey"), values.remove("RowKey")) {
        (Some(p), Some(r)) if values.is_empty() => Ok(Target::Entity(name.to_string(), p, r)),
        _ => Err(bad()),
    }
}

/// `'text'` with `''` for a quote: the value and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start().strip_prefix('\'')?;
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\'' {
            if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                chars.next();
                out.push('\'');
            } else {
                return Some((out, &s[i + 1..]));
            }
        } else {
            out.push(c);
        }
    }
    None
}

/// `Tables('name')`: the name alone.
fn one_table(seg: &str) -> Option<String> {
    let inner = seg.strip_prefix("Tables(")?.strip_suffix(')')?;
    let (v, rest) = quoted(inner)?;
    rest.trim().is_empty().then_some(v)
}

/// Answers a table request.
pub async fn handle(
    ctx: &Ctx<'_>,
    req: Parsed,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    if req.restype() == Some("service") {
        let m = req.method.clone();
        return crate::properties::handle(ctx, &req, &m, Service::Table, body).await;
    }
    if req.comp() == Some("acl") {
        return match (req.segments.as_slice(), req.method.as_str()) {
            ([t], "GET" | "HEAD") => {
                crate::acl::get(ctx, Service::Table, t, |s, a, t| s.get_table_acl(a, t)).await
            }
            ([t], "PUT") => {
                crate::acl::set(ctx, Service::Table, t, body, |s, a, t, p| {
                    s.set_table_acl(a, t, p)
                })
                .await
            }
            _ => Err(req.no_such_operation()),
        };
    }
    let seg = match req.segments.as_slice() {
        [s] => s.clone(),
        _ => {
            return Err(RestError::bad(
                "InvalidUri",
                format!(
                    "The requested URI does not represent any resource on the server ({}).",
                    req.raw_path
                ),
            ));
        }
    };
    let t = match one_table(&seg) {
        Some(name) => Target::OneTable(name),
        None => target(&seg)?,
    };
    let m = req.method.as_str().to_string();
    match (t, m.as_str()) {
        (Target::Tables, "GET") => query_tables(ctx, &req).await,
        (Target::Tables, "POST") => create_table(ctx, &req, body).await,
        (Target::OneTable(name), "DELETE") => delete_table(ctx, &name).await,
        (Target::OneTable(name), "GET") => get_table(ctx, &req, &name).await,
        (Target::Table(name), "POST") => insert(ctx, &req, &name, body).await,
        (Target::Table(name), "GET") => query_entities(ctx, &req, &name).await,
        (Target::Entity(name, pk, rk), "GET") => get_entity(ctx, &req, &name, &pk, &rk).await,
        (Target::Entity(name, pk, rk), "PUT" | "MERGE" | "PATCH") => {
            update(ctx, &req, &name, pk, rk, body).await
        }
        (Target::Entity(name, pk, rk), "DELETE") => delete_entity(ctx, &req, &name, pk, rk).await,
        (Target::Batch, "POST") => batch(ctx, &req, body).await,
        _ => Err(req.no_such_operation()),
    }
}

fn json_reply(status: u16, m: Meta, value: Value, mut headers: Headers) -> Response<RestBody> {
    headers.push((
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(m)),
    ));
    reply(status, headers, RestBody::full(value.to_string()))
}

fn top(req: &Parsed) -> Result<Option<u32>, RestError> {
    match req.q("$top") {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(Some(n)),
            _ => Err(RestError::bad(
                "InvalidInput",
                format!(
                    "One of the request inputs is not valid: $top must be 1 to 1000, not {v:?}."
                ),
            )),
        },
    }
}

fn table_entity(name: &str) -> StoredEntity {
    StoredEntity {
        partition_key: String::new(),
        row_key: String::new(),
        timestamp: rolehost_storage::Timestamp(0),
        etag: String::new(),
        properties: BTreeMap::from([("TableName".to_string(), EdmValue::String(name.to_string()))]),
    }
}

fn table_json(ctx: &Ctx<'_>, req: &Parsed, m: Meta, name: &str) -> Map<String, Value> {
    let mut o = Map::new();
    if m == Meta::Full {
        let base = base_url(ctx, req);
        o.insert(
            "odata.type".into(),
            Value::from(format!("{}.Tables", ctx.account)),
        );
        o.insert(
            "odata.id".into(),
            Value::from(format!("{base}/Tables('{name}')")),
        );
        o.insert(
            "odata.editLink".into(),
            Value::from(format!("Tables('{name}')")),
        );
    }
    o.insert("TableName".into(), Value::from(name));
    o
}

async fn query_tables(ctx: &Ctx<'_>, req: &Parsed) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &Need::new(Level::Service, "lr"))?;
    let m = meta(req);
    let filter = match req.q("$filter") {
        Some(f) if !f.is_empty() => Some(Filter::parse(f)?),
        _ => None,
    };
    let top = top(req)?;
    let mut options = ListOptions {
        marker: req
            .q("NextTableName")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        max_results: Some(top.unwrap_or(1000)),
        ..ListOptions::default()
    };
    // A filter may skip many tables: read pages until one holds something or the listing ends
    // (an account has at most its quota of tables, 1,000 by default).
    let mut names = Vec::new();
    let next = loop {
        let (account, opts) = (ctx.account.clone(), options.clone());
        let page = ctx
            .blocking(move |s| s.list_tables(&account, &opts))
            .await?;
        names.extend(
            page.items
                .into_iter()
                .filter(|n| filter.as_ref().is_none_or(|f| f.matches(&table_entity(n)))),
        );
        match page.next_marker {
            Some(m) if names.is_empty() => options.marker = Some(m),
            other => break other,
        }
    };
    let value: Vec<Value> = names
        .iter()
        .map(|n| Value::Object(table_json(ctx, req, m, n)))
        .collect();
    let mut o = Map::new();
    if m != Meta::None {
        o.insert(
            "odata.metadata".into(),
            Value::from(format!("{}/$metadata#Tables", base_url(ctx, req))),
        );
    }
    o.insert("value".into(), Value::Array(value));
    let mut h = Headers::new();
    if let Some(n) = next {
        h.extend(header("x-ms-continuation-nexttablename", &n));
    }
    Ok(json_reply(200, m, Value::Object(o), h))
}

async fn read_json(body: InBody, limit: usize) -> Result<Map<String, Value>, RestError> {
    let raw = collect_limited(body, limit).await?;
    match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(RestError::bad(
            "InvalidInput",
            "One of the request inputs is not valid: the body must be a JSON object.",
        )),
        Err(e) => Err(RestError::bad(
            "InvalidInput",
            format!("One of the request inputs is not valid: the body is not JSON ({e})."),
        )),
    }
}

async fn create_table(
    ctx: &Ctx<'_>,
    req: &Parsed,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    let o = read_json(body, 64 * 1024).await?;
    let name = o
        .get("TableName")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            RestError::bad(
                "InvalidInput",
                "One of the request inputs is not valid: TableName is missing.",
            )
        })?
        .to_string();
    ctx.authorize(
        Service::Table,
        &Need::new(Level::Container, "acw").on(&name),
    )?;
    let (account, n) = (ctx.account.clone(), name.clone());
    ctx.blocking(move |s| s.create_table(&account, &n)).await?;
    let m = meta(req);
    if prefer_no_content(req) {
        let mut h = Headers::new();
        h.extend(header("preference-applied", "return-no-content"));
        return Ok(reply(204, h, RestBody::empty()));
    }
    let mut o = table_json(ctx, req, m, &name);
    if m != Meta::None {
        o.insert(
            "odata.metadata".into(),
            Value::from(format!("{}/$metadata#Tables/@Element", base_url(ctx, req))),
        );
    }
    Ok(json_reply(201, m, Value::Object(o), Headers::new()))
}

async fn delete_table(ctx: &Ctx<'_>, name: &str) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &Need::new(Level::Container, "d").on(name))?;
    let (account, n) = (ctx.account.clone(), name.to_string());
    ctx.blocking(move |s| s.delete_table(&account, &n)).await?;
    Ok(reply(204, Headers::new(), RestBody::empty()))
}

async fn get_table(
    ctx: &Ctx<'_>,
    req: &Parsed,
    name: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &Need::new(Level::Service, "lr"))?;
    let (account, n) = (ctx.account.clone(), name.to_string());
    let page = ctx
        .blocking(move |s| {
            s.list_tables(
                &account,
                &ListOptions {
                    prefix: Some(n),
                    max_results: Some(1000),
                    ..ListOptions::default()
                },
            )
        })
        .await?;
    let found = page
        .items
        .into_iter()
        .find(|t| t.eq_ignore_ascii_case(name))
        .ok_or_else(|| RestError::from(TableError::TableNotFound(name.to_string())))?;
    let m = meta(req);
    let mut o = table_json(ctx, req, m, &found);
    if m != Meta::None {
        o.insert(
            "odata.metadata".into(),
            Value::from(format!("{}/$metadata#Tables/@Element", base_url(ctx, req))),
        );
    }
    Ok(json_reply(200, m, Value::Object(o), Headers::new()))
}

// ---- entities as JSON ----

fn invalid(why: impl std::fmt::Display) -> RestError {
    RestError::bad(
        "InvalidInput",
        format!("One of the request inputs is not valid: {why}."),
    )
}

/// An entity as a client sends it: its keys and properties, annotated with `@odata.type` where
/// the JSON value alone would read back as another type.
pub fn entity_to_json(e: &Entity) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("PartitionKey".into(), Value::from(e.partition_key.as_str()));
    o.insert("RowKey".into(), Value::from(e.row_key.as_str()));
    for (name, v) in &e.properties {
        put_value(&mut o, name, v, Meta::Minimal);
    }
    o
}

/// An entity from its JSON: types from `@odata.type` annotations, else from the JSON value
/// (string, Int32 for an integer that fits, Double, Boolean). Nulls are not stored. `keys`
/// are the URL's, when it names them.
pub fn entity_from_json(
    o: &Map<String, Value>,
    keys: Option<(&str, &str)>,
) -> Result<Entity, RestError> {
    let text = |name: &str| o.get(name).and_then(Value::as_str).map(str::to_string);
    let (pk, rk) = match keys {
        Some((p, r)) => (p.to_string(), r.to_string()),
        None => (
            text("PartitionKey").ok_or_else(|| invalid("PartitionKey is missing"))?,
            text("RowKey").ok_or_else(|| invalid("RowKey is missing"))?,
        ),
    };
    let mut e = Entity::new(pk, rk);
    for (name, value) in o {
        if name.contains('@')
            || name.starts_with("odata.")
            || matches!(name.as_str(), "PartitionKey" | "RowKey" | "Timestamp")
        {
            continue;
        }
        let annotation = o.get(&format!("{name}@odata.type")).and_then(Value::as_str);
        let v = match (annotation, value) {
            (_, Value::Null) => continue,
            (None | Some("Edm.String"), Value::String(s)) => EdmValue::String(s.clone()),
            (None, Value::Bool(b)) | (Some("Edm.Boolean"), Value::Bool(b)) => EdmValue::Boolean(*b),
            (None, Value::Number(n)) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => EdmValue::Int32(i as i32),
                Some(i) => EdmValue::Int64(i),
                None => EdmValue::Double(
                    n.as_f64()
                        .ok_or_else(|| invalid(format!("{name} is not a number")))?,
                ),
            },
            (Some("Edm.Int32"), Value::Number(n)) => EdmValue::Int32(
                n.as_i64()
                    .and_then(|i| i32::try_from(i).ok())
                    .ok_or_else(|| invalid(format!("{name} is not an Edm.Int32")))?,
            ),
            (Some("Edm.Int64"), Value::String(s)) => EdmValue::Int64(
                s.parse()
                    .map_err(|_| invalid(format!("{name} is not an Edm.Int64")))?,
            ),
            (Some("Edm.Int64"), Value::Number(n)) => EdmValue::Int64(
                n.as_i64()
                    .ok_or_else(|| invalid(format!("{name} is not an Edm.Int64")))?,
            ),
            (Some("Edm.Double"), Value::Number(n)) => EdmValue::Double(
                n.as_f64()
                    .ok_or_else(|| invalid(format!("{name} is not an Edm.Double")))?,
            ),
            (Some("Edm.Double"), Value::String(s)) => EdmValue::Double(match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" | "INF" => f64::INFINITY,
                "-Infinity" | "-INF" => f64::NEG_INFINITY,
                other => other
                    .parse()
                    .map_err(|_| invalid(format!("{name} is not an Edm.Double")))?,
            }),
            (Some("Edm.DateTime"), Value::String(s)) => EdmValue::DateTime(
                parse_rfc3339(s)
                    .ok_or_else(|| invalid(format!("{name} is not an Edm.DateTime")))?,
            ),
            (Some("Edm.Guid"), Value::String(s)) => EdmValue::Guid(s.to_ascii_lowercase()),
            (Some("Edm.Binary"), Value::String(s)) => EdmValue::Binary(
                B64.decode(s)
                    .map_err(|_| invalid(format!("{name} is not base64")))?,
            ),
            (Some(t), _) => return Err(invalid(format!("{name}: {t} does not match its value"))),
            (None, _) => {
                return Err(invalid(format!(
                    "{name}: arrays and objects are not property values"
                )));
            }
        };
        e.properties.insert(name.clone(), v);
    }
    Ok(e)
}

fn put_value(o: &mut Map<String, Value>, name: &str, v: &EdmValue, m: Meta) {
    let annotate = |o: &mut Map<String, Value>, always: bool| {
        if m == Meta::Full || (m == Meta::Minimal && always) {
            o.insert(format!("{name}@odata.type"), Value::from(v.type_name()));
        }
    };
    match v {
        EdmValue::String(s) => {
            o.insert(name.into(), Value::from(s.as_str()));
            annotate(o, false);
        }
        EdmValue::Int32(i) => {
            o.insert(name.into(), Value::from(*i));
            annotate(o, false);
        }
        EdmValue::Boolean(b) => {
            o.insert(name.into(), Value::from(*b));
            annotate(o, false);
        }
        EdmValue::Int64(i) => {
            o.insert(name.into(), Value::from(i.to_string()));
            annotate(o, true);
        }
        EdmValue::Double(d) => {
            let (value, special) = if d.is_nan() {
                (Value::from("NaN"), true)
            } else if d.is_infinite() {
                (
                    Value::from(if *d > 0.0 { "Infinity" } else { "-Infinity" }),
                    true,
                )
            } else {
                (
                    serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number),
                    false,
                )
            };
            o.insert(name.into(), value);
            // An integral double written as `1.0` reads back as a double; one written `1`
            // would not, so it is annotated like the special values.
            annotate(o, special || d.fract() == 0.0);
        }
        EdmValue::DateTime(t) => {
            o.insert(name.into(), Value::from(format_micros(*t)));
            annotate(o, true);
        }
        EdmValue::Guid(g) => {
            o.insert(name.into(), Value::from(g.as_str()));
            annotate(o, true);
        }
        EdmValue::Binary(b) => {
            o.insert(name.into(), Value::from(B64.encode(b)));
            annotate(o, true);
        }
    }
}

fn entity_json(
    ctx: &Ctx<'_>,
    req: &Parsed,
    table: &str,
    e: &StoredEntity,
    m: Meta,
    select: Option<&[String]>,
) -> Map<String, Value> {
    let mut o = Map::new();
    if m != Meta::None {
        o.insert("odata.etag".into(), Value::from(e.etag.as_str()));
    }
    if m == Meta::Full {
        let key = format!(
            "{table}(PartitionKey='{}',RowKey='{}')",
            e.partition_key.replace('\'', "''"),
            e.row_key.replace('\'', "''")
        );
        o.insert(
            "odata.type".into(),
            Value::from(format!("{}.{table}", ctx.account)),
        );
        o.insert(
            "odata.id".into(),
            Value::from(format!("{}/{key}", base_url(ctx, req))),
        );
        o.insert("odata.editLink".into(), Value::from(key));
    }
    let wanted = |n: &str| select.is_none_or(|s| s.iter().any(|x| x == n));
    if wanted("PartitionKey") {
        o.insert("PartitionKey".into(), Value::from(e.partition_key.as_str()));
    }
    if wanted("RowKey") {
        o.insert("RowKey".into(), Value::from(e.row_key.as_str()));
    }
    if wanted("Timestamp") {
        let t = EdmValue::DateTime(i64::try_from(e.timestamp.as_micros()).unwrap_or(i64::MAX));
        put_value(&mut o, "Timestamp", &t, m);
    }
    for (name, v) in &e.properties {
        if wanted(name) {
            put_value(&mut o, name, v, m);
        }
    }
    o
}

/// For a table SAS held to a key range: the key must be inside it.
fn check_key_range(ctx: &Ctx<'_>, pk: &str, rk: &str) -> Result<(), RestError> {
    if let Access::Sas(g) = &ctx.access
        && !g.scope.covers_key(pk, rk)
    {
        return Err(RestError::forbidden(
            "AuthorizationResourceTypeMismatch",
            "This request is not authorized to perform this operation using this resource type.",
        ));
    }
    Ok(())
}

fn entity_need<'a>(table: &'a str, perms: &'a str) -> Need<'a> {
    Need::new(Level::Object, perms).on(table)
}

async fn insert(
    ctx: &Ctx<'_>,
    req: &Parsed,
    table: &str,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &entity_need(table, "a"))?;
    let o = read_json(body, MAX_ENTITY_BODY).await?;
    let entity = entity_from_json(&o, None)?;
    check_key_range(ctx, &entity.partition_key, &entity.row_key)?;
    let (pk, rk) = (entity.partition_key.clone(), entity.row_key.clone());
    let (account, t) = (ctx.account.clone(), table.to_string());
    let etag = ctx
        .blocking(move |s| s.execute(&account, &t, TableOp::Insert(entity)))
        .await?;
    let mut h = Headers::new();
    if let Some(e) = &etag {
        h.extend(header("etag", e));
    }
    if prefer_no_content(req) {
        h.extend(header("preference-applied", "return-no-content"));
        return Ok(reply(204, h, RestBody::empty()));
    }
    let (account, t) = (ctx.account.clone(), table.to_string());
    let stored = ctx
        .blocking(move |s| s.get_entity(&account, &t, &pk, &rk, None))
        .await?;
    let m = meta(req);
    let mut o = entity_json(ctx, req, table, &stored, m, None);
    if m != Meta::None {
        o.insert(
            "odata.metadata".into(),
            Value::from(format!("{}/$metadata#{table}/@Element", base_url(ctx, req))),
        );
    }
    Ok(json_reply(201, m, Value::Object(o), h))
}

fn if_match(req: &Parsed) -> Option<IfMatch> {
    req.header("if-match").map(|v| {
        if v.trim() == "*" {
            IfMatch::Any
        } else {
            IfMatch::ETag(v.trim().to_string())
        }
    })
}

/// The operation a PUT, MERGE or PATCH of an entity is.
fn update_op(method: &str, if_match: Option<IfMatch>, entity: Entity) -> TableOp {
    let mode = if method == "PUT" {
        UpdateMode::Replace
    } else {
        UpdateMode::Merge
    };
    match if_match {
        Some(if_match) => TableOp::Update {
            entity,
            mode,
            if_match,
        },
        None => TableOp::Upsert { entity, mode },
    }
}

async fn update(
    ctx: &Ctx<'_>,
    req: &Parsed,
    table: &str,
    pk: String,
    rk: String,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    let cond = if_match(req);
    ctx.authorize(Service::Table, &entity_need(table, "u"))?;
    if cond.is_none() {
        // Insert-or-replace and insert-or-merge may create: they need Add as well.
        ctx.authorize(Service::Table, &entity_need(table, "a"))?;
    }
    check_key_range(ctx, &pk, &rk)?;
    let o = read_json(body, MAX_ENTITY_BODY).await?;
    let entity = entity_from_json(&o, Some((&pk, &rk)))?;
    let op = update_op(req.method.as_str(), cond, entity);
    let (account, t) = (ctx.account.clone(), table.to_string());
    let etag = ctx.blocking(move |s| s.execute(&account, &t, op)).await?;
    let mut h = Headers::new();
    if let Some(e) = &etag {
        h.extend(header("etag", e));
    }
    Ok(reply(204, h, RestBody::empty()))
}

fn missing_if_match() -> RestError {
    RestError::bad(
        "MissingRequiredHeader",
        "An HTTP header that's mandatory for this request is not specified: If-Match.",
    )
}

async fn delete_entity(
    ctx: &Ctx<'_>,
    req: &Parsed,
    table: &str,
    pk: String,
    rk: String,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &entity_need(table, "d"))?;
    check_key_range(ctx, &pk, &rk)?;
    let cond = if_match(req).ok_or_else(missing_if_match)?;
    let (account, t) = (ctx.account.clone(), table.to_string());
    ctx.blocking(move |s| {
        s.execute(
            &account,
            &t,
            TableOp::Delete {
                partition_key: pk,
                row_key: rk,
                if_match: cond,
            },
        )
    })
    .await?;
    Ok(reply(204, Headers::new(), RestBody::empty()))
}

fn select(req: &Parsed) -> Option<Vec<String>> {
    req.q("$select")
        .filter(|s| !s.is_empty() && *s != "*")
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
}

async fn get_entity(
    ctx: &Ctx<'_>,
    req: &Parsed,
    table: &str,
    pk: &str,
    rk: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &entity_need(table, "r"))?;
    check_key_range(ctx, pk, rk)?;
    let sel = select(req);
    let (account, t, p, r, s2) = (
        ctx.account.clone(),
        table.to_string(),
        pk.to_string(),
        rk.to_string(),
        sel.clone(),
    );
    let e = ctx
        .blocking(move |s| s.get_entity(&account, &t, &p, &r, s2.as_deref()))
        .await?;
    let m = meta(req);
    let mut o = entity_json(ctx, req, table, &e, m, sel.as_deref());
    if m != Meta::None {
        o.insert(
            "odata.metadata".into(),
            Value::from(format!("{}/$metadata#{table}/@Element", base_url(ctx, req))),
        );
    }
    let mut h = Headers::new();
    h.extend(header("etag", &e.etag));
    Ok(json_reply(200, m, Value::Object(o), h))
}

async fn query_entities(
    ctx: &Ctx<'_>,
    req: &Parsed,
    table: &str,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(Service::Table, &entity_need(table, "r"))?;
    let continuation = match (req.q("NextPartitionKey"), req.q("NextRowKey")) {
        (Some(p), r) => Some((p.to_string(), r.unwrap_or("").to_string())),
        _ => None,
    };
    let sel = select(req);
    let query = Query {
        filter: req
            .q("$filter")
            .filter(|f| !f.is_empty())
            .map(str::to_string),
        select: sel.clone(),
        top: top(req)?,
        continuation,
    };
    let (account, t) = (ctx.account.clone(), table.to_string());
    let page = ctx
        .blocking(move |s| s.query_entities(&account, &t, &query))
        .await?;
    let m = meta(req);
    let scope = match &ctx.access {
        Access::Sas(g) => Some(g.scope.clone()),
        _ => None,
    };
    let value: Vec<Value> = page
        .entities
        .iter()
        .filter(|e| {
            scope
                .as_ref()
                .is_none_or(|s: &Scope| s.covers_key(&e.partition_key, &e.row_key))
        })
        .map(|e| Value::Object(entity_json(ctx, req, table, e, m, sel.as_deref())))
        .collect();
    let mut o = Map::new();
    if m != Meta::None {
        o.insert(
            "odata.metadata".into(),
            Value::from(format!("{}/$metadata#{table}", base_url(ctx, req))),
        );
    }
    o.insert("value".into(), Value::Array(value));
    let mut h = Headers::new();
    if let Some((p, r)) = &page.continuation {
        h.extend(header("x-ms-continuation-nextpartitionkey", p));
        h.extend(header("x-ms-continuation-nextrowkey", r));
    }
    Ok(json_reply(200, m, Value::Object(o), h))
}

// ---- $batch ----

/// The boundary of a `multipart/mixed` content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').find_map(|p| {
        let p = p.trim();
        p.strip_prefix("boundary=")
            .map(|b| b.trim_matches('"').to_string())
    })
}

/// A part of a multipart body: its headers (lowercased names) and body.
struct Part<'a> {
    headers: Vec<(String, String)>,
    body: &'a str,
}

impl Part<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits a multipart body on `boundary`, at most `max` parts.
fn parts<'a>(body: &'a str, boundary: &str, max: usize) -> Result<Vec<Part<'a>>, RestError> {
    let delim = format!("--{boundary}");
    let mut out = Vec::new();
    let mut pieces = body.split(delim.as_str());
    pieces.next(); // the preamble
    for piece in pieces {
        if piece.starts_with("--") {
            return Ok(out);
        }
        if out.len() >= max {
            return Err(RestError::bad(
                "InvalidInput",
                format!(
                    "One of the request inputs is not valid: the batch has more than {} operations.",
                    max - 1
                ),
            ));
        }
        let piece = piece
            .strip_prefix("\r\n")
            .or_else(|| piece.strip_prefix('\n'))
            .unwrap_or(piece);
        let (head, rest) = split_head(piece)
            .ok_or_else(|| invalid("a batch part has no blank line after its headers"))?;
        out.push(Part {
            headers: parse_headers(head),
            body: rest,
        });
    }
    Err(invalid(
        "the batch body does not end with its closing boundary",
    ))
}

fn split_head(s: &str) -> Option<(&str, &str)> {
    if let Some(i) = s.find("\r\n\r\n") {
        return Some((&s[..i], &s[i + 4..]));
    }
    s.find("\n\n").map(|i| (&s[..i], &s[i + 2..]))
}

fn parse_headers(head: &str) -> Vec<(String, String)> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// One operation of a changeset: the inner request's method, URL, headers and body.
struct InnerRequest<'a> {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: &'a str,
    content_id: Option<String>,
}

fn inner_request<'a>(part: &Part<'a>) -> Result<InnerRequest<'a>, RestError> {
    let text = part.body;
    let (line, rest) = text
        .split_once('\n')
        .ok_or_else(|| invalid("a batch operation has no request line"))?;
    let mut words = line.trim().split(' ');
    let method = words.next().unwrap_or("").to_ascii_uppercase();
    let url = words.next().unwrap_or("").to_string();
    let (head, body) = split_head(rest).unwrap_or((rest, ""));
    let headers = parse_headers(head);
    Ok(InnerRequest {
        method,
        url,
        headers,
        body: body.trim_end_matches(['\r', '\n']),
        content_id: part.header("content-id").map(str::to_string),
    })
}

/// The table and keys an inner request's URL names (its path after the account).
fn inner_target(ctx: &Ctx<'_>, url: &str) -> Result<Target, RestError> {
    let path = match url.find("://") {
        Some(i) => url[i + 3..].find('/').map_or("/", |j| &url[i + 3 + j..]),
        None => url,
    };
    let path = path.split('?').next().unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| invalid("a batch URL is not UTF-8"))?;
    let mut segs: Vec<&str> = decoded.trim_start_matches('/').split('/').collect();
    if segs.len() > 1 && segs[0] == ctx.account.as_str() {
        segs.remove(0);
    }
    match segs.as_slice() {
        [seg] => target(seg),
        _ => Err(invalid(format!(
            "batch operation URL {url:?} names no table"
        ))),
    }
}

async fn batch(ctx: &Ctx<'_>, req: &Parsed, body: InBody) -> Result<Response<RestBody>, RestError> {
    let ct = req.header("content-type").unwrap_or("");
    let outer =
        boundary(ct).ok_or_else(|| invalid("a batch must be multipart/mixed with a boundary"))?;
    let raw = collect_limited(body, MAX_BATCH_BODY).await?;
    let text = std::str::from_utf8(&raw).map_err(|_| invalid("the batch body is not UTF-8"))?;
    let outer_parts = parts(text, &outer, 2)?;
    let [changeset] = outer_parts.as_slice() else {
        return Err(invalid("a batch holds exactly one changeset"));
    };
    let inner = boundary(changeset.header("content-type").unwrap_or(""))
        .ok_or_else(|| invalid("the changeset must be multipart/mixed with a boundary"))?;
    let op_parts = parts(changeset.body, &inner, MAX_BATCH_PARTS)?;
    let mut table: Option<String> = None;
    let mut ops = Vec::with_capacity(op_parts.len());
    let mut ids = Vec::with_capacity(op_parts.len());
    for part in &op_parts {
        let r = inner_request(part)?;
        let t = inner_target(ctx, &r.url)?;
        let header = |n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let json = || -> Result<Map<String, Value>, RestError> {
            match serde_json::from_str::<Value>(r.body) {
                Ok(Value::Object(o)) => Ok(o),
                _ => Err(invalid("a batch operation's body is not a JSON object")),
            }
        };
        let cond = header("if-match").map(|v| {
            if v == "*" {
                IfMatch::Any
            } else {
                IfMatch::ETag(v.to_string())
            }
        });
        let (name, op) = match (t, r.method.as_str()) {
            (Target::Table(name), "POST") => {
                ctx.authorize(Service::Table, &entity_need(&name, "a"))?;
                let e = entity_from_json(&json()?, None)?;
                check_key_range(ctx, &e.partition_key, &e.row_key)?;
                (name, TableOp::Insert(e))
            }
            (Target::Entity(name, pk, rk), m @ ("PUT" | "MERGE" | "PATCH")) => {
                ctx.authorize(Service::Table, &entity_need(&name, "u"))?;
                if cond.is_none() {
                    ctx.authorize(Service::Table, &entity_need(&name, "a"))?;
                }
                check_key_range(ctx, &pk, &rk)?;
                let e = entity_from_json(&json()?, Some((&pk, &rk)))?;
                (name, update_op(m, cond, e))
            }
            (Target::Entity(name, pk, rk), "DELETE") => {
                ctx.authorize(Service::Table, &entity_need(&name, "d"))?;
                check_key_range(ctx, &pk, &rk)?;
                let if_match = cond.ok_or_else(missing_if_match)?;
                (
                    name,
                    TableOp::Delete {
                        partition_key: pk,
                        row_key: rk,
                        if_match,
                    },
                )
            }
            (_, m) => {
                return Err(invalid(format!(
                    "a batch may hold inserts, updates, merges and deletes, not {m} {}",
                    r.url
                )));
            }
        };
        match &table {
            Some(t) if !t.eq_ignore_ascii_case(&name) => {
                return Err(invalid("every operation of a batch must be on one table"));
            }
            Some(_) => {}
            None => table = Some(name),
        }
        ops.push(op);
        ids.push(r.content_id);
    }
    let table = table.ok_or_else(|| invalid("the batch holds no operation"))?;
    let n_ops = ops.len();
    let (account, t) = (ctx.account.clone(), table.clone());
    let result = ctx
        .blocking(move |s| Ok::<_, RestError>(s.submit_transaction(&account, &t, ops)))
        .await?;
    let batch_b = format!("batchresponse_{}", uuid_like(n_ops));
    let cs_b = format!("changesetresponse_{}", uuid_like(n_ops + 1));
    let mut out = format!("--{batch_b}\r\nContent-Type: multipart/mixed; boundary={cs_b}\r\n\r\n");
    match result {
        Ok(etags) => {
            for (etag, id) in etags.iter().zip(&ids) {
                out.push_str(&format!("--{cs_b}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"));
                out.push_str("HTTP/1.1 204 No Content\r\nX-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\nDataServiceVersion: 1.0;\r\n");
                if let Some(id) = id {
                    out.push_str(&format!("Content-ID: {id}\r\n"));
                }
                if let Some(e) = etag {
                    out.push_str(&format!("ETag: {e}\r\n"));
                }
                out.push_str("\r\n");
            }
        }
        Err(e) => {
            let (index, status, code, message) = describe(e)?;
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let body = serde_json::json!({"odata.error": {"code": code, "message": {"lang": "en-US", "value": format!("{index}:{message}")}}}).to_string();
            out.push_str(&format!("--{cs_b}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"));
            out.push_str(&format!("HTTP/1.1 {status} {reason}\r\nX-Content-Type-Options: nosniff\r\nDataServiceVersion: 3.0;\r\nContent-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8\r\n"));
            if let Some(Some(id)) = ids.get(index) {
                out.push_str(&format!("Content-ID: {id}\r\n"));
            }
            out.push_str(&format!("\r\n{body}\r\n"));
        }
    }
    out.push_str(&format!("--{cs_b}--\r\n--{batch_b}--\r\n"));
    let mut h = Headers::new();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/mixed; boundary={batch_b}")) {
        h.push((http::header::CONTENT_TYPE, v));
    }
    Ok(reply(202, h, RestBody::full(out)))
}

/// A transaction that failed: Azure still answers 202 and tells in the body which operation
/// failed and why (its index, status, code and message). An engine failure is not that: it is
/// the whole request's 5xx.
fn describe(e: TableError) -> Result<(usize, u16, String, String), RestError> {
    let (index, source) = match &e {
        TableError::BatchOperationFailed { index, source } => (*index, &**source),
        other => (0, other),
    };
    if matches!(source, TableError::Storage(_)) {
        return Err(e.into());
    }
    Ok((
        index,
        source.status(),
        source.code().to_string(),
        crate::error::sentence(source),
    ))
}

fn uuid_like(n: usize) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:016x}{:04x}", t, n as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(target("Tables").unwrap(), Target::Tables);
        assert_eq!(target("people()").unwrap(), Target::Table("people".into()));
        assert_eq!(
            target("people(PartitionKey='a''b',RowKey='x,y)')").unwrap(),
            Target::Entity("people".into(), "a'b".into(), "x,y)".into())
        );
        assert_eq!(one_table("Tables('people')"), Some("people".into()));
        for bad in [
            "people(PartitionKey='a')",
            "people(PartitionKey='a',RowKey=b)",
            "people(PartitionKey='a'",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_types_round_trip() {
        let o: Map<String, Value> = serde_json::from_str(
            r#"{"PartitionKey":"p","RowKey":"r","Age":23,"Big":"9007199254740993","Big@odata.type":"Edm.Int64",
                "When":"2026-12-03T10:00:00.1234567Z","When@odata.type":"Edm.DateTime","Ratio":1.0,"Ratio@odata.type":"Edm.Double",
                "Raw":"AAEC","Raw@odata.type":"Edm.Binary","Nothing":null,"odata.etag":"W/\"x\""}"#,
        )
        .unwrap();
        let e = entity_from_json(&o, None).unwrap();
        assert_eq!(e.properties["Age"], EdmValue::Int32(23));
        assert_eq!(e.properties["Big"], EdmValue::Int64(9_007_199_254_740_993));
        assert_eq!(e.properties["Ratio"], EdmValue::Double(1.0));
        assert_eq!(e.properties["Raw"], EdmValue::Binary(vec![0, 1, 2]));
        assert!(!e.properties.contains_key("Nothing"));
        let mut out = Map::new();
        put_value(&mut out, "Big", &e.properties["Big"], Meta::Minimal);
        put_value(&mut out, "Age", &e.properties["Age"], Meta::Minimal);
        assert_eq!(out["Big"], "9007199254740993");
        assert_eq!(out["Big@odata.type"], "Edm.Int64");
        assert!(!out.contains_key("Age@odata.type"));
        let bad: Map<String, Value> = serde_json::from_str(
            r#"{"PartitionKey":"p","RowKey":"r","X":"no","X@odata.type":"Edm.Int64"}"#,
        )
        .unwrap();
        assert_eq!(
            entity_from_json(&bad, None).unwrap_err().code,
            "InvalidInput"
        );
    }

    #[test]
    fn multipart_parts() {
        let body = "--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: application/http\r\n\r\nPOST http://h/acct/t HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"PartitionKey\":\"p\",\"RowKey\":\"1\"}\r\n--c--\r\n--b--\r\n";
        let outer = parts(body, "b", 2).unwrap();
        assert_eq!(outer.len(), 1);
        let inner = parts(outer[0].body, "c", MAX_BATCH_PARTS).unwrap();
        let r = inner_request(&inner[0]).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.body, "{\"PartitionKey\":\"p\",\"RowKey\":\"1\"}");
        assert!(parts("--b\r\n\r\nno end", "b", 2).is_err());
    }
}
