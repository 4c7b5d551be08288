//! The `wasi:filesystem/types` calls that add to the disk, served by the host in front
//! of wasmtime-wasi's own so that writes under the workspace and the state directory
//! keep to their [`DiskQuota`]: writing (`write`, the streams of `write-via-stream` and
//! `append-via-stream`), growing a file (`set-size`) and making an entry (`open-at`
//! with `create`, `create-directory-at`, `symlink-at`, `link-at`). Past the quota they
//! fail with `insufficient-space`, as on a full disk. Everything else, and every call
//! on a directory the operator granted (which no quota covers), is wasmtime-wasi's.
//!
//! A descriptor is under the quota of the preopen it was opened from: each one made is
//! noted by its handle (see [`Quotas`]). Renames and hard links between trees under
//! different quotas (or none) fail with `cross-device`, as between file systems, or a
//! file made where no quota counts could be moved into the workspace.
//!
//! The calls that open a file on the host (`open-at`, `read-directory`, the
//! `*-via-stream` calls) and the drops of what they make (descriptors, listings, and the
//! `wasi:io` streams) are served here too, to count the instance's open files
//! ([`super::open_files`]); a listing is the host's own ([`super::listing`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;
use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, Host as _, HostDescriptor, OpenFlags, PathFlags,
};
use wasmtime_wasi::p2::bindings::io::streams::{HostInputStream, HostOutputStream};
use wasmtime_wasi::p2::{
    DynInputStream, DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult,
};

use super::listing::Listing;
use super::open_files::{TooMany, drop_gives_back};
use crate::disk_quota::{DiskQuota, ENTRY_BYTES};
use crate::engine::instance::HostState;

/// The interfaces as wasmtime-wasi links them (every 0.2 guest resolves to them).
const TYPES: &str = "wasi:filesystem/types@0.2.12";
const STREAMS: &str = "wasi:io/streams@0.2.12";

/// Which quota each open descriptor of an instance is under, by its handle. Every
/// descriptor the guest gets is made by `open-at` or `get-directories`, and each sets
/// its handle's entry (or clears it), so a reused handle never keeps another's quota.
#[derive(Default)]
pub(crate) struct Quotas(HashMap<u32, Arc<DiskQuota>>);

impl Quotas {
    /// Notes that the descriptor `rep` is under `quota` (or under none).
    pub(crate) fn note(&mut self, rep: u32, quota: Option<Arc<DiskQuota>>) {
        match quota {
            Some(quota) => self.0.insert(rep, quota),
            None => self.0.remove(&rep),
        };
    }

    fn of(&self, fd: &Resource<Descriptor>) -> Option<Arc<DiskQuota>> {
        self.0.get(&fd.rep()).cloned()
    }
}

/// Puts the calls above in place of wasmtime-wasi's (added before, and so shadowed).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::shadowing(linker, add_calls)
}

type Store<'a> = StoreContextMut<'a, HostState>;
type FsView<'a> = wasmtime_wasi::filesystem::WasiFilesystemCtxView<'a>;
type Answer<T> = wasmtime::Result<(Result<T, ErrorCode>,)>;

