//! Freeze and thaw: an instance's linear memory and globals captured into a snapshot (a
//! component whose data segments hold the memory), stored compressed in a self-checking
//! file, and instantiated again later, here or on another host. wasmtime-wizer rewrites the
//! component's structure; [`splice`] writes the memory into it.
//!
//! An instance can be frozen only when it runs the *instrumented* component
//! ([`instrument`]): wizer adds an export (`wasmtime:wizer/access`) through which the host
//! reads memories and globals. Component-model handles do not survive (they live in
//! wasmtime's tables, not in linear memory), so a freeze happens only at a quiet point: a
//! worker after its `run` returned, holding no handle.
//!
//! The snapshot file: `RHSNAP03`, the header's length (u32, little endian), the header
//! (JSON: who the instance was, its deployment, sizes, the payload's BLAKE3 digest), and the
//! payload (the snapshot component, instrumented, zstd). A thaw checks all of it before
//! anything starts. BLAKE3 rather than SHA-256 (format 01): a thaw on the host that compiled
//! the snapshot before takes a few milliseconds, and hashing the payload was most of them.
//! Format 02 files (payload not instrumented) are still read: instrumenting a 64 MiB snapshot
//! at the thaw took 87 ms, which is why the freeze does it now, on the small shape.

use std::future::Future;

use serde::{Deserialize, Serialize};
use wasmtime::Store;
use wasmtime::component::{Instance, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

mod splice;

/// The first bytes of every snapshot file written now: format 03, whose payload is
/// instrumented already.
pub const MAGIC: &[u8; 8] = b"RHSNAP03";
/// Format 02, still read: the same frame, with a payload that a thaw instruments.
const MAGIC_02: &[u8; 8] = b"RHSNAP02";
/// Largest header a snapshot may have.
const MAX_HEADER: usize = 1 << 20;
/// zstd level: a freeze stops the instance until its snapshot is packed, so speed first. On a
/// 64 MiB heap (`rolehost-bench freeze`) level 1 packs in about 64 ms to 4.5 MiB, level 3 in
/// about 86 ms to 4.1 MiB; negative levels were no faster and three times larger.
const ZSTD_LEVEL: i32 = 1;

/// Why a snapshot could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    /// The component cannot be instrumented (wizer's limits: no nested modules instantiated
    /// twice, no start functions, ...).
    #[error("this component cannot be frozen: {0}")]
    Unsupported(String),
    /// Reading the instance's state failed.
    #[error("reading the instance's state failed: {0}")]
    Capture(String),
    /// Reading the instance's state trapped in the instance: it may not be usable after.
    #[error("reading the instance's state trapped: {0}")]
    Trapped(String),
    /// Writing the memories into the snapshot failed.
    #[error("writing the snapshot failed: {0}")]
    Splice(#[from] splice::SpliceError),
    /// Not a snapshot file at all.
    #[error("not a rolehost snapshot (it does not start with {:?})", std::str::from_utf8(MAGIC).unwrap_or(""))]
    NotASnapshot,
    /// Cut short.
    #[error("the snapshot is truncated: {0}")]
    Truncated(String),
    /// Its bytes are not what its header says.
    #[error("the snapshot is corrupt: {0}")]
    Corrupt(String),
}

/// What a snapshot says about the instance it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The service.
    pub service: String,
    /// The role.
    pub role: String,
    /// The instance's id when it was frozen.
    pub instance_id: String,
    /// The deployment it belongs to: a thaw into another deployment is refused.
    pub deployment_id: String,
    /// The VM size's name.
    pub vm_size: String,
    /// The role's settings then.
    pub settings: Vec<(String, String)>,
    /// Wall-clock time of the freeze, microseconds since the Unix epoch.
    pub frozen_at_micros: u64,
    /// The guest's monotonic clock at the freeze, nanoseconds: the thawed instance's clock
    /// goes on from there.
    pub monotonic_ns: u64,
    /// Size of the snapshot component.
    pub raw_len: u64,
    /// Size of the compressed payload.
    pub payload_len: u64,
    /// BLAKE3 digest of the payload, hex.
    pub payload_blake3: String,
    /// Whether the payload is instrumented (format 03) or is to be instrumented when it is
    /// compiled (format 02). Set by [`encode`] and [`header`] from the file's format.
    #[serde(skip)]
    pub instrumented: bool,
}

