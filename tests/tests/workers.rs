//! Worker roles from `guests/` on the real host: processing, racing, poison messages, grace
//! periods, recycling.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use rolehost_runtime::link::{CallInfo, Fault, FaultPlan};
use rolehost_runtime::worker::Phase;
use rolehost_tests::{prepare, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_reaches_exactly_the_number_of_messages_with_four_instances_racing() {
    const N: usize = 120;
    let mut t = prepare(
        r#"
        [service]
        name = "race"
        [roles.Counter]
        kind = "worker"
        component = "{guest:counter}"
        instances = 4
        "#,
    );
    t.put_messages("increments", (0..N).map(|_| "total".to_string()));
    t.start().await;
    let value = wait_for(Duration::from_secs(120), "the counter to reach N", || {
        let v: usize = t.blob_text("counters", "total")?.trim().parse().ok()?;
        (v >= N && t.queue_len("increments") == 0).then_some(v)
    })
    .await;
    assert_eq!(
        value, N,
        "every increment counted once, none lost to the races"
    );
    let statuses = t.shutdown().await;
    assert_eq!(statuses.len(), 4);
    for s in &statuses {
        assert_eq!(s.phase, Phase::Stopped, "{s:?}");
        assert!(
            !s.interrupted,
            "a worker waiting on its queue stops within the grace period: {s:?}"
        );
        assert_eq!(s.restarts, 0, "{s:?}");
    }
    let after: usize = t
        .blob_text("counters", "total")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(after, N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_spread_over_instances_and_each_is_handled_once() {
    const N: usize = 40;
    let mut t = prepare(
        r#"
        [service]
        name = "spread"
        [roles.Recorder]
        kind = "worker"
        component = "{guest:testbed}"
        instances = 3
        [roles.Recorder.settings]
        mode = "record"
        work-ms = 30
        "#,
    );
    t.put_messages("record", (0..N).map(|i| format!("m{i:03}")));
    t.start().await;
    wait_for(Duration::from_secs(120), "every message recorded", || {
        (t.blob_names("seen").len() == N && t.queue_len("record") == 0).then_some(())
    })
    .await;
    let mut instances = BTreeSet::new();
    for i in 0..N {
        let content = t.blob_text("seen", &format!("m{i:03}")).expect("recorded");
        let (instance, dequeues) = content.split_once(' ').expect("instance and count");
        assert_eq!(dequeues, "1", "m{i:03} handled at its first delivery");
        instances.insert(instance.to_string());
    }
    assert!(
        instances.len() >= 2,
        "work went to more than one instance: {instances:?}"
    );
    let statuses = t.shutdown().await;
    assert!(statuses.iter().all(|s| s.restarts == 0), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_message_invisible() {
    // Each handling takes 3 s with a 2 s visibility timeout: without the SDK extending the
    // visibility, the other instance would get the message again and the create-only write
    // of the second handling would fail.
    let mut t = prepare(
        r#"
        [service]
        name = "longwork"
        [roles.Recorder]
        kind = "worker"
        component = "{guest:testbed}"
        instances = 2
        [roles.Recorder.settings]
        mode = "record"
        work-ms = 3000
        visibility-secs = 2
        "#,
    );
    t.put_messages(
        "record",
        ["a".to_string(), "b".to_string(), "c".to_string()],
    );
    t.start().await;
    wait_for(Duration::from_secs(60), "three messages recorded", || {
        (t.blob_names("seen").len() == 3 && t.queue_len("record") == 0).then_some(())
    })
    .await;
    // Let any duplicate delivery surface before checking.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["a", "b", "c"] {
        let content = t.blob_text("seen", name).unwrap();
        assert!(content.ends_with(" 1"), "{name} delivered once: {content}");
    }
    assert_eq!(t.queue_len("record"), 0);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_handler_always_fails_lands_in_the_poison_queue_after_five_dequeues() {
    let mut t = prepare(
        r#"
        [service]
        name = "poison"
        [roles.Failing]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Failing.settings]
        mode = "fail"
        failure-delay-ms = 0
        "#,
    );
    t.put_messages("fail", ["bad".to_string()]);
    t.start().await;
    // The SDK puts the message on the poison queue, then deletes it from its queue: wait for
    // both, then make sure it stays so (a copy would come back and be tried a sixth time).
    wait_for(
        Duration::from_secs(60),
        "the message moved to fail-poison",
        || (t.queue_len("fail-poison") == 1 && t.queue_len("fail") == 0).then_some(()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(t.queue_len("fail-poison"), 1);
    let poisoned = t.store.peek_messages(&t.account, "fail-poison", 1).unwrap();
    assert_eq!(poisoned[0].body, b"bad");
    assert_eq!(t.queue_len("fail"), 0, "moved, not copied");
    let mut attempts = t.blob_names("attempts");
    attempts.sort();
    assert_eq!(attempts, ["bad-1", "bad-2", "bad-3", "bad-4", "bad-5"]);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_honours_the_grace_period_and_interrupts_stuck_instances() {
    let mut t = prepare(
        r#"
        [service]
        name = "grace"
        [roles.Polite]
        kind = "worker"
        component = "{guest:testbed}"
        grace-period-secs = 10
        [roles.Polite.settings]
        mode = "env"
        [roles.Sleeper]
        kind = "worker"
        component = "{guest:testbed}"
        grace-period-secs = 1
        [roles.Sleeper.settings]
        mode = "stuck"
        [roles.Spinner]
        kind = "worker"
        component = "{guest:testbed}"
        grace-period-secs = 1
        [roles.Spinner.settings]
        mode = "spin"
        "#,
    );
    t.start().await;
    wait_for(Duration::from_secs(30), "all running", || {
        t.service()
            .status()
            .iter()
            .all(|s| s.phase == Phase::Running)
            .then_some(())
    })
    .await;
    // The spinner is busy on the CPU, yet the host's timers and other instances go on.
    let tick = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        tick.elapsed() < Duration::from_secs(2),
        "host starved by a spinning guest"
    );

    let started = Instant::now();
    let statuses = t.shutdown().await;
    let took = started.elapsed();
    let by_role = |r: &str| statuses.iter().find(|s| s.role == r).unwrap();
    assert!(!by_role("Polite").interrupted, "{:?}", by_role("Polite"));
    assert!(by_role("Sleeper").interrupted, "{:?}", by_role("Sleeper"));
    assert!(by_role("Spinner").interrupted, "{:?}", by_role("Spinner"));
    assert!(statuses.iter().all(|s| s.phase == Phase::Stopped));
    assert!(
        took >= Duration::from_millis(900),
        "stuck instances got their grace: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "interrupted soon after the grace period: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_role_is_recycled_while_a_healthy_role_beside_it_keeps_working() {
    const N: usize = 30;
    let mut t = prepare(
        r#"
        [service]
        name = "neighbours"
        [roles.Trapper]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 50
        [roles.Trapper.settings]
        mode = "trap"
        trap-after-ms = 50
        [roles.Counter]
        kind = "worker"
        component = "{guest:counter}"
        "#,
    );
    t.start().await;
    // Feed the healthy role while its neighbour keeps crashing.
    for _ in 0..N {
        t.put_messages("increments", ["total".to_string()]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(Duration::from_secs(60), "all increments counted", || {
        let v: usize = t.blob_text("counters", "total")?.trim().parse().ok()?;
        (v == N).then_some(())
    })
    .await;
    let trapper = wait_for(
        Duration::from_secs(30),
        "two recycles of the trapper",
        || {
            t.service()
                .status()
                .into_iter()
                .find(|s| s.role == "Trapper" && s.restarts >= 2)
        },
    )
    .await;
    let reason = trapper.last_recycle_reason.unwrap_or_default();
    assert!(reason.contains("run trapped"), "the log says why: {reason}");
    let counter = t
        .service()
        .status()
        .into_iter()
        .find(|s| s.role == "Counter")
        .unwrap();
    assert_eq!(counter.restarts, 0);
    assert_eq!(counter.phase, Phase::Running);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_returns_unasked_or_an_on_start_error_recycles_the_instance() {
    let mut t = prepare(
        r#"
        [service]
        name = "recycle"
        [roles.Quitter]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 50
        [roles.Quitter.settings]
        mode = "return"
        [roles.Refuser]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 50
        [roles.Refuser.settings]
        mode = "fail-start"
        "#,
    );
    t.start().await;
    let statuses = wait_for(Duration::from_secs(30), "both recycled", || {
        let s = t.service().status();
        s.iter().all(|s| s.restarts >= 1).then_some(s)
    })
    .await;
    let reason = |r: &str| {
        statuses
            .iter()
            .find(|s| s.role == r)
            .and_then(|s| s.last_recycle_reason.clone())
            .unwrap_or_default()
    };
    assert_eq!(reason("Quitter"), "run returned without a stop request");
    assert_eq!(
        reason("Refuser"),
        "on-start returned an error: on-start refused, as asked"
    );
    // Backoff doubles: far fewer than one restart per 50 ms.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let restarts = t
        .service()
        .status()
        .iter()
        .map(|s| s.restarts)
        .max()
        .unwrap();
    assert!(
        restarts <= 8,
        "recycling backs off: {restarts} restarts in about a second"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_is_what_the_manifest_says_and_local_resources_are_wiped_on_stop() {
    let mut t = prepare(
        r#"
        [service]
        name = "envsvc"
        [roles.Probe]
        kind = "worker"
        component = "{guest:testbed}"
        instances = 2
        [roles.Probe.settings]
        mode = "env"
        colour = "blue"
        [[roles.Probe.local-resources]]
        name = "scratch"
        size-mb = 5
        "#,
    );
    t.start().await;
    let report = wait_for(
        Duration::from_secs(30),
        "the env report of instance 1",
        || t.blob_text("env", "Probe_IN_1"),
    )
    .await;
    let deployment = t.service().deployment_id().to_string();
    for line in [
        "service=envsvc".to_string(),
        "role=Probe".to_string(),
        "instance=Probe_IN_1".to_string(),
        format!("deployment={deployment}"),
        "setting colour=blue".to_string(),
        "setting mode=env".to_string(),
        format!("local scratch=/local/scratch quota={} read=probe", 5 << 20),
    ] {
        assert!(
            report.lines().any(|l| l == line),
            "{line:?} missing from:\n{report}"
        );
    }
    let local = t
        .dir
        .path()
        .join("local/Probe/Probe_IN_1/scratch/probe.txt");
    assert_eq!(
        std::fs::read(&local).unwrap(),
        b"probe",
        "the guest wrote into its own directory"
    );
    t.shutdown().await;
    assert!(
        !local.exists(),
        "local resources are wiped when the instance stops"
    );
}

/// Reads the width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((be(16), be(20)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_roles_make_a_real_thumbnail_of_every_image() {
    let mut t = prepare(
        r#"
        [service]
        name = "thumbs"
        [roles.Producer]
        kind = "worker"
        component = "{guest:producer}"
        [roles.Producer.settings]
        interval-ms = 100
        count = 4
        [roles.Thumbnailer]
        kind = "worker"
        component = "{guest:thumbnail}"
        instances = 2
        [roles.Thumbnailer.settings]
        size = 64
        "#,
    );
    t.start().await;
    let thumbs = wait_for(Duration::from_secs(120), "four thumbnails", || {
        let names = t.blob_names("thumbnails");
        (names.len() == 4 && t.queue_len("thumbnails") == 0).then_some(names)
    })
    .await;
    for name in thumbs {
        let source = name.strip_suffix(".thumb.png").expect("thumbnail name");
        let original = t.blob_bytes("images", source).expect("the source image");
        assert_eq!(png_size(&original), Some((640, 480)), "{source}");
        let thumb = t.blob_bytes("thumbnails", &name).unwrap();
        assert_eq!(
            png_size(&thumb),
            Some((64, 48)),
            "{name}: aspect kept, longer side 64"
        );
        assert!(thumb.len() < original.len() / 4);
    }
    let counted = t.blob_text("counters", "images");
    assert_eq!(
        counted, None,
        "no counter role in this service, so nobody counted"
    );
    assert_eq!(
        t.queue_len("increments"),
        4,
        "the producer asked for four counts"
    );
    t.shutdown().await;
}

/// Loses the requests of the first `n` calls of one operation.
struct LoseFirst {
    operation: &'static str,
    remaining: AtomicU32,
}

impl FaultPlan for LoseFirst {
    fn fault(&self, call: &CallInfo) -> Fault {
        let take = call.operation == self.operation
            && self
                .remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if take {
            Fault::LoseRequest
        } else {
            Fault::None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_retry_policy_rides_out_lost_requests() {
    let mut t = prepare(
        r#"
        [service]
        name = "retries"
        [roles.Counter]
        kind = "worker"
        component = "{guest:counter}"
        "#,
    );
    t.put_messages("increments", ["total".to_string()]);
    let plan = Arc::new(LoseFirst {
        operation: "blob.put-blob",
        remaining: AtomicU32::new(2),
    });
    t.start_with_faults(Some(plan.clone())).await;
    wait_for(Duration::from_secs(30), "the increment", || {
        let v = t.blob_text("counters", "total")?;
        (v == "1" && t.queue_len("increments") == 0).then_some(())
    })
    .await;
    assert_eq!(
        plan.remaining.load(Ordering::SeqCst),
        0,
        "both requests were lost"
    );
    let s = t.shutdown().await;
    assert_eq!(
        s[0].restarts, 0,
        "timeouts were retried inside the guest: {s:?}"
    );
}
