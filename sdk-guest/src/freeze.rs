//! Freeze support: what the SDK does at a freeze so that `std` works after the thaw, and the
//! export that makes a web role freezable ([`web_freezable!`](crate::web_freezable!)).
//!
//! A snapshot keeps the instance's memory, and no WASI handle: handles live in the host's
//! per-instance tables, and a thawed instance starts with empty ones. wasi-libc (under Rust's
//! `std` on `wasm32-wasip2`) keeps three things in memory that name the old host:
//! - the preopened directories, as handles (`std::fs`);
//! - the stdio streams, as handles fetched on first use (`println!`, `eprintln!`);
//! - the environment variables, as a copy made on first use (`std::env::var`).
//!
//! The SDK's `on-freeze` resets all three at the quiet point, so each is fetched afresh from the
//! new host after the thaw. The stdio reset reaches into wasi-libc's descriptor table, whose
//! layout is internal: it checks the layout first and, when it does not recognise it, leaves
//! the streams alone; the host then sees a stream still held and refuses the freeze, naming
//! stdout (the instance goes on running). `rolehost_sdk::env::log` never holds a handle.

/// Resets wasi-libc's cached preopens, stdio streams and environment (see the module docs).
/// Called between exports, when nothing uses them.
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[allow(unsafe_code)]
pub(crate) fn reset_wasi_libc() {
    unsafe extern "C" {
        fn __wasilibc_reset_preopens();
        fn __wasilibc_deinitialize_environ();
    }
    // SAFETY: wasi-libc's own resets, called between exports: no directory is in use and no
    // pointer into the environment is held across the call (std copies what it reads).
    unsafe {
        __wasilibc_reset_preopens();
        __wasilibc_deinitialize_environ();
    }
    release_stdio();
}

/// One entry of wasi-libc's descriptor table (`descriptor_table_entry_t`): its data, then its
/// vtable.
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[repr(C)]
struct Entry {
    data: *mut Stdio,
    vtable: *const u8,
}

/// wasi-libc's state of a stdio descriptor (`stdio_t` in `wasip2_stdio.c`): its fd, then the
/// handles it fetched lazily (0 while not fetched).
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[repr(C)]
struct Stdio {
    fd: i32,
    input: u32,
    output: u32,
    input_pollable: u32,
    output_pollable: u32,
}

/// Drops the stdio handles wasi-libc fetched and clears them, so the next write fetches a
/// stream from the host it then runs on. Leaves everything alone unless fds 0, 1 and 2 are
/// wasi-libc's own stdio entries (same vtable, matching fd fields).
#[cfg(all(target_os = "wasi", target_env = "p2"))]
#[allow(unsafe_code)]
fn release_stdio() {
    unsafe extern "C" {
        fn descriptor_table_get_ref(fd: i32) -> *mut Entry;
        fn poll_pollable_drop_own(handle: u32);
        fn streams_input_stream_drop_own(handle: u32);
        fn streams_output_stream_drop_own(handle: u32);
    }
    // SAFETY: `descriptor_table_get_ref` returns null or a pointer to a live entry of
    // wasi-libc's table; each entry's data is read only after checking that all three share
    // one vtable (the stdio vtable: a program that reopened fd 1 on a file fails the check)
    // and that its `fd` field is its own fd. The dropped handles are wasi-libc's own, fetched
    // through the same imports these drops use, and are zeroed so nothing uses them again.
    unsafe {
        let entries = [0, 1, 2].map(|fd| descriptor_table_get_ref(fd));
        if entries.iter().any(|e| e.is_null()) {
            return;
        }
        let vtable = (*entries[0]).vtable;
        for (fd, entry) in entries.iter().enumerate() {
            let data = (**entry).data;
            if (**entry).vtable != vtable || data.is_null() || (*data).fd != fd as i32 {
                return;
            }
        }
        for entry in entries {
            let stdio = &mut *(*entry).data;
            // Pollables are children of their stream: they go first.
            for pollable in [&mut stdio.input_pollable, &mut stdio.output_pollable] {
                if *pollable != 0 {
                    poll_pollable_drop_own(std::mem::take(pollable));
                }
            }
            if stdio.input != 0 {
                streams_input_stream_drop_own(std::mem::take(&mut stdio.input));
            }
            if stdio.output != 0 {
                streams_output_stream_drop_own(std::mem::take(&mut stdio.output));
            }
        }
    }
}

/// Makes a web role freezable: exports `rolehost:platform/web-freeze`, whose `on-freeze`
/// readies wasi-libc for the freeze (see the module docs), after calling the function given,
/// if any, to drop what the role holds (open files, streams). Use once per web role crate.
///
/// ```no_run
/// // Next to the role's `wasip2::http::proxy::export!(Hello);`:
/// rolehost_sdk::web_freezable!();
/// # fn main() {}
/// ```
///
/// With a function that drops what the role holds first:
///
/// ```no_run
/// rolehost_sdk::web_freezable!(|| {
///     // e.g. drop an open file kept in a static
/// });
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! web_freezable {
    () => {
        $crate::web_freezable!(|| {});
    };
    ($on_freeze:expr) => {
        const _: () = {
            struct __RolehostWebFreeze;

            impl $crate::__private::WebFreezeGuest for __RolehostWebFreeze {
                fn on_freeze() {
                    ($on_freeze)();
                    $crate::__private::prepare_freeze();
                }
            }

            $crate::__private::export_web_freezable!(
                __RolehostWebFreeze with_types_in $crate::__private::bindings::web
            );
        };
    };
}
