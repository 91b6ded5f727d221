//! The storage REST endpoints of a real `rolehost serve`, attacked with raw HTTP: malformed
//! requests, bad signatures, skewed clocks, expired, widened and misplaced SAS tokens,
//! another account's key, oversized and hostile bodies. Each gets Azure's answer, changes
//! nothing, and the host goes on serving.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::{Host, service_dir};
use rolehost_rest::auth::sign;
use rolehost_rest::keys::Key;

/// What came back.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn code(&self) -> &str {
        self.header("x-ms-error-code").unwrap_or("")
    }
}

/// Sends `raw` bytes and reads the answer (the connection is closed after it).
fn send_raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// A request to the path-style URL `/<account><path>`.
struct Req<'a> {
    method: &'a str,
    account: &'a str,
    path: &'a str,
    query: &'a str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl<'a> Req<'a> {
    fn new(method: &'a str, account: &'a str, path: &'a str) -> Self {
        Req {
            method,
            account,
            path,
            query: "",
            headers: vec![("x-ms-version".into(), "2026-10-06".into())],
            body: Vec::new(),
        }
    }

    fn query(mut self, q: &'a str) -> Self {
        self.query = q;
        self
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        let k = k.to_ascii_lowercase();
        self.headers.retain(|(n, _)| *n != k);
        self.headers.push((k, v.to_string()));
        self
    }

    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }

    /// Signs with SharedKey (blob and queue canonicalization), as `signer` with `key`, at `when`.
    fn signed(mut self, signer: &str, key: &Key, when: SystemTime) -> Self {
        let date = httpdate::fmt_http_date(when);
        self.headers.push(("x-ms-date".into(), date));
        let mut xms: Vec<&(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-ms-"))
            .collect();
        xms.sort();
        let canon_headers: String = xms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let mut params: Vec<(String, String)> = self
            .query
            .split('&')
            .filter(|s| !s.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (
                    k.to_ascii_lowercase(),
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8()
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect();
        params.sort();
        let canon_query: String = params.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        let get = |n: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k == n)
                .map_or("", |(_, v)| v.as_str())
        };
        let len = if self.body.is_empty() {
            String::new()
        } else {
            self.body.len().to_string()
        };
        let sts = format!(
            "{}\n\n\n{len}\n{}\n{}\n\n\n\n\n\n\n{canon_headers}/{signer}/{}{}{canon_query}",
            self.method,
            get("content-md5"),
            get("content-type"),
            self.account,
            self.path
        );
        self.headers.push((
            "authorization".into(),
            format!("SharedKey {signer}:{}", sign(key, &sts)),
        ));
        self
    }

    fn send(&self, addr: SocketAddr) -> Answer {
        let mut raw = format!(
            "{} /{}{}{}{} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.method,
            self.account,
            self.path,
            if self.query.is_empty() { "" } else { "?" },
            self.query,
            self.body.len()
        )
        .into_bytes();
        for (k, v) in &self.headers {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&self.body);
        send_raw(addr, &raw)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    host: Host,
    blob: SocketAddr,
    queue: SocketAddr,
    table: SocketAddr,
    key: Key,
    other_key: Key,
}

fn key_of(host: &Host, service: &str) -> Key {
    let out = host.ok(&["storage", "keys", service]);
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("primary: "))
        .unwrap();
    Key::from_base64(line).unwrap()
}

fn deploy(host: &Host, dir: &Path, name: &str) {
    let svc = service_dir(
        &dir.join(name),
        &format!(
            "[service]\nname = \"{name}\"\n[roles.Web]\nkind = \"web\"\ncomponent = \"{{guest:hello_web}}\"\n\
             instances = 1\n[[roles.Web.endpoints]]\nport = 0\n"
        ),
    );
    host.ok(&["deploy", &svc]);
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(&dir.path().join("host"));
    deploy(&host, dir.path(), "victim");
    deploy(&host, dir.path(), "attacker");
    // A service whose manifest lowers its queue message size limit: the one host honours it
    // for that account alone.
    let tiny = service_dir(
        &dir.path().join("tiny"),
        "[service]\nname = \"tiny\"\n[storage]\nqueue-message-max-bytes = 100\n\
         [roles.Web]\nkind = \"web\"\ncomponent = \"{guest:hello_web}\"\n\
         instances = 1\n[[roles.Web.endpoints]]\nport = 0\n",
    );
    host.ok(&["deploy", &tiny]);
    let endpoints: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("host/storage-endpoints.json")).unwrap(),
    )
    .unwrap();
    let addr = |s: &str| endpoints[s].as_str().unwrap().parse().unwrap();
    let key = key_of(&host, "victim");
    let other_key = key_of(&host, "attacker");
    Fixture {
        blob: addr("blob"),
        queue: addr("queue"),
        table: addr("table"),
        key,
        other_key,
        host,
        _dir: dir,
    }
}

