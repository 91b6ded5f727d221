//! The link: the one path from an instance to storage (Architecture Invariant).
//!
//! Every storage call a guest makes goes through [`Link::call`]. In production it runs the
//! operation on the storage engine (on a blocking thread: the engine does disk I/O and
//! fsyncs) and hands back its result. A [`FaultPlan`] can instead lose the request, lose the
//! response, or crash the instance just before or after the call; `rolehost verify` drives
//! those faults. The engine itself never knows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rolehost_storage::{AccountName, Backend};

/// What the link knows of a call: enough to name it in a log, a trace or a fault plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// The calling instance, e.g. `WorkerRole1_IN_0`.
    pub instance: Arc<str>,
    /// The WIT function, e.g. `queue.delete-message`.
    pub operation: &'static str,
    /// The queue, container or table the call names (empty for account-wide calls).
    pub target: String,
}

/// What happens to one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Delivered; the answer comes back.
    #[default]
    None,
    /// The request is lost: nothing happens, the caller sees a timeout.
    LoseRequest,
    /// The call happens, the answer is lost: the caller sees a timeout.
    LoseResponse,
    /// The instance crashes just before the call (nothing happens).
    CrashBefore,
    /// The instance crashes just after the call took effect.
    CrashAfter,
    /// Delivered; then the messages it received become visible again at once, as if their
    /// visibility timeout expired while the handler works (another instance may get them;
    /// this one holds pop receipts that no longer match). Only for `queue.get-messages`.
    ExpireVisibility,
}

impl Fault {
    /// Its name in reports and case ids.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::LoseRequest => "lose-request",
            Fault::LoseResponse => "lose-response",
            Fault::CrashBefore => "crash-before",
            Fault::CrashAfter => "crash-after",
            Fault::ExpireVisibility => "expire-visibility",
        }
    }

    /// The fault called `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        [
            Fault::None,
            Fault::LoseRequest,
            Fault::LoseResponse,
            Fault::CrashBefore,
            Fault::CrashAfter,
            Fault::ExpireVisibility,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }
}

/// Decides the fate of each call. The default plan delivers everything.
pub trait FaultPlan: Send + Sync {
    /// The fault for this call.
    fn fault(&self, call: &CallInfo) -> Fault;

    /// Hears how the call ended: `Ok` with how many items it returned when the caller counts
    /// them (messages got), or the error the guest saw. For traces.
    fn observed(&self, _call: &CallInfo, _fault: Fault, _outcome: Result<Option<usize>, String>) {}

    /// Run storage operations on the calling thread instead of a blocking thread: slower
    /// under load, but the order of calls then depends on nothing outside the executor (a
    /// deterministic simulation needs that).
    fn inline(&self) -> bool {
        false
    }
}

/// Why a call through the link did not give the engine's answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The engine refused the operation (a missing queue, a failed condition, ...).
    #[error(transparent)]
    Service(E),
    /// The request or its answer was lost.
    #[error("the call timed out ({operation} on {target:?}); it may or may not have happened")]
    Timeout {
        /// The WIT function.
        operation: &'static str,
        /// What it named.
        target: String,
    },
    /// The operation could not run (its blocking task panicked or was cancelled).
    #[error("internal error running {operation}: {detail}")]
    Internal {
        /// The WIT function.
        operation: &'static str,
        /// What happened.
        detail: String,
    },
}

/// A crash injected by a [`FaultPlan`]; it traps the instance.
#[derive(Debug, thiserror::Error)]
#[error("instance crashed {when} {operation} on {target:?} (injected by the link)")]
pub struct InjectedCrash {
    /// "before" or "after".
    pub when: &'static str,
    /// The WIT function.
    pub operation: &'static str,
    /// What it named.
    pub target: String,
}

/// One instance's link to its service's storage account.
#[derive(Clone)]
pub struct Link {
    backend: Arc<dyn Backend>,
    account: AccountName,
    instance: Arc<str>,
    faults: Option<Arc<dyn FaultPlan>>,
    calls: Arc<AtomicU64>,
    /// Work done on the instance's behalf inside its calls, which its CPU meter charges on
    /// the way back into the guest.
    host_work: Arc<HostWork>,
}

