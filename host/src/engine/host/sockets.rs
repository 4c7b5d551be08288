//! `wasi:sockets`: the address check wasmtime-wasi calls before every bind, listen,
//! accept, connect and datagram. Implicit binds pass; listening never does; connects
//! and datagrams need a `tcp://ip:port` or `udp://ip:port` grant naming the address.
//! Each socket is an open file on the host: making one counts against the instance's
//! open files (see [`super::open_files`]) and dropping it gives it back. A socket's
//! streams (a TCP connection's two, a UDP socket's two datagram streams) need no count of
//! their own: they are its children in the resource table, which refuses to drop a
//! socket while they live (the guest traps), so they never keep a socket's file open
//! after it.

use std::net::SocketAddr;

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, Host as _, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
use wasmtime_wasi::p2::bindings::sockets::udp::HostUdpSocket;
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView, WasiSocketsView};

use super::open_files::drop_gives_back;
use crate::engine::instance::HostState;

use crate::broker::Denied;
use crate::broker::net::NetPolicy;
use crate::engine::LogBudget;

/// Whether `usage` of `addr` is allowed; a refusal is logged with the environment,
/// within the instance's `log_budget` (a guest looping on a refused connect, or a
/// peer flooding a guest's socket with datagrams it may not hear, logs a burst, not a
/// line each).
pub(crate) fn allowed(
    policy: &NetPolicy,
    log_budget: &LogBudget,
    addr: SocketAddr,
    usage: SocketAddrUse,
) -> bool {
    let verdict = match usage {
        // Connecting binds the wildcard address first; any other bind is a server's.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind
            if addr.ip().is_unspecified() && addr.port() == 0 =>
        {
            Ok(())
        }
        SocketAddrUse::TcpBind
        | SocketAddrUse::UdpBind
        | SocketAddrUse::TcpListen
        | SocketAddrUse::TcpAccept => Err(Denied::Serve(addr)),
        SocketAddrUse::TcpConnect => policy.check_socket("tcp", addr),
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => policy.check_socket("udp", addr),
    };
    match verdict {
        Ok(()) => true,
        Err(denied) => {
            let reason = policy.explain(&denied);
            if let Some(dropped) = log_budget.take(std::time::Instant::now()) {
                tracing::warn!(env = %policy.env_id(), %addr, ?usage, %reason, dropped, "socket use denied");
            }
            false
        }
    }
}

/// Puts the counting creates and drops in place of wasmtime-wasi's (added before, and
/// so shadowed).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    super::shadowing(linker, add_calls)
}

type Store<'a> = StoreContextMut<'a, HostState>;
type Made<T> = wasmtime::Result<(Result<Resource<T>, ErrorCode>,)>;

fn add_calls(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker
        .instance("wasi:sockets/tcp-create-socket@0.2.12")?
        .func_wrap(
            "create-tcp-socket",
            |mut store: Store<'_>, (family,): (IpAddressFamily,)| -> Made<TcpSocket> {
                let state = store.data_mut();
                if state.files.take(&state.env_id).is_err() {
                    return Ok((Err(ErrorCode::NewSocketLimit),));
                }
                let mut view = state.sockets();
                let made = tcp_create_socket::Host::create_tcp_socket(&mut view, family);
                let made = made_answer(&mut view, made)?;
                Ok(given_back_unless_made(state, made))
            },
        )?;
    linker
        .instance("wasi:sockets/udp-create-socket@0.2.12")?
        .func_wrap_async(
            "create-udp-socket",
            |mut store: Store<'_>, (family,): (IpAddressFamily,)| {
                Box::new(async move {
                    let state = store.data_mut();
                    if state.files.take(&state.env_id).is_err() {
                        return Ok((Err(ErrorCode::NewSocketLimit),));
                    }
                    let mut view = state.sockets();
                    let made = udp_create_socket::Host::create_udp_socket(&mut view, family).await;
                    let made = made_answer(&mut view, made)?;
                    Ok(given_back_unless_made(state, made))
                })
            },
        )?;
    let mut tcp = linker.instance("wasi:sockets/tcp@0.2.12")?;
    drop_gives_back::<TcpSocket>(&mut tcp, "tcp-socket", |state, socket| {
        HostTcpSocket::drop(&mut state.sockets(), socket)
    })?;
    let mut udp = linker.instance("wasi:sockets/udp@0.2.12")?;
    drop_gives_back::<UdpSocket>(&mut udp, "udp-socket", |state, socket| {
        HostUdpSocket::drop(&mut state.sockets(), socket)
    })?;
    Ok(())
}

