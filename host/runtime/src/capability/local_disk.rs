//! Local resources: each a directory preopened for one instance (WASI's cap-std confinement: no
//! `..`, absolute-path or symlink escapes), with a size quota enforced on every write.
//!
//! This capability shadows `wasi:filesystem/types` and `wasi:filesystem/preopens` with a
//! wrapper around wasmtime-wasi's own implementation: every call is delegated, and the calls
//! that change sizes are checked first and accounted after.
//!
//! - `write`, `set-size`, and writes through `write-via-stream` / `append-via-stream` that
//!   would take a resource past its quota fail: `insufficient-space` for the descriptor calls,
//!   a failed stream write for streams (a Rust guest using `std::fs` sees
//!   `Err(e)` with `e.raw_os_error() == Some(29)` (EIO), because wasi-libc reports every
//!   stream failure as EIO; `std::os::wasi` users of `write_at` see ENOSPC).
//! - Every entry (file, directory, symlink) costs [`ENTRY_BYTES`] besides its content, like a
//!   filesystem block: a quota of 1 MiB holds at most 256 entries, so nobody fills a disk
//!   with empty directories, and a walk of a resource is bounded.
//! - The tally is kept incrementally: creating an entry reserves its cost first; truncating
//!   opens, unlink, rename over an entry and directory removal give back what the entry held
//!   (stat'ed just before). No call walks the tree.
//! - A rename across two local resources is refused (`cross-device`, as between two disks):
//!   it would move an unknown amount between quotas.
//! - Hard links are refused (`not-permitted`): a second name would make deleting the first
//!   free nothing.
//! - Sizes are logical file sizes (what `ls -l` shows), not blocks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemCtxView, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::{preopens, types};
use wasmtime_wasi::p2::{
    DynOutputStream, FsError, FsResult, OutputStream, Pollable, StreamError, StreamResult,
};

use crate::quota::UsageCell;

/// What one entry (file, directory, symlink) of a local resource costs against its quota,
/// besides a file's content: a filesystem block. Entries without content used to cost
/// nothing (422 MB of directories filled a disk under a 1 MB quota).
pub const ENTRY_BYTES: u64 = 4096;

/// One local resource of an instance and what it holds now.
#[derive(Debug)]
pub struct DiskQuota {
    /// Its name.
    pub name: String,
    /// Where the guest sees it.
    pub guest_path: String,
    /// Where it is on the host.
    pub host_dir: PathBuf,
    /// Its quota in bytes.
    pub limit: u64,
    /// Bytes it holds (and bytes promised to stream writes in flight).
    pub used: AtomicU64,
}

impl DiskQuota {
    /// A quota for `host_dir`, counting what is there already.
    pub fn new(name: &str, guest_path: &str, host_dir: &Path, limit: u64) -> std::io::Result<Self> {
        Ok(DiskQuota {
            name: name.to_string(),
            guest_path: guest_path.to_string(),
            host_dir: host_dir.to_path_buf(),
            limit,
            used: AtomicU64::new(du(host_dir)?),
        })
    }

