//! A request as the door reads it: which service, which account (path-style
//! `/<account>/...` or host-style `<account>.blob.localhost`), the resource's decoded path
//! segments, the decoded query, and the `x-ms-version` it asked for.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;

use crate::RestError;

/// The three storage services, each on a listener of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// Blob, port 10000 by convention.
    Blob,
    /// Queue, port 10001.
    Queue,
    /// Table, port 10002.
    Table,
}

impl Service {
    /// `blob`, `queue` or `table`: the service's name in host names and SAS resources.
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Blob => "blob",
            Service::Queue => "queue",
            Service::Table => "table",
        }
    }

    /// The letter of the service in an account SAS's `ss`.
    pub fn letter(self) -> char {
        match self {
            Service::Blob => 'b',
            Service::Queue => 'q',
            Service::Table => 't',
        }
    }
}

/// The oldest `x-ms-version` accepted: the 2009 service, the first with today's SharedKey.
pub const OLDEST_VERSION: &str = "2009-09-19";
/// The version every response says it was served with: one rolehost implements whatever the
/// request asked for (the behaviour of the versions we accept does not differ where we
/// implement it).
pub const SERVED_VERSION: &str = "2025-11-05";
/// Longest request path accepted: a 1,024-character blob name, each character escaped as up to
/// 12 bytes of UTF-8 percent escapes, plus the account and container.
pub const MAX_PATH_BYTES: usize = 16 * 1024;
/// Most query parameters one request may carry (an SAS has about a dozen).
pub const MAX_QUERY_PARAMS: usize = 64;

/// A parsed request.
#[derive(Debug)]
pub struct Parsed {
    /// The service the listener serves.
    pub service: Service,
    /// The method (`X-HTTP-Method` applied for table's `POST` + `MERGE`).
    pub method: Method,
    /// The account the URL names.
    pub account: String,
    /// The path as sent (still percent-encoded): what SharedKey canonicalizes.
    pub raw_path: String,
    /// The path's segments after the account, decoded. Empty for the service itself.
    pub segments: Vec<String>,
    /// The query, names and values decoded, in order.
    pub query: Vec<(String, String)>,
    /// The headers.
    pub headers: HeaderMap,
    /// The client's address.
    pub peer: IpAddr,
    /// Whether the request came over TLS.
    pub https: bool,
}

impl Parsed {
    /// Parses what the door needs from a request's head.
    pub fn new(
        service: Service,
        head: http::request::Parts,
        peer: IpAddr,
        https: bool,
    ) -> Result<Parsed, RestError> {
        let uri = &head.uri;
        let raw_path = uri.path().to_string();
        if raw_path.len() > MAX_PATH_BYTES {
            return Err(RestError::new(
                414,
                "InvalidUri",
                "The requested URI is too long.",
            ));
        }
        let mut segments: Vec<String> = Vec::new();
        // The blob name is everything after the container: its slashes are part of the name.
        for seg in raw_path.trim_start_matches('/').split('/') {
            segments.push(decode(seg).ok_or_else(|| {
                RestError::bad("InvalidUri", "The requested URI does not represent any resource on the server (bad percent-encoding).")
            })?);
        }
        let host_account = head
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| host_style_account(h, service));
        let account = match host_account {
            Some(a) => a,
            None => {
                if segments.is_empty() || segments[0].is_empty() {
                    return Err(RestError::bad(
                        "InvalidUri",
                        "The requested URI does not name an account: use http://HOST:PORT/<account>/...",
                    ));
                }
                segments.remove(0)
            }
        };
        // `/account/` and `/account` both name the service.
        if segments.len() == 1 && segments[0].is_empty() {
            segments.clear();
        }
        let mut query = Vec::new();
        if let Some(q) = uri.query() {
            for kv in q.split('&').filter(|s| !s.is_empty()) {
                if query.len() >= MAX_QUERY_PARAMS {
                    return Err(RestError::bad(
                        "InvalidUri",
                        "The request has too many query parameters.",
                    ));
                }
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let k = decode_query(k)
                    .ok_or_else(|| RestError::bad_query(k, "bad percent-encoding"))?;
                let v = decode_query(v)
                    .ok_or_else(|| RestError::bad_query(&k, "bad percent-encoding"))?;
                query.push((k, v));
            }
        }
        let mut method = head.method.clone();
        if method == Method::POST
            && let Some(m) = head
                .headers
                .get("x-http-method")
                .and_then(|v| v.to_str().ok())
        {
            match m.to_ascii_uppercase().as_str() {
                "MERGE" => method = Method::from_bytes(b"MERGE").unwrap_or(Method::PATCH),
                "PUT" => method = Method::PUT,
                "DELETE" => method = Method::DELETE,
                _ => {}
            }
        }
        let parsed = Parsed {
            service,
            method,
            account,
            raw_path,
            segments,
            query,
            headers: head.headers,
            peer,
            https,
        };
        parsed.check_version()?;
        Ok(parsed)
    }

    /// The first query parameter named `name` (names compare ignoring case, as Azure does).
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A header's value as text (`None` if missing or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `comp=` of the query.
    pub fn comp(&self) -> Option<&str> {
        self.q("comp")
    }

    /// `restype=` of the query.
    pub fn restype(&self) -> Option<&str> {
        self.q("restype")
    }

    /// The `x-ms-version` asked for.
    pub fn version(&self) -> Option<&str> {
        self.header("x-ms-version")
    }

    /// A version from 2009-09-19 on is served; older or malformed ones are refused, naming
    /// the header.
    fn check_version(&self) -> Result<(), RestError> {
        let Some(v) = self.headers.get("x-ms-version") else {
            return Ok(());
        };
        let v = v.to_str().unwrap_or("");
        let shaped = v.len() == 10
            && v.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if !shaped || v < OLDEST_VERSION {
            return Err(RestError::bad_header(
                "x-ms-version",
                format!("{v:?}: rolehost serves versions from {OLDEST_VERSION} on"),
            ));
        }
        Ok(())
    }

    /// An integer query parameter (`None` when absent or empty).
    pub fn int_query(&self, name: &str) -> Result<Option<i64>, RestError> {
        match self.q(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| RestError::bad_query(name, format!("{v:?} is not an integer"))),
        }
    }

    /// The options of a listing: `prefix`, `marker`, `maxresults` (at least 1) and
    /// `include=metadata`.
    pub fn list_options(&self) -> Result<rolehost_storage::ListOptions, RestError> {
        let max_results = match self.int_query("maxresults")? {
            None => None,
            Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(_) => return Err(RestError::out_of_range("maxresults", "at least 1")),
        };
        let text = |n: &str| self.q(n).filter(|p| !p.is_empty()).map(str::to_string);
        Ok(rolehost_storage::ListOptions {
            prefix: text("prefix"),
            marker: text("marker"),
            max_results,
            include_metadata: self.includes("metadata"),
        })
    }

    /// Whether `include=` names `what`.
    pub fn includes(&self, what: &str) -> bool {
        self.q("include")
            .is_some_and(|i| i.split(',').any(|x| x.trim().eq_ignore_ascii_case(what)))
    }

    /// 400 InvalidUri: the request names no operation of its service.
    pub fn no_such_operation(&self) -> RestError {
        RestError::bad(
            "InvalidUri",
            format!(
                "The requested URI does not represent any resource on the server ({} {}).",
                self.method, self.raw_path
            ),
        )
    }

    /// The client's request id, echoed back.
    pub fn client_request_id(&self) -> Option<&http::HeaderValue> {
        self.headers.get("x-ms-client-request-id")
    }
}

