//! # rolehost-sdk: write rolehost roles in Rust
//!
//! A role is a Wasm component built for `wasm32-wasip2`. This crate gives it the platform:
//! storage ([`Container`]/[`Blob`], [`Queue`], [`Table`]), its [`env`]ironment, client-side
//! [`retry`] policies, the [`WorkerRole`] entry point with [`worker!`], and [`QueueProcessor`],
//! the ready-made at-least-once worker loop.
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! rolehost-sdk = { path = "../sdk-guest" }
//! ```
//!
//! ```no_run
//! use rolehost_sdk::{Container, QueueProcessor, WorkerRole};
//!
//! struct Uppercase;
//!
//! impl WorkerRole for Uppercase {
//!     fn on_start() -> Result<Self, String> {
//!         Container::new("results").create_if_not_exists().map_err(|e| e.to_string())?;
//!         Ok(Uppercase)
//!     }
//!
//!     fn run(&mut self) -> Result<(), String> {
//!         let results = Container::new("results");
//!         QueueProcessor::new("work")
//!             .run(|job| {
//!                 // Idempotent: handling the same message twice writes the same blob.
//!                 results.blob(job.id()).put(job.body_str().to_uppercase().as_bytes()).map(drop)
//!             })
//!             .map(drop)
//!             .map_err(|e| e.to_string())
//!     }
//! }
//!
//! rolehost_sdk::worker!(Uppercase);
//! ```
//!
//! Build with `cargo build --release --target wasm32-wasip2` (or `rolehost build`). Give the
//! role's workspace a release profile with `lto = true`, `opt-level = 3` and
//! `codegen-units = 1`: the host meters CPU with checks at every function entry, and
//! whole-program optimisation removes most of those calls (the limits then cost about 7-20% on
//! call-heavy code instead of about 50%).
//!
//! ## Freeze safety
//! Every client here holds names, never host handles: a value can be kept in the role's state
//! across calls and across a freeze and thaw. Prefer [`env::log`] to `println!` in roles that
//! may be frozen.

#![deny(missing_docs)]

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod bindings;

pub mod blob;
pub mod env;
mod error;
pub mod processing;
pub mod queue;
pub mod retry;
pub mod table;
pub mod worker;

pub use blob::{Blob, Conditions, Container, PutOptions};
pub use error::{Error, ErrorCode, Result};
pub use processing::{Job, QueueProcessor};
pub use queue::{Message, Queue};
pub use table::Table;
pub use worker::WorkerRole;

/// Used by the macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    /// Readies wasi-libc for a freeze: its cached preopened directories are handles, which
    /// do not survive a thaw; after the reset `std::fs` fetches the new host's directories.
    pub fn prepare_freeze() {
        #[cfg(all(target_os = "wasi", target_env = "p2"))]
        {
            unsafe extern "C" {
                fn __wasilibc_reset_preopens();
            }
            // SAFETY: wasi-libc's own reset, called between exports (no directory in use).
            #[allow(unsafe_code)]
            unsafe {
                __wasilibc_reset_preopens()
            };
        }
    }
    pub use crate::bindings;
    pub use crate::bindings::export_worker_role;
    pub use crate::bindings::exports::rolehost::platform::worker::Guest as WorkerGuest;
}
