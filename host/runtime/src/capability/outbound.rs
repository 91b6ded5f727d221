//! Outbound HTTP (`wasi:http/outgoing-handler`) for every role, behind an allow-list of hosts
//! from the manifest (`outbound-hosts`). Nothing is allowed by default: a request to a host not
//! on the list fails with `HTTP-request-denied` before any connection is made.
//!
//! An entry is `host` (ports 80 and 443) or `host:port`; hosts compare ignoring case. A name
//! that resolves to an address of this machine or its private networks (loopback,
//! link-local, private, unique-local, unspecified) is refused unless that address itself is
//! listed: an allowed name must not become a way to the management API or a neighbour's
//! port. (The name is resolved again when the connection is made; a DNS server that answers
//! differently the second time is not defended against here: firewall the host's own ports.)

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

    /// Whether a request to `host` on `port` may go out (by the list alone; see
    /// [`OutboundPolicy::allows_addresses`] for where a name leads).
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allowed
            .iter()
            .any(|entry| match entry.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                    h.trim_start_matches('[').trim_end_matches(']') == host && p.parse() == Ok(port)
                }
                // No port: the web's ports only, never every service of that host.
                _ => {
                    entry.trim_start_matches('[').trim_end_matches(']') == host
                        && matches!(port, 80 | 443)
                }
            })
    }

    /// Whether every address `host` resolved to may be reached on `port`: a public address,
    /// or one listed itself.
    pub fn allows_addresses(&self, port: u16, addresses: &[std::net::IpAddr]) -> bool {
        addresses
            .iter()
            .all(|ip| !is_internal(ip) || self.allows(&ip.to_string(), port))
    }
}

/// An address of this machine or of a private network: never reached through a name.
fn is_internal(ip: &std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 100.64.0.0/10, carrier-grade NAT: as private as 10/8 in practice.
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
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
        let policy = self.clone();
        let uri = uri.clone();
        Box::new(async move {
            if let Some((host, port)) = target {
                let bare = host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string();
                let addresses: Vec<std::net::IpAddr> = match bare.parse::<std::net::IpAddr>() {
                    Ok(ip) => vec![ip],
                    Err(_) => tokio::net::lookup_host((bare.as_str(), port))
                        .await
                        .map_err(|_| Error::DnsError {
                            rcode: Some("lookup failed".into()),
                            info_code: None,
                        })?
                        .map(|a| a.ip())
                        .collect(),
                };
                if !policy.allows_addresses(port, &addresses) {
                    tracing::warn!(
                        uri = %uri,
                        "outbound request refused: the name leads to an internal address not in outbound-hosts"
                    );
                    return Err(Error::DestinationIpProhibited);
                }
            }
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
        // No port in the entry: the web's ports only.
        assert!(!p.allows("api.example.com", 22));
        assert!(p.allows("127.0.0.1", 8080));
        assert!(!p.allows("127.0.0.1", 8081));
        assert!(p.allows("[::1]", 9000));
        assert!(!p.allows("evil.example.com", 443));
        assert!(!OutboundPolicy::default().allows("api.example.com", 443));
    }

    #[test]
    fn a_name_leading_to_an_internal_address_needs_that_address_listed() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let p = OutboundPolicy::new(&["api.example.com".into(), "127.0.0.1:8080".into()]);
        assert!(p.allows_addresses(443, &[ip("93.184.216.34")]));
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!p.allows_addresses(443, &[ip(internal)]), "{internal}");
        }
        // A public and an internal answer: refused.
        assert!(!p.allows_addresses(443, &[ip("93.184.216.34"), ip("10.0.0.1")]));
        // The internal address listed itself, on that port: allowed.
        assert!(p.allows_addresses(8080, &[ip("127.0.0.1")]));
        assert!(!p.allows_addresses(8081, &[ip("127.0.0.1")]));
    }
}
