//! A running service changes shape: worker roles scale up and down in place, removed
//! instances stop gracefully, and every running instance is told the new topology.

use std::time::Duration;

use rolehost_runtime::worker::Phase;
use rolehost_tests::{prepare, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_scale_up_and_down_and_see_the_topology_change() {
    let mut t = prepare(
        r#"
        [service]
        name = "shape"
        [roles.Shape]
        kind = "worker"
        component = "{guest:testbed}"
        instances = 1
        grace-period-secs = 5
        [roles.Shape.settings]
        mode = "topology"
        "#,
    );
    t.start().await;
    let first = wait_for(Duration::from_secs(30), "the first instance's view", || {
        t.blob_text("topology", "Shape_IN_0")
    })
    .await;
    assert!(first.ends_with(": Shape=1"), "{first}");

    t.service().scale("Shape", 3).await.expect("scale up");
    // The running instance is told, and the new ones start with the new topology.
    for id in ["Shape_IN_0", "Shape_IN_1", "Shape_IN_2"] {
        wait_for(Duration::from_secs(30), "every instance sees 3", || {
            t.blob_text("topology", id)
                .filter(|s| s.ends_with("Shape=3"))
        })
        .await;
    }
    assert_eq!(t.service().status().len(), 3);
    assert!(
        t.service()
            .status()
            .iter()
            .all(|s| s.phase != Phase::Stopped)
    );

    t.service().scale("Shape", 1).await.expect("scale down");
    // Scaling down waits for the removed instances; they stopped gracefully (their run
    // returned on the stop request and wrote its marker).
    let names = t.blob_names("topology");
    assert!(
        names.contains(&"Shape_IN_1-stopped".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"Shape_IN_2-stopped".to_string()),
        "{names:?}"
    );
    assert!(
        !names.contains(&"Shape_IN_0-stopped".to_string()),
        "{names:?}"
    );
    let status = t.service().status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].instance_id, "Shape_IN_0");
    wait_for(Duration::from_secs(30), "the survivor sees 1 again", || {
        t.blob_text("topology", "Shape_IN_0")
            .filter(|s| s.ends_with("Shape=1"))
    })
    .await;

    // An unknown role is refused, naming the roles there are.
    let err = t.service().scale("Nope", 2).await.unwrap_err().to_string();
    assert!(
        err.contains("no role Nope") && err.contains("Shape"),
        "{err}"
    );
    t.shutdown().await;
}
