//! The +1 counter made idempotent: each message's id is recorded in the same atomic write as
//! the count, so a message handled twice is counted once.
//!
//! The counter is an entity of table `counts` (PartitionKey `counter`, RowKey = the counter's
//! name, property `count`). Each increment is one entity group transaction of two operations:
//! insert the marker `msg-<message id>` and update the count (If-Match its ETag). If the
//! marker is there already, the transaction fails at index 0 and nothing changes: this
//! message was counted before (its delete was lost, or the instance crashed before it), so
//! the handler just lets it be deleted. A stale ETag fails it at index 1: read and try again.
//!
//! Settings: `queue` (default `increments`). The message body names the counter (`total`).

use rolehost_sdk::table::{IfMatch, Operation, UpdateEntity, UpdateMode, to_entity};
use rolehost_sdk::{ErrorCode, QueueProcessor, Table, WorkerRole, env};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Count {
    count: i64,
}

#[derive(Serialize)]
struct Marker {}

const PARTITION: &str = "counter";

struct Counter {
    queue: String,
    table: Table,
}

impl WorkerRole for Counter {
    fn on_start() -> Result<Self, String> {
        let table = Table::new("counts");
        table.create_if_not_exists().map_err(|e| e.to_string())?;
        Ok(Counter {
            queue: env::setting("queue").unwrap_or_else(|| "increments".into()),
            table,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        let table = &self.table;
        let stats = QueueProcessor::new(&self.queue)
            .run(|job| {
                let name = match job.body_str().trim() {
                    "" => "total".to_string(),
                    name => name.to_string(),
                };
                match increment(table, &name, job.id())? {
                    Some(value) => env::info(&format!("counter {name} is now {value}")),
                    None => env::info(&format!("message {} was counted before", job.id())),
                }
                Ok::<(), rolehost_sdk::Error>(())
            })
            .map_err(|e| e.to_string())?;
        env::info(&format!("stopping: {} messages", stats.processed));
        Ok(())
    }
}

/// Adds 1 to counter `name` for message `id`, unless that message was counted already
/// (`None`); returns the new value.
fn increment(table: &Table, name: &str, id: &str) -> rolehost_sdk::Result<Option<i64>> {
    let marker = to_entity(PARTITION, &format!("msg-{id}"), &Marker {})?;
    loop {
        let current = table.get::<Count>(PARTITION, name)?;
        let (next, count_op) = match &current {
            Some(stored) => {
                let next = stored.value.count + 1;
                let entity = to_entity(PARTITION, name, &Count { count: next })?;
                let op = Operation::Update(UpdateEntity {
                    entity,
                    mode: UpdateMode::Replace,
                    if_match: IfMatch::Etag(stored.etag.clone()),
                });
                (next, op)
            }
            None => {
                let entity = to_entity(PARTITION, name, &Count { count: 1 })?;
                (1, Operation::Insert(entity))
            }
        };
        match table.transaction(&[Operation::Insert(marker.clone()), count_op]) {
            Ok(_) => return Ok(Some(next)),
            // The marker is there: this message was counted, in the same write as its count.
            Err(e) if e.failed_index == Some(0) && e.code == ErrorCode::EntityAlreadyExists => {
                return Ok(None);
            }
            // Another instance counted first: read again.
            Err(e) if e.failed_index == Some(1) => continue,
            Err(e) => return Err(e),
        }
    }
}

rolehost_sdk::worker!(Counter);
