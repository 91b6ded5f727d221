//! The `blob` capability: WIT `rolehost:platform/blob` on the storage engine's blob service.

use std::io::Read;

use rolehost_storage::blob as store;
use wasmtime::component::{HasSelf, Linker};

use super::{invalid, list_options, to_wit_error};
use crate::bindings::blob::{self as wit, Host};
use crate::bindings::types::{Conditions, ErrorCode, EtagMatch, ListOptions, StorageError};
use crate::link::Link;

/// Most bytes one `put-blob` carries: the 2008 limit, and what a host call may copy at once.
pub const MAX_PUT_BLOB_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes one `put-block` carries (the 2008 block size limit).
pub const MAX_BLOCK_BYTES: usize = 4 * 1024 * 1024;
/// Most bytes one `read-blob` returns: bounds the host memory one read holds.
pub const MAX_READ_BYTES: u64 = 4 * 1024 * 1024;

/// What the blob capability needs: the instance's link to storage.
#[derive(Debug)]
pub struct BlobCtx {
    link: Link,
}

impl BlobCtx {
    /// A context calling storage through `link`.
    pub fn new(link: Link) -> Self {
        BlobCtx { link }
    }
}

/// Adds `rolehost:platform/blob` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut BlobCtx,
) -> wasmtime::Result<()> {
    wit::add_to_linker::<T, HasSelf<BlobCtx>>(linker, get)
}

impl crate::bindings::types::Host for BlobCtx {}

type Reply<T> = wasmtime::Result<Result<T, StorageError>>;

fn conditions(c: Conditions) -> store::Conditions {
    let tag = |m: EtagMatch| match m {
        EtagMatch::Any => store::ETagMatch::Any,
        EtagMatch::Tag(t) => store::ETagMatch::Tag(t),
    };
    store::Conditions {
        if_match: c.if_match.map(tag),
        if_none_match: c.if_none_match.map(tag),
        if_modified_since: c.if_modified_since.map(rolehost_storage::Timestamp),
        if_unmodified_since: c.if_unmodified_since.map(rolehost_storage::Timestamp),
    }
}

fn lease(l: &store::LeaseInfo) -> wit::LeaseInfo {
    wit::LeaseInfo {
        state: match l.state {
            "leased" => wit::LeaseState::Leased,
            "expired" => wit::LeaseState::Expired,
            "breaking" => wit::LeaseState::Breaking,
            "broken" => wit::LeaseState::Broken,
            _ => wit::LeaseState::Available,
        },
        locked: l.status == "locked",
        infinite: l.duration.map(|d| d == "infinite"),
    }
}

fn content_to_wit(c: store::ContentSettings) -> wit::ContentSettings {
    wit::ContentSettings {
        content_type: c.content_type,
        content_encoding: c.content_encoding,
        content_language: c.content_language,
        content_disposition: c.content_disposition,
        cache_control: c.cache_control,
        content_md5: c.content_md5.map(|m| m.to_vec()),
    }
}

fn content_from_wit(c: wit::ContentSettings) -> Result<store::ContentSettings, StorageError> {
    let content_md5 = match c.content_md5 {
        None => None,
        Some(m) => Some(<[u8; 16]>::try_from(m.as_slice()).map_err(|_| {
            invalid(
                ErrorCode::InvalidInput,
                format!("content-md5 must be 16 bytes, got {}", m.len()),
            )
        })?),
    };
    Ok(store::ContentSettings {
        content_type: c.content_type,
        content_encoding: c.content_encoding,
        content_language: c.content_language,
        content_disposition: c.content_disposition,
        cache_control: c.cache_control,
        content_md5,
    })
}

fn blob_props(p: store::BlobProperties) -> wit::BlobProperties {
    wit::BlobProperties {
        lease: lease(&p.lease),
        name: p.name,
        etag: p.etag,
        last_modified: p.last_modified.as_micros(),
        created: p.created.as_micros(),
        size: p.size,
        content: content_to_wit(p.content),
        metadata: p.metadata,
    }
}

