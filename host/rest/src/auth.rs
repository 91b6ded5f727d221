//! Who may do what: every request is authenticated (SharedKey, SharedKeyLite, an account or
//! service SAS, or anonymous) and then authorized for the one operation it is.
//!
//! Failures are 403 `AuthenticationFailed` with Azure's one message whatever was wrong (the
//! signature, the date, an unknown account, an expired SAS): a client learns nothing about
//! which part to change. Signatures are compared in constant time. A SAS that is genuine but
//! does not grant the operation gets Azure's specific codes (`AuthorizationPermissionMismatch`
//! and its siblings): by then the caller has proved they hold a signed token.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::RestError;
use crate::keys::{AccountKeys, Key};
use crate::request::{Parsed, Service};

/// How far a request's `x-ms-date` / `Date` may be from the host's clock (Azure's rule).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);
/// Longest `Authorization` header or SAS signature looked at.
const MAX_SIGNATURE_CHARS: usize = 512;

/// What the request proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Signed with one of the account's keys: everything in the account.
    Key,
    /// A genuine SAS: what it grants.
    Sas(Grant),
    /// No credentials: only what the account makes public.
    Anonymous,
}

/// What a SAS grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Its permission letters.
    pub permissions: String,
    /// What it covers.
    pub scope: Scope,
    /// The stored access policy it names (`si`), not yet applied: the door looks it up in
    /// the container's ACL and takes the permissions and times the token leaves out from it.
    pub policy: Option<String>,
}

impl Grant {
    /// Applies the stored access policy the token names: its permissions where the token has
    /// none, and its start and expiry, checked against `now`. A policy that is gone (revoked)
    /// fails as a bad signature does.
    pub fn apply_policy(
        &mut self,
        policy: Option<&rolehost_storage::blob::AccessPolicy>,
        now: SystemTime,
    ) -> Result<(), RestError> {
        let Some(p) = policy else {
            return Err(RestError::auth_failed());
        };
        let at = |t: rolehost_storage::Timestamp| {
            SystemTime::UNIX_EPOCH + Duration::from_micros(t.as_micros())
        };
        if p.expiry.is_some_and(|e| now > at(e)) || p.start.is_some_and(|s| now < at(s)) {
            return Err(RestError::auth_failed());
        }
        if self.permissions.is_empty() {
            self.permissions = p.permissions.clone();
        }
        self.policy = None;
        Ok(())
    }
}

/// What a SAS covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// An account SAS: these services (`ss`) and resource types (`srt`: s, c, o).
    Account {
        /// Service letters (b, q, t).
        services: String,
        /// Resource type letters (s, c, o).
        resource_types: String,
    },
    /// A blob service SAS on a container (`sr=c`).
    Container(String),
    /// A blob service SAS on one blob (`sr=b`).
    Blob(String, String),
    /// A queue service SAS.
    Queue(String),
    /// A table service SAS, optionally held to a key range.
    Table {
        /// The table (lowercase).
        table: String,
        /// `(spk, srk)`: the first key it covers.
        start: Option<(String, Option<String>)>,
        /// `(epk, erk)`: the last key it covers.
        end: Option<(String, Option<String>)>,
    },
}

/// The level of what an operation acts on, as an account SAS's `srt` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The service: list containers, queues, tables; service properties.
    Service,
    /// A container, queue or table itself.
    Container,
    /// A blob, a message, an entity.
    Object,
}

impl Level {
    fn letter(self) -> char {
        match self {
            Level::Service => 's',
            Level::Container => 'c',
            Level::Object => 'o',
        }
    }
}

/// What one operation needs.
#[derive(Clone, Copy, Debug)]
pub struct Need<'a> {
    /// Its level.
    pub level: Level,
    /// Any one of these permission letters grants it.
    pub any_of: &'a str,
    /// The container, queue or table it acts on.
    pub resource: Option<&'a str>,
    /// The blob it acts on.
    pub blob: Option<&'a str>,
    /// A service SAS (not only an account SAS) may grant it.
    pub service_sas: bool,
    /// Anonymous callers may do it where the container is public (blob reads).
    pub public_read: bool,
}

impl<'a> Need<'a> {
    /// An operation at `level` needing one of `any_of`.
    pub fn new(level: Level, any_of: &'a str) -> Self {
        Need {
            level,
            any_of,
            resource: None,
            blob: None,
            service_sas: level == Level::Object,
            public_read: false,
        }
    }

    /// On this container, queue or table.
    pub fn on(mut self, resource: &'a str) -> Self {
        self.resource = Some(resource);
        self
    }

    /// On this blob.
    pub fn blob(mut self, blob: &'a str) -> Self {
        self.blob = Some(blob);
        self
    }

