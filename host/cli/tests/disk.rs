//! The host's disk headroom against the real `rolehost serve`: a tenant filling the disk is
//! refused before the headroom is taken, and can delete and write again. In a test binary of
//! its own: the free space it measures must not move with other tests' files.

mod common;

use common::{Host, service_dir};

#[test]
fn the_hosts_disk_headroom_is_kept_free_and_deletes_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let free_mb = rolehost_storage::quota::free_bytes(dir.path()).unwrap() >> 20;
    // Room for 64 MiB more than the host itself writes at start.
    let headroom = (free_mb.saturating_sub(64)).to_string();
    let host = Host::start_with(
        &dir.path().join("host"),
        &["--storage-headroom-mb".as_ref(), headroom.as_ref()],
    );
    host.ok(&[
        "deploy",
        &service_dir(
            &dir.path().join("f"),
            "[service]\nname = \"filler\"\n[roles.Attacker]\nkind = \"worker\"\n\
             component = \"{guest:hostile}\"\ngrace-period-secs = 2\n\
             [roles.Attacker.settings]\nmode = \"storage-fill\"\nblob-kib = 1024\n\
             max-blobs = 1000\nmax-messages = 10\n",
        ),
    ]);
    let out = host.wait_log("filler", "report messages:");
    let line = |probe: &str| {
        let needle = format!("report {probe}: ");
        out.lines()
            .find_map(|l| l.split_once(&needle).map(|(_, v)| v.to_string()))
            .unwrap_or_else(|| panic!("no report of {probe}:\n{out}"))
    };
    let blobs = line("blobs");
    let (n, code) = blobs.split_once(" refused ").unwrap();
    let n: u64 = n.parse().unwrap();
    assert_eq!(code, "ServerBusy", "{out}");
    assert!(
        (1..=64).contains(&n),
        "{n} blobs of 1 MiB in 64 MiB of room"
    );
    assert!(line("blob-refusal").contains("nearly full"), "{out}");
    assert_eq!(line("delete"), "ok", "{out}");
    assert_eq!(
        line("after-delete"),
        "ok",
        "what a delete frees is room again: {out}"
    );
    // The host goes on: its API answers, and the service stops.
    host.ok(&["stop", "filler"]);
    assert!(host.status().to_string().contains("stopped"));
}
