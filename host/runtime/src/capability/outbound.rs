//! Outbound HTTP (`wasi:http/outgoing-handler`) for every role, behind an allow-list of hosts
//! from the manifest (`outbound-hosts`). Nothing is allowed by default: a request to a host not
//! on the list fails with `HTTP-request-denied` before any connection is made.
//!
//! An entry is `host` (any port) or `host:port`; hosts compare ignoring case.

use std::future::Future;
use std::sync::Arc;

use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// The allow-list of one role.
#[derive(Clone, Debug, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[String]>,
}

impl OutboundPolicy {
    /// A policy allowing exactly these entries.
    pub fn new(allowed: &[String]) -> Self {
        OutboundPolicy {
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request to `host` on `port` may go out.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed
            .iter()
            .any(|entry| match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                    h.trim_start_matches('[').trim_end_matches(']') == host && p.parse() == Ok(port)
                }
                _ => entry.trim_start_matches('[').trim_end_matches(']') == host,
            })
    }
}

type Sent = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Sent {
        let uri = request.uri();
        let default_port = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        let target = uri
            .host()
            .map(|h| (h.to_string(), uri.port_u16().unwrap_or(default_port)));
        let allowed = target.as_ref().is_some_and(|(h, p)| self.allows(h, *p));
        if !allowed {
            tracing::warn!(uri = %uri, "outbound request refused: host not in outbound-hosts");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_host_and_port() {
        let p = OutboundPolicy::new(&[
            "API.example.com".into(),
            "127.0.0.1:8080".into(),
            "[::1]:9000".into(),
        ]);
        assert!(p.allows("api.example.com", 443));
        assert!(p.allows("api.example.com", 80));
        assert!(p.allows("127.0.0.1", 8080));
        assert!(!p.allows("127.0.0.1", 8081));
        assert!(p.allows("[::1]", 9000));
        assert!(!p.allows("evil.example.com", 443));
        assert!(!OutboundPolicy::default().allows("api.example.com", 443));
    }
}