    /// Reserves `bytes` more, or says no.
    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                u.checked_add(bytes).filter(|n| *n <= self.limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

/// The cost of everything under `dir` against a quota: logical file sizes, and
/// [`ENTRY_BYTES`] per entry (symlinks not followed). Used when a resource's directory is
/// prepared; entries are bounded by the quota, so the walk is bounded too.
pub fn du(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.path().symlink_metadata()?;
            total += ENTRY_BYTES;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// What the capability keeps per instance: its quotas, and which quota each open descriptor
/// belongs to (descriptors descend from the preopens).
#[derive(Debug)]
pub struct LocalDiskCtx {
    quotas: Vec<Arc<DiskQuota>>,
    owner: HashMap<u32, usize>,
    usage: Arc<UsageCell>,
}

impl LocalDiskCtx {
    /// A context for these quotas, publishing the total into `usage`.
    pub fn new(quotas: Vec<Arc<DiskQuota>>, usage: Arc<UsageCell>) -> Arc<Mutex<Self>> {
        let ctx = LocalDiskCtx {
            quotas,
            owner: HashMap::new(),
            usage,
        };
        ctx.publish();
        Arc::new(Mutex::new(ctx))
    }

    fn publish(&self) {
        let total = self
            .quotas
            .iter()
            .map(|q| q.used.load(Ordering::Relaxed))
            .sum();
        self.usage.disk.store(total, Ordering::Relaxed);
    }
}

/// The view the shadowing bindings get: wasmtime-wasi's filesystem plus the quotas.
pub struct QuotaFs<'a> {
    inner: WasiFilesystemCtxView<'a>,
    disk: Arc<Mutex<LocalDiskCtx>>,
}

struct QuotaFsData;

impl HasData for QuotaFsData {
    type Data<'a> = QuotaFs<'a>;
}

/// Store data that has a filesystem and local-disk quotas.
pub trait LocalDiskView: WasiFilesystemView + 'static {
    /// The quota context.
    fn local_disk(&self) -> Arc<Mutex<LocalDiskCtx>>;
}

fn view<T: LocalDiskView>(t: &mut T) -> QuotaFs<'_> {
    let disk = t.local_disk();
    QuotaFs {
        inner: t.filesystem(),
        disk,
    }
}

/// Shadows wasmtime-wasi's `wasi:filesystem` in `linker` (add WASI first).
pub fn add_to_linker<T: LocalDiskView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = types::add_to_linker::<T, QuotaFsData>(linker, view::<T>)
        .and_then(|()| preopens::add_to_linker::<T, QuotaFsData>(linker, view::<T>));
    linker.allow_shadowing(false);
    r
}

impl QuotaFs<'_> {
    fn quota_of(&self, fd: &Resource<types::Descriptor>) -> Option<Arc<DiskQuota>> {
        let d = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        d.owner.get(&fd.rep()).map(|i| d.quotas[*i].clone())
    }

    fn adopt(&self, parent: u32, child: u32) {
        let mut d = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = d.owner.get(&parent).copied() {
            d.owner.insert(child, i);
        }
    }

    fn publish(&self) {
        self.disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .publish();
    }

    fn file(&mut self, fd: &Resource<types::Descriptor>) -> Option<Arc<std::fs::File>> {
        match self.inner.table.get(fd).ok()? {
            Descriptor::File(f) => Some(f.file.clone()),
            Descriptor::Dir(_) => None,
        }
    }

    /// What the entry at `path` under `fd` holds against its quota (its content and its
    /// entry), or `None` when there is none. Symlinks are not followed.
    async fn held(&mut self, fd: &Resource<types::Descriptor>, path: &str) -> Option<u64> {
        let fd = Resource::<types::Descriptor>::new_borrow(fd.rep());
        let stat = D::stat_at(
            &mut self.inner,
            fd,
            types::PathFlags::empty(),
            path.to_string(),
        )
        .await
        .ok()?;
        let content = match stat.type_ {
            types::DescriptorType::RegularFile => stat.size,
            _ => 0,
        };
        Some(content + ENTRY_BYTES)
    }

    /// Gives `bytes` back to `quota`.
    fn give_back(&self, quota: Option<&Arc<DiskQuota>>, bytes: u64) {
        if let Some(q) = quota {
            q.release(bytes);
            self.publish();
        }
    }

    /// Reserves a new entry's cost, or says no.
    fn reserve_entry(&self, quota: Option<&Arc<DiskQuota>>) -> FsResult<()> {
        match quota {
            Some(q) if !q.reserve(ENTRY_BYTES) => Err(no_space()),
            _ => Ok(()),
        }
    }
}

fn file_len(f: &std::fs::File) -> u64 {
    f.metadata().map_or(0, |m| m.len())
}

fn no_space() -> FsError {
    types::ErrorCode::InsufficientSpace.into()
}

