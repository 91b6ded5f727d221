//! What the host does around the guests: refusing bad components, routing guest output to
//! the log.

use std::time::Duration;

use rolehost_runtime::RuntimeError;
use rolehost_runtime::service::{Service, ServiceOptions};
use rolehost_tests::{LogCapture, guest, prepare, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_stdout_and_stderr_go_to_the_log_tagged_with_the_instance() {
    let captured = LogCapture::install("guest=info");
    let mut t = prepare(
        r#"
        [service]
        name = "printer"
        [roles.Printer]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Printer.settings]
        mode = "print"
        "#,
    );
    t.start().await;
    let log = wait_for(Duration::from_secs(30), "both lines in the log", || {
        let text = captured.text_from(0);
        (text.contains("hello from stdout") && text.contains("hello from stderr")).then_some(text)
    })
    .await;
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .to_string()
    };
    let out = line("hello from stdout of Printer_IN_0");
    assert!(
        out.contains("instance=\"Printer_IN_0\"") && out.contains("stream=\"stdout\""),
        "{out}"
    );
    let err = line("hello from stderr of Printer_IN_0");
    assert!(
        err.contains("WARN") && err.contains("stream=\"stderr\""),
        "{err}"
    );
    t.shutdown().await;
    assert!(
        captured
            .text_from(0)
            .contains("Printer_IN_0 stopping cleanly"),
        "on-stop ran and logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_worker_component_is_refused_before_anything_starts() {
    let t = prepare(
        r#"
        [service]
        name = "refused"
        [roles.Good]
        kind = "worker"
        component = "{guest:counter}"
        [roles.Bad]
        kind = "worker"
        component = "not-a-component.wasm"
        "#,
    );
    // A core module, not a component.
    std::fs::write(
        t.dir.path().join("not-a-component.wasm"),
        b"\0asm\x01\0\0\0",
    )
    .unwrap();
    let err = start(&t).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RuntimeError::Component { ref role, .. } if role == "Bad"),
        "{msg}"
    );
    assert!(msg.contains("not a valid component"), "{msg}");

    // Garbage.
    std::fs::write(t.dir.path().join("not-a-component.wasm"), b"hello").unwrap();
    let msg = start(&t).await.unwrap_err().to_string();
    assert!(
        msg.contains("role Bad") && msg.contains("not a valid component"),
        "{msg}"
    );

    // A missing file is named.
    std::fs::remove_file(t.dir.path().join("not-a-component.wasm")).unwrap();
    let msg = start(&t).await.unwrap_err().to_string();
    assert!(msg.contains("not-a-component.wasm"), "{msg}");
    assert!(guest("counter").exists());
}

async fn start(t: &rolehost_tests::TestService) -> Result<Service, RuntimeError> {
    let components = rolehost_runtime::service::resolve_components(&t.manifest, None)?;
    let options = ServiceOptions {
        data_dir: t.dir.path().to_path_buf(),
        ..ServiceOptions::default()
    };
    Service::start(&t.manifest, &components, t.store.clone(), options).await
}
