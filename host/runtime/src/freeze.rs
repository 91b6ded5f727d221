//! Freeze and thaw: an instance's linear memory and globals captured into a snapshot (a
//! component whose data segments hold the memory), stored compressed in a self-checking
//! file, and instantiated again later, here or on another host. wasmtime-wizer rewrites the
//! component's structure; `splice` writes the memory into it.
//!
//! An instance can be frozen only when it runs the *instrumented* component
//! ([`instrument`]): wizer adds an export (`wasmtime:wizer/access`) through which the host
//! reads memories and globals. Component-model handles do not survive (they live in
//! wasmtime's tables, not in linear memory), so a freeze happens only at a quiet point: a
//! worker after its `run` returned, holding no handle.
//!
//! The snapshot file: `RHSNAP04`, the header's length (u32, little endian), the header
//! (JSON: who the instance was, its deployment, sizes, the payload's BLAKE3 digest), a
//! 32-byte signature, and the payload (the snapshot component, instrumented, zstd). The
//! signature is a keyed BLAKE3 ([`SnapshotKey`], a host secret) over everything else: a
//! snapshot holds code and memory that will run inside a service with its storage account,
//! so only files this host (or one sharing its key) wrote are thawed. A thaw checks all of it
//! before anything starts, and unpacks with a hard bound ([`SnapshotHeader::check_size`]).
//! Formats 01-03 carried no signature and are refused, saying so.

use std::future::Future;

use serde::{Deserialize, Serialize};
use wasmtime::Store;
use wasmtime::component::{Instance, WasmList};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

mod splice;

/// The first bytes of every snapshot file: format 04, signed, payload instrumented.
pub const MAGIC: &[u8; 8] = b"RHSNAP04";
/// Formats written by earlier rolehosts: unsigned, so never thawed.
const UNSIGNED_FORMATS: [&[u8; 8]; 3] = [b"RHSNAP01", b"RHSNAP02", b"RHSNAP03"];
/// Largest header a snapshot may have: its settings are the role's (bounded by the
/// manifest), everything else is a few hundred bytes.
const MAX_HEADER: usize = 1 << 20;
/// Bytes of the signature.
const SIGNATURE_BYTES: usize = 32;
/// Most bytes a thaw reserves before it has seen them decompress: the rest grows as the
/// stream proves itself, so a header that lies about its size costs nothing up front.
const UNPACK_RESERVE: usize = 64 << 20;
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
    /// Written by an earlier rolehost, without a signature.
    #[error(
        "the snapshot is of format {0}, which carries no host signature, so it cannot be trusted; freeze the instance again with this rolehost"
    )]
    Unsigned(String),
    /// The signature does not match: altered, or written by a host with another key.
    #[error(
        "the snapshot's signature does not match this host's snapshot key: it was altered, or written by a host with another key (hosts that share storage must share the key: rolehost serve --snapshot-key FILE)"
    )]
    BadSignature,
    /// Larger than the role it would thaw into could ever have made.
    #[error("the snapshot is too large: {0}")]
    TooLarge(String),
}

/// The host secret that signs snapshots (keyed BLAKE3). Hosts that thaw each other's
/// snapshots share it; see [`crate::secret`] for how it is kept.
#[derive(Clone)]
pub struct SnapshotKey([u8; 32]);

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotKey(..)")
    }
}

impl SnapshotKey {
    /// A key of these bytes.
    pub fn from_bytes(key: [u8; 32]) -> SnapshotKey {
        SnapshotKey(key)
    }

    /// A fresh random key (a host without a key file: tests, `rolehost run`).
    pub fn random() -> std::io::Result<SnapshotKey> {
        crate::secret::random().map(SnapshotKey)
    }

    /// The key in file `path`, made the first time (0600; a file others can read is refused).
    pub fn open(path: &std::path::Path) -> Result<SnapshotKey, crate::secret::SecretError> {
        crate::secret::read_or_create(path).map(SnapshotKey)
    }

