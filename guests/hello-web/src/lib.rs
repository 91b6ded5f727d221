//! Hello-world web role: answers every request with a line naming the instance that served it
//! and how many requests that instance has served (instances are long-lived: the count grows),
//! and the role's `version` setting when it has one.
//!
//! Paths: `/slow?ms=N` sleeps N ms first; `/spin` loops forever (for the host's timeout tests);
//! `/upload` reads the request body and answers how many bytes it read, or the error (also
//! written to blob `uploads/last`); `/fetch?url=http://host:port/path` makes an outbound GET and
//! answers `fetched <status>: <body>` or `fetch failed: <error>`; `/store?name=N` streams the
//! request body into blob `uploads/N` (4 MiB blocks; the body is never whole in memory) and
//! answers `stored <bytes> bytes`; `/cache?key=K` looks K up in an in-memory cache (`K: miss`
//! the first time, `K: hit` after); `/forget` returns without answering, keeping its
//! response-outparam (the host must answer for it); `/stall` answers with a first line of its
//! body and then never writes or finishes the rest (for 60 s: the host must end it).
//! Freezable (`rolehost_sdk::web_freezable!`).

use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

static SERVED: AtomicU64 = AtomicU64::new(0);

struct Hello;

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let n = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path = request.path_with_query().unwrap_or_default();
        if let Some(ms) = path
            .strip_prefix("/slow?ms=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if path == "/forget" {
            // Returns without answering and without dropping the response-outparam.
            std::mem::forget(out);
            return;
        }
        if path == "/stall" {
            let response = OutgoingResponse::new(Fields::new());
            let outgoing = response.body().expect("body");
            let stream = outgoing.write().expect("stream");
            ResponseOutparam::set(out, Ok(response));
            let _ = stream.blocking_write_and_flush(b"first line\n");
            std::thread::sleep(std::time::Duration::from_secs(60));
            drop(stream);
            let _ = OutgoingBody::finish(outgoing, None);
            return;
        }
        if path == "/spin" {
            let mut x: u64 = 1;
            while x != 0 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        let body = if let Some(name) = path.strip_prefix("/store?name=") {
            store_body(&request, name)
        } else if let Some(url) = path.strip_prefix("/fetch?url=") {
            fetch(url)
        } else if let Some(key) = path.strip_prefix("/cache?key=") {
            cache(key)
        } else if path == "/upload" {
            let outcome = read_body(&request);
            // Also kept in storage: after a body error the client may not get the answer.
            let uploads = rolehost_sdk::Container::new("uploads");
            let _ = uploads.create_if_not_exists();
            let _ = uploads.blob("last").put(outcome.as_bytes());
            outcome
        } else {
            // A `version` setting, when the manifest gives one, says which deployment answered.
            // Settings do not change during an instance's life: read once.
            static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            let version = VERSION.get_or_init(|| {
                rolehost_sdk::env::setting("version")
                    .map(|v| format!(", version {v}"))
                    .unwrap_or_default()
            });
            format!(
                "hello from {} (request {n}{version})\n",
                rolehost_sdk::env::instance_id()
            )
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let _ = headers.set("content-length", &[body.len().to_string().into_bytes()]);
        let response = OutgoingResponse::new(headers);
        let outgoing = response.body().expect("body");
        // A short body is written whole before the response is handed over, so the host can
        // send head and body together.
        let stream = outgoing.write().expect("stream");
        let _ = stream.blocking_write_and_flush(body.as_bytes());
        drop(stream);
        let _ = OutgoingBody::finish(outgoing, None);
        ResponseOutparam::set(out, Ok(response));
    }
}

wasip2::http::proxy::export!(Hello);
// Freezable between requests: memory (the request count, the cache) survives a freeze and thaw.
rolehost_sdk::web_freezable!();

/// An in-memory cache: the first request for a key computes its value (the request number
/// that asked first, and the instance), later ones find it. Answers `<key>: miss` or
/// `<key>: hit`, then the value and how many keys are cached.
fn cache(key: &str) -> String {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static CACHE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let hit = cache.contains_key(key);
    let value = cache
        .entry(key.to_string())
        .or_insert_with(|| {
            format!(
                "computed at request {} on {}",
                SERVED.load(Ordering::Relaxed),
                rolehost_sdk::env::instance_id()
            )
        })
        .clone();
    format!(
        "{key}: {} ({value}; {} cached)\n",
        if hit { "hit" } else { "miss" },
        cache.len()
    )
}

/// Reads the whole request body: "read N bytes", or "body error: ..." where it failed.
fn read_body(request: &IncomingRequest) -> String {
    let Ok(body) = request.consume() else {
        return "body error: no body\n".into();
    };
    let Ok(stream) = body.stream() else {
        return "body error: no stream\n".into();
    };
    let mut total: u64 = 0;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => total += chunk.len() as u64,
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                return format!("body error after {total} bytes: {}\n", e.to_debug_string());
            }
        }
    }
    format!("read {total} bytes\n")
}

/// An outbound GET of `url` (`http://authority/path`).
fn fetch(url: &str) -> String {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{OutgoingRequest, Scheme};
    let Some(rest) = url.strip_prefix("http://") else {
        return "fetch failed: only http:// URLs\n".into();
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let future = match outgoing_handler::handle(request, None) {
        Ok(f) => f,
        Err(e) => return format!("fetch failed: {e:?}\n"),
    };
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return format!("fetch failed: {e:?}\n"),
        other => return format!("fetch failed: {other:?}\n"),
    };
    let status = response.status();
    let mut body = Vec::new();
    if let Ok(incoming) = response.consume()
        && let Ok(stream) = incoming.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            body.extend(chunk);
        }
    }
    format!("fetched {status}: {}", String::from_utf8_lossy(&body))
}

/// Streams the request body into blob `uploads/<name>`.
fn store_body(request: &IncomingRequest, name: &str) -> String {
    use std::io::Write;
    let uploads = rolehost_sdk::Container::new("uploads");
    if let Err(e) = uploads.create_if_not_exists() {
        return format!("store failed: {e}\n");
    }
    let Ok(body) = request.consume() else {
        return "store failed: no body\n".into();
    };
    let Ok(stream) = body.stream() else {
        return "store failed: no stream\n".into();
    };
    let mut writer = uploads.blob(name).writer();
    let mut total: u64 = 0;
    loop {
        match stream.blocking_read(256 * 1024) {
            Ok(chunk) => {
                total += chunk.len() as u64;
                if let Err(e) = writer.write_all(&chunk) {
                    return format!("store failed after {total} bytes: {e}\n");
                }
            }
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(wasip2::io::streams::StreamError::LastOperationFailed(e)) => {
                return format!(
                    "store failed after {total} bytes: {}\n",
                    e.to_debug_string()
                );
            }
        }
    }
    match writer.finish() {
        Ok(props) => format!("stored {} bytes\n", props.size),
        Err(e) => format!("store failed at commit: {e}\n"),
    }
}
