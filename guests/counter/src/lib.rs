//! Counter worker: adds 1 to a counter blob per message, with an ETag compare-and-swap.
//!
//! The compare-and-swap means no increment is lost to a race between instances: a writer whose
//! read went stale gets `ConditionNotMet` and tries again. It is *not* idempotent: if a message
//! is handled twice (its delete was lost, or the instance crashed between the write and the
//! delete), the counter counts it twice. `rolehost verify` finds exactly those cases.
//!
//! Settings: `queue` (default `increments`), `container` (default `counters`). The message body
//! names the counter blob (default `total`).

use rolehost_sdk::{Conditions, Container, ErrorCode, QueueProcessor, WorkerRole, env};

struct Counter {
    queue: String,
    container: Container,
}

impl WorkerRole for Counter {
    fn on_start() -> Result<Self, String> {
        let queue = env::setting("queue").unwrap_or_else(|| "increments".into());
        let container =
            Container::new(env::setting("container").unwrap_or_else(|| "counters".into()));
        container
            .create_if_not_exists()
            .map_err(|e| e.to_string())?;
        Ok(Counter { queue, container })
    }

    fn run(&mut self) -> Result<(), String> {
        let container = &self.container;
        let stats = QueueProcessor::new(&self.queue)
            .run(|job| {
                let name = match job.body_str().trim() {
                    "" => "total".to_string(),
                    name => name.to_string(),
                };
                let value = increment(container, &name)?;
                env::info(&format!("counter {name} is now {value}"));
                Ok::<(), rolehost_sdk::Error>(())
            })
            .map_err(|e| e.to_string())?;
        env::info(&format!("stopping: {} increments", stats.processed));
        Ok(())
    }
}

/// Adds 1 to the counter blob `name`; returns the new value.
fn increment(container: &Container, name: &str) -> rolehost_sdk::Result<u64> {
    let blob = container.blob(name);
    loop {
        let (value, conditions) = match blob.get() {
            Ok((bytes, props)) => {
                let value = String::from_utf8_lossy(&bytes)
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
                (value, Conditions::if_match(props.etag))
            }
            Err(e) if e.code == ErrorCode::BlobNotFound => (0, Conditions::create_only()),
            Err(e) => return Err(e),
        };
        let next = value + 1;
        let options = blob
            .put_options()
            .conditions(conditions)
            .content_type("text/plain");
        match blob.put_with(next.to_string().as_bytes(), &options) {
            Ok(_) => return Ok(next),
            // Another instance wrote first: read again.
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
}

rolehost_sdk::worker!(Counter);
