//! The HTTP server for probes and Prometheus: `/healthz` (the process serves), `/readyz` (the
//! first Node sync and the first flag check are done) and `/metrics`. It listens on every
//! address by default, so it defends itself: a client must send its request headers within
//! [`HEADER_READ_TIMEOUT`] (a half-sent request, or an idle connection, is closed), and at most
//! [`MAX_CONNECTIONS`] connections are served at once (more are closed as soon as accepted).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// How long a client may take to send a request's headers (and how long a kept-alive
/// connection may sit idle): probes and scrapes send theirs at once; a slow loader is cut off.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once: probes and a few scrapers need a handful; a flood costs at most
/// this many sockets and tasks, and is over one [`HEADER_READ_TIMEOUT`] after it stops.
pub const MAX_CONNECTIONS: usize = 64;
/// How long connections may finish their request once the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// The server's defences.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Whether the agent is ready; starts unready.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the agent ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    ready: Readiness,
}

/// The router (separate from [`serve`] so tests can call it).
pub fn router(metrics: Metrics, ready: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AppState { metrics, ready })
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.ready.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first node sync and flag check\n",
        )
    }
}

async fn metrics_handler(State(s): State<AppState>) -> ([(&'static str, &'static str); 1], String) {
    s.metrics.ready.set(i64::from(s.ready.is_ready()));
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    ready: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        router(metrics, ready),
        Limits::default(),
        shutdown,
    )
    .await;
    Ok(())
}

/// Serves `app` under `limits` until `shutdown` resolves; then open connections get
/// [`SHUTDOWN_GRACE`] to finish the request they are serving.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(
                limit = limits.max_connections,
                "metrics server: too many connections; closing one"
            );
            drop(stream);
            continue;
        };
        let app = app.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                r = conn.as_mut() => r,
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!(error = %e, "metrics server: connection ended");
            }
        });
    }
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("metrics server: connections still open at shutdown were closed");
    }
}

/// Binds the server's address (at start-up, so a taken port fails fast).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    /// Slack for a loaded two-core machine, in multiples of the header timeout.
    const SLACK: u32 = 5;

    /// A server on a free port with `limits`; its address and the switch that stops it.
    async fn start(
        limits: Limits,
    ) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Metrics::new().unwrap(), Readiness::default());
        let (tx, mut rx) = watch::channel(false);
        let task = tokio::spawn(serve_with(listener, app, limits, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        (addr, tx, task)
    }

    /// Reads until the server closes the connection (or fails it), within `limit`; what was
    /// read, and when it ended.
    async fn until_closed(s: &mut TcpStream, limit: Duration) -> (String, Instant) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let read_all = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(limit, read_all)
            .await
            .expect("the server closes the connection in time");
        (String::from_utf8_lossy(&got).into_owned(), Instant::now())
    }

    /// `GET path` on a fresh connection; the answer.
    async fn get(addr: SocketAddr, path: &str, limit: Duration) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: baton\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        until_closed(&mut s, limit).await.0
    }

    /// A connection that sends half a request.
    async fn half_request(addr: SocketAddr) -> TcpStream {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: baton\r\n")
            .await
            .unwrap();
        s
    }

    #[tokio::test]
    async fn a_half_sent_request_is_closed_after_the_header_timeout() {
        let timeout = Duration::from_millis(500);
        let (addr, _stop, _task) = start(Limits {
            header_read_timeout: timeout,
            max_connections: 8,
        })
        .await;
        assert!(
            get(addr, "/healthz", timeout * SLACK)
                .await
                .starts_with("HTTP/1.1 200")
        );
        let started = Instant::now();
        let mut slow = half_request(addr).await;
        let (answer, closed) = until_closed(&mut slow, timeout * SLACK).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(closed - started >= timeout / 2, "closed too early");
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once_and_healthz_is_served_after() {
        let timeout = Duration::from_secs(2);
        let cap = 4;
        let (addr, _stop, _task) = start(Limits {
            header_read_timeout: timeout,
            max_connections: cap,
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..cap {
            idle.push(half_request(addr).await);
        }
        // Accepted after the others (the backlog is first in, first out): over the cap.
        let mut extra = half_request(addr).await;
        let (_, refused_at) = until_closed(&mut extra, timeout * SLACK).await;
        for s in &mut idle {
            let (_, closed_at) = until_closed(s, timeout * SLACK).await;
            assert!(
                refused_at < closed_at,
                "the extra connection waited for a slot"
            );
        }
        let answer = get(addr, "/healthz", timeout * SLACK).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_stops_the_server_with_connections_open() {
        let (addr, stop, task) = start(Limits::default()).await;
        let _idle = half_request(addr).await;
        assert!(get(addr, "/readyz", SHUTDOWN_GRACE).await.contains("503"));
        stop.send(true).unwrap();
        tokio::time::timeout(SHUTDOWN_GRACE * 2, task)
            .await
            .expect("the server stops within its grace")
            .unwrap();
    }
}