impl types::Host for QuotaFs<'_> {
    fn convert_error_code(&mut self, err: FsError) -> wasmtime::Result<types::ErrorCode> {
        types::Host::convert_error_code(&mut self.inner, err)
    }

    fn filesystem_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<types::ErrorCode>> {
        types::Host::filesystem_error_code(&mut self.inner, err)
    }
}

impl types::HostDirectoryEntryStream for QuotaFs<'_> {
    async fn read_directory_entry(
        &mut self,
        stream: Resource<types::DirectoryEntryStream>,
    ) -> FsResult<Option<types::DirectoryEntry>> {
        types::HostDirectoryEntryStream::read_directory_entry(&mut self.inner, stream).await
    }

    fn drop(&mut self, stream: Resource<types::DirectoryEntryStream>) -> wasmtime::Result<()> {
        types::HostDirectoryEntryStream::drop(&mut self.inner, stream)
    }
}

impl preopens::Host for QuotaFs<'_> {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<types::Descriptor>, String)>> {
        let dirs = preopens::Host::get_directories(&mut self.inner)?;
        let mut d = self.disk.lock().unwrap_or_else(|p| p.into_inner());
        for (res, path) in &dirs {
            if let Some(i) = d.quotas.iter().position(|q| q.guest_path == *path) {
                d.owner.insert(res.rep(), i);
            }
        }
        Ok(dirs)
    }
}

use types::HostDescriptor as D;