    fn sign(&self, framed: &[u8], payload: &[u8]) -> [u8; SIGNATURE_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(framed);
        h.update(payload);
        *h.finalize().as_bytes()
    }
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
    /// BLAKE3 digest of the payload, hex: names the snapshot (its id, its compiled copy).
    pub payload_blake3: String,
}

impl SnapshotHeader {
    /// Checks every field's shape, so nothing later trusts a length, slices a digest or
    /// formats an id from a field that is not what it claims.
    fn check_shape(&self) -> Result<(), FreezeError> {
        let bad = |what: String| Err(FreezeError::Corrupt(what));
        if !is_hex(&self.payload_blake3, 64) {
            return bad(format!(
                "its payload digest {:?} is not 64 hex digits",
                self.payload_blake3
            ));
        }
        if rolehost_storage::names::check_account(&self.service).is_err() {
            return bad(format!("{:?} is not a service name", self.service));
        }
        if !crate::manifest::valid_role_name(&self.role) {
            return bad(format!("{:?} is not a role name", self.role));
        }
        let index = self
            .instance_id
            .strip_prefix(&self.role)
            .and_then(|rest| rest.strip_prefix("_IN_"))
            .and_then(|n| n.parse::<u32>().ok());
        if index.is_none() {
            return bad(format!(
                "instance id {:?} is not an instance of role {}",
                self.instance_id, self.role
            ));
        }
        let id_char = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if self.deployment_id.is_empty()
            || self.deployment_id.len() > 64
            || !self.deployment_id.bytes().all(id_char)
        {
            return bad(format!("{:?} is not a deployment id", self.deployment_id));
        }
        Ok(())
    }

    /// The slot index in its instance id (checked by [`header`]).
    pub fn slot(&self) -> Option<u32> {
        self.instance_id.rsplit_once("_IN_")?.1.parse().ok()
    }