    /// A service SAS may grant it too (listing blobs with a container SAS).
    pub fn by_service_sas(mut self) -> Self {
        self.service_sas = true;
        self
    }
}

/// Checks that `access` may do what `need` says, answering as Azure does when not.
pub fn authorize(service: Service, access: &Access, need: &Need<'_>) -> Result<(), RestError> {
    let grant = match access {
        Access::Key => return Ok(()),
        // Anonymous callers are told a private blob does not exist, as Azure does, so that
        // no one can probe which private names exist; queues and tables are never public.
        Access::Anonymous => {
            return Err(match service {
                Service::Blob => RestError::new(
                    404,
                    "ResourceNotFound",
                    "The specified resource does not exist.",
                ),
                _ => RestError::new(
                    401,
                    "NoAuthenticationInformation",
                    "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
                ),
            });
        }
        Access::Sas(g) => g,
    };
    let permitted = need.any_of.chars().any(|c| grant.permissions.contains(c));
    match &grant.scope {
        Scope::Account {
            services,
            resource_types,
        } => {
            if !services.contains(service.letter()) {
                return Err(RestError::forbidden(
                    "AuthorizationServiceMismatch",
                    "This request is not authorized to perform this operation using this service.",
                ));
            }
            if !resource_types.contains(need.level.letter()) {
                return Err(RestError::forbidden(
                    "AuthorizationResourceTypeMismatch",
                    "This request is not authorized to perform this operation using this resource type.",
                ));
            }
        }
        scope => {
            let inside = need.service_sas
                && match scope {
                    Scope::Container(c) => need.resource == Some(c.as_str()),
                    Scope::Blob(c, b) => {
                        need.resource == Some(c.as_str()) && need.blob == Some(b.as_str())
                    }
                    Scope::Queue(q) => need.resource == Some(q.as_str()),
                    Scope::Table { table, .. } => {
                        need.resource.is_some_and(|t| t.eq_ignore_ascii_case(table))
                    }
                    Scope::Account { .. } => false,
                };
            if !inside {
                return Err(RestError::forbidden(
                    "AuthorizationResourceTypeMismatch",
                    "This request is not authorized to perform this operation using this resource type.",
                ));
            }
        }
    }
    if !permitted {
        return Err(RestError::forbidden(
            "AuthorizationPermissionMismatch",
            "This request is not authorized to perform this operation using this permission.",
        ));
    }
    Ok(())
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &Key, text: &str) -> Option<HmacSha256> {
    // HMAC takes a key of any length; `new_from_slice` never fails for it.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key.bytes()).ok()?;
    m.update(text.as_bytes());
    Some(m)
}

