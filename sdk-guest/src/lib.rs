//! # rolehost-sdk: write rolehost roles in Rust
//!
//! A role is a Wasm component built for `wasm32-wasip2`. This crate gives it the platform:
//! storage ([`Container`]/[`Blob`], [`Queue`], [`Table`]), its [`env`](mod@env)ironment, client-side
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
//! across calls and across a freeze and thaw. At a freeze the SDK resets what wasi-libc caches
//! of the old host (preopened directories, stdio streams, environment), so `std::fs`,
//! `println!` and `std::env` work after the thaw, on the new host's directory, log and
//! variables. A worker role gets this from [`worker!`]; a web role opts in with
//! [`web_freezable!`]. What the role itself holds (an open `File`, a `wasip2` stream or
//! pollable) must be dropped in its `on_freeze`: the host refuses a freeze while the instance
//! holds a stdio stream, and any other handle kept would trap after the thaw.

#![deny(missing_docs)]

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod bindings;

pub mod blob;
pub mod env;
mod error;
pub mod freeze;
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
    /// Readies wasi-libc for a freeze. No handle survives a thaw, and wasi-libc caches three
    /// kinds in the instance's memory: the preopened directories (`std::fs`), the stdio streams
    /// (`println!`) and the environment (`std::env`, a copy rather than handles, but the old
    /// host's). Each is reset here, so after the thaw wasi-libc fetches them afresh from the
    /// new host. The host checks afterwards that no stdio stream is still held, and refuses the
    /// freeze (the instance goes on) if one is.
    pub fn prepare_freeze() {
        #[cfg(all(target_os = "wasi", target_env = "p2"))]
        crate::freeze::reset_wasi_libc();
    }
    pub use crate::bindings;
    pub use crate::bindings::export_worker_role;
    pub use crate::bindings::exports::rolehost::platform::worker::Guest as WorkerGuest;
    pub use crate::bindings::web::export_web_freezable;
    pub use crate::bindings::web::exports::rolehost::platform::web_freeze::Guest as WebFreezeGuest;
}
