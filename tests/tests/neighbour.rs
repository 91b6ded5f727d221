//! A healthy worker's throughput beside misbehaving roles. Its own test binary: cargo runs
//! test binaries one at a time, so no other test's load skews the two measurements.

use rolehost_tests::{LogCapture, prepare};

const COUNTER: &str = r#"
    [roles.Counter]
    kind = "worker"
    component = "{guest:counter}"
    "#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_neighbour_keeps_its_throughput_while_others_misbehave() {
    let captured = LogCapture::install("guest=info,rolehost_runtime=info");
    const N: usize = 150;

    // Baseline: the counter alone.
    let mut alone = prepare(&format!("[service]\nname = \"alone\"\n{COUNTER}"));
    alone.start().await;
    alone.feed_counter(10).await; // warm up
    let baseline = alone.feed_counter(N).await;
    alone.shutdown().await;

    // The same counter beside an infinite loop, a memory bomb, a stack overflow, a trap, a
    // stdout flood and a disk filler.
    let mut crowd = prepare(&format!(
        r#"
        [service]
        name = "crowd"
        {COUNTER}
        [roles.Spin]
        kind = "worker"
        component = "{{guest:testbed}}"
        grace-period-secs = 1
        [roles.Spin.settings]
        mode = "spin"
        [roles.Bomb]
        kind = "worker"
        component = "{{guest:testbed}}"
        recycle-backoff-ms = 100
        [roles.Bomb.settings]
        mode = "membomb"
        [roles.Bomb.limits]
        memory-mb = 128
        [roles.Deep]
        kind = "worker"
        component = "{{guest:testbed}}"
        recycle-backoff-ms = 100
        [roles.Deep.settings]
        mode = "stackoverflow"
        [roles.Trap]
        kind = "worker"
        component = "{{guest:testbed}}"
        recycle-backoff-ms = 100
        [roles.Trap.settings]
        mode = "trap"
        trap-after-ms = 10
        [roles.Flood]
        kind = "worker"
        component = "{{guest:testbed}}"
        grace-period-secs = 1
        [roles.Flood.settings]
        mode = "flood"
        [roles.Filler]
        kind = "worker"
        component = "{{guest:testbed}}"
        [roles.Filler.settings]
        mode = "diskfill"
        [[roles.Filler.local-resources]]
        name = "scratch"
        size-mb = 64
        "#
    ));
    crowd.start().await;
    crowd.feed_counter(10).await;
    let flood_start = captured.len();
    let crowded = crowd.feed_counter(N).await;
    let statuses = crowd.shutdown().await;

    let base_rate = N as f64 / baseline.as_secs_f64();
    let crowd_rate = N as f64 / crowded.as_secs_f64();
    eprintln!(
        "neighbour throughput: alone {base_rate:.0} msg/s, beside misbehaving roles {crowd_rate:.0} msg/s ({:.2}x)",
        crowd_rate / base_rate
    );
    assert!(
        crowd_rate >= 0.5 * base_rate,
        "alone {baseline:?}, crowded {crowded:?}"
    );

    let by_role = |r: &str| statuses.iter().find(|s| s.role == r).unwrap();
    assert_eq!(by_role("Counter").restarts, 0);
    for r in ["Bomb", "Deep", "Trap"] {
        assert!(
            by_role(r).restarts >= 1,
            "{r} was recycled: {:?}",
            by_role(r)
        );
    }
    assert!(
        by_role("Bomb")
            .last_recycle_reason
            .as_deref()
            .unwrap_or("")
            .contains("memory quota")
    );
    assert!(by_role("Spin").interrupted && by_role("Flood").interrupted);
    assert_eq!(by_role("Filler").restarts, 0, "a full disk is not a crash");
    assert!(by_role("Filler").usage.disk_bytes <= 64 << 20);

    // The flood was held to the log budget: the guest waited, nothing was dropped.
    let log = captured.text_from(flood_start);
    let numbers: Vec<u64> = log
        .lines()
        .filter_map(|l| l.split("flood line ").nth(1)?.trim().parse().ok())
        .collect();
    let budget = 200.0 * crowded.as_secs_f64() + 400.0;
    assert!(
        (numbers.len() as f64) <= budget,
        "{} flood lines in {crowded:?}",
        numbers.len()
    );
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "no line was lost"
    );
}
