//! The `environment` capability: who the instance is, its settings and local resources, the
//! stop signal, and a log line that needs no stream handle in the guest.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::environment::{self as wit, Host, LogLevel};
use crate::guest_log::{LineBudget, LogHub};
use crate::stop::StopSignal;

/// Longest log line kept; the rest is cut (a guest cannot make the host hold a huge string).
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// What an instance is told about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The service (and its storage account).
    pub service: String,
    /// The role.
    pub role: String,
    /// The instance id, `<role>_IN_<n>`.
    pub instance_id: String,
    /// The deployment id.
    pub deployment_id: String,
    /// The role's configuration settings, sorted by name.
    pub settings: Vec<(String, String)>,
    /// The local resources.
    pub local_resources: Vec<LocalResourceInfo>,
    /// The snapshot this incarnation was thawed from, if it was.
    pub resumed_from: Option<String>,
}

/// A local resource as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalResourceInfo {
    /// Its name.
    pub name: String,
    /// Its preopened path in the guest.
    pub guest_path: String,
    /// Its quota in bytes.
    pub quota_bytes: u64,
}

/// A service's roles and instance counts, shared by its instances; the version grows with
/// every change.
#[derive(Debug, Default)]
pub struct Topology {
    inner: Mutex<(u64, BTreeMap<String, u32>)>,
}

impl Topology {
    /// Sets the instance count of `role` (0 removes it); bumps the version if it changed.
    pub fn set(&self, role: &str, instances: u32) {
        let mut t = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let changed = if instances == 0 {
            t.1.remove(role).is_some()
        } else {
            t.1.insert(role.to_string(), instances) != Some(instances)
        };
        if changed {
            t.0 += 1;
        }
    }

    /// Marks a change that keeps the counts (an upgrade).
    pub fn bump(&self) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).0 += 1;
    }

    /// The version and the counts.
    pub fn read(&self) -> (u64, BTreeMap<String, u32>) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the environment capability needs.
#[derive(Debug)]
pub struct EnvironmentCtx {
    info: Arc<InstanceInfo>,
    stop: StopSignal,
    topology: Arc<Topology>,
    logs: Option<Arc<LogHub>>,
    /// `log` has its own budget of lines per second (as stdout and stderr share one).
    budget: Arc<Mutex<LineBudget>>,
    calls: Arc<AtomicU64>,
}

impl EnvironmentCtx {
    /// A context telling `info`, reading `stop`.
    pub fn new(info: Arc<InstanceInfo>, stop: StopSignal) -> Self {
        EnvironmentCtx {
            info,
            stop,
            topology: Arc::default(),
            logs: None,
            budget: LineBudget::new(),
            calls: Arc::default(),
        }
    }

    /// Counts the calls that mark progress (`stop-requested`, `wait-for-stop`, `log`) in
    /// `calls`, the instance's platform-call counter.
    pub fn counting(mut self, calls: Arc<AtomicU64>) -> Self {
        self.calls = calls;
        self
    }

    /// Reads the service's topology from `topology`.
    pub fn with_topology(mut self, topology: Arc<Topology>) -> Self {
        self.topology = topology;
        self
    }

    /// Sends `log` lines to `hub` too.
    pub fn with_logs(mut self, hub: Option<Arc<LogHub>>) -> Self {
        self.logs = hub;
        self
    }

    fn progress(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Adds `rolehost:platform/environment` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut EnvironmentCtx,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<EnvironmentCtx>>(linker, get)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" [cut]");
    }
}

