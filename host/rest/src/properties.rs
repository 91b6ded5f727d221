//! Each service's properties (Get/Set Service Properties) and the CORS rules among them: the
//! preflight `OPTIONS` a browser sends before a cross-origin request, and the
//! `Access-Control-*` headers of the request itself.
//!
//! Properties are kept in the engine's account settings ([`rolehost_storage::settings`]), one
//! per service. Logging, metrics, delete retention and the default service version are kept
//! and given back as set, but rolehost does not act on them (it logs and measures in its own
//! way); CORS rules are applied.

use http::{HeaderName, HeaderValue, Method, Response};
use rolehost_storage::AccountName;

use crate::auth::{Level, Need};
use crate::body::collect_limited;
use crate::xml::{self, Node, Xml};
use crate::{Ctx, InBody, Parsed, RestBody, RestError, Service, header, reply};

/// Most CORS rules a service may have (Azure's limit).
pub const MAX_CORS_RULES: usize = 5;
/// Largest Set Service Properties body.
pub const MAX_PROPERTIES_BODY: usize = 64 * 1024;
/// Longest `MaxAgeInSeconds` a rule may give (a day; browsers cap it lower anyway).
const MAX_AGE_LIMIT: u64 = 86_400;

/// One CORS rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CorsRule {
    /// Origins (`*` for any).
    pub allowed_origins: Vec<String>,
    /// Methods (`GET`, `PUT`...).
    pub allowed_methods: Vec<String>,
    /// Request headers (exact, `prefix*`, or `*`).
    pub allowed_headers: Vec<String>,
    /// Response headers the browser may show (same forms).
    pub exposed_headers: Vec<String>,
    /// How long a preflight may be cached.
    pub max_age_secs: u64,
}

/// A service's properties as kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceProperties {
    /// The CORS rules, applied in order.
    pub cors: Vec<CorsRule>,
    /// The other elements as set (Logging, HourMetrics, MinuteMetrics,
    /// DefaultServiceVersion, DeleteRetentionPolicy...), XML text each, given back as they were.
    pub kept: Vec<String>,
}

fn setting(service: Service) -> String {
    format!("properties/{}", service.as_str())
}

/// The service's properties (the defaults if never set).
pub fn load(
    store: &dyn rolehost_storage::Backend,
    account: &AccountName,
    service: Service,
) -> ServiceProperties {
    match store.get_setting(account, &setting(service)) {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Ok(None) => ServiceProperties::default(),
        Err(e) => {
            tracing::warn!(account = %account, error = %e, "reading service properties failed; no CORS rules apply");
            ServiceProperties::default()
        }
    }
}

