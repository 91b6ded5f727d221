//! `rolehost verify` on its examples: the compare-and-swap counter breaks in exactly the
//! cases at-least-once delivery predicts, the idempotent one in none; runs are reproducible
//! from their seed, and a failing case re-run by its id fails again the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use rolehost_runtime::manifest::Manifest;
use rolehost_runtime::verify::{self, Case, Scenario, Verifier};

/// The example under `guests/verify/<name>`, its roles built by the test harness.
async fn verifier(name: &str, guest: &str) -> Verifier {
    let dir = rolehost_tests::repo_root().join("guests/verify").join(name);
    let manifest = Manifest::load(&dir).expect("manifest");
    let scenario = Scenario::load(&dir.join("verify.toml")).expect("scenario");
    let components: BTreeMap<String, PathBuf> = manifest
        .roles
        .keys()
        .map(|role| (role.clone(), rolehost_tests::guest(guest)))
        .collect();
    // The counter's scenario also has a checker of its own.
    let checker = scenario
        .checker
        .as_ref()
        .map(|_| rolehost_tests::guest("counter_checker"));
    Verifier::new(&manifest, &components, scenario, checker.as_deref())
        .await
        .expect("verifier")
}

/// Every depth-1 case; the fault-free run must pass.
fn depth_1(v: &Verifier) -> verify::Report {
    let report = tokio::task::block_in_place(|| verify::enumerate(v, 1, 10_000, &|_, _| {}))
        .expect("enumeration");
    assert!(
        report.baseline.verdict.passed(),
        "{:?}",
        report.baseline.verdict
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cas_counter_breaks_in_exactly_the_expected_cases() {
    let v = verifier("counter", "counter").await;
    let report = depth_1(&v);
    // What at-least-once predicts, per message: the count is written twice when the write's
    // answer is lost or the instance crashes after it (the handler fails, the message comes
    // back), when it crashes before the delete, or when the visibility timeout expires while
    // it works (another instance gets the message). A lost delete is retried by the SDK.
    let mut expected = BTreeSet::new();
    for t in &report.baseline.trace {
        match (t.operation.as_str(), t.outcome.as_str()) {
            ("blob.put-blob", "ok") => {
                expected.insert(format!("c{}-lose-response", t.index));
                expected.insert(format!("c{}-crash-after", t.index));
            }
            ("queue.delete-message", "ok") => {
                expected.insert(format!("c{}-crash-before", t.index));
            }
            ("queue.get-messages", o) if o != "ok (0)" => {
                expected.insert(format!("c{}-expire-visibility", t.index));
            }
            _ => {}
        }
    }
    assert_eq!(expected.len(), 40, "10 messages, 4 windows each");
    let failed: BTreeSet<String> = report.failures().map(|r| r.id.clone()).collect();
    assert_eq!(failed, expected);
    // Each failure says what went wrong: the counter went past 10.
    for r in report.failures() {
        let verify::Verdict::Fail(messages) = &r.verdict else {
            panic!("{}: {:?}", r.id, r.verdict);
        };
        assert!(
            messages[0].contains("blob counters/total is \"11\""),
            "{}: {messages:?}",
            r.id
        );
        assert_eq!(
            r.faulted().count(),
            1,
            "{}: the trace shows its fault",
            r.id
        );
    }
    assert!(
        report.cases.len() > 200,
        "every call with every fault: {}",
        report.cases.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idempotent_counter_passes_every_case() {
    let v = verifier("idempotent-counter", "idempotent_counter").await;
    let report = depth_1(&v);
    let failed: Vec<&str> = report.failures().map(|r| r.id.as_str()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(report.cases.len() > 200, "{}", report.cases.len());
    // The faults did happen: some runs saw a message again, and counted it once.
    assert!(
        report
            .cases
            .iter()
            .any(|r| r.trace.iter().any(|t| t.fault == "expire-visibility"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_run_and_a_failing_case_fails_again_by_its_id() {
    let v = verifier("counter", "counter").await;
    let a = tokio::task::block_in_place(|| v.run(&Case::default())).unwrap();
    let b = tokio::task::block_in_place(|| v.run(&Case::default())).unwrap();
    assert_eq!(a.trace, b.trace, "call for call");
    assert!(a.trace.len() > 40);
    // A failing case, by its id, twice: the same failure and the same trace.
    let put = a
        .trace
        .iter()
        .find(|t| t.operation == "blob.put-blob")
        .unwrap()
        .index;
    let id = format!("c{put}-crash-after");
    let case = Case::parse(&id).unwrap();
    let first = tokio::task::block_in_place(|| v.run(&case)).unwrap();
    let again = tokio::task::block_in_place(|| v.run(&case)).unwrap();
    assert!(!first.verdict.passed(), "{id} breaks the counter");
    assert_eq!(first, again);
    assert_eq!(first.id, id);
    let faulted: Vec<_> = first.faulted().collect();
    assert_eq!(faulted.len(), 1);
    assert_eq!(faulted[0].operation, "blob.put-blob");
    assert!(
        faulted[0].outcome.contains("crashed after"),
        "{}",
        faulted[0].outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn romeo_and_juliet_die_when_the_message_is_lost_unless_juliet_waits_for_an_ack() {
    let naive = verifier("romeo-juliet-naive", "romeo_juliet").await;
    let report = depth_1(&naive);
    let lost_message = report
        .failures()
        .find(|r| {
            r.faulted()
                .any(|t| t.operation == "queue.put-message" && t.fault == "lose-request")
        })
        .expect("the lost message is found");
    let verify::Verdict::Fail(messages) = &lost_message.verdict else {
        panic!("{:?}", lost_message.verdict)
    };
    assert!(
        messages
            .iter()
            .any(|m| m.contains("verona/romeo is \"dead\"")),
        "{messages:?}"
    );

    let careful = verifier("romeo-juliet-acknowledged", "romeo_juliet").await;
    let report = depth_1(&careful);
    let failed: Vec<&str> = report.failures().map(|r| r.id.as_str()).collect();
    assert!(failed.is_empty(), "{failed:?}");
}