fn container_props(p: store::ContainerProperties) -> wit::ContainerProperties {
    wit::ContainerProperties {
        lease: lease(&p.lease),
        name: p.name,
        etag: p.etag,
        last_modified: p.last_modified.as_micros(),
        metadata: p.metadata,
    }
}

fn put_options(o: wit::PutOptions) -> Result<store::PutBlobOptions, StorageError> {
    Ok(store::PutBlobOptions {
        content: content_from_wit(o.content)?,
        metadata: o.metadata,
        conditions: conditions(o.conditions),
        lease_id: o.lease_id,
    })
}

fn lease_action(a: wit::LeaseAction) -> store::LeaseAction {
    match a {
        wit::LeaseAction::Acquire(a) => store::LeaseAction::Acquire {
            duration: a.duration_seconds,
            proposed_id: a.proposed_id,
        },
        wit::LeaseAction::Renew(id) => store::LeaseAction::Renew { id },
        wit::LeaseAction::Change(c) => store::LeaseAction::Change {
            id: c.id,
            proposed_id: c.proposed_id,
        },
        wit::LeaseAction::Release(id) => store::LeaseAction::Release { id },
        wit::LeaseAction::Break(period) => store::LeaseAction::Break { period },
    }
}

fn lease_outcome(o: store::LeaseOutcome) -> wit::LeaseOutcome {
    wit::LeaseOutcome {
        lease_id: o.lease_id,
        break_seconds: o.lease_time,
    }
}

fn block_ref(b: wit::BlockRef) -> store::BlockRef {
    match b {
        wit::BlockRef::Committed(id) => store::BlockRef::Committed(id),
        wit::BlockRef::Uncommitted(id) => store::BlockRef::Uncommitted(id),
        wit::BlockRef::Latest(id) => store::BlockRef::Latest(id),
    }
}

fn block_info(list: Vec<(Vec<u8>, u64)>) -> Vec<wit::BlockInfo> {
    list.into_iter()
        .map(|(id, size)| wit::BlockInfo { id, size })
        .collect()
}

/// Reads `max` bytes of a read into memory. A short read means the end of the blob.
fn read_chunk(
    read: store::BlobRead,
    max: u64,
) -> Result<wit::BlobChunk, rolehost_storage::BlobError> {
    let want = read.len.min(max);
    let mut data = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    read.reader
        .take(want)
        .read_to_end(&mut data)
        .map_err(|e| rolehost_storage::StorageError::BodyRead(e).into())
        .map(|_| wit::BlobChunk {
            properties: blob_props(read.properties),
            offset: read.offset,
            data,
        })
}

impl Host for BlobCtx {
    async fn create_container(
        &mut self,
        container: String,
        metadata: Vec<(String, String)>,
    ) -> Reply<wit::ContainerProperties> {
        let target = container.clone();
        let r = self
            .link
            .call("blob.create-container", &target, move |b, a| {
                b.create_container(a, &container, metadata)
            })
            .await?;
        Ok(r.map(container_props).map_err(to_wit_error))
    }

