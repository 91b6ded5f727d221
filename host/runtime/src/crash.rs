//! Crash points: a test hook that kills the host at a named point of an operation, the way
//! `kill -9` would, so tests can check what the host's records say after every such point.
//!
//! `ROLEHOST_CRASH_AT=<point>` kills the process the first time it reaches `<point>`;
//! `<point>:<n>` the n-th time. Unset (always, outside tests), a point costs one load of a
//! `OnceLock` and a comparison.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The environment variable naming the point.
pub const CRASH_AT: &str = "ROLEHOST_CRASH_AT";

struct Armed {
    point: String,
    nth: u32,
    seen: AtomicU32,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(CRASH_AT).ok()?;
            let (point, nth) = match v.rsplit_once(':') {
                Some((p, n)) => (p.to_string(), n.parse().ok()?),
                None => (v, 1),
            };
            Some(Armed {
                point,
                nth,
                seen: AtomicU32::new(0),
            })
        })
        .as_ref()
}

/// Dies here, as `kill -9` would, if `ROLEHOST_CRASH_AT` names this point.
pub fn point(name: &str) {
    let Some(a) = armed() else { return };
    if a.point != name || a.seen.fetch_add(1, Ordering::SeqCst) + 1 != a.nth {
        return;
    }
    eprintln!("rolehost: crash point {name} reached; killing the process");
    // SAFETY: sends SIGKILL to this process; nothing runs after it.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort();
}