impl Fixture {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    /// The victim's queue `jobs` holds exactly these messages (read with the right key).
    fn messages(&self) -> Vec<String> {
        let a = Req::new("GET", "victim", "/jobs/messages")
            .query("peekonly=true&numofmessages=32")
            .signed("victim", &self.key, self.now())
            .send(self.queue);
        assert_eq!(a.status, 200, "{a:?}");
        a.body
            .split("<MessageText>")
            .skip(1)
            .map(|s| s.split("</MessageText>").next().unwrap_or("").to_string())
            .collect()
    }

    fn put_message(&self, text: &str) -> Req<'static> {
        Req::new("POST", "victim", "/jobs/messages").body(format!(
            "<QueueMessage><MessageText>{text}</MessageText></QueueMessage>"
        ))
    }
}

#[test]
fn signatures_dates_and_accounts() {
    let f = fixture();
    let a = Req::new("PUT", "victim", "/jobs")
        .signed("victim", &f.key, f.now())
        .send(f.queue);
    assert_eq!(a.status, 201, "{a:?}");
    let ok = f
        .put_message("real")
        .signed("victim", &f.key, f.now())
        .send(f.queue);
    assert_eq!(ok.status, 201, "{ok:?}");

    // A wrong signature: Azure's one answer, which names no part of the signature.
    let mut forged = f.put_message("forged").signed("victim", &f.key, f.now());
    let auth = forged
        .headers
        .iter_mut()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    auth.1 = format!(
        "SharedKey victim:{}",
        sign(&Key::from_base64("AAAA").unwrap(), "x")
    );
    let a = forged.send(f.queue);
    assert_eq!((a.status, a.code()), (403, "AuthenticationFailed"), "{a:?}");
    assert!(
        a.body.contains(rolehost_rest::error::AUTH_FAILED),
        "{}",
        a.body
    );

    // The right signature over an old date, and one from the future.
    for skew in [-20 * 60i64, 20 * 60] {
        let when = if skew < 0 {
            f.now() - Duration::from_secs(skew.unsigned_abs())
        } else {
            f.now() + Duration::from_secs(skew as u64)
        };
        let a = f
            .put_message("replayed")
            .signed("victim", &f.key, when)
            .send(f.queue);
        assert_eq!(
            (a.status, a.code()),
            (403, "AuthenticationFailed"),
            "skew {skew}: {a:?}"
        );
    }
    // 10 minutes is within Azure's window.
    let a = f
        .put_message("a bit late")
        .signed("victim", &f.key, f.now() - Duration::from_secs(600))
        .send(f.queue);
    assert_eq!(a.status, 201, "{a:?}");

    // Another account's key, signed as the victim, and signed as itself on the victim's URL.
    let a = f
        .put_message("cross")
        .signed("victim", &f.other_key, f.now())
        .send(f.queue);
    assert_eq!(a.code(), "AuthenticationFailed");
    let a = f
        .put_message("cross")
        .signed("attacker", &f.other_key, f.now())
        .send(f.queue);
    assert_eq!(a.code(), "AuthenticationFailed");
    // An account no service has, and the host's own.
    let a = Req::new("GET", "nobody", "/")
        .query("comp=list")
        .signed("nobody", &f.key, f.now())
        .send(f.queue);
    assert_eq!(a.code(), "AuthenticationFailed");
    let a = Req::new("GET", "$rolehost", "/snapshots")
        .query("restype=container&comp=list")
        .send(f.blob);
    assert_eq!(a.status / 100, 4, "{a:?}");
    let a = Req::new("GET", "%24rolehost", "/snapshots")
        .query("restype=container&comp=list")
        .signed("$rolehost", &f.key, f.now())
        .send(f.blob);
    assert_eq!(a.status / 100, 4, "{a:?}");
    assert!(!a.body.contains("<Blob>"), "{a:?}");

    // Nothing of it landed.
    assert_eq!(f.messages(), ["real", "a bit late"]);
}