/// Where [`compile`] keeps the compiled snapshot of `header` in cache directory `dir`.
pub fn cache_file(dir: &std::path::Path, header: &SnapshotHeader) -> std::path::PathBuf {
    dir.join(format!("{}.freezable.cwasm", header.payload_blake3))
}

/// Compiles a snapshot component made by [`capture`] (instrumented already, so the thawed
/// instance can be frozen again).
pub fn compile_snapshot(
    engine: &wasmtime::Engine,
    snapshot: &[u8],
) -> wasmtime::Result<wasmtime::component::Component> {
    wasmtime::component::Component::new(engine, snapshot)
}

/// Instruments a component so instances of it can be frozen.
pub fn instrument(component: &[u8]) -> Result<Vec<u8>, FreezeError> {
    Wizer::new()
        .instrument_component(component)
        .map(|(_, instrumented)| instrumented)
        .map_err(|e| FreezeError::Unsupported(format!("{e:#}")))
}

/// Reads an instance's state through wizer's accessor export, recording the first error
/// instead of panicking (the trait's methods cannot fail). wizer is shown empty memories;
/// the real ones are kept, in the order wizer asked for them, for [`splice`].
struct Access<'a, T: 'static> {
    store: &'a mut Store<T>,
    instance: Instance,
    error: Option<String>,
    /// The error was a trap inside the instance (which may then not be entered again).
    trapped: bool,
    memories: Vec<WasmList<u8>>,
}

impl<T: Send> Access<'_, T> {
    async fn call<R, R2: Default>(
        &mut self,
        export: &str,
        func: &str,
        use_ret: impl FnOnce(&mut Store<T>, R) -> R2,
    ) -> R2
    where
        R: wasmtime::component::Lift + 'static,
    {
        if self.error.is_some() {
            return R2::default();
        }
        let result = async {
            let (_, inst) = self
                .instance
                .get_export(&mut *self.store, None, export)
                .ok_or_else(|| format!("no export {export}"))?;
            let (_, f) = self
                .instance
                .get_export(&mut *self.store, Some(&inst), func)
                .ok_or_else(|| format!("no export {export}#{func}"))?;
            let typed = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, f)
                .map_err(|e| format!("{export}#{func}: {e:#}"))?;
            let (ret,) = typed.call_async(&mut *self.store, ()).await.map_err(|e| {
                self.trapped = e.downcast_ref::<wasmtime::Trap>().is_some();
                format!("{export}#{func}: {e:#}")
            })?;
            Ok::<_, String>(use_ret(&mut *self.store, ret))
        }
        .await;
        match result {
            Ok(v) => v,
            Err(e) => {
                self.error = Some(e);
                R2::default()
            }
        }
    }
}

impl<T: Send> ComponentInstanceState for Access<'_, T> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        // The list is a view of the guest's memory (no copy); wizer gets an empty one, and
        // an error is seen by `capture`.
        let list = self
            .call(instance, func, |_, list: WasmList<u8>| Some(list))
            .await;
        self.memories.extend(list);
        contents(&[]);
    }

    fn call_func_ret_s32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i32> + Send {
        self.call(instance, func, |_, r: i32| r)
    }

    fn call_func_ret_s64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i64> + Send {
        self.call(instance, func, |_, r: i64| r)
    }

    fn call_func_ret_f32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u32> + Send {
        self.call(instance, func, |_, r: f32| r.to_bits())
    }

    fn call_func_ret_f64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u64> + Send {
        self.call(instance, func, |_, r: f64| r.to_bits())
    }
}