/// What an instance's calls cost the host, for its CPU meter: fuel owed (the storage
/// operation's CPU, measured on its thread, plus [`HOSTCALL_BASE_FUEL`], plus bytes lifted
/// from the guest), and when the last call's result was ready, so that the metering hook,
/// which runs on the same thread right after wasmtime lowered that result into the guest's
/// memory, charges the lowering's CPU as measured (4 MiB of a blob read cost more to lower
/// than to read).
#[derive(Debug, Default)]
pub struct HostWork {
    fuel: AtomicU64,
    /// This thread's CPU clock when the last result was ready (0: none pending).
    returned_at: AtomicU64,
}

impl HostWork {
    /// The fuel owed since the last call of this, the lowering of a result just returned
    /// included (call it on the thread that lowered it, right after).
    pub fn take(&self) -> u64 {
        let mut fuel = self.fuel.swap(0, Ordering::Relaxed);
        let at = self.returned_at.swap(0, Ordering::Relaxed);
        if at > 0 {
            fuel = fuel.saturating_add(
                thread_cpu_ns()
                    .saturating_sub(at)
                    .saturating_mul(FUEL_PER_NS),
            );
        }
        fuel
    }
}

/// Fuel charged for every storage call, on top of the CPU the storage operation itself used
/// (measured on its thread): the hop to a blocking thread and back, and lifting and lowering
/// its arguments, about 10 µs of a reference core (`rolehost-bench hostile` prints the
/// calibration, `hostcall_base_us`).
pub const HOSTCALL_BASE_FUEL: u64 = 40_000;
/// Fuel charged per byte a call lifts from guest memory (a blob's content put): the copy out
/// of the guest, about a quarter of a nanosecond a byte. (What a result costs to lower into
/// the guest is measured instead: [`HostWork`].)
pub const HOSTCALL_FUEL_PER_BYTE: u64 = 1;
/// Fuel per nanosecond of host CPU: a reference core is 4×10⁹ fuel a second.
const FUEL_PER_NS: u64 = crate::quota::REFERENCE_CORE_FUEL_PER_SEC / 1_000_000_000;