/// `<account>.<service>.<anything>` names the account in the host, as Azure and the
/// emulator's production-style URLs do. An IP address or a single label does not.
fn host_style_account(host: &str, service: Service) -> Option<String> {
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    if name.parse::<std::net::Ipv4Addr>().is_ok() || name.starts_with('[') {
        return None;
    }
    let mut labels = name.split('.');
    let account = labels.next()?;
    let svc = labels.next()?;
    (svc.eq_ignore_ascii_case(service.as_str()) && !account.is_empty())
        .then(|| account.to_ascii_lowercase())
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Query values: `+` is a space in form encoding, and SDKs escape a literal plus as `%2B`.
fn decode_query(s: &str) -> Option<String> {
    decode(&s.replace('+', " "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &str, host: &str) -> Result<Parsed, RestError> {
        let req = http::Request::builder()
            .uri(uri)
            .header("host", host)
            .body(())
            .unwrap();
        let (head, ()) = req.into_parts();
        Parsed::new(Service::Blob, head, IpAddr::from([127, 0, 0, 1]), false)
    }

    #[test]
    fn path_style_and_host_style_name_the_account() {
        let p = parse(
            "/demo/photos/a%2Fb/c.png?comp=list&prefix=x%20y",
            "127.0.0.1:10000",
        )
        .unwrap();
        assert_eq!(p.account, "demo");
        assert_eq!(p.segments, ["photos", "a/b", "c.png"]);
        assert_eq!(p.q("PREFIX"), Some("x y"));
        let p = parse("/photos/c.png", "demo.blob.localhost:10000").unwrap();
        assert_eq!(p.account, "demo");
        assert_eq!(p.segments, ["photos", "c.png"]);
        let p = parse("/demo/", "localhost:10000").unwrap();
        assert!(p.segments.is_empty());
        assert_eq!(parse("/", "localhost").unwrap_err().code, "InvalidUri");
        assert_eq!(
            parse("/demo/%ff", "localhost").unwrap_err().code,
            "InvalidUri"
        );
    }

    #[test]
    fn versions_from_2009_on() {
        let mk = |v: &str| {
            let req = http::Request::builder()
                .uri("/demo")
                .header("x-ms-version", v)
                .body(())
                .unwrap();
            let (head, ()) = req.into_parts();
            Parsed::new(Service::Queue, head, IpAddr::from([127, 0, 0, 1]), false)
        };
        assert!(mk("2009-09-19").is_ok());
        assert!(mk("2099-01-01").is_ok(), "newer than ours is served");
        assert_eq!(mk("2008-10-27").unwrap_err().code, "InvalidHeaderValue");
        assert_eq!(mk("latest").unwrap_err().code, "InvalidHeaderValue");
    }
}
