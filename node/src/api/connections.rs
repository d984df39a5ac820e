//! Connection caps for the gRPC and HTTP listeners: at most N open connections each.
//! A connection past the cap is accepted and closed at once (and counted as
//! `polity_requests_rejected_total{reason="connection_cap"}`), so one client that
//! opens thousands of idle connections cannot hold the node's sockets and memory;
//! the per-IP rate limit and per-connection concurrency cover the rest.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::metrics::Metrics;

/// A TCP connection that holds one of its listener's permits until it closes.
pub struct Capped {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

/// A listener that hands out at most `permits` connections at once.
pub struct CappedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl CappedListener {
    pub fn new(listener: TcpListener, connections_max: usize, metrics: Arc<Metrics>) -> Self {
        CappedListener {
            listener,
            permits: Arc::new(Semaphore::new(connections_max)),
            metrics,
        }
    }

    /// The next connection within the cap; connections past it are closed and
    /// counted. Accept errors (out of file descriptors, say) are returned.
    pub async fn accept_capped(&self) -> io::Result<(Capped, SocketAddr)> {
        loop {
            let (stream, address) = self.listener.accept().await?;
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => {
                    return Ok((
                        Capped {
                            stream,
                            _permit: permit,
                        },
                        address,
                    ));
                }
                Err(_) => {
                    self.metrics.reject("connection_cap");
                    drop(stream);
                }
            }
        }
    }

    /// The listener as a stream of connections, for tonic's `serve_with_incoming`.
    pub fn into_stream(self) -> impl Stream<Item = io::Result<Capped>> + Send + 'static {
        futures::stream::unfold(self, |listener| async move {
            let next = listener.accept_capped().await.map(|(stream, _)| stream);
            Some((next, listener))
        })
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = Capped;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Capped, SocketAddr) {
        loop {
            match self.accept_capped().await {
                Ok(accepted) => return accepted,
                Err(error) => {
                    // As axum's own TcpListener: back off on accept errors (e.g. EMFILE).
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl Connected for Capped {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
