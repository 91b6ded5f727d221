//! The `fabric` suite: deploying a role of 100 instances to a host, scaling it to 1,000, and
//! the host's memory then. Measured in a child process, so the RSS is the host's own.

use std::time::{Duration, Instant};

use rolehost_runtime::fabric::{Deployment, Fabric, FabricOptions, digest};
use rolehost_runtime::worker::Phase;

use crate::line;

/// Waits until `fabric`'s only service has `n` instances, all running.
async fn all_running(fabric: &Fabric, n: usize) {
    loop {
        let running = fabric.running();
        if let Some(s) = running.first() {
            let st = s.status();
            if st.len() == n && st.iter().all(|i| i.phase == Phase::Running) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub(crate) fn fabric() {
    let component = crate::runtime::guest("testbed");
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("fabric-child")
        .arg(&component)
        .output()
        .expect("fabric child");
    assert!(
        out.status.success(),
        "fabric child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

/// The measurement, in a process of its own.
pub(crate) fn fabric_child(component: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let fabric = Fabric::open(
            FabricOptions {
                data_dir: dir.path().to_path_buf(),
                storage: None,
                storage_pool_size: None,
                snapshot_key: None,
                max_instances: 1100,
                account_quota: rolehost_storage::AccountQuota::HOST_DEFAULT,
                storage_headroom: rolehost_storage::DEFAULT_HEADROOM_BYTES,
                dev_storage: false,
            },
            &|_| {},
        )
        .await
        .expect("fabric");
        // The component as an upload leaves it.
        let bytes = std::fs::read(component).expect("component");
        let sha = digest(&bytes);
        let tmp = fabric.upload_path();
        std::fs::write(&tmp, &bytes).expect("upload");
        fabric.keep_file(&sha, &tmp, &sha).expect("keep");
        let deployment = Deployment {
            manifest: "[service]\nname = \"bench\"\n[roles.Idle]\nkind = \"worker\"\n\
                       component = \"testbed.wasm\"\ninstances = 100\n\
                       [roles.Idle.settings]\nmode = \"idle\"\n"
                .into(),
            components: [("Idle".to_string(), sha)].into(),
            tls: Default::default(),
        };
        let before = crate::proc_status_mib("VmRSS");
        // Deploy: compile (cold: the host's cache is empty), check, start 100 instances.
        let started = Instant::now();
        fabric.deploy(deployment, &|_| {}).await.expect("deploy");
        all_running(&fabric, 100).await;
        line(
            "deploy_100_s",
            format!("{:.3}", started.elapsed().as_secs_f64()),
        );
        let started = Instant::now();
        fabric.scale("bench", "Idle", 1000).await.expect("scale");
        all_running(&fabric, 1000).await;
        line(
            "scale_100_to_1000_s",
            format!("{:.3}", started.elapsed().as_secs_f64()),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = crate::proc_status_mib("VmRSS");
        line("rss_1000_mib", format!("{rss:.1}"));
        line("rss_before_deploy_mib", format!("{before:.1}"));
        let started = Instant::now();
        fabric.scale("bench", "Idle", 10).await.expect("scale down");
        line(
            "scale_1000_to_10_s",
            format!("{:.3}", started.elapsed().as_secs_f64()),
        );
        fabric.shutdown().await;
    });
}
