//! Settings a host process makes for itself once, at start, before it starts threads.

/// Most malloc arenas the process keeps.
///
/// glibc gives a thread that allocates while the others' arenas are busy an arena of its own,
/// up to eight per core, and memory freed into one arena is kept there for that arena's next
/// allocations. A host's threads come and go (tokio's blocking pool, the storage committer),
/// so every arena ends up holding a high-water mark of its own: measured with `rolehost-bench
/// rest`, that was 30 MiB of a 128 MiB-bounded host, gone with two arenas, at no cost to the
/// request rates (the allocator's locks are not what the host waits on).
pub const MALLOC_ARENAS: i32 = 2;

/// Holds the allocator to [`MALLOC_ARENAS`]. Call it first thing in `main`: arenas made before
/// stay. A no-op where the C library is not glibc.
pub fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes an allocator parameter; it is called before any other
        // thread exists, and a refusal (0) leaves the default, which is only less frugal.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
        if ok == 0 {
            tracing::debug!("mallopt(M_ARENA_MAX) refused; the allocator keeps its defaults");
        }
    }
}