impl types::HostDescriptor for QuotaFs<'_> {
    async fn advise(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: u64,
        len: u64,
        advice: types::Advice,
    ) -> FsResult<()> {
        D::advise(&mut self.inner, fd, offset, len, advice).await
    }

    async fn sync_data(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        D::sync_data(&mut self.inner, fd).await
    }

    async fn get_flags(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorFlags> {
        D::get_flags(&mut self.inner, fd).await
    }

    async fn get_type(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::DescriptorType> {
        D::get_type(&mut self.inner, fd).await
    }

    async fn set_size(&mut self, fd: Resource<types::Descriptor>, size: u64) -> FsResult<()> {
        let (Some(quota), Some(file)) = (self.quota_of(&fd), self.file(&fd)) else {
            return D::set_size(&mut self.inner, fd, size).await;
        };
        let old = file_len(&file);
        if size > old && !quota.reserve(size - old) {
            return Err(no_space());
        }
        let r = D::set_size(&mut self.inner, fd, size).await;
        match (&r, size > old) {
            (Ok(()), false) => quota.release(old - size),
            (Err(_), true) => quota.release(size - old),
            _ => {}
        }
        self.publish();
        r
    }

    async fn set_times(
        &mut self,
        fd: Resource<types::Descriptor>,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        D::set_times(&mut self.inner, fd, atim, mtim).await
    }

    async fn read(
        &mut self,
        fd: Resource<types::Descriptor>,
        len: u64,
        offset: u64,
    ) -> FsResult<(Vec<u8>, bool)> {
        D::read(&mut self.inner, fd, len, offset).await
    }

    async fn write(
        &mut self,
        fd: Resource<types::Descriptor>,
        buf: Vec<u8>,
        offset: u64,
    ) -> FsResult<u64> {
        let (Some(quota), Some(file)) = (self.quota_of(&fd), self.file(&fd)) else {
            return D::write(&mut self.inner, fd, buf, offset).await;
        };
        let old = file_len(&file);
        let growth = (offset.saturating_add(buf.len() as u64)).saturating_sub(old);
        if !quota.reserve(growth) {
            return Err(no_space());
        }
        let r = D::write(&mut self.inner, fd, buf, offset).await;
        // Settle on what the file really grew by.
        let grew = file_len(&file).saturating_sub(old);
        quota.release(growth.saturating_sub(grew));
        self.publish();
        r
    }

    async fn read_directory(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<types::DirectoryEntryStream>> {
        D::read_directory(&mut self.inner, fd).await
    }

    async fn sync(&mut self, fd: Resource<types::Descriptor>) -> FsResult<()> {
        D::sync(&mut self.inner, fd).await
    }

    async fn create_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let quota = self.quota_of(&fd);
        self.reserve_entry(quota.as_ref())?;
        let r = D::create_directory_at(&mut self.inner, fd, path).await;
        if r.is_err() {
            self.give_back(quota.as_ref(), ENTRY_BYTES);
        }
        self.publish();
        r
    }

    async fn stat(&mut self, fd: Resource<types::Descriptor>) -> FsResult<types::DescriptorStat> {
        D::stat(&mut self.inner, fd).await
    }

    async fn stat_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::DescriptorStat> {
        D::stat_at(&mut self.inner, fd, flags, path).await
    }

    async fn set_times_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        flags: types::PathFlags,
        path: String,
        atim: types::NewTimestamp,
        mtim: types::NewTimestamp,
    ) -> FsResult<()> {
        D::set_times_at(&mut self.inner, fd, flags, path, atim, mtim).await
    }

    async fn link_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_flags: types::PathFlags,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        if self.quota_of(&fd).is_some() || self.quota_of(&new_fd).is_some() {
            return Err(types::ErrorCode::NotPermitted.into());
        }
        D::link_at(&mut self.inner, fd, old_flags, old_path, new_fd, new_path).await
    }

    async fn open_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        flags: types::PathFlags,
        path: String,
        oflags: types::OpenFlags,
        dflags: types::DescriptorFlags,
    ) -> FsResult<Resource<types::Descriptor>> {
        let parent = fd.rep();
        let quota = self.quota_of(&fd);
        let (mut created, mut truncated) = (false, 0);
        if quota.is_some()
            && oflags.intersects(types::OpenFlags::CREATE | types::OpenFlags::TRUNCATE)
        {
            match self.held(&fd, &path).await {
                None if oflags.contains(types::OpenFlags::CREATE) => {
                    self.reserve_entry(quota.as_ref())?;
                    created = true;
                }
                Some(held) if oflags.contains(types::OpenFlags::TRUNCATE) => {
                    truncated = held - ENTRY_BYTES;
                }
                _ => {}
            }
        }
        let r = D::open_at(&mut self.inner, fd, flags, path, oflags, dflags).await;
        match &r {
            Ok(opened) => {
                self.adopt(parent, opened.rep());
                self.give_back(quota.as_ref(), truncated);
            }
            Err(_) if created => self.give_back(quota.as_ref(), ENTRY_BYTES),
            Err(_) => {}
        }
        r
    }

    fn drop(&mut self, fd: Resource<types::Descriptor>) -> wasmtime::Result<()> {
        self.disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .owner
            .remove(&fd.rep());
        D::drop(&mut self.inner, fd)
    }

    async fn readlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<String> {
        D::readlink_at(&mut self.inner, fd, path).await
    }

    async fn remove_directory_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let quota = self.quota_of(&fd);
        // Only an empty directory can be removed: it held its entry alone.
        D::remove_directory_at(&mut self.inner, fd, path).await?;
        self.give_back(quota.as_ref(), ENTRY_BYTES);
        Ok(())
    }

    async fn rename_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        old_path: String,
        new_fd: Resource<types::Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        let (a, b) = (self.quota_of(&fd), self.quota_of(&new_fd));
        match (&a, &b) {
            (Some(x), Some(y)) if !Arc::ptr_eq(x, y) => {
                return Err(types::ErrorCode::CrossDevice.into());
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(types::ErrorCode::CrossDevice.into());
            }
            _ => {}
        }
        // Renaming over an entry frees what it held.
        let replaced = match &b {
            Some(_) => self.held(&new_fd, &new_path).await,
            None => None,
        };
        D::rename_at(&mut self.inner, fd, old_path, new_fd, new_path).await?;
        self.give_back(b.as_ref(), replaced.unwrap_or(0));
        Ok(())
    }

    async fn symlink_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        src: String,
        dest: String,
    ) -> FsResult<()> {
        let quota = self.quota_of(&fd);
        self.reserve_entry(quota.as_ref())?;
        let r = D::symlink_at(&mut self.inner, fd, src, dest).await;
        if r.is_err() {
            self.give_back(quota.as_ref(), ENTRY_BYTES);
        }
        self.publish();
        r
    }

    async fn unlink_file_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        path: String,
    ) -> FsResult<()> {
        let quota = self.quota_of(&fd);
        let held = match &quota {
            Some(_) => self.held(&fd, &path).await,
            None => None,
        };
        D::unlink_file_at(&mut self.inner, fd, path).await?;
        self.give_back(quota.as_ref(), held.unwrap_or(0));
        Ok(())
    }

    fn read_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<wasmtime_wasi::p2::DynInputStream>> {
        D::read_via_stream(&mut self.inner, fd, offset)
    }

    fn write_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: u64,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.wrap_stream(fd, Some(offset))
    }

    fn append_via_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<Resource<DynOutputStream>> {
        self.wrap_stream(fd, None)
    }

    async fn is_same_object(
        &mut self,
        a: Resource<types::Descriptor>,
        b: Resource<types::Descriptor>,
    ) -> wasmtime::Result<bool> {
        D::is_same_object(&mut self.inner, a, b).await
    }

    async fn metadata_hash(
        &mut self,
        fd: Resource<types::Descriptor>,
    ) -> FsResult<types::MetadataHashValue> {
        D::metadata_hash(&mut self.inner, fd).await
    }

    async fn metadata_hash_at(
        &mut self,
        fd: Resource<types::Descriptor>,
        flags: types::PathFlags,
        path: String,
    ) -> FsResult<types::MetadataHashValue> {
        D::metadata_hash_at(&mut self.inner, fd, flags, path).await
    }
}