fn list(n: &Node, name: &str) -> Vec<String> {
    n.child_text(name)
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn write_node(n: &Node, x: &mut Xml) {
    if n.children.is_empty() {
        x.elem(&n.name, n.text.trim());
    } else {
        x.open(&n.name);
        for c in &n.children {
            write_node(c, x);
        }
        x.close(&n.name);
    }
}

/// The default Logging and metrics elements, as a new Azure account has them.
const DEFAULTS: &[&str] = &[
    "<Logging><Version>1.0</Version><Delete>false</Delete><Read>false</Read><Write>false</Write><RetentionPolicy><Enabled>false</Enabled></RetentionPolicy></Logging>",
    "<HourMetrics><Version>1.0</Version><Enabled>false</Enabled><RetentionPolicy><Enabled>false</Enabled></RetentionPolicy></HourMetrics>",
    "<MinuteMetrics><Version>1.0</Version><Enabled>false</Enabled><RetentionPolicy><Enabled>false</Enabled></RetentionPolicy></MinuteMetrics>",
];

/// Routes `?restype=service&comp=...`.
pub async fn handle(
    ctx: &Ctx<'_>,
    req: &Parsed,
    method: &Method,
    service: Service,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    match (method, req.comp()) {
        (&Method::GET, Some("properties")) => get(ctx, service).await,
        (&Method::PUT, Some("properties")) => set(ctx, service, body).await,
        (_, Some("stats")) => Err(RestError::unsupported(
            "service statistics (there is no secondary to replicate to)",
        )),
        _ => Err(RestError::bad(
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid: comp.",
        )),
    }
}

/// Get Service Properties.
pub async fn get(ctx: &Ctx<'_>, service: Service) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(service, &Need::new(Level::Service, "r"))?;
    let account = ctx.account.clone();
    let props = ctx
        .blocking(move |s| Ok::<_, RestError>(load(s, &account, service)))
        .await?;
    let mut x = Xml::new();
    x.open("StorageServiceProperties");
    let kept_names: Vec<String> = props
        .kept
        .iter()
        .filter_map(|k| xml::parse(k.as_bytes()).ok().map(|n| n.name))
        .collect();
    for d in DEFAULTS {
        let name = &d[1..d.find('>').unwrap_or(1)];
        if !kept_names.iter().any(|k| k == name) {
            x.0.push_str(d);
        }
    }
    for k in &props.kept {
        x.0.push_str(k);
    }
    x.open("Cors");
    for r in &props.cors {
        x.open("CorsRule")
            .elem("AllowedOrigins", &r.allowed_origins.join(","))
            .elem("AllowedMethods", &r.allowed_methods.join(","))
            .elem("MaxAgeInSeconds", &r.max_age_secs.to_string())
            .elem("ExposedHeaders", &r.exposed_headers.join(","))
            .elem("AllowedHeaders", &r.allowed_headers.join(","))
            .close("CorsRule");
    }
    x.close("Cors").close("StorageServiceProperties");
    Ok(reply(
        200,
        vec![(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        RestBody::full(x.finish()),
    ))
}

const METHODS: &[&str] = &[
    "DELETE", "GET", "HEAD", "MERGE", "POST", "OPTIONS", "PUT", "PATCH",
];

/// Set Service Properties: the elements given replace those kept; CORS rules are checked.
pub async fn set(
    ctx: &Ctx<'_>,
    service: Service,
    body: InBody,
) -> Result<Response<RestBody>, RestError> {
    ctx.authorize(service, &Need::new(Level::Service, "w"))?;
    let raw = collect_limited(body, MAX_PROPERTIES_BODY).await?;
    let root = xml::parse(&raw)?;
    if root.name != "StorageServiceProperties" {
        return Err(RestError::bad_body(
            "InvalidXmlDocument",
            "the root element must be StorageServiceProperties",
        ));
    }
    let account = ctx.account.clone();
    let mut props = ctx
        .blocking(move |s| Ok::<_, RestError>(load(s, &account, service)))
        .await?;
    for child in &root.children {
        if child.name == "Cors" {
            let rules: Vec<&Node> = child.all("CorsRule").collect();
            if rules.len() > MAX_CORS_RULES {
                return Err(RestError::bad_body(
                    "InvalidXmlDocument",
                    format!("{} CORS rules, at most {MAX_CORS_RULES}", rules.len()),
                ));
            }
            let mut cors = Vec::new();
            for r in rules {
                let rule = CorsRule {
                    allowed_origins: list(r, "AllowedOrigins"),
                    allowed_methods: list(r, "AllowedMethods")
                        .into_iter()
                        .map(|m| m.to_ascii_uppercase())
                        .collect(),
                    allowed_headers: list(r, "AllowedHeaders")
                        .into_iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    exposed_headers: list(r, "ExposedHeaders")
                        .into_iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    max_age_secs: r
                        .child_text("MaxAgeInSeconds")
                        .unwrap_or("0")
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| {
                            RestError::bad_body(
                                "InvalidXmlNodeValue",
                                "MaxAgeInSeconds is not a number",
                            )
                        })?,
                };
                if rule.allowed_origins.is_empty() || rule.allowed_methods.is_empty() {
                    return Err(RestError::bad_body(
                        "InvalidXmlDocument",
                        "a CORS rule needs AllowedOrigins and AllowedMethods",
                    ));
                }
                if let Some(m) = rule
                    .allowed_methods
                    .iter()
                    .find(|m| !METHODS.contains(&m.as_str()))
                {
                    return Err(RestError::bad_body(
                        "InvalidXmlNodeValue",
                        format!("AllowedMethods: {m:?} is not a method CORS may allow"),
                    ));
                }
                if rule.max_age_secs > MAX_AGE_LIMIT {
                    return Err(RestError::bad_body(
                        "InvalidXmlNodeValue",
                        format!("MaxAgeInSeconds is at most {MAX_AGE_LIMIT}"),
                    ));
                }
                cors.push(rule);
            }
            props.cors = cors;
        } else {
            let mut x = Xml(String::new());
            write_node(child, &mut x);
            props.kept.retain(|k| {
                xml::parse(k.as_bytes())
                    .map(|n| n.name != child.name)
                    .unwrap_or(false)
            });
            props.kept.push(x.finish());
        }
    }
    let value = serde_json::to_vec(&props).unwrap_or_default();
    let (account, name) = (ctx.account.clone(), setting(service));
    ctx.blocking(move |s| s.set_setting(&account, &name, value))
        .await?;
    Ok(reply(202, Vec::new(), RestBody::empty()))
}

fn origin_matches(rule: &CorsRule, origin: &str) -> bool {
    rule.allowed_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

fn header_matches(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == name
            || p.strip_suffix('*')
                .is_some_and(|prefix| name.starts_with(prefix))
    })
}

/// The first rule allowing `origin` to use `method` with `headers`.
fn find<'a>(
    props: &'a ServiceProperties,
    origin: &str,
    method: &str,
    headers: &[String],
) -> Option<&'a CorsRule> {
    props.cors.iter().find(|r| {
        origin_matches(r, origin)
            && r.allowed_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
            && headers
                .iter()
                .all(|h| header_matches(&r.allowed_headers, h))
    })
}

