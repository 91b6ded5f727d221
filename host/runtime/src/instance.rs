//! One instance's store: WASI (stdio into the log, local resources as preopens, no network)
//! plus the platform capabilities, and the linker that serves them.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capability::blob::BlobCtx;
use crate::capability::environment::{EnvironmentCtx, InstanceInfo};
use crate::capability::queue::{QueueCtx, QueueWakers};
use crate::capability::table::TableCtx;
use crate::capability::{self, Capabilities, CapabilityView};
use crate::guest_log::{GuestOutput, Stream};
use crate::link::Link;
use crate::stop::StopSignal;

/// The data of an instance's `Store`.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    capabilities: Capabilities,
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl CapabilityView for InstanceState {
    fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.capabilities
    }
}

/// What one instance is made of.
#[derive(Debug)]
pub struct InstanceParts {
    /// Who it is.
    pub info: Arc<InstanceInfo>,
    /// Its local resources: (host directory, guest path).
    pub local_dirs: Vec<(PathBuf, String)>,
    /// Its link to storage.
    pub link: Link,
    /// The service's queue wakers.
    pub wakers: Arc<QueueWakers>,
    /// Its stop signal.
    pub stop: StopSignal,
}

/// The linker every instance is instantiated with: WASI p2 and the platform.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<InstanceState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capability::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// A fresh store for one instance.
pub fn new_store(engine: &Engine, parts: InstanceParts) -> wasmtime::Result<Store<InstanceState>> {
    let instance: Arc<str> = Arc::from(parts.info.instance_id.as_str());
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdout(GuestOutput::new(instance.clone(), Stream::Stdout))
        .stderr(GuestOutput::new(instance, Stream::Stderr))
        // Instances share nothing but storage: no sockets, no name lookups.
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .env("ROLEHOST_SERVICE", &parts.info.service)
        .env("ROLEHOST_ROLE", &parts.info.role)
        .env("ROLEHOST_INSTANCE_ID", &parts.info.instance_id);
    for (host, guest) in &parts.local_dirs {
        wasi.preopened_dir(host, guest, FsPerms::ReadWrite)?;
    }
    let state = InstanceState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        capabilities: Capabilities {
            blob: BlobCtx::new(parts.link.clone()),
            queue: QueueCtx::new(parts.link.clone(), parts.wakers, parts.stop.clone()),
            table: TableCtx::new(parts.link),
            environment: EnvironmentCtx::new(parts.info, parts.stop),
        },
    };
    let mut store = Store::new(engine, state);
    // Yield to the executor at every epoch tick, so a busy guest never starves its
    // neighbours, and a stuck one can be interrupted (its future dropped) at the next tick.
    // The deadline must be set before instantiation: the default of 0 would trap at once.
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    Ok(store)
}
