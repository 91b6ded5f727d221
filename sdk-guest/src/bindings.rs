//! The generated bindings of `wit/`. Hidden: role authors use the wrappers of this crate.
//!
//! The `worker-role` world is generated with `pub_export_macro`, so its exports are only emitted
//! when a role invokes [`crate::worker!`]; a web role linking this crate exports nothing of it.

wit_bindgen::generate!({
    path: "../wit",
    world: "rolehost:platform/worker-role",
    // The wasi:cli imports of the platform world: generated here, unused by the SDK itself;
    // wit-component drops the imports a role never calls.
    generate_all,
    pub_export_macro: true,
    export_macro_name: "export_worker_role",
    default_bindings_module: "rolehost_sdk::__private::bindings",
});

/// The `web-freezable` world: only the `web-freeze` export, emitted by [`crate::web_freezable!`].
pub mod web {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rolehost:platform/web-freezable",
        pub_export_macro: true,
        export_macro_name: "export_web_freezable",
        default_bindings_module: "rolehost_sdk::__private::bindings::web",
    });
}
