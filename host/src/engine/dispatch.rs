//! Turns a [`Call`] into the guest export it names, for each supported world version,
//! and the guest's answer into a [`Reply`].

use super::bindings::AnyBindings;
use super::instance::HostState;
use super::types::{Call, ProviderFailure, Reply};
use wasmtime::Store;

fn unit<E: Into<ProviderFailure>>(r: Result<(), E>) -> Result<Reply, ProviderFailure> {
    r.map(|()| Reply::Unit).map_err(Into::into)
}

/// The calls whose shape is the same in every version; `$rest` holds the arms that
/// differ. Conversions go through `Into`, which each version's types implement.
macro_rules! calls {
    ($p:ident, $store:ident, $call:expr, { $($rest:tt)* }) => {
        match $call {
            Call::Start(init) => $p
                .call_on_provider_start(&mut *$store, &(*init).into())
                .await?
                .map(|r| Reply::Started(r.into()))
                .map_err(Into::into),
            Call::AgentStart(msg) => unit($p.call_on_provider_agent_start(&mut *$store, &msg).await?),
            Call::Stop => unit($p.call_on_provider_stop(&mut *$store).await?),
            Call::Raw(msg) => $p
                .call_on_raw_message(&mut *$store, &msg)
                .await?
                .map(Reply::Text)
                .map_err(Into::into),
            Call::Health => Ok(Reply::Health($p.call_check_health(&mut *$store).await?.into())),
            Call::ReadFile(path) => $p
                .call_read_file(&mut *$store, &path)
                .await?
                .map(Reply::Text)
                .map_err(Into::into),
            Call::WriteFile(path, content) => {
                unit($p.call_write_file(&mut *$store, &path, &content).await?)
            }
            Call::DeleteFile(path) => unit($p.call_delete_file(&mut *$store, &path).await?),
            Call::CreateFolder(path) => unit($p.call_create_folder(&mut *$store, &path).await?),
            Call::RenameItem(from, to) => {
                unit($p.call_rename_item(&mut *$store, &from, &to).await?)
            }
            Call::DiffFiles => $p
                .call_get_diff_files(&mut *$store)
                .await?
                .map(|files| Reply::Diff(files.into_iter().map(Into::into).collect()))
                .map_err(Into::into),
            Call::MergePatch => $p
                .call_merge_as_patch(&mut *$store)
                .await?
                .map(Reply::Text)
                .map_err(Into::into),
            $($rest)*
        }
    };
}

/// Makes `call` on the instance behind `bindings`. The outer error is a trap.
pub(crate) async fn dispatch(
    store: &mut Store<HostState>,
    bindings: &AnyBindings,
    call: Call,
) -> wasmtime::Result<Result<Reply, ProviderFailure>> {
    Ok(match bindings {
        AnyBindings::V0_2(b) => {
            let p = b.tether_provider_provider();
            calls!(p, store, call, {
                Call::Close => unit(p.call_on_close_signal(&mut *store).await?),
                Call::Destroy(init) => {
                    unit(p.call_on_provider_destroy(&mut *store, &(*init).into()).await?)
                }
            })
        }
        AnyBindings::V0_1(b) => {
            let p = b.tether_provider_provider();
            calls!(p, store, call, {
                Call::Close => unit(p.call_on_close_signal(&mut *store, false).await?),
                // 0.1.0 has no init vars here: the instance removes what it started.
                Call::Destroy(_) => unit(p.call_on_close_signal(&mut *store, true).await?),
            })
        }
    })
}
