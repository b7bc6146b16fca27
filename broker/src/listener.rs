//! What every listener does before a connection reaches its protocol: accepting, the
//! connection caps (in all, and per client IP address), and closing refused connections at
//! once. The native and Kafka listeners run their connections through [`serve`]; the HTTP
//! listener through [`GuardedListener`], which also puts the idle and write timeouts on the
//! socket itself (HTTP framing is hyper's, so the timeouts cannot live in a frame loop).
//!
//! A connection over a cap is accepted and closed straight away, not left in the kernel's
//! accept queue: a queue full of hostile connections would otherwise delay every new client,
//! and the ones already served keep being served.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// How often at most a listener logs that it refuses connections.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Counts one listener's open connections and admits new ones within its caps.
#[derive(Debug)]
pub struct Admission {
    listener: &'static str,
    connections_max: usize,
    connections_per_ip_max: usize,
    metrics: Arc<Metrics>,
    state: Mutex<AdmissionState>,
}

#[derive(Debug, Default)]
struct AdmissionState {
    n_open: usize,
    n_open_per_ip: HashMap<IpAddr, usize>,
    n_refused_unlogged: u64,
    last_warning: Option<Instant>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ConnectionsMax,
    ConnectionsPerIpMax,
}

impl Admission {
    pub fn new(
        listener: &'static str,
        connections_max: usize,
        connections_per_ip_max: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            listener,
            connections_max,
            connections_per_ip_max,
            metrics,
            state: Mutex::default(),
        })
    }

    /// Admits a connection from `ip` if both caps allow it; it counts until the returned
    /// guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut state = self.state.lock().expect("admission lock");
        let refusal = if state.n_open >= self.connections_max {
            Some(Refusal::ConnectionsMax)
        } else if state.n_open_per_ip.get(&ip).copied().unwrap_or(0) >= self.connections_per_ip_max
        {
            Some(Refusal::ConnectionsPerIpMax)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.metrics.connections_refused.inc();
            state.n_refused_unlogged += 1;
            let now = Instant::now();
            if state
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= REFUSAL_WARNING_INTERVAL)
            {
                tracing::warn!(
                    listener = self.listener,
                    %ip,
                    ?refusal,
                    n_refused = state.n_refused_unlogged,
                    connections_max = self.connections_max,
                    connections_per_ip_max = self.connections_per_ip_max,
                    "refusing connections over the cap (closed at once; logged at most every 10 s)"
                );
                state.last_warning = Some(now);
                state.n_refused_unlogged = 0;
            }
            return Err(refusal);
        }
        state.n_open += 1;
        *state.n_open_per_ip.entry(ip).or_insert(0) += 1;
        self.metrics.connections.inc();
        Ok(Admitted {
            admission: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; dropping it frees its place under the caps.
#[derive(Debug)]
pub struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = self.admission.state.lock().expect("admission lock");
        state.n_open -= 1;
        if let Some(n) = state.n_open_per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                state.n_open_per_ip.remove(&self.ip);
            }
        }
        self.admission.metrics.connections.dec();
    }
}

/// Accepts connections until `shutdown` turns true, runs `connection` for each admitted one,
/// then waits for them all to end. `connection` returns why it closed, if not cleanly.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    admission: Arc<Admission>,
    mut shutdown: watch::Receiver<bool>,
    connection: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = admission.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let Ok(admitted) = admission.admit(peer.ip()) else {
            // Dropping the socket closes it now.
            continue;
        };
        let _ = socket.set_nodelay(true);
        let listener_name = admission.listener;
        let running = connection(socket, peer);
        connections.spawn(async move {
            if let Err(reason) = running.await {
                tracing::info!(listener = listener_name, %peer, %reason, "closed connection");
            }
            drop(admitted);
        });
        // Reap finished connections so the set does not grow with the connection count.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Resolves once shutdown has been signalled (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A TCP listener for axum with the connection caps, whose connections are closed when a
/// read waits longer than `read_timeout` (idle keep-alive connections, slowloris) or a write
/// longer than `write_timeout` (clients that do not read their answers).
#[derive(Debug)]
pub struct GuardedListener {
    pub listener: TcpListener,
    pub admission: Arc<Admission>,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(listener = self.admission.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(admitted) = self.admission.admit(peer.ip()) else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let stream = GuardedStream {
                socket,
                _admitted: admitted,
                read_timeout: self.read_timeout,
                write_timeout: self.write_timeout,
                read_deadline: None,
                write_deadline: None,
            };
            return (stream, peer);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A TCP stream that fails a read or write that has waited past its timeout.
#[derive(Debug)]
pub struct GuardedStream {
    socket: TcpStream,
    _admitted: Admitted,
    read_timeout: Duration,
    write_timeout: Duration,
    read_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

/// `Pending` from the socket starts (or keeps) a deadline; progress clears it; a deadline
/// that passes fails the call with `TimedOut`.
fn guard<T>(
    polled: Poll<std::io::Result<T>>,
    deadline: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
    what: &str,
) -> Poll<std::io::Result<T>> {
    match polled {
        Poll::Ready(result) => {
            *deadline = None;
            Poll::Ready(result)
        }
        Poll::Pending => {
            let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    *deadline = None;
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{what} waited longer than {timeout:?}"),
                    )))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_read(cx, buf);
        guard(
            polled,
            &mut this.read_deadline,
            this.read_timeout,
            cx,
            "a read",
        )
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_write(cx, buf);
        guard(
            polled,
            &mut this.write_deadline,
            this.write_timeout,
            cx,
            "a write",
        )
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_flush(cx);
        guard(
            polled,
            &mut this.write_deadline,
            this.write_timeout,
            cx,
            "a flush",
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_ip() {
        let admission = Admission::new("test", 3, 2, Arc::new(Metrics::default()));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(
            admission.admit(a).unwrap_err(),
            Refusal::ConnectionsPerIpMax
        );
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::ConnectionsMax);
        drop(a1);
        let _b2 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::ConnectionsMax);
    }
}
