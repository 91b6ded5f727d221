//! No parser of untrusted input in the runtime panics: snapshot files (frame and header, with
//! any key), manifests, and HTTP-ish limits read from them, over thousands of generated
//! inputs each. Inputs are mutations of valid ones as well as arbitrary bytes, so the
//! generators reach past the first check.

use std::path::Path;

use proptest::prelude::*;
use rolehost_runtime::freeze::{self, SnapshotHeader, SnapshotKey};
use rolehost_runtime::manifest::Manifest;

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
    ) {
        let mut text: Vec<char> = MANIFEST.chars().collect();
        let i = at.index(text.len());
        text[i] = with;
        let mutated: String = text.into_iter().collect();
        let _ = Manifest::parse(&mutated, Path::new("/svc/rolehost.toml"));
        let keyed = MANIFEST.replace("instances = 2", &format!("instances = 2\n{key} = {number}"));
        let _ = Manifest::parse(&keyed, Path::new("/svc/rolehost.toml"));
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