#[test]
fn sas_tokens_grant_no_more_than_they_say() {
    let f = fixture();
    assert_eq!(
        Req::new("PUT", "victim", "/jobs")
            .signed("victim", &f.key, f.now())
            .send(f.queue)
            .status,
        201
    );
    assert_eq!(
        Req::new("PUT", "victim", "/private")
            .query("restype=container")
            .signed("victim", &f.key, f.now())
            .send(f.blob)
            .status,
        201
    );
    let sas = |fields: &[(&str, &str)], text: &str, key: &Key| {
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
                &sign(key, text),
                percent_encoding::NON_ALPHANUMERIC
            )
        ));
        q.join("&")
    };
    let queue_sas = |sp: &str, se: &str, key: &Key| {
        sas(
            &[("sv", "2026-10-06"), ("sp", sp), ("se", se)],
            &format!("{sp}\n\n{se}\n/queue/victim/jobs\n\n\n\n2026-10-06"),
            key,
        )
    };
    let put = |q: &str| f.put_message("via sas").query(q).send(f.queue);
    let good = queue_sas("a", "2099-01-01T00:00:00Z", &f.key);
    assert_eq!(put(&good).status, 201);
    // Expired.
    let a = put(&queue_sas("a", "2020-01-01T00:00:00Z", &f.key));
    assert_eq!((a.status, a.code()), (403, "AuthenticationFailed"));
    // Widened after signing.
    let widened = good.replace("sp=a", "sp=raup");
    assert_eq!(put(&widened).code(), "AuthenticationFailed");
    // Extended after signing.
    let extended = good.replace("2099", "2199");
    assert_eq!(put(&extended).code(), "AuthenticationFailed");
    // Signed with another account's key.
    assert_eq!(
        put(&queue_sas("a", "2099-01-01T00:00:00Z", &f.other_key)).code(),
        "AuthenticationFailed"
    );
    // Genuine, but not for reading.
    let a = Req::new("GET", "victim", "/jobs/messages")
        .query(&good)
        .send(f.queue);
    assert_eq!(
        (a.status, a.code()),
        (403, "AuthorizationPermissionMismatch")
    );
    // Genuine, for another queue.
    let a = Req::new("POST", "victim", "/other/messages")
        .query(&good)
        .body("<QueueMessage><MessageText>x</MessageText></QueueMessage>")
        .send(f.queue);
    assert_eq!(a.code(), "AuthenticationFailed");
    // An account SAS for queues does not open blobs, nor the container level.
    let account_sas = sas(
        &[
            ("sv", "2026-10-06"),
            ("ss", "q"),
            ("srt", "o"),
            ("sp", "rl"),
            ("se", "2099-01-01T00:00:00Z"),
        ],
        "victim\nrl\nq\no\n\n2099-01-01T00:00:00Z\n\n\n2026-10-06\n\n",
        &f.key,
    );
    let a = Req::new("GET", "victim", "/private")
        .query(&format!("restype=container&comp=list&{account_sas}"))
        .send(f.blob);
    assert_eq!((a.status, a.code()), (403, "AuthorizationServiceMismatch"));
    let a = Req::new("DELETE", "victim", "/jobs")
        .query(&account_sas)
        .send(f.queue);
    assert_eq!(a.code(), "AuthorizationResourceTypeMismatch");
    // A stored access policy that does not exist.
    let a = Req::new("GET", "victim", "/private/x")
        .query(&sas(
            &[("sv", "2026-10-06"), ("sr", "b"), ("si", "ghost")],
            "\n\n\n/blob/victim/private/x\nghost\n\n\n2026-10-06\nb\n\n\n\n\n\n\n",
            &f.key,
        ))
        .send(f.blob);
    assert_eq!(a.code(), "AuthenticationFailed");
    assert_eq!(f.messages(), ["via sas"]);
}

