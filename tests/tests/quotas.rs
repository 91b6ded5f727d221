//! VM-size quotas on real guests: the CPU share, per-call budgets, memory, the log budget,
//! confinement to local resources, and a healthy neighbour's throughput while others misbehave.

use std::time::{Duration, Instant};

use rolehost_runtime::quota::REFERENCE_CORE_FUEL_PER_SEC;
use rolehost_runtime::worker::Phase;
use rolehost_tests::{prepare, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_guest_gets_its_cpu_share_within_20_percent() {
    let mut t = prepare(
        r#"
        [service]
        name = "cpushare"
        [roles.Spinner]
        kind = "worker"
        component = "{guest:testbed}"
        grace-period-secs = 1
        [roles.Spinner.settings]
        mode = "spin"
        [roles.Spinner.limits]
        cpu-cores = 0.25
        "#,
    );
    t.start().await;
    wait_for(Duration::from_secs(30), "the spinner running", || {
        (t.status_of("Spinner").phase == Phase::Running).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (f0, t0) = (t.status_of("Spinner").usage.fuel, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = t.status_of("Spinner");
    let rate = (s.usage.fuel - f0) as f64 / t0.elapsed().as_secs_f64();
    let target = REFERENCE_CORE_FUEL_PER_SEC as f64 * 0.25;
    eprintln!(
        "cpu share: {rate:.3e} fuel/s for a target of {target:.3e} ({:.2}x)",
        rate / target
    );
    assert_eq!(s.usage.fuel_per_sec, target as u64);
    assert!(
        (rate / target - 1.0).abs() <= 0.2,
        "rate {rate:.3e} vs target {target:.3e}"
    );
    assert!(
        s.usage.throttled > Duration::from_secs(1),
        "it was throttled: {:?}",
        s.usage
    );
    assert_eq!(s.restarts, 0, "throttled, not killed");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_call_budget_ends_a_runaway_loop_with_a_clear_reason() {
    let mut t = prepare(
        r#"
        [service]
        name = "budget"
        [roles.Spinner]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 100
        [roles.Spinner.settings]
        mode = "spin"
        [roles.Spinner.limits]
        call-fuel-budget = 200000000
        [roles.Counter]
        kind = "worker"
        component = "{guest:counter}"
        [roles.Counter.limits]
        call-fuel-budget = 200000000
        "#,
    );
    t.start().await;
    // A worker that calls the platform in every iteration lives happily under the same budget.
    t.feed_counter(20).await;
    let s = wait_for(Duration::from_secs(30), "a recycle", || {
        let s = t.status_of("Spinner");
        (s.restarts >= 1).then_some(s)
    })
    .await;
    let reason = s.last_recycle_reason.unwrap();
    assert!(
        reason.contains("per-call CPU budget (200000000 fuel)"),
        "{reason}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_growth_past_the_cap_fails_a_careful_guest_survives_a_careless_one_is_recycled() {
    let mut t = prepare(
        r#"
        [service]
        name = "memory"
        [roles.Careful]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Careful.settings]
        mode = "memtry"
        [roles.Careful.limits]
        memory-mb = 64
        [roles.Careless]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 100
        [roles.Careless.settings]
        mode = "membomb"
        [roles.Careless.limits]
        memory-mb = 64
        "#,
    );
    t.start().await;
    let report = wait_for(
        Duration::from_secs(30),
        "the careful guest's report",
        || t.blob_text("memtry", "Careful_IN_0"),
    )
    .await;
    let mib: u64 = report
        .strip_prefix("refused after ")
        .and_then(|r| r.strip_suffix(" MiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        (16..64).contains(&mib),
        "stopped below the 64 MiB cap: {report}"
    );
    let careless = wait_for(
        Duration::from_secs(30),
        "the careless guest recycled",
        || {
            let s = t.status_of("Careless");
            (s.restarts >= 1).then_some(s)
        },
    )
    .await;
    let reason = careless.last_recycle_reason.unwrap();
    assert!(
        reason.contains("memory quota (64 MiB"),
        "the log says it hit the memory quota: {reason}"
    );
    let careful = t.status_of("Careful");
    assert_eq!(
        (careful.phase, careful.restarts),
        (Phase::Running, 0),
        "{careful:?}"
    );
    assert!(
        careful.usage.memory_bytes <= 64 << 20,
        "{:?}",
        careful.usage
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_overflow_is_a_trap_that_recycles_the_instance() {
    let mut t = prepare(
        r#"
        [service]
        name = "stack"
        [roles.Deep]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 100
        [roles.Deep.settings]
        mode = "stackoverflow"
        "#,
    );
    t.start().await;
    let s = wait_for(Duration::from_secs(30), "a recycle", || {
        let s = t.status_of("Deep");
        (s.restarts >= 1).then_some(s)
    })
    .await;
    let reason = s.last_recycle_reason.unwrap();
    assert!(reason.contains("stack overflow"), "{reason}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cannot_leave_its_local_resource() {
    let mut t = prepare(
        r#"
        [service]
        name = "escape"
        [roles.Escaper]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Escaper.settings]
        mode = "escape"
        [[roles.Escaper.local-resources]]
        name = "scratch"
        size-mb = 1
        "#,
    );
    t.start().await;
    let report = wait_for(Duration::from_secs(30), "the escape report", || {
        t.blob_text("escape", "Escaper_IN_0")
    })
    .await;
    let line = |k: &str| {
        report
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap_or_else(|| panic!("{k}: {report}"))
    };
    for attempt in [
        "dotdot ",
        "absolute ",
        "symlink-read ",
        "relative-symlink-read ",
    ] {
        assert!(line(attempt).contains("refused"), "{report}");
    }
    assert_eq!(line("inside "), "inside READ 4 bytes", "{report}");
    // Nothing was created outside the instance's directory.
    let outside = t.dir.path().join("local/Escaper/Escaper_IN_0");
    let names: Vec<_> = std::fs::read_dir(outside.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"ok.txt".to_string()), "{names:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_disk_quotas_hold_on_write_overwrite_truncate_rename_and_delete() {
    let mut t = prepare(
        r#"
        [service]
        name = "disk"
        [roles.Script]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Script.settings]
        mode = "disk"
        [[roles.Script.local-resources]]
        name = "scratch"
        size-mb = 1
        [roles.Filler]
        kind = "worker"
        component = "{guest:testbed}"
        [roles.Filler.settings]
        mode = "diskfill"
        [[roles.Filler.local-resources]]
        name = "scratch"
        size-mb = 2
        "#,
    );
    t.start().await;
    let report = wait_for(Duration::from_secs(60), "the disk script's report", || {
        t.blob_text("disk", "Script_IN_0")
    })
    .await;
    let expected = [
        ("write a 600k", true),
        ("write b 600k", false),
        ("remove b", true),
        ("overwrite a 900k", true),
        ("write c 200k", false),
        ("truncate a 100k", true),
        ("write c 200k again", true),
        ("grow c to 2m", false),
        ("rename c over a", true),
        ("write d 800k", true),
        ("write e 100k", false),
        ("remove d", true),
        ("write e 100k again", true),
        ("hard link e", false),
    ];
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{report}");
    for ((label, ok), line) in expected.iter().zip(&lines) {
        let want = if *ok {
            format!("{label}: ok")
        } else {
            format!("{label}: refused")
        };
        assert!(
            line.starts_with(&want),
            "expected {want:?}, got {line:?}\n{report}"
        );
    }
    // What a Rust guest observes: std::fs writes fail with EIO (29), set_len with ENOSPC (51).
    assert!(lines[1].ends_with("(os error 29)"), "{report}");
    assert!(lines[7].ends_with("(os error 51)"), "{report}");
    let script_dir = t.dir.path().join("local/Script/Script_IN_0/scratch");
    let on_disk = rolehost_runtime::capability::local_disk::du(&script_dir).unwrap();
    assert_eq!(
        on_disk,
        300 * 1024 + 2 * rolehost_runtime::capability::local_disk::ENTRY_BYTES,
        "a (200 KiB) and e (100 KiB) are left, two entries"
    );
    let script = wait_for(Duration::from_secs(5), "the usage to settle", || {
        let s = t.status_of("Script");
        (s.usage.disk_bytes == on_disk).then_some(s)
    })
    .await;
    assert_eq!(script.usage.disk_quota, 1 << 20);

    let fill = wait_for(Duration::from_secs(60), "the filler's report", || {
        t.blob_text("diskfill", "Filler_IN_0")
    })
    .await;
    let written: u64 = fill
        .strip_prefix("wrote ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{fill}"));
    assert!(
        ((2 << 20) - (128 << 10)..=2 << 20).contains(&written),
        "{fill}"
    );
    let fill_dir = t.dir.path().join("local/Filler/Filler_IN_0/scratch");
    assert!(rolehost_runtime::capability::local_disk::du(&fill_dir).unwrap() <= 2 << 20);
    let filler = t.status_of("Filler");
    assert_eq!(
        (filler.phase, filler.restarts),
        (Phase::Running, 0),
        "a full disk is not a crash"
    );
    t.shutdown().await;
    assert!(!script_dir.exists() && !fill_dir.exists(), "wiped on stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_resources_are_wiped_on_recycle_unless_the_role_keeps_them() {
    let mut t = prepare(
        r#"
        [service]
        name = "recycle"
        [roles.Clean]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 50
        [roles.Clean.settings]
        mode = "marker"
        [[roles.Clean.local-resources]]
        name = "scratch"
        size-mb = 1
        [roles.Keep]
        kind = "worker"
        component = "{guest:testbed}"
        recycle-backoff-ms = 50
        [roles.Keep.settings]
        mode = "marker"
        [[roles.Keep.local-resources]]
        name = "scratch"
        size-mb = 1
        clean-on-recycle = false
        "#,
    );
    t.start().await;
    wait_for(Duration::from_secs(30), "two recycles each", || {
        t.service()
            .status()
            .iter()
            .all(|s| s.restarts >= 2)
            .then_some(())
    })
    .await;
    let exists = |name: &str| t.blob_text("marker", name).is_some();
    assert!(
        exists("Clean_IN_0-false") && !exists("Clean_IN_0-true"),
        "wiped at each recycle"
    );
    assert!(
        exists("Keep_IN_0-false") && exists("Keep_IN_0-true"),
        "kept across recycles"
    );
    t.shutdown().await;
    assert!(
        !t.dir.path().join("local/Keep/Keep_IN_0").exists(),
        "wiped when it stops"
    );
}
