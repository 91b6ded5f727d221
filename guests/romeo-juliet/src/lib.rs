//! "Romeo and Juliet", the window of vulnerability as a play in two roles (one component; the
//! `part` setting says which). Everything they know of each other goes through storage:
//! queue `to-romeo` and the blobs of container `verona`.
//!
//! Juliet sends Romeo "I'll take a drug which makes me look dead but I'm not really", takes
//! the drug (blob `verona/juliet` = `asleep`), sleeps `sleep-secs` (30), and wakes (`awake`),
//! or, finding Romeo dead, dies (`dead`). Romeo reads his messages and watches Juliet: if he
//! finds her asleep without having heard of the plan, he waits `grief-secs` (10) for news and
//! then dies (blob `verona/romeo` = `dead`); once she is awake he lives (`alive`).
//!
//! With `protocol = "naive"` Juliet sends the message once (no retry) and takes the drug at
//! once: lose the message and both die. With `protocol = "acknowledged"` she sends it until
//! Romeo acknowledges it (blob `verona/ack`, written after he knows) and only then takes the
//! drug: a lost message, a lost answer or a crash only delays the play.

use std::time::Duration;

use rolehost_sdk::retry::RetryPolicy;
use rolehost_sdk::{Container, ErrorCode, Queue, WorkerRole, env};

const PLAN: &str = "I'll take a drug which makes me look dead but I'm not really";

struct Play {
    part: String,
    acknowledged: bool,
    verona: Container,
    to_romeo: Queue,
}

fn secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        env::setting(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

impl Play {
    /// The text of blob `name` of Verona, if it is there (and readable now).
    fn read(&self, name: &str) -> Option<String> {
        match self.verona.blob(name).get() {
            Ok((bytes, _)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(_) => None,
        }
    }

    fn write(&self, name: &str, text: &str) -> Result<(), String> {
        self.verona
            .blob(name)
            .put(text.as_bytes())
            .map(|_| ())
            .map_err(|e| format!("writing {name}: {e}"))
    }

    fn juliet(&self) -> Result<(), String> {
        // A Juliet recycled mid-play picks up where she was.
        if self.read("juliet").is_none() {
            if self.acknowledged {
                // Send until Romeo acknowledges; only then take the drug.
                while self.read("ack").is_none() {
                    let _ = self.to_romeo.put(PLAN.as_bytes());
                    if env::wait_for_stop(Duration::from_secs(5)) {
                        return Ok(());
                    }
                }
            } else {
                // Send once, hope, and take the drug.
                let naive = self.to_romeo.clone().with_retry(RetryPolicy::NoRetry);
                let _ = naive.put(PLAN.as_bytes());
            }
            self.write("juliet", "asleep")?;
            env::info("Juliet takes the drug");
        }
        if self.read("juliet").as_deref() == Some("asleep") {
            if env::wait_for_stop(secs("sleep-secs", 30)) {
                return Ok(());
            }
            let woke_to = if self.read("romeo").as_deref() == Some("dead") {
                "dead"
            } else {
                "awake"
            };
            self.write("juliet", woke_to)?;
            env::info(&format!("Juliet wakes: {woke_to}"));
        }
        while !env::wait_for_stop(Duration::from_secs(3600)) {}
        Ok(())
    }

    fn romeo(&self) -> Result<(), String> {
        // What he knows survives his recycling only as far as storage keeps it.
        let mut knows = self.read("romeo-knows").is_some();
        let mut fate = self.read("romeo");
        let read_news = |knows: &mut bool, wait: Duration| -> Result<(), String> {
            let messages = match self.to_romeo.wait(1, Duration::from_secs(30), wait) {
                Ok(m) => m,
                Err(e) if e.code == ErrorCode::Timeout => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            for m in messages {
                if String::from_utf8_lossy(&m.body) == PLAN {
                    self.write("romeo-knows", "yes")?;
                    *knows = true;
                    if self.acknowledged {
                        self.write("ack", "yes")?;
                    }
                }
                // A stale receipt means another delivery owns it now: fine.
                let _ = self.to_romeo.delete(&m);
            }
            Ok(())
        };
        while !env::stop_requested() {
            read_news(&mut knows, Duration::from_secs(5))?;
            if fate.is_some() {
                continue;
            }
            match self.read("juliet").as_deref() {
                Some("asleep") if !knows => {
                    // She looks dead. Wait for news a while; then despair.
                    read_news(&mut knows, secs("grief-secs", 10))?;
                    if !knows {
                        self.write("romeo", "dead")?;
                        fate = Some("dead".into());
                        env::info("Romeo finds Juliet dead and dies");
                    }
                }
                Some("awake") => {
                    self.write("romeo", "alive")?;
                    fate = Some("alive".into());
                    env::info("Romeo and Juliet live");
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl WorkerRole for Play {
    fn on_start() -> Result<Self, String> {
        let verona = Container::new("verona");
        verona.create_if_not_exists().map_err(|e| e.to_string())?;
        let to_romeo = Queue::new("to-romeo");
        to_romeo.create_if_not_exists().map_err(|e| e.to_string())?;
        Ok(Play {
            part: env::setting("part").unwrap_or_default(),
            acknowledged: env::setting("protocol").as_deref() == Some("acknowledged"),
            verona,
            to_romeo,
        })
    }

    fn run(&mut self) -> Result<(), String> {
        match self.part.as_str() {
            "juliet" => self.juliet(),
            "romeo" => self.romeo(),
            other => Err(format!("part {other:?}: expected juliet or romeo")),
        }
    }
}

rolehost_sdk::worker!(Play);
