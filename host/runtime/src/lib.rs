//! The rolehost runtime: runs roles (Wasm components) as instances against rolehost storage.
//!
//! - [`engine`] builds the one wasmtime engine; [`bindings`] holds the one `bindgen!`.
//! - [`capability`] implements the platform's imports, one module per capability.
//! - [`link`] is the seam every storage call passes through (faults are injected there).
//! - [`quota`] holds the VM sizes and the CPU and memory limits;
//! - [`instance`] builds an instance's store; [`worker`] supervises worker instances;
//!   [`web`] serves web roles (front end and load balancer).
//! - [`manifest`] reads `rolehost.toml`; [`service`] runs a whole service; [`build`] compiles
//!   guest crates.

pub mod bindings;
pub mod build;
pub mod capability;
pub mod conn;
pub mod crash;
pub mod engine;
pub mod error;
pub mod fabric;
pub mod freeze;
pub mod instance;
pub mod link;
pub mod manifest;
pub mod process;
pub mod quota;
pub mod secret;
pub mod service;
pub mod stop;
pub mod storage_location;
pub mod storage_rest;
pub mod verify;
pub mod web;
pub mod worker;

pub mod guest_log;

pub use error::RuntimeError;
