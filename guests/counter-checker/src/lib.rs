//! A `rolehost verify` checker for the counter example: a worker-role component whose `run`
//! passes (`Ok`) when blob `counters/total` holds the `expected` setting, and otherwise
//! fails with a message saying what it found. Verify runs it once at the end of every run.

use rolehost_sdk::{Container, ErrorCode, WorkerRole, env};

struct Checker;

impl WorkerRole for Checker {
    fn on_start() -> Result<Self, String> {
        Ok(Checker)
    }

    fn run(&mut self) -> Result<(), String> {
        let expected: u64 = env::setting("expected")
            .and_then(|v| v.parse().ok())
            .ok_or("the checker needs an `expected` setting (a number)")?;
        let found = match Container::new("counters").blob("total").get() {
            Ok((bytes, _)) => String::from_utf8_lossy(&bytes).trim().parse::<u64>().ok(),
            Err(e)
                if e.code == ErrorCode::BlobNotFound || e.code == ErrorCode::ContainerNotFound =>
            {
                Some(0)
            }
            Err(e) => return Err(format!("could not read the counter: {e}")),
        };
        match found {
            Some(n) if n == expected => Ok(()),
            Some(n) if n > expected => Err(format!(
                "the counter is {n}, expected {expected}: {} messages were counted twice",
                n - expected
            )),
            Some(n) => Err(format!(
                "the counter is {n}, expected {expected}: increments were lost"
            )),
            None => Err("the counter blob does not hold a number".into()),
        }
    }
}

rolehost_sdk::worker!(Checker);
