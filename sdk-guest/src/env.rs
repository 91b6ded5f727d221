//! The instance's environment: who it is, its settings, its local resources, the stop signal,
//! and a log that survives a freeze.
//!
//! ```no_run
//! use rolehost_sdk::env;
//!
//! let size = env::setting("thumbnail-size").and_then(|s| s.parse().ok()).unwrap_or(128u32);
//! env::info(&format!("{} starting, thumbnails of {size}px", env::instance_id()));
//! if let Some(scratch) = env::local_resource("scratch") {
//!     std::fs::write(format!("{}/hello.txt", scratch.path), b"hi").unwrap();
//! }
//! ```

use std::time::Duration;

use crate::bindings::rolehost::platform::environment as host;

pub use host::LocalResource;

/// The service's name (also its storage account's).
pub fn service_name() -> String {
    host::service_name()
}

/// The role's name.
pub fn role_name() -> String {
    host::role_name()
}

/// This instance's id, e.g. `WorkerRole1_IN_0` (for logs only: instances are interchangeable).
pub fn instance_id() -> String {
    host::instance_id()
}

/// The deployment's id.
pub fn deployment_id() -> String {
    host::deployment_id()
}

/// A configuration setting of this role, or `None` if it is not set.
pub fn setting(name: &str) -> Option<String> {
    host::configuration_setting(name)
}

/// All configuration settings of this role, sorted by name.
pub fn settings() -> Vec<(String, String)> {
    host::configuration_settings()
}

/// This instance's local resources: private directories with a size quota, wiped when the
/// instance stops. Use `std::fs` on `path`. Past the quota, `std::fs` writes fail with
/// `raw_os_error() == Some(29)` (EIO: wasi-libc reports every failed stream write so) and
/// `File::set_len` with 51 (ENOSPC); hard links are refused.
pub fn local_resources() -> Vec<LocalResource> {
    host::local_resources()
}

/// The local resource called `name`.
pub fn local_resource(name: &str) -> Option<LocalResource> {
    host::local_resources().into_iter().find(|r| r.name == name)
}

/// True once the host has asked this instance to stop; a worker's `run` should return.
pub fn stop_requested() -> bool {
    host::stop_requested()
}

/// Sleeps up to `timeout`, less if the host asks the instance to stop; returns
/// [`stop_requested`]. Use it instead of `std::thread::sleep` so a stop is never delayed.
pub fn wait_for_stop(timeout: Duration) -> bool {
    host::wait_for_stop(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

/// The snapshot this instance was thawed from, if it was: its memory is what it was when
/// frozen (counters, caches), its local resources are new and empty.
pub fn resumed_from() -> Option<String> {
    host::resumed_from()
}

/// The service's roles and instance counts, with a version that grows with every change.
pub use host::ServiceTopology as Topology;

/// The service's topology now: each role's instance count, and a version. The host changes
/// it when the service is scaled or upgraded, without restarting running instances; an
/// instance that cares (to re-partition work, say) remembers the version it last saw and
/// compares.
///
/// ```no_run
/// use rolehost_sdk::env;
///
/// let mut seen = env::topology().version;
/// // ... later, in the loop:
/// let now = env::topology();
/// if now.version != seen {
///     seen = now.version;
///     for r in &now.roles {
///         env::info(&format!("{} now has {} instances", r.role, r.instances));
///     }
/// }
/// ```
pub fn topology() -> Topology {
    host::topology()
}

/// How important a log line is.
pub use host::LogLevel;

/// Writes a line to the host's log, tagged with this instance. Freeze-safe, unlike `println!`.
pub fn log(level: LogLevel, message: &str) {
    host::log(level, message)
}

/// [`log`] at debug level.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message)
}

/// [`log`] at info level.
pub fn info(message: &str) {
    log(LogLevel::Info, message)
}

/// [`log`] at warn level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message)
}

/// [`log`] at error level.
pub fn error(message: &str) {
    log(LogLevel::Error, message)
}