fn add_calls(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let mut types = linker.instance(TYPES)?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: Store<'_>, (fd, data, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(e) = charge(state, &fd, data.len() as u64).await {
                    return Ok((Err(e),));
                }
                let mut fs = state.filesystem();
                let written = HostDescriptor::write(&mut fs, fd, data, offset).await;
                answer(&mut fs, written)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: Store<'_>, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let now = match state.table.get(&fd)? {
                    wasmtime_wasi::filesystem::Descriptor::File(f) => {
                        f.file.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                    wasmtime_wasi::filesystem::Descriptor::Dir(_) => 0,
                };
                if let Err(e) = charge(state, &fd, size.saturating_sub(now)).await {
                    return Ok((Err(e),));
                }
                let mut fs = state.filesystem();
                let set = HostDescriptor::set_size(&mut fs, fd, size).await;
                answer(&mut fs, set)
            })
        },
    )?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: Store<'_>, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            if let Err(e) = state.files.take(&state.env_id) {
                return Ok((Err(too_many(e)),));
            }
            let quota = state.disk.of(&fd);
            let mut fs = state.filesystem();
            let stream = HostDescriptor::write_via_stream(&mut fs, fd, offset);
            let stream = capped(&mut fs, stream, quota)?;
            Ok(counted_stream(state, stream))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: Store<'_>, (fd,): (Resource<Descriptor>,)| {
            let state = store.data_mut();
            if let Err(e) = state.files.take(&state.env_id) {
                return Ok((Err(too_many(e)),));
            }
            let quota = state.disk.of(&fd);
            let mut fs = state.filesystem();
            let stream = HostDescriptor::append_via_stream(&mut fs, fd);
            let stream = capped(&mut fs, stream, quota)?;
            Ok(counted_stream(state, stream))
        },
    )?;
    types.func_wrap(
        "[method]descriptor.read-via-stream",
        |mut store: Store<'_>, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            if let Err(e) = state.files.take(&state.env_id) {
                return Ok((Err(too_many(e)),));
            }
            let mut fs = state.filesystem();
            let stream = HostDescriptor::read_via_stream(&mut fs, fd, offset);
            let stream = answer(&mut fs, stream)?;
            Ok(counted_stream(state, stream))
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.read-directory",
        |mut store: Store<'_>, (fd,): (Resource<Descriptor>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let dir = match state.table.get(&fd)? {
                    wasmtime_wasi::filesystem::Descriptor::Dir(d) => d.dir.clone(),
                    wasmtime_wasi::filesystem::Descriptor::File(_) => {
                        return Ok((Err(ErrorCode::NotDirectory),));
                    }
                };
                if let Err(e) = state.files.take(&state.env_id) {
                    return Ok((Err(too_many(e)),));
                }
                let opened = tokio::task::spawn_blocking(move || Listing::open(&*dir))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                match opened {
                    Ok(listing) => Ok((Ok(state.table.push(listing)?),)),
                    Err(e) => {
                        state.files.give();
                        answer(&mut state.filesystem(), Err(e.into()))
                    }
                }
            })
        },
    )?;
    types.func_wrap_async(
        "[method]directory-entry-stream.read-directory-entry",
        |mut store: Store<'_>, (listing,): (Resource<Listing>,)| {
            Box::new(async move {
                let next = store.data_mut().table.get_mut(&listing)?.next().await;
                answer(&mut store.data_mut().filesystem(), next)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.open-at",
        |mut store: Store<'_>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                let quota = state.disk.of(&fd);
                if let Err(e) = state.files.take(&state.env_id) {
                    return Ok((Err(too_many(e)),));
                }
                if open_flags.contains(OpenFlags::CREATE)
                    && let Err(e) = charge(state, &fd, ENTRY_BYTES).await
                {
                    state.files.give();
                    return Ok((Err(e),));
                }
                let mut fs = state.filesystem();
                let opened =
                    HostDescriptor::open_at(&mut fs, fd, path_flags, path, open_flags, flags).await;
                let opened = answer(&mut fs, opened)?;
                match &opened {
                    (Ok(child),) => state.disk.note(child.rep(), quota),
                    (Err(_),) => state.files.give(),
                }
                Ok(opened)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.create-directory-at",
        |mut store: Store<'_>, (fd, path): (Resource<Descriptor>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(e) = charge(state, &fd, ENTRY_BYTES).await {
                    return Ok((Err(e),));
                }
                let mut fs = state.filesystem();
                let made = HostDescriptor::create_directory_at(&mut fs, fd, path).await;
                answer(&mut fs, made)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.symlink-at",
        |mut store: Store<'_>, (fd, target, path): (Resource<Descriptor>, String, String)| {
            Box::new(async move {
                let state = store.data_mut();
                if let Err(e) = charge(state, &fd, ENTRY_BYTES).await {
                    return Ok((Err(e),));
                }
                let mut fs = state.filesystem();
                let made = HostDescriptor::symlink_at(&mut fs, fd, target, path).await;
                answer(&mut fs, made)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.link-at",
        |mut store: Store<'_>,
         (fd, old_flags, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if !same_quota(state, &fd, &new_fd) {
                    return Ok((Err(ErrorCode::CrossDevice),));
                }
                if let Err(e) = charge(state, &new_fd, ENTRY_BYTES).await {
                    return Ok((Err(e),));
                }
                let mut fs = state.filesystem();
                let made =
                    HostDescriptor::link_at(&mut fs, fd, old_flags, old_path, new_fd, new_path)
                        .await;
                answer(&mut fs, made)
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.rename-at",
        |mut store: Store<'_>,
         (fd, old_path, new_fd, new_path): (
            Resource<Descriptor>,
            String,
            Resource<Descriptor>,
            String,
        )| {
            Box::new(async move {
                let state = store.data_mut();
                if !same_quota(state, &fd, &new_fd) {
                    return Ok((Err(ErrorCode::CrossDevice),));
                }
                let mut fs = state.filesystem();
                let moved =
                    HostDescriptor::rename_at(&mut fs, fd, old_path, new_fd, new_path).await;
                answer(&mut fs, moved)
            })
        },
    )?;
    // What gives an open file back.
    drop_gives_back::<Descriptor>(&mut types, "descriptor", |state, fd| {
        HostDescriptor::drop(&mut state.filesystem(), fd)
    })?;
    drop_gives_back::<Listing>(&mut types, "directory-entry-stream", |state, listing| {
        state.table.delete(listing)?;
        Ok(())
    })?;
    let mut streams = linker.instance(STREAMS)?;
    streams.resource_async(
        "output-stream",
        ResourceType::host::<DynOutputStream>(),
        |mut store, rep| {
            Box::new(async move {
                let state = store.data_mut();
                state.files.drop_stream(rep);
                HostOutputStream::drop(&mut state.table, Resource::new_own(rep)).await
            })
        },
    )?;
    streams.resource_async(
        "input-stream",
        ResourceType::host::<DynInputStream>(),
        |mut store, rep| {
            Box::new(async move {
                let state = store.data_mut();
                state.files.drop_stream(rep);
                HostInputStream::drop(&mut state.table, Resource::new_own(rep)).await
            })
        },
    )?;
    Ok(())
}

/// What the guest gets for an open past a cap on open files.
fn too_many(e: TooMany) -> ErrorCode {
    tracing::debug!(reason = %e, "open refused");
    ErrorCode::InsufficientMemory
}

/// Notes the stream a `*-via-stream` call made as holding the file counted for it, or
/// gives the file back when none was made.
fn counted_stream<S: 'static>(
    state: &mut HostState,
    stream: (Result<Resource<S>, ErrorCode>,),
) -> (Result<Resource<S>, ErrorCode>,) {
    match &stream {
        (Ok(made),) => state.files.note_stream(made.rep()),
        (Err(_),) => state.files.give(),
    }
    stream
}

/// Takes `bytes` from the quota `fd` is under, if any. (A refusal's log line carries
/// the environment through the span every guest call runs in.)
fn charge(
    state: &HostState,
    fd: &Resource<Descriptor>,
    bytes: u64,
) -> impl Future<Output = Result<(), ErrorCode>> + Send + 'static {
    let quota = state.disk.of(fd);
    async move {
        let Some(quota) = quota else {
            return Ok(());
        };
        quota.take(bytes).await.map_err(|full| {
            tracing::debug!(%full, "write refused");
            ErrorCode::InsufficientSpace
        })
    }
}

fn same_quota(state: &HostState, a: &Resource<Descriptor>, b: &Resource<Descriptor>) -> bool {
    match (state.disk.of(a), state.disk.of(b)) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
        _ => false,
    }
}

