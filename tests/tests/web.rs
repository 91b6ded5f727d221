//! Web roles over real sockets on 127.0.0.1: load balancing across instances, a bounded
//! queue (503), request timeouts (504), and malformed requests kept from the guest.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rolehost_tests::{TestService, http_get, http_request, prepare, wait_for};

fn web_service(name: &str, instances: u32, extra: &str) -> TestService {
    prepare(&format!(
        r#"
        [service]
        name = "{name}"
        [roles.Web]
        kind = "web"
        component = "{{guest:hello_web}}"
        instances = {instances}
        recycle-backoff-ms = 50
        {extra}
        [[roles.Web.endpoints]]
        port = 0
        "#
    ))
}

fn addr(t: &TestService) -> std::net::SocketAddr {
    t.service().endpoints()[0].1
}

/// "hello from Web_IN_2 (request 7)" -> ("Web_IN_2", 7)
fn who(body: &str) -> (String, u64) {
    let rest = body
        .trim()
        .strip_prefix("hello from ")
        .unwrap_or_else(|| panic!("{body:?}"));
    let (id, n) = rest.split_once(" (request ").unwrap();
    (id.to_string(), n.trim_end_matches(')').parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_over_all_instances_which_keep_their_memory() {
    let mut t = web_service("spread", 4, "");
    t.start().await;
    let a = addr(&t);
    wait_for(Duration::from_secs(30), "all instances up", || {
        t.service()
            .status()
            .iter()
            .all(|s| s.phase == rolehost_runtime::worker::Phase::Running)
            .then_some(())
    })
    .await;
    // Concurrent clients, so more than one instance is busy at a time.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        tasks.push(tokio::spawn(
            async move { http_get(a, "/slow?ms=20").await },
        ));
    }
    let mut seen = BTreeSet::new();
    let mut max_count = 0;
    for task in tasks {
        let r = task.await.unwrap().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        let (id, n) = who(&r.body);
        seen.insert(id);
        max_count = max_count.max(n);
    }
    assert_eq!(seen.len(), 4, "every instance served: {seen:?}");
    assert!(
        max_count > 1,
        "an instance keeps its memory between requests"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_instance_does_not_block_the_others() {
    let mut t = web_service("slowness", 2, "");
    t.start().await;
    let a = addr(&t);
    let slow = tokio::spawn(async move { http_get(a, "/slow?ms=2000").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let fast = http_get(a, "/").await.unwrap();
    assert_eq!(fast.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    let mut t = web_service("overload", 1, "max-queued-requests = 1");
    t.start().await;
    let a = addr(&t);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        tasks.push(tokio::spawn(
            async move { http_get(a, "/slow?ms=800").await },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let r = task.await.unwrap().unwrap();
        if r.status == 503 {
            assert!(
                r.head.to_lowercase().contains("retry-after: 1"),
                "{}",
                r.head
            );
        }
        statuses.push(r.status);
    }
    statuses.sort();
    // One served at once, one waited, the rest were turned away.
    assert_eq!(statuses, [200, 200, 503, 503, 503], "{statuses:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_loops_gets_504_and_its_instance_is_recycled() {
    let mut t = web_service("looping", 1, "request-timeout-ms = 500");
    t.start().await;
    let a = addr(&t);
    let started = Instant::now();
    let r = http_get(a, "/spin").await.unwrap();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A fresh instance serves the next request.
    let ok = wait_for(Duration::from_secs(10), "a fresh instance", || {
        let s = t.status_of("Web");
        (s.restarts == 1 && s.phase == rolehost_runtime::worker::Phase::Running).then_some(s)
    })
    .await;
    assert!(ok.last_recycle_reason.unwrap().contains("request timeout"));
    let r = http_get(a, "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(who(&r.body).1, 1, "memory of the old instance is gone");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_request_costs_no_instance() {
    let mut t = web_service("hangup", 1, "");
    t.start().await;
    let a = addr(&t);
    // The client goes away while its request runs; the handler finishes anyway.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
        s.write_all(b"GET /slow?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The one instance serves the next request, with its memory (request 2).
    let r = tokio::time::timeout(Duration::from_secs(10), http_get(a, "/"))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        who(&r.body).1,
        2,
        "the same instance, after the hung-up request"
    );
    let s = t.status_of("Web");
    assert_eq!(s.restarts, 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_returns_without_answering_gets_500_at_once() {
    let mut t = web_service("forgetful", 1, "request-timeout-ms = 30000");
    t.start().await;
    let a = addr(&t);
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), http_get(a, "/forget"))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    assert_eq!(r.status, 500, "{r:?}");
    assert_eq!(r.body, "the role returned without answering\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered without waiting for the request timeout: {:?}",
        started.elapsed()
    );
    // The instance did nothing wrong by the host's rules: it serves on.
    let r = http_get(a, "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(who(&r.body).1, 2);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_smuggling_requests_never_reach_the_guest() {
    let mut t = web_service("malformed", 1, "");
    t.start().await;
    let a = addr(&t);
    let bad: [&[u8]; 3] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ];
    for raw in bad {
        let r = http_request(a, raw).await.unwrap();
        assert_eq!(r.status, 400, "{:?}: {r:?}", String::from_utf8_lossy(raw));
    }
    let r = http_get(a, "/").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(who(&r.body).1, 1, "the guest saw none of the bad requests");

    // Smuggling: a request framed two ways, with a second request hidden behind it. It is
    // read by its Transfer-Encoding, answered, and the connection closed: the hidden request
    // is never read.
    let smuggle = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /spin HTTP/1.1\r\nHost: x\r\n\r\n";
    let r = http_request(a, smuggle).await.unwrap();
    assert_eq!(
        r.head.matches("HTTP/1.1 ").count(),
        1,
        "one answer only: {r:?}"
    );
    assert!(r.head.to_lowercase().contains("connection: close"), "{r:?}");
    let r = http_get(a, "/").await.unwrap();
    assert_eq!(
        who(&r.body).1,
        3,
        "the guest saw the outer request, never the hidden /spin"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_get_clear_4xx_answers() {
    let mut t = web_service(
        "limits",
        1,
        "max-body-bytes = 1024\nmax-header-bytes = 8192",
    );
    t.start().await;
    let a = addr(&t);
    // A declared length over the limit: 413 before any guest sees it.
    let r = http_request(
        a,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413, "{r:?}");
    // A head over the limit: 431.
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(20_000)
    );
    let r = http_request(a, raw.as_bytes()).await.unwrap();
    assert_eq!(r.status, 431, "{r:?}");
    // Within the limits, the body arrives whole.
    let ok =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n";
    let mut raw = ok.to_vec();
    raw.extend(std::iter::repeat_n(b'z', 1000));
    let r = http_request(a, &raw).await.unwrap();
    assert_eq!(r.body.trim(), "read 1000 bytes", "{r:?}");
    // A chunked body with no declared length is cut off at the limit.
    let mut raw = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend(b"200\r\n");
        raw.extend(std::iter::repeat_n(b'y', 0x200));
        raw.extend(b"\r\n");
    }
    raw.extend(b"0\r\n\r\n");
    let _ = http_request(a, &raw).await;
    let outcome = wait_for(
        Duration::from_secs(10),
        "the guest's upload outcome",
        || {
            t.blob_text("uploads", "last")
                .filter(|o| o.starts_with("body error"))
        },
    )
    .await;
    assert!(
        outcome.starts_with("body error after 1024 bytes"),
        "{outcome}"
    );
    t.shutdown().await;
}

/// A tiny upstream server answering every connection with `secret`.
async fn upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecret",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_goes_only_to_allowed_hosts() {
    let up = upstream().await;
    let mut t = prepare(&format!(
        r#"
        [service]
        name = "outbound"
        [roles.Open]
        kind = "web"
        component = "{{guest:hello_web}}"
        outbound-hosts = ["127.0.0.1:{port}"]
        [[roles.Open.endpoints]]
        port = 0
        [roles.Closed]
        kind = "web"
        component = "{{guest:hello_web}}"
        [[roles.Closed.endpoints]]
        port = 0
        "#,
        port = up.port()
    ));
    t.start().await;
    let at = |role: &str| {
        t.service()
            .endpoints()
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, a)| *a)
            .unwrap()
    };
    let path = format!("/fetch?url=http://{up}/data");
    let open = http_get(at("Open"), &path).await.unwrap();
    assert_eq!(open.body, "fetched 200: secret", "{open:?}");
    let closed = http_get(at("Closed"), &path).await.unwrap();
    assert!(closed.body.contains("HttpRequestDenied"), "{closed:?}");
    // Allowed host, other port: refused too.
    let other = format!("/fetch?url=http://127.0.0.1:{}/data", up.port() + 1);
    let r = http_get(at("Open"), &other).await.unwrap();
    assert!(r.body.contains("HttpRequestDenied"), "{r:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_works_with_a_test_certificate() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let fixtures = rolehost_tests::repo_root().join("tests/fixtures");
    let mut t = prepare(&format!(
        r#"
        [service]
        name = "tls"
        [roles.Web]
        kind = "web"
        component = "{{guest:hello_web}}"
        [[roles.Web.endpoints]]
        protocol = "https"
        port = 0
        certificate = "{cert}"
        key = "{key}"
        "#,
        cert = fixtures.join("localhost.crt").display(),
        key = fixtures.join("localhost.key").display(),
    ));
    t.start().await;
    let a = addr(&t);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixtures.join("ca.crt")).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(a).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the test CA");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("hello from Web_IN_0"), "{text}");

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let plain = http_get(a, "/").await.map(|r| r.status).unwrap_or(0);
    assert_ne!(plain, 200);
    t.shutdown().await;
}