impl Host for EnvironmentCtx {
    async fn service_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.info.service.clone())
    }

    async fn role_name(&mut self) -> wasmtime::Result<String> {
        Ok(self.info.role.clone())
    }

    async fn instance_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.info.instance_id.clone())
    }

    async fn deployment_id(&mut self) -> wasmtime::Result<String> {
        Ok(self.info.deployment_id.clone())
    }

    async fn configuration_setting(&mut self, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self
            .info
            .settings
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone()))
    }

    async fn configuration_settings(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.info.settings.clone())
    }

    async fn local_resources(&mut self) -> wasmtime::Result<Vec<wit::LocalResource>> {
        Ok(self
            .info
            .local_resources
            .iter()
            .map(|r| wit::LocalResource {
                name: r.name.clone(),
                path: r.guest_path.clone(),
                quota_bytes: r.quota_bytes,
            })
            .collect())
    }

    async fn stop_requested(&mut self) -> wasmtime::Result<bool> {
        self.progress();
        Ok(self.stop.is_requested())
    }

    async fn wait_for_stop(&mut self, timeout_ms: u64) -> wasmtime::Result<bool> {
        self.progress();
        let _ =
            tokio::time::timeout(Duration::from_millis(timeout_ms), self.stop.requested()).await;
        Ok(self.stop.is_requested())
    }

    async fn resumed_from(&mut self) -> wasmtime::Result<Option<String>> {
        Ok(self.info.resumed_from.clone())
    }

    async fn topology(&mut self) -> wasmtime::Result<wit::ServiceTopology> {
        let (version, roles) = self.topology.read();
        Ok(wit::ServiceTopology {
            version,
            roles: roles
                .into_iter()
                .map(|(role, instances)| wit::RoleInstances { role, instances })
                .collect(),
        })
    }

    async fn log(&mut self, level: LogLevel, mut message: String) -> wasmtime::Result<()> {
        self.progress();
        // Over the budget, the guest waits: throttled, nothing lost.
        truncate(&mut message, MAX_LOG_LINE);
        let owed = LineBudget::charge(&self.budget, 1.0, message.len());
        if !owed.is_zero() {
            tokio::time::sleep(owed).await;
        }
        let instance = self.info.instance_id.as_str();
        let message = crate::guest_log::escape_controls(&message);
        match level {
            LogLevel::Trace => tracing::trace!(target: "guest", instance, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "guest", instance, "{message}"),
            LogLevel::Info => tracing::info!(target: "guest", instance, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "guest", instance, "{message}"),
            LogLevel::Error => tracing::error!(target: "guest", instance, "{message}"),
        }
        if let Some(hub) = &self.logs {
            let stream = match level {
                LogLevel::Trace => "trace",
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            };
            let service: Arc<str> = Arc::from(self.info.service.as_str());
            hub.line(&service, &Arc::from(instance), stream, &message);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        let mut s = "ééé".to_string(); // 6 bytes
        truncate(&mut s, 3);
        assert_eq!(s, "é [cut]");
        let mut short = "ok".to_string();
        truncate(&mut short, 3);
        assert_eq!(short, "ok");
    }

    #[tokio::test]
    async fn settings_and_stop_are_what_the_host_says() {
        let (handle, signal) = crate::stop::stop_signal();
        let info = InstanceInfo {
            service: "svc".into(),
            role: "Worker".into(),
            instance_id: "Worker_IN_3".into(),
            deployment_id: "d1".into(),
            settings: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            local_resources: vec![LocalResourceInfo {
                name: "scratch".into(),
                guest_path: "/local/scratch".into(),
                quota_bytes: 10,
            }],
            resumed_from: None,
        };
        let mut ctx = EnvironmentCtx::new(Arc::new(info), signal);
        assert_eq!(ctx.instance_id().await.unwrap(), "Worker_IN_3");
        assert_eq!(
            ctx.configuration_setting("b".into())
                .await
                .unwrap()
                .as_deref(),
            Some("2")
        );
        assert_eq!(ctx.configuration_setting("c".into()).await.unwrap(), None);
        assert_eq!(
            ctx.local_resources().await.unwrap()[0].path,
            "/local/scratch"
        );
        assert!(!ctx.stop_requested().await.unwrap());
        // A wait with no stop times out and says "not stopped".
        assert!(!ctx.wait_for_stop(10).await.unwrap());
        handle.request();
        // A long wait returns at once once stopped.
        let started = std::time::Instant::now();
        assert!(ctx.wait_for_stop(60_000).await.unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