fn allow_origin_headers(rule: &CorsRule, origin: &str, h: &mut Vec<(HeaderName, HeaderValue)>) {
    let any = rule.allowed_origins.iter().any(|o| o == "*");
    h.extend(header(
        "access-control-allow-origin",
        if any { "*" } else { origin },
    ));
    if !any {
        h.extend(header("access-control-allow-credentials", "true"));
    }
    h.extend(header("vary", "Origin"));
}

/// Answers a preflight `OPTIONS` for `req`'s account. It carries no credentials, so only an
/// account this host serves is answered.
pub async fn preflight(
    store: std::sync::Arc<dyn rolehost_storage::Backend>,
    req: &Parsed,
    served: bool,
) -> Result<Response<RestBody>, RestError> {
    let fail = || {
        RestError::forbidden(
            "CorsPreflightFailure",
            "CORS not enabled or no matching rule found for this request.",
        )
    };
    let origin = req.header("origin").ok_or_else(|| {
        RestError::bad(
            "InvalidHeaderValue",
            "A CORS preflight request must carry Origin and Access-Control-Request-Method.",
        )
    })?;
    let method = req.header("access-control-request-method").ok_or_else(|| {
        RestError::bad(
            "InvalidHeaderValue",
            "A CORS preflight request must carry Origin and Access-Control-Request-Method.",
        )
    })?;
    let account = match AccountName::new(req.account.clone()) {
        Ok(a) if served => a,
        _ => return Err(fail()),
    };
    let headers: Vec<String> = req
        .header("access-control-request-headers")
        .unwrap_or("")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let service = req.service;
    let props = tokio::task::spawn_blocking(move || load(&*store, &account, service))
        .await
        .unwrap_or_default();
    let rule = find(&props, origin, method, &headers).ok_or_else(fail)?;
    let mut h = Vec::new();
    allow_origin_headers(rule, origin, &mut h);
    h.extend(header(
        "access-control-allow-methods",
        &method.to_ascii_uppercase(),
    ));
    if !headers.is_empty() {
        h.extend(header("access-control-allow-headers", &headers.join(",")));
    }
    h.extend(header(
        "access-control-max-age",
        &rule.max_age_secs.to_string(),
    ));
    Ok(reply(200, h, RestBody::empty()))
}

/// Adds the `Access-Control-*` headers to the answer of a cross-origin request (one carrying
/// `Origin`) when a rule allows its origin and method: the browser then lets the page read it.
pub fn decorate(
    props: &ServiceProperties,
    origin: &str,
    method: &Method,
    resp: &mut Response<RestBody>,
) {
    let Some(rule) = find(props, origin, method.as_str(), &[]) else {
        return;
    };
    let mut h = Vec::new();
    allow_origin_headers(rule, origin, &mut h);
    // The headers of this answer that the rule exposes.
    let exposed: Vec<String> = resp
        .headers()
        .keys()
        .map(|k| k.as_str().to_string())
        .filter(|k| header_matches(&rule.exposed_headers, k))
        .collect();
    if !exposed.is_empty() {
        h.extend(header("access-control-expose-headers", &exposed.join(",")));
    }
    for (k, v) in h {
        resp.headers_mut().insert(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> ServiceProperties {
        ServiceProperties {
            cors: vec![CorsRule {
                allowed_origins: vec!["https://app.example".into()],
                allowed_methods: vec!["GET".into(), "PUT".into()],
                allowed_headers: vec![
                    "x-ms-meta-*".into(),
                    "content-type".into(),
                    "x-ms-blob-type".into(),
                ],
                exposed_headers: vec!["x-ms-*".into()],
                max_age_secs: 60,
            }],
            kept: Vec::new(),
        }
    }

    #[test]
    fn rules_match_origin_method_and_headers() {
        let p = props();
        assert!(
            find(
                &p,
                "https://app.example",
                "PUT",
                &["x-ms-meta-owner".into(), "content-type".into()]
            )
            .is_some()
        );
        assert!(find(&p, "https://evil.example", "PUT", &[]).is_none());
        assert!(find(&p, "https://app.example", "DELETE", &[]).is_none());
        assert!(find(&p, "https://app.example", "PUT", &["authorization".into()]).is_none());
    }

    #[test]
    fn cross_origin_answers_are_decorated_only_when_allowed() {
        let p = props();
        let mut r = reply(
            200,
            header("x-ms-request-id", "1").into_iter().collect(),
            RestBody::empty(),
        );
        decorate(&p, "https://app.example", &Method::GET, &mut r);
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert_eq!(
            r.headers()["access-control-expose-headers"],
            "x-ms-request-id"
        );
        let mut r = reply(200, Vec::new(), RestBody::empty());
        decorate(&p, "https://evil.example", &Method::GET, &mut r);
        assert!(r.headers().get("access-control-allow-origin").is_none());
    }
}
