//! Shout worker (the web example's back end): for each message `<job id>\n<text>` on queue
//! `shout`, writes the text in capitals to blob `results/<job id>`. Idempotent: the same job
//! always writes the same result to the same name.

use rolehost_sdk::{Container, QueueProcessor, WorkerRole, env};

struct Shouter;

impl WorkerRole for Shouter {
    fn on_start() -> Result<Self, String> {
        Container::new("results")
            .create_if_not_exists()
            .map_err(|e| e.to_string())?;
        Ok(Shouter)
    }

    fn run(&mut self) -> Result<(), String> {
        let results = Container::new("results");
        QueueProcessor::new("shout")
            .run(|job| {
                let body = job.body_str();
                let (id, text) = body.split_once('\n').ok_or("a job is `<id>\\n<text>`")?;
                // A little work, so the page has something to wait for.
                env::wait_for_stop(std::time::Duration::from_millis(300));
                let shouted = format!("{}!", text.trim().to_uppercase());
                results
                    .blob(id)
                    .put(shouted.as_bytes())
                    .map_err(|e| e.to_string())?;
                env::info(&format!("job {id}: {shouted}"));
                Ok::<(), String>(())
            })
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

rolehost_sdk::worker!(Shouter);
