//! The one `bindgen!` of the host (Architecture Invariant): the `worker-role` world of `wit/`.
//! WASI interfaces come from wasmtime-wasi's own bindings.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "rolehost:platform/worker-role",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
    },
});

pub use rolehost::platform::{blob, environment, queue, table, types};
