//! No parser of untrusted input in the runtime panics: snapshot files (frame and header, with
//! any key), manifests, and HTTP-ish limits read from them, over thousands of generated
//! inputs each. Inputs are mutations of valid ones as well as arbitrary bytes, so the
//! generators reach past the first check.

use std::path::Path;

use proptest::prelude::*;
use rolehost_runtime::freeze::{self, SnapshotHeader, SnapshotKey};
use rolehost_runtime::manifest::Manifest;
use rolehost_runtime::verify::Scenario;

/// A scenario file as `rolehost verify` reads it (`verify.toml`).
const SCENARIO: &str = "seed = 7\n[roles]\nCounter = 2\n\
    [[setup.messages]]\nqueue = \"increments\"\nbody = \"total\"\ncount = 10\n\
    [[check]]\nentity = \"counts/counter/total\"\nproperty = \"count\"\nequals = \"10\"\n\
    [[check]]\nqueue = \"increments\"\ncount = 0\n[end]\nidle-secs = 5\nlimit-secs = 600\n";

fn valid_snapshot() -> Vec<u8> {
    let header = SnapshotHeader {
        service: "svc".into(),
        role: "R".into(),
        instance_id: "R_IN_0".into(),
        deployment_id: "d1".into(),
        vm_size: "Small".into(),
        settings: vec![("k".into(), "v".into())],
        frozen_at_micros: 1,
        monotonic_ns: 2,
        raw_len: 0,
        payload_len: 0,
        payload_blake3: String::new(),
    };
    freeze::encode(
        header,
        &[1, 2, 3, 0, 0, 0, 9],
        &SnapshotKey::from_bytes([1; 32]),
    )
    .unwrap()
}

const MANIFEST: &str = "[service]\nname = \"demo\"\n[roles.Web]\nkind = \"web\"\n\
    component = \"w.wasm\"\ninstances = 2\ngrace-period-secs = 5\nmax-header-bytes = 65536\n\
    idle-timeout-ms = 1000\n[[roles.Web.endpoints]]\nport = 8080\n\
    [[roles.Web.local-resources]]\nname = \"scratch\"\nsize-mb = 1\n\
    [roles.Web.settings]\nmode = \"x\"\n[roles.Web.limits]\ncpu-cores = 0.5\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Bytes flipped, cut or inserted anywhere in a real snapshot file: checked, decoded
    /// and compiled-for-size checks answer an error or (only the untouched file) success.
    #[test]
    fn a_damaged_snapshot_file_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut file = valid_snapshot();
        for (at, byte, kind) in edits {
            let i = at.index(file.len().max(1));
            match kind {
                0 => file[i] = byte,
                1 => file.insert(i, byte),
                _ => { file.remove(i.min(file.len() - 1)); }
            }
            if file.is_empty() { break; }
        }
        let file = &file[..cut.index(file.len() + 1)];
        let key = SnapshotKey::from_bytes([1; 32]);
        let _ = freeze::header(file);
        let _ = freeze::check(file, &key);
        let _ = freeze::decode(file, &key, 1 << 20);
    }

    #[test]
    fn arbitrary_bytes_are_not_a_snapshot(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let key = SnapshotKey::from_bytes([1; 32]);
        let mut framed = b"RHSNAP04".to_vec();
        framed.extend_from_slice(&bytes);
        for file in [&bytes[..], &framed[..]] {
            prop_assert!(freeze::decode(file, &key, 1 << 20).is_err());
        }
    }

    /// A manifest with characters changed anywhere, or with any key set to any number.
    #[test]
    fn a_mutated_manifest_never_panics(
        at in any::<prop::sample::Index>(),
        with in any::<char>(),
        number in any::<i64>(),
        key in prop::sample::select(vec![
            "instances", "grace-period-secs", "recycle-backoff-ms", "request-timeout-ms",
            "max-queued-requests", "max-body-bytes", "max-header-bytes", "max-connections",
            "header-timeout-ms", "idle-timeout-ms", "handshake-timeout-ms", "idle-freeze-ms",
        ]),
        quota in prop::sample::select(vec![
            "max-mb", "max-containers", "max-blobs", "max-queues", "max-messages",
            "max-tables", "max-entities",
        ]),
    ) {
        let mut text: Vec<char> = MANIFEST.chars().collect();
        let i = at.index(text.len());
        text[i] = with;
        let mutated: String = text.into_iter().collect();
        let _ = Manifest::parse(&mutated, Path::new("/svc/rolehost.toml"));
        let keyed = MANIFEST.replace("instances = 2", &format!("instances = 2\n{key} = {number}"));
        let _ = Manifest::parse(&keyed, Path::new("/svc/rolehost.toml"));
        let quota = format!("{MANIFEST}[storage.quota]\n{quota} = {number}\n");
        if let Ok(m) = Manifest::parse(&quota, Path::new("/svc/rolehost.toml")) {
            let _ = m.storage.quota.apply(rolehost_storage::AccountQuota::HOST_DEFAULT);
        }
    }

    /// A scenario file (`verify.toml`) with characters changed anywhere, or with any of its
    /// numbers set to any value.
    #[test]
    fn a_mutated_scenario_never_panics(
        at in any::<prop::sample::Index>(),
        with in any::<char>(),
        number in any::<i64>(),
        which in prop::sample::select(vec!["seed = 7", "Counter = 2", "count = 10", "count = 0", "idle-secs = 5", "limit-secs = 600"]),
    ) {
        let mut text: Vec<char> = SCENARIO.chars().collect();
        let i = at.index(text.len());
        text[i] = with;
        let mutated: String = text.into_iter().collect();
        let _ = Scenario::parse(&mutated, Path::new("/svc/verify.toml"));
        let field = which.split(" = ").next().unwrap_or("seed");
        let numbered = SCENARIO.replace(which, &format!("{field} = {number}"));
        let _ = Scenario::parse(&numbered, Path::new("/svc/verify.toml"));
    }
}

/// The value that once panicked a stop (a grace period of `i64::MAX` seconds) is refused,
/// naming the key.
#[test]
fn a_grace_period_past_its_bound_is_refused_by_name() {
    let text = MANIFEST.replace(
        "grace-period-secs = 5",
        "grace-period-secs = 9223372036854775807",
    );
    let e = Manifest::parse(&text, Path::new("/svc/rolehost.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("grace-period-secs") && e.contains("outside 0..=3600"),
        "{e}"
    );
}

/// The scenario the property test mutates is a valid one, and a duration or count past its
/// bound is refused by name (a limit of `u64::MAX` seconds overflowed the simulation's clock).
#[test]
fn a_scenario_past_its_bounds_is_refused_by_name() {
    Scenario::parse(SCENARIO, Path::new("/svc/verify.toml")).unwrap();
    for (from, to, key) in [
        (
            "limit-secs = 600",
            "limit-secs = 18446744073709551615",
            "end.limit-secs",
        ),
        ("Counter = 2", "Counter = 100000", "roles.Counter"),
        (
            "count = 10",
            "count = 4000000000",
            "setup.messages[0].count",
        ),
    ] {
        let e = Scenario::parse(&SCENARIO.replace(from, to), Path::new("/svc/verify.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains("outside"), "{e}");
    }
}