/// Captures `instance` (of the component instrumented from `original`) into a snapshot
/// component: its memories and globals as they are now. The instance goes on running (with
/// its memory a page larger: wizer's accessor grows it to return the memory's bounds).
///
/// wizer rewrites the component from empty memories (globals, start functions and its own
/// instrumentation removed: the structure); that shape is instrumented again, and
/// [`splice::splice`] copies the memories into it, once. The snapshot is thus instrumented
/// itself: it compiles as it is, and an instance of it can be frozen again.
pub async fn capture<T: Send>(
    original: &[u8],
    store: &mut Store<T>,
    instance: Instance,
) -> Result<Vec<u8>, FreezeError> {
    let wizer = Wizer::new();
    let (cx, _) = wizer
        .instrument_component(original)
        .map_err(|e| FreezeError::Unsupported(format!("{e:#}")))?;
    // A memory comes out whole, in one accessor call: past the per-call copy limit guests get.
    let hostcall_fuel = store.hostcall_fuel();
    store.set_hostcall_fuel(usize::MAX);
    let mut access = Access {
        store,
        instance,
        error: None,
        trapped: false,
        memories: Vec::new(),
    };
    let shape = wizer
        .snapshot_component(&cx, &mut access)
        .await
        .map_err(|e| FreezeError::Capture(format!("{e:#}")));
    access.store.set_hostcall_fuel(hostcall_fuel);
    let shape = shape?;
    if let Some(e) = access.error {
        return Err(if access.trapped {
            FreezeError::Trapped(e)
        } else {
            FreezeError::Capture(e)
        });
    }
    // Instrumented while it is small (a few milliseconds), so a thaw compiles the snapshot as
    // it is, and the thawed instance can be frozen again.
    let shape = instrument(&shape)?;
    let store = &*access.store;
    let memories: Vec<&[u8]> = access
        .memories
        .iter()
        .map(|list| list.as_le_slice(store))
        .collect();
    Ok(splice::splice(&shape, &memories)?)
}

/// zstd with a worker per core: a freeze stops the instance until its snapshot is packed.
fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers > 1 {
        c.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers as u32))?;
    }
    c.compress(data)
}

/// Packs a snapshot component with its header into a snapshot file (compressed).
pub fn encode(mut header: SnapshotHeader, component: &[u8]) -> Result<Vec<u8>, FreezeError> {
    let payload =
        compress(component).map_err(|e| FreezeError::Capture(format!("compressing: {e}")))?;
    header.raw_len = component.len() as u64;
    header.payload_len = payload.len() as u64;
    header.payload_blake3 = blake3::hash(&payload).to_hex().to_string();
    header.instrumented = true;
    let head = serde_json::to_vec(&header).map_err(|e| FreezeError::Capture(e.to_string()))?;
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + head.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Reads a snapshot file's header only, checking the frame (for listings).
pub fn header(file: &[u8]) -> Result<(SnapshotHeader, &[u8]), FreezeError> {
    let instrumented = match file.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => true,
        Some(m) if m == MAGIC_02 => false,
        _ => return Err(FreezeError::NotASnapshot),
    };
    let rest = &file[MAGIC.len()..];
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FreezeError::Truncated("no header length".into()))?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_HEADER {
        return Err(FreezeError::Corrupt(format!("a header of {len} bytes")));
    }
    let head = rest.get(4..4 + len).ok_or_else(|| {
        FreezeError::Truncated(format!(
            "the header is cut short ({} of {len} bytes)",
            rest.len().saturating_sub(4)
        ))
    })?;
    let mut header: SnapshotHeader = serde_json::from_slice(head)
        .map_err(|e| FreezeError::Corrupt(format!("the header does not parse: {e}")))?;
    header.instrumented = instrumented;
    let payload = &rest[4 + len..];
    if (payload.len() as u64) < header.payload_len {
        return Err(FreezeError::Truncated(format!(
            "{} of {} payload bytes",
            payload.len(),
            header.payload_len
        )));
    }
    if payload.len() as u64 != header.payload_len {
        return Err(FreezeError::Corrupt(format!(
            "{} payload bytes where the header says {}",
            payload.len(),
            header.payload_len
        )));
    }
    Ok((header, payload))
}

/// Checks a snapshot file whole (its frame, and its payload against the header's digest)
/// without unpacking it: the header and the compressed payload.
pub fn check(file: &[u8]) -> Result<(SnapshotHeader, &[u8]), FreezeError> {
    let (header, payload) = header(file)?;
    let actual = blake3::hash(payload).to_hex().to_string();
    if actual != header.payload_blake3 {
        return Err(FreezeError::Corrupt(format!(
            "the payload's BLAKE3 digest is {actual}, the header says {}",
            header.payload_blake3
        )));
    }
    Ok((header, payload))
}