/// Signs `text` with `key`: base64 of HMAC-SHA256, what clients put in SharedKey and `sig`.
pub fn sign(key: &Key, text: &str) -> String {
    mac(key, text)
        .map(|m| B64.encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Whether `sig` (base64) is the signature of any of `texts` under either key, in constant
/// time per comparison.
fn verify(keys: &AccountKeys, texts: &[String], sig: &str) -> bool {
    if sig.len() > MAX_SIGNATURE_CHARS {
        return false;
    }
    let Ok(raw) = B64.decode(sig) else {
        return false;
    };
    // Each comparison is constant-time (`verify_slice`); stopping at the first match says
    // only that a genuine signature matched, which its sender knows.
    for key in keys.both() {
        for t in texts {
            if mac(key, t).is_some_and(|m| m.verify_slice(&raw).is_ok()) {
                return true;
            }
        }
    }
    false
}

/// Signs a request a client is about to send with SharedKey (SharedKeyLite for no service:
/// the table service takes SharedKey too): sets `x-ms-date` and `x-ms-version` unless there,
/// and `Authorization`. It signs the string the door checks first, so what it signs the door
/// accepts, and so does Azure. For rolehost's own clients (the CLI and the benchmark).
pub fn sign_shared_key(
    service: Service,
    head: &mut http::request::Parts,
    account: &str,
    key: &Key,
) -> Result<(), RestError> {
    let date = httpdate::fmt_http_date(SystemTime::now());
    if !head.headers.contains_key("x-ms-date")
        && let Ok(v) = http::HeaderValue::from_str(&date)
    {
        head.headers.insert("x-ms-date", v);
    }
    if !head.headers.contains_key("x-ms-version") {
        head.headers.insert(
            "x-ms-version",
            http::HeaderValue::from_static(crate::request::SERVED_VERSION),
        );
    }
    let mut copy = http::Request::builder()
        .method(head.method.clone())
        .uri(head.uri.clone())
        .body(())
        .map_err(|e| RestError::bad("InvalidUri", e.to_string()))?
        .into_parts()
        .0;
    copy.headers = head.headers.clone();
    let req = Parsed::new(
        service,
        copy,
        IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        false,
    )?;
    let text = match service {
        Service::Table => table_string_to_sign(&req),
        _ => blob_queue_strings_to_sign(&req, false, false).remove(0),
    };
    let value = format!("SharedKey {account}:{}", sign(key, &text));
    let value = http::HeaderValue::from_str(&value)
        .map_err(|e| RestError::bad("InvalidHeaderValue", e.to_string()))?;
    head.headers.insert(http::header::AUTHORIZATION, value);
    Ok(())
}

/// Authenticates `req` against the account's keys (`None`: an account this host does not
/// serve, refused like a bad signature).
pub fn authenticate(
    req: &Parsed,
    keys: Option<&AccountKeys>,
    now: SystemTime,
) -> Result<Access, RestError> {
    if let Some(auth) = req.headers.get(http::header::AUTHORIZATION) {
        let auth = auth.to_str().map_err(|_| RestError::auth_failed())?;
        if auth.len() > MAX_SIGNATURE_CHARS {
            return Err(RestError::auth_failed());
        }
        let keys = keys.ok_or_else(RestError::auth_failed)?;
        return shared_key(req, keys, auth, now).map(|()| Access::Key);
    }
    if req.q("sig").is_some() {
        let keys = keys.ok_or_else(RestError::auth_failed)?;
        return sas(req, keys, now).map(Access::Sas);
    }
    Ok(Access::Anonymous)
}

fn shared_key(
    req: &Parsed,
    keys: &AccountKeys,
    auth: &str,
    now: SystemTime,
) -> Result<(), RestError> {
    let (scheme, rest) = auth.split_once(' ').ok_or_else(RestError::auth_failed)?;
    let (account, sig) = rest
        .trim()
        .rsplit_once(':')
        .ok_or_else(RestError::auth_failed)?;
    if account != req.account {
        return Err(RestError::auth_failed());
    }
    let lite = match scheme {
        "SharedKey" => false,
        "SharedKeyLite" => true,
        _ => return Err(RestError::auth_failed()),
    };
    check_date(req, now)?;
    let texts = |all| match (req.service, lite) {
        (Service::Table, false) => vec![table_string_to_sign(req)],
        (Service::Table, true) => vec![table_lite_string_to_sign(req)],
        (_, lite) => blob_queue_strings_to_sign(req, lite, all),
    };
    // The usual form first; the others (a decoded path, byte-ordered headers) only when it
    // does not verify. Either way every comparison is constant-time.
    if verify(keys, &texts(false), sig)
        || (req.service != Service::Table && verify(keys, &texts(true), sig))
    {
        Ok(())
    } else {
        tracing::debug!(account, "storage request refused: bad signature");
        Err(RestError::auth_failed())
    }
}

/// A signed request must carry its date (x-ms-date or Date), within [`MAX_CLOCK_SKEW`]: an old
/// request captured on the wire cannot be replayed later.
fn check_date(req: &Parsed, now: SystemTime) -> Result<(), RestError> {
    let date = req
        .header("x-ms-date")
        .or_else(|| req.header("date"))
        .ok_or_else(RestError::auth_failed)?;
    let when = httpdate::parse_http_date(date).map_err(|_| RestError::auth_failed())?;
    let skew = match now.duration_since(when) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    if skew > MAX_CLOCK_SKEW {
        tracing::debug!(account = %req.account, date, "storage request refused: date too far from the host's clock");
        return Err(RestError::auth_failed());
    }
    Ok(())
}

fn header_or_empty<'a>(req: &'a Parsed, name: &str) -> &'a str {
    req.header(name).unwrap_or("")
}

/// The `x-ms-*` headers, lowercased, sorted (either the Azure SDKs' culture-aware order or
/// plain byte order: clients differ), as `name:value\n`.
fn canonical_headers(req: &Parsed, collation: bool) -> String {
    let mut hs: Vec<(String, String)> = Vec::new();
    for (name, value) in &req.headers {
        let n = name.as_str();
        if !n.starts_with("x-ms-") {
            continue;
        }
        let v = value.to_str().unwrap_or("").trim();
        match hs.iter_mut().find(|(k, _)| k == n) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(v);
            }
            None => hs.push((n.to_string(), v.to_string())),
        }
    }
    if collation {
        hs.sort_by(|a, b| azure_header_order(&a.0, &b.0));
    } else {
        hs.sort();
    }
    let mut out = String::new();
    for (k, v) in hs {
        out.push_str(&k);
        out.push(':');
        out.push_str(&v);
        out.push('\n');
    }
    out
}

