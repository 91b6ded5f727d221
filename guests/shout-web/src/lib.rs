//! Shout web role (the web example's front end). Work is asynchronous, as on the 2008
//! platform: the page puts a job on a queue and fetches the result when a worker has made it.
//!
//! - `GET /` : the page (a form; with `?text=...` it submits at once).
//! - `POST /jobs` (body: the text): queues `<job id>\n<text>` on `shout`, answers the id.
//! - `GET /jobs/<id>`: the result (200), or 202 when not ready yet (waits up to 2 s first).
//! - `GET /count`: how many images the demo's counter has counted.

use std::time::{Duration, Instant};

use rolehost_sdk::{Container, ErrorCode, Queue};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>rolehost demo</title>
<style>body{font-family:sans-serif;max-width:40em;margin:3em auto}#result{font-size:2em}</style>
</head><body>
<h1>Shout</h1>
<p>A web role puts your text on a queue; a worker role shouts it back. The work is
asynchronous: the result may take a while, and this page fetches it when it is ready.</p>
<form id="f"><input id="text" name="text" value="hello, cloud"> <button>Shout</button></form>
<p id="status"></p><p id="result"></p>
<p>Images counted by the demo's counter role: <span id="count">?</span></p>
<script>
async function shout(text) {
  document.getElementById('status').textContent = 'Queued; the result may take a while...';
  document.getElementById('result').textContent = '';
  const id = await (await fetch('/jobs', {method: 'POST', body: text})).text();
  for (;;) {
    const r = await fetch('/jobs/' + id);
    if (r.status === 200) {
      document.getElementById('result').textContent = await r.text();
      document.getElementById('status').textContent = 'Done (job ' + id + ').';
      return;
    }
  }
}
document.getElementById('f').onsubmit = e => { e.preventDefault(); shout(document.getElementById('text').value); };
fetch('/count').then(r => r.text()).then(t => document.getElementById('count').textContent = t);
const q = new URLSearchParams(location.search).get('text');
if (q) shout(q);
</script></body></html>
"#;

struct Shout;

fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.set("content-type", &[content_type.as_bytes().to_vec()]);
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("body");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream");
    for chunk in body.chunks(4096) {
        let _ = stream.blocking_write_and_flush(chunk);
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let mut body = Vec::new();
    if let Ok(incoming) = request.consume()
        && let Ok(stream) = incoming.stream()
    {
        while let Ok(chunk) = stream.blocking_read(64 * 1024) {
            body.extend(chunk);
            if body.len() > 4096 {
                break;
            }
        }
    }
    body
}

fn job_id() -> String {
    wasip2::random::random::get_random_bytes(8)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl wasip2::exports::http::incoming_handler::Guest for Shout {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let method = request.method();
        if matches!(method, Method::Post) && path == "/jobs" {
            let text = String::from_utf8_lossy(&read_body(&request)).into_owned();
            let id = job_id();
            let queue = Queue::new("shout");
            let queued = queue
                .create_if_not_exists()
                .and_then(|_| queue.put(format!("{id}\n{text}").as_bytes()));
            match queued {
                Ok(_) => respond(out, 200, "text/plain", id.as_bytes()),
                Err(e) => respond(out, 503, "text/plain", e.to_string().as_bytes()),
            }
        } else if let Some(id) = path.strip_prefix("/jobs/") {
            let blob = Container::new("results").blob(id);
            let started = Instant::now();
            loop {
                match blob.get() {
                    Ok((bytes, _)) => return respond(out, 200, "text/plain", &bytes),
                    Err(e)
                        if e.code == ErrorCode::BlobNotFound
                            || e.code == ErrorCode::ContainerNotFound => {}
                    Err(e) => return respond(out, 500, "text/plain", e.to_string().as_bytes()),
                }
                if started.elapsed() > Duration::from_secs(2) {
                    return respond(out, 202, "text/plain", b"pending");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        } else if path == "/count" {
            let count = Container::new("counters")
                .blob("images")
                .get()
                .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|_| "0".into());
            respond(out, 200, "text/plain", count.as_bytes());
        } else if path == "/" || path.starts_with("/?") {
            respond(out, 200, "text/html; charset=utf-8", PAGE.as_bytes());
        } else {
            respond(out, 404, "text/plain", b"not found");
        }
    }
}

wasip2::http::proxy::export!(Shout);
