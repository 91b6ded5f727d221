//! The worker role entry point: implement [`WorkerRole`] and name the type in
//! [`worker!`](crate::worker!).
//!
//! ```no_run
//! use rolehost_sdk::{QueueProcessor, WorkerRole};
//!
//! struct Echo { seen: u64 }
//!
//! impl WorkerRole for Echo {
//!     fn on_start() -> Result<Self, String> {
//!         Ok(Echo { seen: 0 })
//!     }
//!
//!     fn run(&mut self) -> Result<(), String> {
//!         let seen = &mut self.seen;
//!         QueueProcessor::new("echo")
//!             .run(|job| {
//!                 *seen += 1;
//!                 rolehost_sdk::env::info(&format!("#{seen}: {}", job.body_str()));
//!                 Ok::<(), String>(())
//!             })
//!             .map(drop)
//!             .map_err(|e| e.to_string())
//!     }
//! }
//!
//! rolehost_sdk::worker!(Echo);
//! ```

/// A worker role: Azure's `RoleEntryPoint`.
///
/// The host calls [`WorkerRole::on_start`] once, then [`WorkerRole::run`]. `run` loops until
/// [`crate::env::stop_requested`] and returns `Ok(())`; the host then calls
/// [`WorkerRole::on_stop`]. `run` and `on_stop` together get the grace period (30 s by default)
/// before the host interrupts the instance. An `Err` from `on_start` or `run`, a panic, or
/// `run` returning without a stop request recycles the instance (a fresh one starts after a
/// backoff). The value lives in the instance's memory between calls, so `run` may be called
/// again on the same value (after a thaw, for instance).
pub trait WorkerRole: 'static {
    /// Builds the role's state. An `Err` recycles the instance.
    fn on_start() -> Result<Self, String>
    where
        Self: Sized;

    /// The loop. Return `Ok(())` once a stop was requested.
    fn run(&mut self) -> Result<(), String>;

    /// Called after `run` returned because of a stop: flush, release leases.
    fn on_stop(&mut self) {}

    /// Called instead of [`WorkerRole::on_stop`] when the host freezes the instance: drop
    /// anything that holds a WASI handle (open files, streams). The role's memory survives the
    /// freeze; after the thaw the host calls [`WorkerRole::run`] again. See the README's
    /// freeze section for what survives.
    fn on_freeze(&mut self) {}
}

/// Exports a [`WorkerRole`] type as this component's worker lifecycle. Use once per role crate.
#[macro_export]
macro_rules! worker {
    ($role:ty) => {
        const _: () = {
            struct __RolehostWorkerExport;

            ::std::thread_local! {
                static __ROLEHOST_ROLE: ::std::cell::RefCell<::std::option::Option<$role>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            impl $crate::__private::WorkerGuest for __RolehostWorkerExport {
                fn on_start() -> ::std::result::Result<(), ::std::string::String> {
                    let role = <$role as $crate::WorkerRole>::on_start()?;
                    __ROLEHOST_ROLE.with(|r| *r.borrow_mut() = ::std::option::Option::Some(role));
                    ::std::result::Result::Ok(())
                }

                fn run() -> ::std::result::Result<(), ::std::string::String> {
                    __ROLEHOST_ROLE.with(|r| match r.borrow_mut().as_mut() {
                        ::std::option::Option::Some(role) => $crate::WorkerRole::run(role),
                        ::std::option::Option::None => ::std::result::Result::Err(
                            "run was called before on-start succeeded".into(),
                        ),
                    })
                }

                fn on_stop() {
                    __ROLEHOST_ROLE.with(|r| {
                        if let ::std::option::Option::Some(role) = r.borrow_mut().as_mut() {
                            $crate::WorkerRole::on_stop(role)
                        }
                    })
                }

                fn on_freeze() {
                    __ROLEHOST_ROLE.with(|r| {
                        if let ::std::option::Option::Some(role) = r.borrow_mut().as_mut() {
                            $crate::WorkerRole::on_freeze(role)
                        }
                    });
                    $crate::__private::prepare_freeze();
                }
            }

            $crate::__private::export_worker_role!(
                __RolehostWorkerExport with_types_in $crate::__private::bindings
            );
        };
    };
}