    /// Refuses a snapshot larger than `max_raw` bytes unpacked: the most a role can make is
    /// its component plus each of its memories at the VM size's cap.
    pub fn check_size(&self, max_raw: u64) -> Result<(), FreezeError> {
        if self.raw_len > max_raw {
            return Err(FreezeError::TooLarge(format!(
                "it says it unpacks to {} bytes, and role {} can make at most {max_raw}",
                self.raw_len, self.role
            )));
        }
        Ok(())
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Linear memories a component defines (in all its core modules): with the VM size's cap,
/// bounds what a snapshot of it can hold.
pub fn memories_defined(component: &[u8]) -> usize {
    let mut n = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(component) {
        match payload {
            Ok(wasmparser::Payload::MemorySection(s)) => n += s.count() as usize,
            Ok(_) => {}
            // A component that was compiled is well formed; count what was read.
            Err(_) => break,
        }
    }
    n.max(1)
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
/// `splice::splice` copies the memories into it, once. The snapshot is thus instrumented
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

/// Packs a snapshot component with its header into a snapshot file (compressed), signed
/// with `key`.
pub fn encode(
    mut header: SnapshotHeader,
    component: &[u8],
    key: &SnapshotKey,
) -> Result<Vec<u8>, FreezeError> {
    let payload =
        compress(component).map_err(|e| FreezeError::Capture(format!("compressing: {e}")))?;
    header.raw_len = component.len() as u64;
    header.payload_len = payload.len() as u64;
    header.payload_blake3 = blake3::hash(&payload).to_hex().to_string();
    header.check_shape()?;
    let head = serde_json::to_vec(&header).map_err(|e| FreezeError::Capture(e.to_string()))?;
    let mut out =
        Vec::with_capacity(MAGIC.len() + 4 + head.len() + SIGNATURE_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    let signature = key.sign(&out, &payload);
    out.extend_from_slice(&signature);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A snapshot file cut into its parts (frame checked, nothing authenticated yet).
struct Parts<'a> {
    framed: &'a [u8],
    header: SnapshotHeader,
    signature: &'a [u8],
    payload: &'a [u8],
}

fn parts(file: &[u8]) -> Result<Parts<'_>, FreezeError> {
    match file.get(..MAGIC.len()) {
        Some(m) if m == MAGIC => {}
        Some(m) if UNSIGNED_FORMATS.iter().any(|u| m == *u) => {
            return Err(FreezeError::Unsigned(
                String::from_utf8_lossy(m).into_owned(),
            ));
        }
        _ => return Err(FreezeError::NotASnapshot),
    }
    let rest = &file[MAGIC.len()..];
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| FreezeError::Truncated("no header length".into()))?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_HEADER {
        return Err(FreezeError::Corrupt(format!("a header of {len} bytes")));
    }
    let head_end = MAGIC.len() + 4 + len;
    let head = file.get(MAGIC.len() + 4..head_end).ok_or_else(|| {
        FreezeError::Truncated(format!(
            "the header is cut short ({} of {len} bytes)",
            rest.len().saturating_sub(4)
        ))
    })?;
    let header: SnapshotHeader = serde_json::from_slice(head)
        .map_err(|e| FreezeError::Corrupt(format!("the header does not parse: {e}")))?;
    header.check_shape()?;
    let signature = file
        .get(head_end..head_end + SIGNATURE_BYTES)
        .ok_or_else(|| FreezeError::Truncated("no signature".into()))?;
    let payload = &file[head_end + SIGNATURE_BYTES..];
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
    Ok(Parts {
        framed: &file[..head_end],
        header,
        signature,
        payload,
    })
}

/// Reads a snapshot file's header, checking its frame and the shape of every field, but
/// not its signature: for a file this host has just written, never to decide what to run.
pub fn header(file: &[u8]) -> Result<(SnapshotHeader, &[u8]), FreezeError> {
    let p = parts(file)?;
    Ok((p.header, p.payload))
}

/// Checks a snapshot file whole (its frame, every header field, and its signature over all
/// of it) without unpacking it: the header and the compressed payload.
pub fn check<'a>(
    file: &'a [u8],
    key: &SnapshotKey,
) -> Result<(SnapshotHeader, &'a [u8]), FreezeError> {
    let p = parts(file)?;
    let expected = key.sign(p.framed, p.payload);
    // Constant time: the comparison says nothing about where a forgery went wrong.
    let differs = expected
        .iter()
        .zip(p.signature)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 {
        return Err(FreezeError::BadSignature);
    }
    Ok((p.header, p.payload))
}

/// Unpacks a checked payload into the snapshot component: streamed, and never past the
/// header's `raw_len` (which the caller bounded with [`SnapshotHeader::check_size`]), so a
/// payload that expands further is refused after reading one byte too many.
fn unpack(header: &SnapshotHeader, payload: &[u8]) -> Result<Vec<u8>, FreezeError> {
    use std::io::Read;
    let reserve = usize::try_from(header.raw_len)
        .unwrap_or(usize::MAX)
        .min(UNPACK_RESERVE);
    let mut component = Vec::with_capacity(reserve);
    zstd::stream::read::Decoder::new(payload)
        .map_err(|e| FreezeError::Corrupt(format!("decompressing: {e}")))?
        .take(header.raw_len.saturating_add(1))
        .read_to_end(&mut component)
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

/// Checks and unpacks a snapshot file: its header and the snapshot component, refused when
/// it says it unpacks to more than `max_raw` bytes.
pub fn decode(
    file: &[u8],
    key: &SnapshotKey,
    max_raw: u64,
) -> Result<(SnapshotHeader, Vec<u8>), FreezeError> {
    let (header, payload) = check(file, key)?;
    header.check_size(max_raw)?;
    let component = unpack(&header, payload)?;
    Ok((header, component))
}

/// Compiles a checked snapshot ([`check`], [`SnapshotHeader::check_size`]) for `engine`. With `cache` (a directory of this
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
    let component = unpack(header, payload).map_err(wasmtime::Error::new)?;
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
            service: "svc".into(),
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
        }
    }

    fn key() -> SnapshotKey {
        SnapshotKey::from_bytes([7; 32])
    }

    #[test]
    fn files_round_trip_and_damage_is_named() {
        let body = vec![7u8; 100_000];
        let file = encode(header_for_test(), &body, &key()).unwrap();
        assert!(file.len() < 1_000, "compressed: {}", file.len());
        let (h, back) = decode(&file, &key(), 1 << 20).unwrap();
        assert_eq!(back, body);
        assert_eq!(h.deployment_id, "d1");
        let e = decode(&file[..file.len() - 3], &key(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = decode(&file[..10], &key(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let e = decode(&bad, &key(), 1 << 20).unwrap_err().to_string();
        assert!(e.contains("signature does not match"), "{e}");
        let e = decode(b"GIF89a....", &key(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a rolehost snapshot"), "{e}");
        // Another host's key: refused, naming the way to share one.
        let other = SnapshotKey::from_bytes([8; 32]);
        let e = decode(&file, &other, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("--snapshot-key"), "{e}");
        // Larger than the role could make: refused before anything is unpacked.
        let e = decode(&file, &key(), 99_999).unwrap_err().to_string();
        assert!(e.contains("too large") && e.contains("100000"), "{e}");
        // Earlier formats carry no signature.
        let mut old = file.clone();
        old[..8].copy_from_slice(b"RHSNAP03");
        let e = decode(&old, &key(), 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("format RHSNAP03") && e.contains("no host signature"),
            "{e}"
        );
    }

    /// A file re-framed around a rewritten header (what a guest could do to a file it could
    /// reach): the signature no longer matches, whatever the header now says.
    #[test]
    fn a_rewritten_header_is_refused() {
        let file = encode(header_for_test(), b"code and memory", &key()).unwrap();
        let (mut h, payload) = header(&file).unwrap();
        h.service = "victim".into();
        h.deployment_id = "0123456789abcdef".into();
        let head = serde_json::to_vec(&h).unwrap();
        let signature = &file[file.len() - payload.len() - SIGNATURE_BYTES..][..SIGNATURE_BYTES];
        let mut forged = MAGIC.to_vec();
        forged.extend_from_slice(&(head.len() as u32).to_le_bytes());
        forged.extend_from_slice(&head);
        forged.extend_from_slice(signature);
        forged.extend_from_slice(payload);
        assert_eq!(header(&forged).unwrap().0.service, "victim");
        assert!(matches!(
            check(&forged, &key()),
            Err(FreezeError::BadSignature)
        ));
    }

    /// A header that lies about its unpacked size, in either direction, is refused without
    /// allocating what it claims (the lie that used to abort the host: a raw length of 2^60).
    #[test]
    fn a_lying_raw_length_allocates_nothing_and_is_refused() {
        let body = vec![1u8; 4096];
        for raw_len in [u64::MAX, 1 << 60, 4095, 4097] {
            let mut h = header_for_test();
            let payload = compress(&body).unwrap();
            h.raw_len = raw_len;
            h.payload_len = payload.len() as u64;
            h.payload_blake3 = blake3::hash(&payload).to_hex().to_string();
            let e = unpack(&h, &payload).unwrap_err().to_string();
            assert!(
                e.contains("decompressed where the header says"),
                "{raw_len}: {e}"
            );
        }
    }

    #[test]
    fn header_fields_of_the_wrong_shape_are_refused() {
        let mut cases: Vec<(SnapshotHeader, &str)> = Vec::new();
        let mut h = header_for_test();
        h.payload_blake3 = "abc".into();
        cases.push((h, "64 hex digits"));
        let mut h = header_for_test();
        h.instance_id = "Other_IN_3".into();
        cases.push((h, "not an instance of role R"));
        let mut h = header_for_test();
        h.instance_id = "R_IN_4000000000000".into();
        cases.push((h, "not an instance of role R"));
        let mut h = header_for_test();
        h.service = "../x".into();
        cases.push((h, "not a service name"));
        for (mut h, want) in cases {
            if h.payload_blake3.is_empty() {
                h.payload_blake3 = "0".repeat(64);
            }
            let e = h.check_shape().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
