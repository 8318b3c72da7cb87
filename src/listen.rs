//! Listening sockets. The main listener is opened with `SO_REUSEPORT` (Linux and the BSDs) so
//! that each worker thread can have a sibling socket on the same address, and the kernel
//! spreads new connections over them; only sockets of the same user can join the group.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel queues per socket before the gateway accepts them.
const BACKLOG: i32 = 4096;

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted gateway binds at once, while its old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    )))]
    let _ = reuse_port;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The main listener (its workers' siblings come from [`reuse_port_sibling`]).
pub fn bind_shared(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(socket(addr, true)?)
}

/// A listener with no siblings (the admin listener).
pub fn bind(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::from_std(socket(addr, false)?)
}

/// Another socket on `addr`, the address a [`bind_shared`] listener got (its real port, when
/// it was asked for port 0).
pub fn reuse_port_sibling(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    socket(addr, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn siblings_share_the_address_and_each_accepts() {
        let first = bind_shared("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = reuse_port_sibling(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // A listener bound without SO_REUSEPORT keeps its address to itself.
        let alone = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(reuse_port_sibling(alone.local_addr().unwrap()).is_err());
    }
}