impl QuotaFs<'_> {
    fn wrap_stream(
        &mut self,
        fd: Resource<types::Descriptor>,
        offset: Option<u64>,
    ) -> FsResult<Resource<DynOutputStream>> {
        let quota = self.quota_of(&fd);
        let file = self.file(&fd);
        let stream = match offset {
            Some(o) => D::write_via_stream(&mut self.inner, fd, o)?,
            None => D::append_via_stream(&mut self.inner, fd)?,
        };
        let (Some(quota), Some(file)) = (quota, file) else {
            return Ok(stream);
        };
        let inner: DynOutputStream = self.inner.table.delete(stream)?;
        let wrapped: DynOutputStream = Box::new(QuotaStream {
            inner,
            file,
            quota,
            pos: offset,
            high_water: 0,
            usage: self.disk.clone(),
        });
        Ok(self.inner.table.push(wrapped)?)
    }
}

/// A file output stream that checks each write against the quota.
struct QuotaStream {
    inner: DynOutputStream,
    file: Arc<std::fs::File>,
    quota: Arc<DiskQuota>,
    /// Where the next write goes; `None` for an append stream (always the end).
    pos: Option<u64>,
    /// The furthest end promised to writes of this stream that may not have landed yet.
    high_water: u64,
    usage: Arc<Mutex<LocalDiskCtx>>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let len = bytes.len() as u64;
        let end_now = file_len(&self.file).max(self.high_water);
        let start = self.pos.unwrap_or(end_now);
        let end = start.saturating_add(len);
        let growth = end.saturating_sub(end_now);
        if !self.quota.reserve(growth) {
            let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(StreamError::LastOperationFailed(
                wasmtime::Error::new(e).context(format!(
                    "local resource {:?} is full: quota {} bytes",
                    self.quota.name, self.quota.limit
                )),
            ));
        }
        self.high_water = self.high_water.max(end);
        if let Some(p) = &mut self.pos {
            *p = end;
        }
        let r = self.inner.write(bytes);
        if r.is_err() {
            self.quota.release(growth);
        }
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .publish();
        r
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }
}