/// wasmtime-wasi's answer as the guest gets it: its error code, or the trap.
fn answer<T>(view: &mut FsView<'_>, result: FsResult<T>) -> Answer<T> {
    match result {
        Ok(value) => Ok((Ok(value),)),
        Err(e) => Ok((Err(view.convert_error_code(e)?),)),
    }
}

/// The stream wasmtime-wasi made, behind the quota when there is one.
fn capped(
    view: &mut FsView<'_>,
    stream: FsResult<Resource<DynOutputStream>>,
    quota: Option<Arc<DiskQuota>>,
) -> Answer<Resource<DynOutputStream>> {
    let stream = match stream {
        Ok(stream) => stream,
        Err(e) => return Ok((Err(view.convert_error_code(e)?),)),
    };
    let Some(quota) = quota else {
        return Ok((Ok(stream),));
    };
    let table = &mut *view.table;
    let inner = table.delete(stream)?;
    let capped: DynOutputStream = Box::new(CappedStream {
        inner,
        quota,
        walk: None,
    });
    Ok((Ok(table.push(capped)?),))
}

/// A file's output stream that takes what it writes from a quota. `check-write`
/// permits no more than the quota's room; when the room is gone and a walk of the tree
/// is due, it permits nothing until the walk has ended (the guest's wait for the stream
/// waits for it), then what the walk found; when no walk is due, the stream fails with
/// `insufficient-space`.
struct CappedStream {
    inner: DynOutputStream,
    quota: Arc<DiskQuota>,
    walk: Option<JoinHandle<()>>,
}

/// The stream's error past its quota (the refusal counted).
fn full(quota: &DiskQuota) -> StreamError {
    let refused = quota.full();
    tracing::debug!(%refused, "stream write refused");
    StreamError::LastOperationFailed(std::io::Error::from_raw_os_error(libc::ENOSPC).into())
}

#[async_trait::async_trait]
impl OutputStream for CappedStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if !self.quota.try_take(bytes.len() as u64) {
            return Err(full(&self.quota));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.walk.as_ref().is_some_and(|walk| !walk.is_finished()) {
            return Ok(0);
        }
        self.walk = None;
        let permit = self.inner.check_write()?;
        let room = usize::try_from(self.quota.room()).unwrap_or(usize::MAX);
        if permit == 0 || room > 0 {
            return Ok(permit.min(room));
        }
        if !self.quota.walk_due() {
            return Err(full(&self.quota));
        }
        let quota = self.quota.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                self.walk = Some(runtime.spawn(async move { quota.recount().await }));
                Ok(0)
            }
            Err(_) => Err(full(&self.quota)),
        }
    }

    async fn cancel(&mut self) {
        if let Some(walk) = self.walk.take() {
            walk.abort();
        }
        self.inner.cancel().await
    }
}

#[async_trait::async_trait]
impl Pollable for CappedStream {
    async fn ready(&mut self) {
        if let Some(walk) = self.walk.as_mut() {
            let _ = walk.await;
            self.walk = None;
        }
        self.inner.ready().await
    }
}
