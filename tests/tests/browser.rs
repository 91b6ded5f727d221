//! The web example end to end in a real browser: headless Chromium (Debian's `chromium`,
//! installed by `scripts/test`) loads the page of a web role, which queues a job that a worker
//! role does; the page shows the result when it is ready.

use std::process::Command;

use rolehost_tests::{http_get, prepare};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shout_page_shows_the_workers_result_in_chromium() {
    let mut t = prepare(
        r#"
        [service]
        name = "browser"
        [roles.ShoutWeb]
        kind = "web"
        component = "{guest:shout_web}"
        instances = 2
        [[roles.ShoutWeb.endpoints]]
        port = 0
        [roles.ShoutWorker]
        kind = "worker"
        component = "{guest:shout_worker}"
        "#,
    );
    t.start().await;
    let addr = t.service().endpoints()[0].1;
    assert_eq!(http_get(addr, "/").await.unwrap().status, 200);

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/?text=hello%20browser");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Timers run on virtual time, paused while fetches are pending: the page's
                // polling loop ends as soon as the worker's result arrives.
                "--virtual-time-budget=30000",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .output()
    })
    .await
    .unwrap()
    .expect("chromium runs (scripts/test installs Debian's chromium package)");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains(r#"<p id="result">HELLO BROWSER!</p>"#),
        "the page shows the result:\n{dom}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dom.contains("Done (job "), "{dom}");
    t.shutdown().await;
}
