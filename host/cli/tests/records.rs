//! Crash consistency of the host's own records: a real `rolehost serve` is killed (SIGKILL, at
//! a named crash point: `ROLEHOST_CRASH_AT`) in the middle of deploy, upgrade, scale, freeze
//! and delete, then started again. After each restart exactly one deployment runs, whole; no
//! frozen instance points at a missing snapshot and each thaws; a delete is finished.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Host, service_dir};

/// A service whose counter keeps its count in memory (freezable), fed by a producer.
fn icy(counters: u32, version: u32) -> String {
    format!(
        "[service]\nname = \"icy\"\n\
         [roles.Producer]\nkind = \"worker\"\ncomponent = \"{{guest:producer}}\"\n\
         [roles.Producer.settings]\ninterval-ms = 100\n\
         [roles.Counter]\nkind = \"worker\"\ncomponent = \"{{guest:testbed}}\"\n\
         instances = {counters}\ngrace-period-secs = 2\n\
         [roles.Counter.settings]\nmode = \"memcount\"\nqueue = \"increments\"\nversion = \"{version}\"\n"
    )
}

struct Scene {
    /// Where hosts keep their data; each scenario's shares one compile cache.
    root: PathBuf,
    cache: PathBuf,
}

impl Scene {
    fn host_dir(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&self.cache, dir.join("cache")).unwrap();
        dir
    }

    fn service(&self, name: &str, counters: u32, version: u32) -> String {
        service_dir(&self.root.join(name), &icy(counters, version))
    }
}

/// The service's state, its deployment id and its running Counter instances.
fn icy_state(host: &Host) -> Option<(String, String, usize)> {
    let status = host.status();
    let s = status
        .as_array()?
        .iter()
        .find(|s| s["name"] == "icy")?
        .clone();
    let counters = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["role"] == "Counter" && i["state"] != "frozen")
        .count();
    Some((
        s["state"].as_str()?.to_string(),
        s["deployment_id"].as_str()?.to_string(),
        counters,
    ))
}

/// Waits until `n` Counter instances run.
fn wait_counters(host: &Host, n: usize) -> (String, String, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = icy_state(host);
        if let Some(s) = &state
            && s.2 == n
        {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "not {n} counters: {state:?}\n{}",
            host.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a host armed to die at `point`, runs `before` (which must not reach it), then
/// `op` (which must), checks that the host died of SIGKILL there, and starts it again.
fn crash_at(
    scene: &Scene,
    name: &str,
    point: &str,
    before: impl FnOnce(&Host),
    op: impl FnOnce(&Host),
) -> Host {
    let dir = scene.host_dir(name);
    let mut host = Host::start_env(&dir, &[], &[("ROLEHOST_CRASH_AT", point)]);
    before(&host);
    op(&host);
    let status = host
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{point}: the host did not die there\n{}", host.log()));
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: {status:?}\n{}",
        host.log()
    );
    assert!(host.log().contains(&format!("crash point {point}")) || point.contains(':'));
    drop(host);
    Host::start(&dir)
}

fn scene(dir: &Path) -> Scene {
    let cache = dir.join("shared-cache");
    std::fs::create_dir_all(&cache).unwrap();
    Scene {
        root: dir.to_path_buf(),
        cache,
    }
}

#[test]
fn after_kill_9_during_deploy_and_upgrade_one_deployment_runs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let scene = scene(dir.path());
    let v1 = scene.service("v1", 2, 1);
    let v2 = scene.service("v2", 3, 2);

    // Killed right after the intent of a first deploy: it comes back deployed.
    let host = crash_at(
        &scene,
        "first",
        "deploy.recorded",
        |_| {},
        |h| {
            h.cli(&["deploy", &v1]);
        },
    );
    let (state, v1_id, _) = wait_counters(&host, 2);
    assert_eq!(state, "running");
    drop(host);

    // Killed at each point of an upgrade: the host comes back on the new deployment, whole
    // (never the old one with some new instances), with its instance counts.
    for point in ["deploy.recorded:2", "upgrade.domain", "deploy.done:2"] {
        let name = point.replace([':', '.'], "-");
        let host = crash_at(
            &scene,
            &name,
            point,
            |h| {
                h.ok(&["deploy", &v1]);
                wait_counters(h, 2);
            },
            |h| {
                h.cli(&["deploy", &v2]);
            },
        );
        let (state, id, _) = wait_counters(&host, 3);
        assert_eq!(state, "running", "{point}");
        assert_ne!(
            id,
            v1_id,
            "{point}: the old deployment runs\n{}",
            host.log()
        );
        // And it is the deployment a client deploying v2 again sees as current: nothing to do.
        host.ok(&["deploy", &v2]);
        assert_eq!(wait_counters(&host, 3).1, id, "{point}");
    }
}

#[test]
fn after_kill_9_during_scale_freeze_and_delete_the_records_hold() {
    let dir = tempfile::tempdir().unwrap();
    let scene = scene(dir.path());
    let v1 = scene.service("v1", 2, 1);
    let deployed = |h: &Host| {
        h.ok(&["deploy", &v1]);
        wait_counters(h, 2);
    };

    // Scale: the new count, after a restart.
    let host = crash_at(&scene, "scale", "scale.recorded", deployed, |h| {
        h.cli(&["scale", "icy", "Counter", "4"]);
    });
    wait_counters(&host, 4);
    drop(host);

    // Freeze, killed once the snapshot is kept but before the record says so: the instance
    // runs afresh (nothing points at a snapshot), and its snapshot can still be thawed.
    let host = crash_at(&scene, "stored", "freeze.stored", deployed, |h| {
        h.cli(&["freeze", "icy", "Counter_IN_0"]);
    });
    wait_counters(&host, 2);
    drop(host);

    // Freeze, killed once recorded: the instance stays frozen, its snapshot is there, and it
    // thaws.
    let host = crash_at(&scene, "recorded", "freeze.recorded", deployed, |h| {
        h.cli(&["freeze", "icy", "Counter_IN_0"]);
    });
    wait_counters(&host, 1);
    let status = host.status();
    let frozen: Vec<serde_json::Value> = status[0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "frozen")
        .cloned()
        .collect();
    assert_eq!(frozen.len(), 1, "{status}");
    assert_eq!(frozen[0]["id"], "Counter_IN_0");
    let snapshot = frozen[0]["snapshot"]
        .as_str()
        .expect("the frozen instance's snapshot");
    let out = host.ok(&["thaw", snapshot]);
    assert!(out.contains("Counter_IN_0"), "{out}");
    wait_counters(&host, 2);
    drop(host);

    // Delete, killed after its intent and after its storage steps: the restarted host
    // finishes it (the service is gone and its kept storage is remembered, so a new service
    // of the name must adopt it).
    for point in ["delete.recorded", "delete.storage"] {
        let name = point.replace('.', "-");
        let host = crash_at(&scene, &name, point, deployed, |h| {
            h.cli(&["delete", "icy"]);
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while icy_state(&host).is_some() {
            assert!(
                Instant::now() < deadline,
                "{point}: not deleted\n{}",
                host.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !host.dir.join("services").join("icy.json").exists(),
            "{point}"
        );
        let again = host.cli(&["deploy", &v1]);
        assert!(
            !again.status.success(),
            "{point}: the kept storage was inherited silently"
        );
        assert!(
            String::from_utf8_lossy(&again.stderr).contains("--adopt-storage"),
            "{point}"
        );
    }
}