    async fn delete_container(
        &mut self,
        container: String,
        c: Conditions,
        lease_id: Option<String>,
    ) -> Reply<()> {
        let target = container.clone();
        let c = conditions(c);
        let r = self
            .link
            .call("blob.delete-container", &target, move |b, a| {
                b.delete_container(a, &container, &c, lease_id.as_deref())
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn get_container_properties(
        &mut self,
        container: String,
        lease_id: Option<String>,
    ) -> Reply<wit::ContainerProperties> {
        let target = container.clone();
        let r = self
            .link
            .call("blob.get-container-properties", &target, move |b, a| {
                b.get_container_properties(a, &container, lease_id.as_deref())
            })
            .await?;
        Ok(r.map(container_props).map_err(to_wit_error))
    }

    async fn set_container_metadata(
        &mut self,
        container: String,
        metadata: Vec<(String, String)>,
        lease_id: Option<String>,
    ) -> Reply<wit::ContainerProperties> {
        let target = container.clone();
        let r = self
            .link
            .call("blob.set-container-metadata", &target, move |b, a| {
                b.set_container_metadata(a, &container, metadata, lease_id.as_deref())
            })
            .await?;
        Ok(r.map(container_props).map_err(to_wit_error))
    }

    async fn list_containers(&mut self, options: ListOptions) -> Reply<wit::ContainerPage> {
        let options = list_options(options);
        let r = self
            .link
            .call("blob.list-containers", "", move |b, a| {
                b.list_containers(a, &options)
            })
            .await?;
        Ok(r.map(|page| wit::ContainerPage {
            items: page.items.into_iter().map(container_props).collect(),
            next_marker: page.next_marker,
        })
        .map_err(to_wit_error))
    }

    async fn lease_container(
        &mut self,
        container: String,
        action: wit::LeaseAction,
    ) -> Reply<wit::LeaseOutcome> {
        let target = container.clone();
        let action = lease_action(action);
        let r = self
            .link
            .call("blob.lease-container", &target, move |b, a| {
                b.lease_container(a, &container, action)
            })
            .await?;
        Ok(r.map(lease_outcome).map_err(to_wit_error))
    }

    async fn put_blob(
        &mut self,
        container: String,
        name: String,
        data: Vec<u8>,
        options: wit::PutOptions,
    ) -> Reply<wit::BlobProperties> {
        if data.len() > MAX_PUT_BLOB_BYTES {
            return Ok(Err(invalid(
                ErrorCode::RequestBodyTooLarge,
                format!(
                    "put-blob carries {} bytes, at most {MAX_PUT_BLOB_BYTES}; use put-block",
                    data.len()
                ),
            )));
        }
        let options = match put_options(options) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let target = format!("{container}/{name}");
        self.link.charge_bytes(data.len());
        let r = self
            .link
            .call("blob.put-blob", &target, move |b, a| {
                b.put_blob(a, &container, &name, &mut data.as_slice(), options)
            })
            .await?;
        Ok(r.map(blob_props).map_err(to_wit_error))
    }

    async fn read_blob(
        &mut self,
        container: String,
        name: String,
        offset: u64,
        max_length: u64,
        c: Conditions,
        lease_id: Option<String>,
    ) -> Reply<wit::BlobChunk> {
        let max = max_length.min(MAX_READ_BYTES);
        let options = store::GetBlobOptions {
            // Offset 0 reads without a range, so an empty blob reads as empty rather than
            // as an invalid range; only `max` bytes of the lazy reader are pulled.
            range: (offset > 0).then_some(store::ByteRange {
                start: offset,
                end: None,
            }),
            conditions: conditions(c),
            lease_id,
        };
        let target = format!("{container}/{name}");
        let r = self
            .link
            .call("blob.read-blob", &target, move |b, a| {
                read_chunk(b.get_blob(a, &container, &name, &options)?, max)
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn get_blob_properties(
        &mut self,
        container: String,
        name: String,
        c: Conditions,
        lease_id: Option<String>,
    ) -> Reply<wit::BlobProperties> {
        let target = format!("{container}/{name}");
        let c = conditions(c);
        let r = self
            .link
            .call("blob.get-blob-properties", &target, move |b, a| {
                b.get_blob_properties(a, &container, &name, &c, lease_id.as_deref())
            })
            .await?;
        Ok(r.map(blob_props).map_err(to_wit_error))
    }

    async fn set_blob_metadata(
        &mut self,
        container: String,
        name: String,
        metadata: Vec<(String, String)>,
        c: Conditions,
        lease_id: Option<String>,
    ) -> Reply<wit::BlobProperties> {
        let target = format!("{container}/{name}");
        let c = conditions(c);
        let r = self
            .link
            .call("blob.set-blob-metadata", &target, move |b, a| {
                b.set_blob_metadata(a, &container, &name, metadata, &c, lease_id.as_deref())
            })
            .await?;
        Ok(r.map(blob_props).map_err(to_wit_error))
    }

    async fn set_blob_properties(
        &mut self,
        container: String,
        name: String,
        content: wit::ContentSettings,
        c: Conditions,
        lease_id: Option<String>,
    ) -> Reply<wit::BlobProperties> {
        let content = match content_from_wit(content) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        let target = format!("{container}/{name}");
        let c = conditions(c);
        let r = self
            .link
            .call("blob.set-blob-properties", &target, move |b, a| {
                b.set_blob_properties(a, &container, &name, content, &c, lease_id.as_deref())
            })
            .await?;
        Ok(r.map(blob_props).map_err(to_wit_error))
    }

    async fn delete_blob(
        &mut self,
        container: String,
        name: String,
        c: Conditions,
        lease_id: Option<String>,
    ) -> Reply<()> {
        let target = format!("{container}/{name}");
        let c = conditions(c);
        let r = self
            .link
            .call("blob.delete-blob", &target, move |b, a| {
                b.delete_blob(a, &container, &name, &c, lease_id.as_deref())
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn list_blobs(
        &mut self,
        container: String,
        options: ListOptions,
        delimiter: Option<String>,
    ) -> Reply<wit::BlobPage> {
        let target = container.clone();
        let options = list_options(options);
        let r = self
            .link
            .call("blob.list-blobs", &target, move |b, a| {
                b.list_blobs(a, &container, &options, delimiter.as_deref())
            })
            .await?;
        Ok(r.map(|page| wit::BlobPage {
            items: page
                .items
                .into_iter()
                .map(|item| match item {
                    store::BlobListItem::Blob(p) => wit::BlobListItem::Blob(blob_props(p)),
                    store::BlobListItem::Prefix(p) => wit::BlobListItem::Prefix(p),
                })
                .collect(),
            next_marker: page.next_marker,
        })
        .map_err(to_wit_error))
    }

    async fn lease_blob(
        &mut self,
        container: String,
        name: String,
        action: wit::LeaseAction,
    ) -> Reply<wit::LeaseOutcome> {
        let target = format!("{container}/{name}");
        let action = lease_action(action);
        let r = self
            .link
            .call("blob.lease-blob", &target, move |b, a| {
                b.lease_blob(a, &container, &name, action)
            })
            .await?;
        Ok(r.map(lease_outcome).map_err(to_wit_error))
    }

    async fn put_block(
        &mut self,
        container: String,
        name: String,
        block_id: Vec<u8>,
        data: Vec<u8>,
        lease_id: Option<String>,
    ) -> Reply<()> {
        if data.len() > MAX_BLOCK_BYTES {
            return Ok(Err(invalid(
                ErrorCode::RequestBodyTooLarge,
                format!(
                    "put-block carries {} bytes, at most {MAX_BLOCK_BYTES}",
                    data.len()
                ),
            )));
        }
        let target = format!("{container}/{name}");
        self.link.charge_bytes(data.len());
        let r = self
            .link
            .call("blob.put-block", &target, move |b, a| {
                b.put_block(
                    a,
                    &container,
                    &name,
                    &block_id,
                    &mut data.as_slice(),
                    lease_id.as_deref(),
                )
            })
            .await?;
        Ok(r.map_err(to_wit_error))
    }

    async fn put_block_list(
        &mut self,
        container: String,
        name: String,
        blocks: Vec<wit::BlockRef>,
        options: wit::PutOptions,
    ) -> Reply<wit::BlobProperties> {
        let options = match put_options(options) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        let blocks: Vec<store::BlockRef> = blocks.into_iter().map(block_ref).collect();
        let target = format!("{container}/{name}");
        let r = self
            .link
            .call("blob.put-block-list", &target, move |b, a| {
                b.put_block_list(a, &container, &name, &blocks, options)
            })
            .await?;
        Ok(r.map(blob_props).map_err(to_wit_error))
    }

    async fn get_block_list(
        &mut self,
        container: String,
        name: String,
        which: wit::BlockListType,
    ) -> Reply<wit::BlockList> {
        let which = match which {
            wit::BlockListType::Committed => store::BlockListType::Committed,
            wit::BlockListType::Uncommitted => store::BlockListType::Uncommitted,
            wit::BlockListType::All => store::BlockListType::All,
        };
        let target = format!("{container}/{name}");
        let r = self
            .link
            .call("blob.get-block-list", &target, move |b, a| {
                b.get_block_list(a, &container, &name, which)
            })
            .await?;
        Ok(r.map(|l| wit::BlockList {
            committed: block_info(l.committed),
            uncommitted: block_info(l.uncommitted),
        })
        .map_err(to_wit_error))
    }
}