/// `/<account><path>` followed by every query parameter, names lowercased and sorted, values
/// comma-joined: the 2009-09-19 canonicalized resource.
fn canonical_resource(req: &Parsed, path: &str) -> String {
    let mut out = format!("/{}{}", req.account, path);
    let mut params: Vec<(String, Vec<&str>)> = Vec::new();
    for (k, v) in &req.query {
        let k = k.to_ascii_lowercase();
        match params.iter_mut().find(|(n, _)| *n == k) {
            Some((_, vs)) => vs.push(v),
            None => params.push((k, vec![v])),
        }
    }
    params.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, mut vs) in params {
        vs.sort_unstable();
        out.push('\n');
        out.push_str(&k);
        out.push(':');
        out.push_str(&vs.join(","));
    }
    out
}

/// `/<account><path>` and `?comp=` only: the canonicalized resource of Table and of Lite.
fn comp_resource(req: &Parsed, path: &str) -> String {
    let mut out = format!("/{}{}", req.account, path);
    if let Some(c) = req.comp() {
        out.push_str("?comp=");
        out.push_str(c);
    }
    out
}

/// The path as sent, and decoded: clients differ in what they escape, and either way the
/// signature proves the key.
fn paths(req: &Parsed) -> Vec<String> {
    let raw = if req.raw_path.is_empty() {
        "/".to_string()
    } else {
        req.raw_path.clone()
    };
    let decoded = percent_encoding::percent_decode_str(&raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .unwrap_or_else(|_| raw.clone());
    if decoded == raw {
        vec![raw]
    } else {
        vec![raw, decoded]
    }
}

/// The string to sign in the form nearly every client uses (the path as sent, the SDKs'
/// header order), or, with `all`, every form clients are known to use.
fn blob_queue_strings_to_sign(req: &Parsed, lite: bool, all: bool) -> Vec<String> {
    let mut out = Vec::new();
    let verb = req.method.as_str();
    let mut paths = paths(req);
    if !all {
        paths.truncate(1);
    }
    for path in paths {
        for collation in if all { &[true, false][..] } else { &[true][..] } {
            let collation = *collation;
            let headers = canonical_headers(req, collation);
            let s = if lite {
                format!(
                    "{verb}\n{}\n{}\n{}\n{headers}{}",
                    header_or_empty(req, "content-md5"),
                    header_or_empty(req, "content-type"),
                    header_or_empty(req, "date"),
                    comp_resource(req, &path),
                )
            } else {
                // From 2015-02-21 a zero Content-Length is signed as empty.
                let len = header_or_empty(req, "content-length");
                let old = req.version().is_some_and(|v| v < "2015-02-21");
                let len = if len == "0" && !old { "" } else { len };
                format!(
                    "{verb}\n{}\n{}\n{len}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{headers}{}",
                    header_or_empty(req, "content-encoding"),
                    header_or_empty(req, "content-language"),
                    header_or_empty(req, "content-md5"),
                    header_or_empty(req, "content-type"),
                    header_or_empty(req, "date"),
                    header_or_empty(req, "if-modified-since"),
                    header_or_empty(req, "if-match"),
                    header_or_empty(req, "if-none-match"),
                    header_or_empty(req, "if-unmodified-since"),
                    header_or_empty(req, "range"),
                    canonical_resource(req, &path),
                )
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

fn table_date(req: &Parsed) -> &str {
    req.header("x-ms-date")
        .or_else(|| req.header("date"))
        .unwrap_or("")
}

fn table_string_to_sign(req: &Parsed) -> String {
    let path = paths(req).remove(0);
    format!(
        "{}\n{}\n{}\n{}\n{}",
        req.method.as_str(),
        header_or_empty(req, "content-md5"),
        header_or_empty(req, "content-type"),
        table_date(req),
        comp_resource(req, &path)
    )
}

fn table_lite_string_to_sign(req: &Parsed) -> String {
    let path = paths(req).remove(0);
    format!("{}\n{}", table_date(req), comp_resource(req, &path))
}

/// Azure's header order (what the Python SDK's `compare` implements): letters and digits by a
/// culture-aware weight, `-` ignored at the first level and deciding only ties.
fn azure_header_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let tables: [&[u16; 128]; 2] = [&LV0, &LV4];
    let (mut level, mut i, mut j) = (0usize, 0usize, 0usize);
    while level < tables.len() {
        if level == tables.len() - 1 && i != j {
            return if i > j {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let w = |s: &[u8], k: usize| -> u16 {
            if k < s.len() {
                tables[level].get(usize::from(s[k])).copied().unwrap_or(0)
            } else {
                1
            }
        };
        let (w1, w2) = (w(a, i), w(b, j));
        if w1 == 1 && w2 == 1 {
            i = 0;
            j = 0;
            level += 1;
        } else if w1 == w2 {
            i += 1;
            j += 1;
        } else if w1 == 0 {
            i += 1;
        } else if w2 == 0 {
            j += 1;
        } else {
            return w1.cmp(&w2);
        }
    }
    Ordering::Equal
}

#[rustfmt::skip]
static LV0: [u16; 128] = [
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x71c, 0x0, 0x71f, 0x721, 0x723, 0x725,
    0x0, 0x0, 0x0, 0x72d, 0x803, 0x0, 0x0, 0x733, 0x0, 0xd03, 0xd1a, 0xd1c, 0xd1e,
    0xd20, 0xd22, 0xd24, 0xd26, 0xd28, 0xd2a, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51,
    0xe70, 0xe7c, 0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9,
    0x0, 0x0, 0x0, 0x743, 0x744, 0x748, 0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25,
    0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51, 0xe70, 0xe7c, 0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99,
    0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9, 0x0, 0x74c, 0x0, 0x750, 0x0,
];

#[rustfmt::skip]
static LV4: [u16; 128] = {
    let mut t = [0u16; 128];
    t[39] = 0x8012;
    t[45] = 0x8212;
    t
};

// ---- SAS ----

fn sas(req: &Parsed, keys: &AccountKeys, now: SystemTime) -> Result<Grant, RestError> {
    let p = |n: &str| req.q(n).unwrap_or("");
    let sv = p("sv");
    let sig = p("sig");
    if sv.len() != 10 || sv < "2013-08-15" {
        return Err(RestError::auth_failed());
    }
    let policy = (!p("si").is_empty()).then(|| p("si").to_string());
    if policy.is_some() && req.q("ss").is_some() {
        // Stored access policies belong to containers, queues and tables: an account SAS
        // cannot name one.
        return Err(RestError::auth_failed());
    }
    let account_sas = req.q("ss").is_some();
    let (text, scope) = if account_sas {
        let mut fields = vec![
            req.account.as_str(),
            p("sp"),
            p("ss"),
            p("srt"),
            p("st"),
            p("se"),
            p("sip"),
            p("spr"),
            sv,
        ];
        if sv >= "2020-12-06" {
            fields.push(p("ses"));
        }
        (
            fields.join("\n") + "\n",
            Scope::Account {
                services: p("ss").to_string(),
                resource_types: p("srt").to_string(),
            },
        )
    } else {
        service_sas_string(req, sv)?
    };
    if !verify(keys, &[text], sig) {
        tracing::debug!(account = %req.account, "storage request refused: bad SAS signature");
        return Err(RestError::auth_failed());
    }
    // Genuine; now whether it holds here and now.
    let at = |s: &str| -> Result<SystemTime, RestError> {
        let micros = rolehost_storage::table::datetime::parse_rfc3339(s)
            .ok_or_else(RestError::auth_failed)?;
        let secs =
            u64::try_from(micros.div_euclid(1_000_000)).map_err(|_| RestError::auth_failed())?;
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    };
    // A token naming a policy may leave its expiry to the policy.
    if !(policy.is_some() && p("se").is_empty()) {
        let expiry = at(p("se"))?;
        if now > expiry {
            return Err(RestError::auth_failed());
        }
    }
    if !p("st").is_empty() && now < at(p("st"))? {
        return Err(RestError::auth_failed());
    }
    if !p("sip").is_empty() && !ip_in_range(req.peer, p("sip")) {
        return Err(RestError::forbidden(
            "AuthorizationSourceIPMismatch",
            "This request is not authorized to perform this operation using this source IP.",
        ));
    }
    match p("spr") {
        "" | "https,http" | "http,https" => {}
        "https" if req.https => {}
        _ => {
            return Err(RestError::forbidden(
                "AuthorizationProtocolMismatch",
                "This request is not authorized to perform this operation using this protocol.",
            ));
        }
    }
    Ok(Grant {
        permissions: p("sp").to_string(),
        scope,
        policy,
    })
}

/// The string a service SAS signs, for the resource this request names, and what it covers.
fn service_sas_string(req: &Parsed, sv: &str) -> Result<(String, Scope), RestError> {
    let p = |n: &str| req.q(n).unwrap_or("");
    let base = |resource: String| -> Vec<String> {
        vec![
            p("sp").into(),
            p("st").into(),
            p("se").into(),
            resource,
            p("si").into(),
        ]
    };
    let seg = |i: usize| req.segments.get(i).map(String::as_str);
    match req.service {
        Service::Blob => {
            let container = seg(0)
                .filter(|s| !s.is_empty())
                .ok_or_else(RestError::auth_failed)?;
            let (resource, scope) = match p("sr") {
                "c" => (
                    format!("/blob/{}/{container}", req.account),
                    Scope::Container(container.to_string()),
                ),
                "b" => {
                    let blob = req.segments[1..].join("/");
                    if blob.is_empty() {
                        return Err(RestError::auth_failed());
                    }
                    (
                        format!("/blob/{}/{container}/{blob}", req.account),
                        Scope::Blob(container.to_string(), blob),
                    )
                }
                _ => return Err(RestError::auth_failed()),
            };
            let mut f = base(resource);
            if sv >= "2015-04-05" {
                f.push(p("sip").into());
                f.push(p("spr").into());
            }
            f.push(sv.into());
            if sv >= "2018-11-09" {
                f.push(p("sr").into());
                f.push(p("snapshot").into());
            }
            if sv >= "2020-12-06" {
                f.push(p("ses").into());
            }
            for n in ["rscc", "rscd", "rsce", "rscl", "rsct"] {
                f.push(p(n).into());
            }
            Ok((f.join("\n"), scope))
        }
        Service::Queue => {
            let queue = seg(0)
                .filter(|s| !s.is_empty())
                .ok_or_else(RestError::auth_failed)?;
            let mut f = base(format!("/queue/{}/{queue}", req.account));
            if sv >= "2015-04-05" {
                f.push(p("sip").into());
                f.push(p("spr").into());
            }
            f.push(sv.into());
            Ok((f.join("\n"), Scope::Queue(queue.to_string())))
        }
        Service::Table => {
            let table = p("tn").to_ascii_lowercase();
            if table.is_empty() {
                return Err(RestError::auth_failed());
            }
            let mut f = base(format!("/table/{}/{table}", req.account));
            if sv >= "2015-04-05" {
                f.push(p("sip").into());
                f.push(p("spr").into());
            }
            f.push(sv.into());
            for n in ["spk", "srk", "epk", "erk"] {
                f.push(p(n).into());
            }
            let key = |pk: &str, rk: &str| {
                (!pk.is_empty()).then(|| (pk.to_string(), (!rk.is_empty()).then(|| rk.to_string())))
            };
            Ok((
                f.join("\n"),
                Scope::Table {
                    table,
                    start: key(p("spk"), p("srk")),
                    end: key(p("epk"), p("erk")),
                },
            ))
        }
    }
}

/// Whether `ip` is the SAS's `sip`: one IPv4 address or an inclusive range `a-b`.
fn ip_in_range(ip: IpAddr, sip: &str) -> bool {
    let ip = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return false,
        },
    };
    let (lo, hi) = sip.split_once('-').unwrap_or((sip, sip));
    match (
        lo.trim().parse::<std::net::Ipv4Addr>(),
        hi.trim().parse::<std::net::Ipv4Addr>(),
    ) {
        (Ok(lo), Ok(hi)) => lo <= ip && ip <= hi,
        _ => false,
    }
}

impl Scope {
    /// For a table SAS held to a key range: whether `(pk, rk)` is inside it.
    pub fn covers_key(&self, pk: &str, rk: &str) -> bool {
        let Scope::Table { start, end, .. } = self else {
            return true;
        };
        let after_start = match start {
            None => true,
            Some((spk, None)) => pk >= spk.as_str(),
            Some((spk, Some(srk))) => (pk, rk) >= (spk.as_str(), srk.as_str()),
        };
        let before_end = match end {
            None => true,
            Some((epk, None)) => pk <= epk.as_str(),
            Some((epk, Some(erk))) => (pk, rk) <= (epk.as_str(), erk.as_str()),
        };
        after_start && before_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DEV_KEY;

    fn req(service: Service, method: &str, uri: &str, headers: &[(&str, &str)]) -> Parsed {
        let mut b = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1:10001");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let (head, ()) = b.body(()).unwrap().into_parts();
        Parsed::new(service, head, IpAddr::from([127, 0, 0, 1]), false).unwrap()
    }

    fn dev() -> AccountKeys {
        AccountKeys::dev()
    }

    #[test]
    fn what_the_client_signs_the_door_accepts() {
        let key = Key::from_base64(DEV_KEY).unwrap();
        for (service, method, uri) in [
            (
                Service::Blob,
                "PUT",
                "/devstoreaccount1/c/a%20b/c?comp=metadata",
            ),
            (
                Service::Queue,
                "GET",
                "/devstoreaccount1/q/messages?peekonly=true&numofmessages=3",
            ),
            (
                Service::Table,
                "GET",
                "/devstoreaccount1/t(PartitionKey='a',RowKey='b')",
            ),
        ] {
            let (mut head, ()) = http::Request::builder()
                .method(method)
                .uri(uri)
                .header("host", "127.0.0.1:10001")
                .header("x-ms-meta-Name", "v")
                .body(())
                .unwrap()
                .into_parts();
            sign_shared_key(service, &mut head, "devstoreaccount1", &key).unwrap();
            let parsed = Parsed::new(service, head, IpAddr::from([127, 0, 0, 1]), false).unwrap();
            assert_eq!(
                authenticate(&parsed, Some(&dev()), SystemTime::now()).unwrap(),
                Access::Key,
                "{method} {uri}"
            );
            let other = AccountKeys::random().unwrap();
            assert!(authenticate(&parsed, Some(&other), SystemTime::now()).is_err());
        }
    }

    #[test]
    fn header_order_matches_the_sdks() {
        let mut v = vec![
            "x-ms-version",
            "x-ms-date",
            "x-ms-client-request-id",
            "x-ms-meta-a",
            "x-ms-blob-type",
        ];
        v.sort_by(|a, b| azure_header_order(a, b));
        assert_eq!(
            v,
            [
                "x-ms-blob-type",
                "x-ms-client-request-id",
                "x-ms-date",
                "x-ms-meta-a",
                "x-ms-version"
            ]
        );
        // `-` weighs nothing at the first level.
        assert_eq!(
            azure_header_order("x-ms-ab", "x-ms-a-c"),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn shared_key_signed_by_the_client_is_accepted_and_nothing_else() {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let base = [("x-ms-date", date.as_str()), ("x-ms-version", "2026-10-06")];
        let r = req(
            Service::Queue,
            "GET",
            "/devstoreaccount1/jobs/messages?numofmessages=2",
            &base,
        );
        let sts = format!(
            "GET\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:2026-10-06\n/devstoreaccount1/devstoreaccount1/jobs/messages\nnumofmessages:2"
        );
        let key = Key::from_base64(DEV_KEY).unwrap();
        let good = format!("SharedKey devstoreaccount1:{}", sign(&key, &sts));
        let mut h = base.to_vec();
        h.push(("authorization", good.as_str()));
        let r2 = req(
            Service::Queue,
            "GET",
            "/devstoreaccount1/jobs/messages?numofmessages=2",
            &h,
        );
        assert_eq!(
            authenticate(&r2, Some(&dev()), SystemTime::now()).unwrap(),
            Access::Key
        );
        // The same signature on another request, with another key, or from an unknown account.
        let r3 = req(
            Service::Queue,
            "GET",
            "/devstoreaccount1/jobs/messages?numofmessages=32",
            &h,
        );
        assert_eq!(
            authenticate(&r3, Some(&dev()), SystemTime::now())
                .unwrap_err()
                .code,
            "AuthenticationFailed"
        );
        let other = AccountKeys::random().unwrap();
        assert_eq!(
            authenticate(&r2, Some(&other), SystemTime::now())
                .unwrap_err()
                .code,
            "AuthenticationFailed"
        );
        assert_eq!(
            authenticate(&r2, None, SystemTime::now()).unwrap_err().code,
            "AuthenticationFailed"
        );
        // A skewed clock.
        let later = SystemTime::now() + Duration::from_secs(16 * 60);
        assert_eq!(
            authenticate(&r2, Some(&dev()), later).unwrap_err().message,
            crate::error::AUTH_FAILED
        );
        assert_eq!(
            authenticate(&r, Some(&dev()), SystemTime::now()).unwrap(),
            Access::Anonymous
        );
    }

    #[test]
    fn table_shared_key_and_lite() {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let key = Key::from_base64(DEV_KEY).unwrap();
        let sts =
            format!("GET\n\napplication/json\n{date}\n/devstoreaccount1/devstoreaccount1/Tables");
        let lite = format!("{date}\n/devstoreaccount1/devstoreaccount1/Tables");
        for (scheme, text) in [("SharedKey", sts), ("SharedKeyLite", lite)] {
            let auth = format!("{scheme} devstoreaccount1:{}", sign(&key, &text));
            let r = req(
                Service::Table,
                "GET",
                "/devstoreaccount1/Tables",
                &[
                    ("x-ms-date", &date),
                    ("content-type", "application/json"),
                    ("authorization", &auth),
                ],
            );
            assert_eq!(
                authenticate(&r, Some(&dev()), SystemTime::now()).unwrap(),
                Access::Key,
                "{scheme}"
            );
        }
    }

    fn sas_query(fields: &[(&str, &str)], text: &str) -> String {
        let key = Key::from_base64(DEV_KEY).unwrap();
        let mut q: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect();
        q.push(format!(
            "sig={}",
            percent_encoding::utf8_percent_encode(
                &sign(&key, text),
                percent_encoding::NON_ALPHANUMERIC
            )
        ));
        q.join("&")
    }

    #[test]
    fn account_sas_grants_what_it_says() {
        let fields = [
            ("sv", "2026-10-06"),
            ("ss", "q"),
            ("srt", "o"),
            ("sp", "ap"),
            ("se", "2099-01-01T00:00:00Z"),
        ];
        let text = "devstoreaccount1\nap\nq\no\n\n2099-01-01T00:00:00Z\n\n\n2026-10-06\n\n";
        let q = sas_query(&fields, text);
        let r = req(
            Service::Queue,
            "POST",
            &format!("/devstoreaccount1/jobs/messages?{q}"),
            &[],
        );
        let access = authenticate(&r, Some(&dev()), SystemTime::now()).unwrap();
        let add = Need::new(Level::Object, "a").on("jobs");
        assert!(authorize(Service::Queue, &access, &add).is_ok());
        let del = Need::new(Level::Container, "d").on("jobs");
        assert_eq!(
            authorize(Service::Queue, &access, &del).unwrap_err().code,
            "AuthorizationResourceTypeMismatch"
        );
        let read = Need::new(Level::Object, "r").on("jobs");
        assert_eq!(
            authorize(Service::Queue, &access, &read).unwrap_err().code,
            "AuthorizationPermissionMismatch"
        );
        assert_eq!(
            authorize(Service::Blob, &access, &add).unwrap_err().code,
            "AuthorizationServiceMismatch"
        );
        // Widening the permissions breaks the signature.
        let wider = q.replace("sp=ap", "sp=rwdlacup");
        let r = req(
            Service::Queue,
            "POST",
            &format!("/devstoreaccount1/jobs/messages?{wider}"),
            &[],
        );
        assert_eq!(
            authenticate(&r, Some(&dev()), SystemTime::now())
                .unwrap_err()
                .code,
            "AuthenticationFailed"
        );
    }

    #[test]
    fn expired_and_misplaced_sas_are_refused() {
        let fields = [
            ("sv", "2026-10-06"),
            ("ss", "b"),
            ("srt", "sco"),
            ("sp", "r"),
            ("se", "2020-01-01T00:00:00Z"),
        ];
        let text = "devstoreaccount1\nr\nb\nsco\n\n2020-01-01T00:00:00Z\n\n\n2026-10-06\n\n";
        let r = req(
            Service::Blob,
            "GET",
            &format!("/devstoreaccount1/c/b?{}", sas_query(&fields, text)),
            &[],
        );
        assert_eq!(
            authenticate(&r, Some(&dev()), SystemTime::now())
                .unwrap_err()
                .code,
            "AuthenticationFailed"
        );
        let fields = [
            ("sv", "2026-10-06"),
            ("ss", "b"),
            ("srt", "sco"),
            ("sp", "r"),
            ("se", "2099-01-01T00:00:00Z"),
            ("sip", "10.0.0.1-10.0.0.9"),
            ("spr", "https"),
        ];
        let text = "devstoreaccount1\nr\nb\nsco\n\n2099-01-01T00:00:00Z\n10.0.0.1-10.0.0.9\nhttps\n2026-10-06\n\n";
        let r = req(
            Service::Blob,
            "GET",
            &format!("/devstoreaccount1/c/b?{}", sas_query(&fields, text)),
            &[],
        );
        assert_eq!(
            authenticate(&r, Some(&dev()), SystemTime::now())
                .unwrap_err()
                .code,
            "AuthorizationSourceIPMismatch"
        );
    }

    #[test]
    fn service_sas_covers_its_resource_only() {
        let fields = [
            ("sv", "2026-10-06"),
            ("sr", "c"),
            ("sp", "rl"),
            ("se", "2099-01-01T00:00:00Z"),
        ];
        let text = "rl\n\n2099-01-01T00:00:00Z\n/blob/devstoreaccount1/photos\n\n\n\n2026-10-06\nc\n\n\n\n\n\n\n";
        let q = sas_query(&fields, text);
        let r = req(
            Service::Blob,
            "GET",
            &format!("/devstoreaccount1/photos/cat.png?{q}"),
            &[],
        );
        let access = authenticate(&r, Some(&dev()), SystemTime::now()).unwrap();
        assert!(
            authorize(
                Service::Blob,
                &access,
                &Need::new(Level::Object, "r").on("photos").blob("cat.png")
            )
            .is_ok()
        );
        let elsewhere = Need::new(Level::Object, "r").on("secrets").blob("cat.png");
        assert!(authorize(Service::Blob, &access, &elsewhere).is_err());
        // The same token presented for another container does not verify.
        let r = req(
            Service::Blob,
            "GET",
            &format!("/devstoreaccount1/secrets/cat.png?{q}"),
            &[],
        );
        assert_eq!(
            authenticate(&r, Some(&dev()), SystemTime::now())
                .unwrap_err()
                .code,
            "AuthenticationFailed"
        );
    }

    #[test]
    fn table_ranges() {
        let s = Scope::Table {
            table: "t".into(),
            start: Some(("b".into(), None)),
            end: Some(("d".into(), Some("5".into()))),
        };
        assert!(s.covers_key("b", ""));
        assert!(s.covers_key("d", "5"));
        assert!(!s.covers_key("d", "6"));
        assert!(!s.covers_key("a", "z"));
    }
}