#[test]
fn malformed_and_oversized_requests() {
    let f = fixture();
    let now = f.now();
    assert_eq!(
        Req::new("PUT", "victim", "/jobs")
            .signed("victim", &f.key, now)
            .send(f.queue)
            .status,
        201
    );
    // Not HTTP at all, and a head past the limit: the connection is refused, the host stays.
    let a = send_raw(f.queue, b"\x16\x03\x01garbage\r\n\r\n");
    assert_eq!(a.status / 100, 4, "{a:?}");
    let huge = format!(
        "GET /victim/jobs HTTP/1.1\r\nhost: x\r\nx-ms-meta-a: {}\r\n\r\n",
        "a".repeat(300 * 1024)
    );
    let a = send_raw(f.queue, huge.as_bytes());
    assert!(a.status == 431 || a.status == 400 || a.status == 0, "{a:?}");
    // A bad version, a bad escape, no account.
    let a = Req::new("GET", "victim", "/jobs")
        .query("comp=metadata")
        .header("x-ms-version", "1999-01-01")
        .send(f.queue);
    assert_eq!((a.status, a.code()), (400, "InvalidHeaderValue"), "{a:?}");
    let a = send_raw(
        f.queue,
        b"GET /victim/%ff%fe HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert_eq!((a.status, a.code()), (400, "InvalidUri"), "{a:?}");
    let a = send_raw(
        f.queue,
        b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(a.code(), "InvalidUri");
    // Each account's own message size limit, from its manifest, under one host.
    let tiny_key = key_of(&f.host, "tiny");
    for (account, key, len, status) in [
        ("tiny", &tiny_key, 0, 201),
        ("tiny", &tiny_key, 101, 413),
        ("tiny", &tiny_key, 100, 201),
        ("victim", &f.key, 1000, 201),
    ] {
        if len == 0 {
            let a = Req::new("PUT", account, "/small")
                .signed(account, key, now)
                .send(f.queue);
            assert_eq!(a.status, 201, "{a:?}");
            continue;
        }
        let path = if account == "tiny" {
            "/small/messages"
        } else {
            "/jobs/messages"
        };
        let a = Req::new("POST", account, path)
            .body(format!(
                "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
                "x".repeat(len)
            ))
            .signed(account, key, now)
            .send(f.queue);
        assert_eq!(a.status, status, "{account} {len}: {a:?}");
        if status == 413 {
            assert_eq!(a.code(), "RequestBodyTooLarge");
        }
    }
    let a = Req::new("DELETE", "victim", "/jobs/messages")
        .signed("victim", &f.key, now)
        .send(f.queue);
    assert_eq!(a.status, 204, "{a:?}");
    // A message body past the door's limit, and XML that is not a message.
    let big = format!(
        "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
        "x".repeat(600 * 1024)
    );
    let a = Req::new("POST", "victim", "/jobs/messages")
        .body(big)
        .signed("victim", &f.key, now)
        .send(f.queue);
    assert_eq!((a.status, a.code()), (413, "RequestBodyTooLarge"), "{a:?}");
    for bad in [
        "<QueueMessage><MessageText>unclosed</QueueMessage>",
        "<!DOCTYPE x [<!ENTITY a \"aaaa\">]><QueueMessage><MessageText>&a;</MessageText></QueueMessage>",
        "<Other/>",
        &format!("{}{}", "<a>".repeat(100), "</a>".repeat(100)),
    ] {
        let a = Req::new("POST", "victim", "/jobs/messages")
            .body(bad)
            .signed("victim", &f.key, now)
            .send(f.queue);
        assert_eq!(
            (a.status, a.code()),
            (400, "InvalidXmlDocument"),
            "{bad}: {a:?}"
        );
    }
    // A block list that is not one; a batch of 200 parts.
    assert_eq!(
        Req::new("PUT", "victim", "/box")
            .query("restype=container")
            .signed("victim", &f.key, now)
            .send(f.blob)
            .status,
        201
    );
    let a = Req::new("PUT", "victim", "/box/b")
        .query("comp=blocklist")
        .body("<BlockList><Latest>not base64!</Latest></BlockList>")
        .signed("victim", &f.key, now)
        .send(f.blob);
    assert_eq!((a.status, a.code()), (400, "InvalidBlockList"), "{a:?}");
    let mut batch = String::from("--b\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n");
    for i in 0..200 {
        batch.push_str(&format!(
            "--c\r\nContent-Type: application/http\r\n\r\nPOST http://h/victim/t HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{{\"PartitionKey\":\"p\",\"RowKey\":\"{i}\"}}\r\n"
        ));
    }
    batch.push_str("--c--\r\n--b--\r\n");
    let date = httpdate::fmt_http_date(now);
    let sts = format!("POST\n\nmultipart/mixed; boundary=b\n{date}\n/victim/victim/$batch");
    let a = Req::new("POST", "victim", "/$batch")
        .header("content-type", "multipart/mixed; boundary=b")
        .header("x-ms-date", &date)
        .header(
            "authorization",
            &format!("SharedKey victim:{}", sign(&f.key, &sts)),
        )
        .body(batch)
        .send(f.table);
    assert_eq!(a.status, 400, "{a:?}");
    // A blob upload cut short: nothing is committed.
    let mut s = TcpStream::connect(f.blob).unwrap();
    let mut req = Req::new("PUT", "victim", "/box/short")
        .header("x-ms-blob-type", "BlockBlob")
        .body(vec![b'x'; 1000]);
    req = req.signed("victim", &f.key, now);
    let mut raw =
        b"PUT /victim/box/short HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n".to_vec();
    for (k, v) in &req.headers {
        if k == "authorization" {
            continue;
        }
        raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    // Signed for the length it claims.
    let date = req
        .headers
        .iter()
        .find(|(k, _)| k == "x-ms-date")
        .unwrap()
        .1
        .clone();
    let sts = format!(
        "PUT\n\n\n1000000\n\n\n\n\n\n\n\n\nx-ms-blob-type:BlockBlob\nx-ms-date:{date}\nx-ms-version:2026-10-06\n/victim/victim/box/short"
    );
    raw.extend_from_slice(
        format!(
            "authorization: SharedKey victim:{}\r\n\r\n",
            sign(&f.key, &sts)
        )
        .as_bytes(),
    );
    raw.extend_from_slice(&[b'x'; 1000]);
    s.write_all(&raw).unwrap();
    drop(s);
    std::thread::sleep(Duration::from_millis(500));
    let a = Req::new("HEAD", "victim", "/box/short")
        .signed("victim", &f.key, f.now())
        .send(f.blob);
    assert_eq!(a.status, 404, "a cut-short upload is not a blob: {a:?}");
    // A body that is not what its Content-MD5 says is refused and not stored, as a blob, a
    // block or a block list; a Content-MD5 that is no MD5 is refused; the right one is taken.
    let hello_md5 = "XUFAKrxLKna5cZ2REBfFkg==";
    for (query, body) in [
        ("", "hellO"),
        ("comp=block&blockid=YWFhYQ%3D%3D", "hellO"),
        ("comp=blocklist", "<BlockList></BlockList>"),
    ] {
        let a = Req::new("PUT", "victim", "/box/checked")
            .query(query)
            .header("x-ms-blob-type", "BlockBlob")
            .header("content-md5", hello_md5)
            .body(body)
            .signed("victim", &f.key, f.now())
            .send(f.blob);
        assert_eq!((a.status, a.code()), (400, "Md5Mismatch"), "{query}: {a:?}");
    }
    let a = Req::new("HEAD", "victim", "/box/checked")
        .signed("victim", &f.key, f.now())
        .send(f.blob);
    assert_eq!(a.status, 404, "nothing was stored: {a:?}");
    let a = Req::new("PUT", "victim", "/box/checked")
        .header("x-ms-blob-type", "BlockBlob")
        .header("content-md5", "abc")
        .body("hello")
        .signed("victim", &f.key, f.now())
        .send(f.blob);
    assert_eq!((a.status, a.code()), (400, "InvalidMd5"), "{a:?}");
    let a = Req::new("PUT", "victim", "/box/checked")
        .header("x-ms-blob-type", "BlockBlob")
        .header("content-md5", hello_md5)
        .body("hello")
        .signed("victim", &f.key, f.now())
        .send(f.blob);
    assert_eq!(a.status, 201, "{a:?}");
    // And the host answers on.
    assert!(f.messages().is_empty());
    assert!(f.host.log().contains("host ready"));
}