/// Unpacks a checked payload into the snapshot component.
fn unpack(header: &SnapshotHeader, payload: &[u8]) -> Result<Vec<u8>, FreezeError> {
    let limit = usize::try_from(header.raw_len).unwrap_or(usize::MAX);
    let component = zstd::bulk::decompress(payload, limit)
        .map_err(|e| FreezeError::Corrupt(format!("decompressing: {e}")))?;
    if component.len() as u64 != header.raw_len {
        return Err(FreezeError::Corrupt(format!(
            "{} bytes decompressed where the header says {}",
            component.len(),
            header.raw_len
        )));
    }
    Ok(component)
}

/// Checks and unpacks a snapshot file: its header and the snapshot component.
pub fn decode(file: &[u8]) -> Result<(SnapshotHeader, Vec<u8>), FreezeError> {
    let (header, payload) = check(file)?;
    let component = unpack(&header, payload)?;
    Ok((header, component))
}

/// Compiles a checked snapshot ([`check`]) for `engine`. With `cache` (a directory of this
/// host), the compiled code is kept as `<sha>.cwasm`, written on a thread of its own after the
/// first thaw; later thaws of the same snapshot map it instead of unpacking and compiling (the
/// warm path: memory pages in lazily, copy-on-write).
pub fn compile(
    engine: &wasmtime::Engine,
    header: &SnapshotHeader,
    payload: &[u8],
    cache: Option<&std::path::Path>,
) -> wasmtime::Result<wasmtime::component::Component> {
    use wasmtime::component::Component;
    let path = cache.map(|dir| cache_file(dir, header));
    if let Some(path) = path.as_ref().filter(|p| p.is_file()) {
        // SAFETY: the file was written below by `Component::serialize` of this host's engine
        // configuration (the one place it is built), in a directory of its own; wasmtime also
        // checks the version and configuration recorded in it.
        #[allow(unsafe_code)]
        let cached = unsafe { Component::deserialize_file(engine, path) };
        match cached {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "unusable compiled snapshot; compiling again")
            }
        }
    }
    let mut component = unpack(header, payload).map_err(wasmtime::Error::new)?;
    if !header.instrumented {
        component = instrument(&component).map_err(wasmtime::Error::new)?;
    }
    let compiled = compile_snapshot(engine, &component)?;
    if let Some(path) = path {
        // The thaw does not wait for the write.
        let keep = compiled.clone();
        std::thread::spawn(move || {
            let written = keep.serialize().and_then(|bytes| {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let tmp = path.with_extension("cwasm.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &path)?;
                Ok(())
            });
            if let Err(e) = written {
                tracing::warn!(error = %e, "could not keep the compiled snapshot");
            }
        });
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_for_test() -> SnapshotHeader {
        SnapshotHeader {
            service: "s".into(),
            role: "R".into(),
            instance_id: "R_IN_0".into(),
            deployment_id: "d1".into(),
            vm_size: "Small".into(),
            settings: vec![],
            frozen_at_micros: 1,
            monotonic_ns: 2,
            raw_len: 0,
            payload_len: 0,
            payload_blake3: String::new(),
            instrumented: false,
        }
    }

    #[test]
    fn files_round_trip_and_damage_is_named() {
        let body = vec![7u8; 100_000];
        let file = encode(header_for_test(), &body).unwrap();
        assert!(file.len() < 1_000, "compressed: {}", file.len());
        let (h, back) = decode(&file).unwrap();
        assert_eq!(back, body);
        assert_eq!(h.deployment_id, "d1");
        let e = decode(&file[..file.len() - 3]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = decode(&file[..10]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let e = decode(&bad).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("BLAKE3"), "{e}");
        let e = decode(b"GIF89a....").unwrap_err().to_string();
        assert!(e.contains("not a rolehost snapshot"), "{e}");
        // Format 03 payloads are instrumented; format 02 ones (same frame) are read as not.
        assert!(h.instrumented);
        let mut old = file.clone();
        old[..8].copy_from_slice(MAGIC_02);
        let (h, back) = decode(&old).unwrap();
        assert!(!h.instrumented);
        assert_eq!(back, body);
    }
}
