//! A TCP relay between an agent and the API server that a test can freeze: once frozen it keeps
//! every connection open and accepts new ones, but passes nothing on — an API server that hangs,
//! not one that refuses (which a client notices at once).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;

/// A running relay.
#[derive(Debug)]
pub struct Relay {
    port: u16,
    frozen: Arc<AtomicBool>,
    /// Bytes clients sent while frozen (and that were swallowed).
    swallowed: Arc<AtomicUsize>,
}

impl Relay {
    /// Relays 127.0.0.1:<a free port> to `target`.
    pub fn start(target: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let frozen = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicUsize::new(0));
        let (f, sw) = (frozen.clone(), swallowed.clone());
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                for inbound in listener.incoming().flatten() {
                    let Ok(outbound) = TcpStream::connect(target) else {
                        continue;
                    };
                    for (from, to) in [
                        (inbound.try_clone(), outbound.try_clone()),
                        (outbound.try_clone(), inbound.try_clone()),
                    ] {
                        if let (Ok(from), Ok(to)) = (from, to) {
                            let (f, sw) = (f.clone(), sw.clone());
                            let _ = std::thread::Builder::new()
                                .name("relay-copy".into())
                                .spawn(move || copy(from, to, &f, &sw));
                        }
                    }
                }
            })?;
        Ok(Self {
            port,
            frozen,
            swallowed,
        })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, nothing passes in either direction.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Bytes swallowed since the freeze: a client is waiting on an answer once this rises.
    pub fn swallowed(&self) -> usize {
        self.swallowed.load(Ordering::SeqCst)
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, swallowed: &AtomicUsize) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if frozen.load(Ordering::SeqCst) => {
                swallowed.fetch_add(n, Ordering::SeqCst);
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}
