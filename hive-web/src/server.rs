//! The HTTP accept loop. `axum::serve` offers no header-read timeout and no
//! connection cap, so the gateway runs hyper's HTTP/1 connection itself:
//! at most [`MAX_CONNECTIONS`] at once (further connections wait in the
//! kernel's backlog), a client that does not finish its request head within
//! [`HEADER_READ_TIMEOUT`] is dropped, and each request carries the TCP
//! peer as `ConnectInfo` and both ends as a [`PeerSocket`] (which the
//! tailscale-identity rule needs).
//!
//! On shutdown it stops accepting, asks every connection to finish its
//! current request, and waits at most [`SHUTDOWN_GRACE`].
//!
//! This module must never look inside a request: routing, auth and limits
//! are the router's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

use crate::sock_diag::PeerSocket;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// Time a client has to send a complete request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for open connections (event streams never end
/// by themselves, so this is what ends them).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = match stream.local_addr() {
            Ok(local) => Some(PeerSocket::new(local, peer)),
            Err(e) => {
                tracing::debug!(error = %e, %peer, "no local address for a connection");
                None
            }
        };
        let service = router
            .clone()
            .map_request(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                if let Some(conn) = &conn {
                    req.extensions_mut().insert(conn.clone());
                }
                req.map(Body::new)
            });
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let conn =
                builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            let mut conn = pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                }
                _ = closing.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
            drop(closing);
        });
    }
    drop(listener);
    drop(closing_rx);
    let _ = closing_tx.send(true);
    // Every connection task holds a receiver; `closed` fires when the last
    // one is gone.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, closing_tx.closed()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn read_all(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        // A reset instead of a clean close also ends the connection.
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    }

    // Paused time: the runtime jumps to the next timer whenever every task
    // waits, so the 10 s header timer fires without a 10 s test, and the
    // elapsed (virtual) time shows which timer closed the connection.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_finishes_its_request_head_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "served" }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, async {
            let _ = stop_rx.await;
        }));

        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();

        // Meanwhile a client that sends a whole request is served.
        let mut quick = TcpStream::connect(addr).await.unwrap();
        quick
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_all(&mut quick).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("served"), "{answer}");

        let answer = tokio::time::timeout(HEADER_READ_TIMEOUT * 6, read_all(&mut slow))
            .await
            .expect("the slow client was never dropped");
        assert!(!answer.contains("served"), "{answer}");
        assert!(
            started.elapsed() >= HEADER_READ_TIMEOUT,
            "closed after {:?}, before the header timer",
            started.elapsed()
        );

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
