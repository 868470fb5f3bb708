//! A real node's network: a namespace of its own, reached only by this process. Sockets are
//! created inside the node's namespace by a short-lived thread that entered it, so nothing is
//! added to the machine's own network (no veth, no route, no iptables rule), and all traffic
//! towards the control plane still goes to 127.0.0.1 of the machine.
//!
//! [`Forwarder`] stands in for the network path from a node to the API server: it listens inside
//! the node (at the API server's port) and relays each connection to the API server on the
//! machine's loopback.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use nix::sched::{CloneFlags, setns};

/// Runs `f` on a thread that has entered the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> std::io::Result<T> + Send) -> Result<T> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(&ns, CloneFlags::CLONE_NEWNET).context("setns into the node's network")?;
            Ok(f()?)
        })
        .join()
        .map_err(|_| anyhow!("the thread inside the node's network panicked"))?
    })
}

/// A TCP socket created inside the node's network, not yet connected (connect it with tokio).
pub fn socket_in(netns: &Path) -> Result<tokio::net::TcpSocket> {
    let fd = in_netns(netns, || {
        // SAFETY: socket(2) has no memory-safety preconditions; the descriptor is owned below.
        #[allow(unsafe_code)]
        let fd = unsafe {
            nix::libc::socket(
                nix::libc::AF_INET,
                nix::libc::SOCK_STREAM | nix::libc::SOCK_NONBLOCK | nix::libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
        #[allow(unsafe_code)]
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })?;
    Ok(tokio::net::TcpSocket::from_std_stream(TcpStream::from(fd)))
}

/// Relays connections made inside a node to an address on the machine's loopback.
#[derive(Debug)]
pub struct Forwarder {
    listener: Arc<TcpListener>,
    stopping: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    netns: PathBuf,
}

impl Forwarder {
    /// Listens on `listen` inside the node's network (`netns`) and relays every connection to
    /// `target`.
    pub fn start(netns: &Path, listen: SocketAddr, target: SocketAddr) -> Result<Self> {
        let listener = Arc::new(in_netns(netns, || TcpListener::bind(listen))?);
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (l, stop, conns) = (listener.clone(), stopping.clone(), connections.clone());
        std::thread::Builder::new()
            .name("node-forwarder".into())
            .spawn(move || {
                for inbound in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(inbound) = inbound else { continue };
                    let Ok(outbound) = TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    if let (Ok(a), Ok(b)) = (inbound.try_clone(), outbound.try_clone())
                        && let Ok(mut live) = conns.lock()
                    {
                        live.retain(|s| s.peer_addr().is_ok());
                        live.push(a);
                        live.push(b);
                    }
                    relay(inbound, outbound);
                }
            })?;
        Ok(Self {
            listener,
            stopping,
            connections,
            netns: netns.to_path_buf(),
        })
    }

    /// Stops listening and closes every relayed connection.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::Relaxed) {
            return;
        }
        // Wake the accept loop with a connection of our own, made inside the node.
        if let Ok(addr) = self.listener.local_addr() {
            let port = addr.port();
            let _ = in_netns(&self.netns, move || {
                TcpStream::connect((std::net::Ipv4Addr::LOCALHOST, port))
            });
        }
        // SAFETY: shutdown(2) on a descriptor this struct owns (through the Arc).
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::shutdown(self.listener.as_raw_fd(), nix::libc::SHUT_RDWR);
        }
        if let Ok(live) = self.connections.lock() {
            for s in live.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies both ways until either side closes, on two threads.
fn relay(a: TcpStream, b: TcpStream) {
    let pairs = [(a.try_clone(), b.try_clone()), (Ok(b), Ok(a))];
    for (from, to) in pairs {
        if let (Ok(mut from), Ok(mut to)) = (from, to) {
            let _ = std::thread::Builder::new()
                .name("node-relay".into())
                .spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                    let _ = from.shutdown(Shutdown::Read);
                });
        }
    }
}