/// wasmtime-wasi's answer as the guest gets it: its error code, or the trap.
fn made_answer<T>(view: &mut WasiSocketsCtxView<'_>, made: SocketResult<Resource<T>>) -> Made<T> {
    match made {
        Ok(socket) => Ok((Ok(socket),)),
        Err(e) => Ok((Err(view.convert_error_code(e)?),)),
    }
}

fn given_back_unless_made<T>(
    state: &mut HostState,
    made: (Result<Resource<T>, ErrorCode>,),
) -> (Result<Resource<T>, ErrorCode>,) {
    if made.0.is_err() {
        state.files.give();
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NetConfig, UrlPattern};

    #[test]
    fn only_implicit_binds_and_granted_connects_pass() {
        let grant = vec![UrlPattern::parse("tcp://127.0.0.1:5432").unwrap()];
        let policy = NetPolicy::new("env".into(), grant.clone(), grant, NetConfig::default());
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let db: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert!(allowed(
            &policy,
            &LogBudget::default(),
            any,
            SocketAddrUse::TcpBind
        ));
        assert!(allowed(
            &policy,
            &LogBudget::default(),
            db,
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            &policy,
            &LogBudget::default(),
            "127.0.0.1:22".parse().unwrap(),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            &policy,
            &LogBudget::default(),
            db,
            SocketAddrUse::UdpSend
        ));
        assert!(!allowed(
            &policy,
            &LogBudget::default(),
            "0.0.0.0:8080".parse().unwrap(),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            &policy,
            &LogBudget::default(),
            any,
            SocketAddrUse::TcpListen
        ));
    }

    #[test]
    fn a_flood_of_refusals_is_logged_within_the_instance_s_budget() {
        // A peer sending datagrams the guest may not hear, as fast as it likes: each is
        // refused, but only the budget's burst is logged, and the budget is spent for
        // the instance's other lines too.
        let policy = NetPolicy::new("env".into(), [], [], NetConfig::default());
        let budget = LogBudget::default();
        let peer: SocketAddr = "127.0.0.1:53".parse().unwrap();
        for _ in 0..10_000 {
            assert!(!allowed(&policy, &budget, peer, SocketAddrUse::UdpReceive));
        }
        assert_eq!(
            budget.take(std::time::Instant::now()),
            None,
            "the budget was not spent"
        );
    }

    #[test]
    fn a_wildcard_udp_grant_neither_sends_to_nor_hears_from_sensitive_peers() {
        // wasmtime-wasi checks every received datagram's source as `UdpReceive` and
        // drops the refused ones: a wildcard grant does not let loopback or the
        // metadata service talk to the guest, and no bind but the implicit one passes.
        let grant = vec![UrlPattern::parse("udp://*:*").unwrap()];
        let policy = NetPolicy::new("env".into(), grant.clone(), grant, NetConfig::default());
        for sensitive in [
            "127.0.0.1:53",
            "169.254.169.254:53",
            "[::1]:53",
            "0.0.0.0:53",
        ] {
            let addr: SocketAddr = sensitive.parse().unwrap();
            assert!(
                !allowed(
                    &policy,
                    &LogBudget::default(),
                    addr,
                    SocketAddrUse::UdpReceive
                ),
                "{addr}"
            );
            assert!(
                !allowed(&policy, &LogBudget::default(), addr, SocketAddrUse::UdpSend),
                "{addr}"
            );
        }
        let public: SocketAddr = "192.0.2.7:53".parse().unwrap();
        assert!(allowed(
            &policy,
            &LogBudget::default(),
            public,
            SocketAddrUse::UdpReceive
        ));
        assert!(allowed(
            &policy,
            &LogBudget::default(),
            public,
            SocketAddrUse::UdpSend
        ));
        let wildcard_port: SocketAddr = "0.0.0.0:5353".parse().unwrap();
        assert!(!allowed(
            &policy,
            &LogBudget::default(),
            wildcard_port,
            SocketAddrUse::UdpBind
        ));
    }
}