/// CPU time this thread has used, nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass, nothing else.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("account", &self.account)
            .field("instance", &self.instance)
            .field("faults", &self.faults.is_some())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link for `instance` to `account` on `backend`, delivering every call.
    pub fn new(backend: Arc<dyn Backend>, account: AccountName, instance: Arc<str>) -> Self {
        Link {
            backend,
            account,
            instance,
            faults: None,
            calls: Arc::default(),
            host_work: Arc::default(),
        }
    }

    /// Records the host work of every call in `work` (the instance's, which its metering
    /// hook charges to its CPU share).
    pub fn charging(mut self, work: Arc<HostWork>) -> Self {
        self.host_work = work;
        self
    }

    /// Charges the lifting of `bytes` from guest memory.
    pub fn charge_bytes(&self, bytes: usize) {
        let fuel = (bytes as u64).saturating_mul(HOSTCALL_FUEL_PER_BYTE);
        self.host_work.fuel.fetch_add(fuel, Ordering::Relaxed);
    }

    /// Counts every call in `calls` (the instance's platform-call counter; the per-call CPU
    /// budget starts afresh after each platform call).
    pub fn counting(mut self, calls: Arc<AtomicU64>) -> Self {
        self.calls = calls;
        self
    }

    /// Routes every call through `plan` first.
    pub fn with_faults(mut self, plan: Arc<dyn FaultPlan>) -> Self {
        self.faults = Some(plan);
        self
    }

    /// The account this link reaches.
    pub fn account(&self) -> &AccountName {
        &self.account
    }

    /// The instance this link belongs to.
    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// Runs `op` on the storage engine. The outer `Err` traps the calling instance (an
    /// injected crash); the inner one is what the guest sees.
    pub async fn call<T, E, F>(
        &self,
        operation: &'static str,
        target: &str,
        op: F,
    ) -> wasmtime::Result<Result<T, CallError<E>>>
    where
        T: Send + 'static,
        E: Send + std::fmt::Display + 'static,
        F: FnOnce(&dyn Backend, &AccountName) -> Result<T, E> + Send + 'static,
    {
        let (result, _) = self
            .call_with_fault(operation, target, |_| None, op)
            .await?;
        Ok(result)
    }

    /// [`Link::call`], also saying which fault the plan chose; `items` counts what a success
    /// returned, for traces (`None`: nothing worth counting).
    pub async fn call_with_fault<T, E, F>(
        &self,
        operation: &'static str,
        target: &str,
        items: fn(&T) -> Option<usize>,
        op: F,
    ) -> wasmtime::Result<(Result<T, CallError<E>>, Fault)>
    where
        T: Send + 'static,
        E: Send + std::fmt::Display + 'static,
        F: FnOnce(&dyn Backend, &AccountName) -> Result<T, E> + Send + 'static,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let info = || CallInfo {
            instance: self.instance.clone(),
            operation,
            target: target.to_string(),
        };
        let fault = match &self.faults {
            None => Fault::None,
            Some(plan) => plan.fault(&info()),
        };
        let observe = |outcome: Result<Option<usize>, String>| {
            if let Some(plan) = &self.faults {
                plan.observed(&info(), fault, outcome);
            }
        };
        let timeout = || CallError::Timeout {
            operation,
            target: target.to_string(),
        };
        match fault {
            Fault::LoseRequest => {
                observe(Err("timeout (request lost)".into()));
                return Ok((Err(timeout()), fault));
            }
            Fault::CrashBefore => {
                observe(Err("crashed before".into()));
                return Err(wasmtime::Error::new(InjectedCrash {
                    when: "before",
                    operation,
                    target: target.to_string(),
                }));
            }
            Fault::None | Fault::LoseResponse | Fault::CrashAfter | Fault::ExpireVisibility => {}
        }
        let backend = self.backend.clone();
        let account = self.account.clone();
        let inline = self.faults.as_ref().is_some_and(|p| p.inline());
        let result = if inline {
            // Under `rolehost verify`: no CPU share, and nothing measured (runs must depend
            // on their seed alone).
            op(&*backend, &account).map_err(CallError::Service)
        } else {
            let owed = self.host_work.clone();
            let work = move || {
                let started = thread_cpu_ns();
                let r = op(&*backend, &account);
                let used = thread_cpu_ns().saturating_sub(started);
                owed.fuel.fetch_add(
                    HOSTCALL_BASE_FUEL.saturating_add(used.saturating_mul(FUEL_PER_NS)),
                    Ordering::Relaxed,
                );
                r
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(r) => r.map_err(CallError::Service),
                Err(e) => Err(CallError::Internal {
                    operation,
                    detail: e.to_string(),
                }),
            }
        };
        tracing::trace!(instance = %self.instance, operation, target, ok = result.is_ok(), "storage call");
        if !inline {
            // From here to the metering hook, on this thread: converting the result and
            // lowering it into the guest.
            self.host_work
                .returned_at
                .store(thread_cpu_ns().max(1), Ordering::Relaxed);
        }
        let happened = if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        match fault {
            Fault::LoseResponse => {
                observe(Err(format!("timeout (response lost; the call {happened})")));
                Ok((Err(timeout()), fault))
            }
            Fault::CrashAfter => {
                observe(Err(format!("crashed after (the call {happened})")));
                Err(wasmtime::Error::new(InjectedCrash {
                    when: "after",
                    operation,
                    target: target.to_string(),
                }))
            }
            _ => {
                observe(match &result {
                    Ok(v) => Ok(items(v)),
                    Err(e) => Err(e.to_string()),
                });
                Ok((result, fault))
            }
        }
    }

    /// Makes messages visible again at once (the world's doing, not the instance's: no fault
    /// plan, no trace). What [`Fault::ExpireVisibility`] does after a get.
    pub fn expire_visibility(&self, queue: &str, messages: &[(String, String)]) {
        for (id, receipt) in messages {
            let _ = self.backend.update_message(
                &self.account,
                queue,
                id,
                receipt,
                std::time::Duration::ZERO,
                None,
            );
        }
    }
}
