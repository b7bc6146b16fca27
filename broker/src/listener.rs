//! What every listener does before a connection reaches its protocol: accepting, the
//! connection caps (in all, and per client IP address), closing refused connections at once,
//! and the TLS handshake on listeners whose protocol uses TLS. The native and Kafka listeners
//! run their connections through [`serve`]; the HTTP listener through [`GuardedListener`],
//! which also puts the idle and write timeouts on the socket itself (HTTP framing is hyper's,
//! so the timeouts cannot live in a frame loop).
//!
//! A connection over a cap is accepted and closed straight away, not left in the kernel's
//! accept queue: a queue full of hostile connections would otherwise delay every new client,
//! and the ones already served keep being served. A TLS handshake counts under the caps and
//! must finish within the handshake timeout; one that fails closes only its own connection.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::metrics::{ListenerLabel, Metrics};
use crate::security::tls::{principal_from_certificate, ServerTls};
use crate::security::{ListenerSpec, SecurityProtocol, Session};

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
        self.metrics
            .listener_connections
            .get_or_create(&ListenerLabel {
                listener: self.listener,
            })
            .inc();
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
        self.admission
            .metrics
            .listener_connections
            .get_or_create(&ListenerLabel {
                listener: self.admission.listener,
            })
            .dec();
    }
}

/// Which port a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    Native,
    Kafka,
    Http,
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListenerKind::Native => "native",
            ListenerKind::Kafka => "kafka",
            ListenerKind::Http => "http",
        })
    }
}

/// A bound listener: its socket, its spec (with the port it got when asked for port 0) and, when
/// its protocol uses TLS, the server's TLS material.
#[derive(Debug)]
pub struct BoundListener {
    pub listener: TcpListener,
    pub spec: ListenerSpec,
    pub tls: Option<Arc<ServerTls>>,
}

impl BoundListener {
    /// Binds `spec`; `tls` is required when its protocol uses TLS and ignored otherwise.
    pub async fn bind(
        kind: ListenerKind,
        spec: ListenerSpec,
        tls: Option<&Arc<ServerTls>>,
    ) -> std::io::Result<BoundListener> {
        let tls = if spec.protocol.uses_tls() {
            Some(tls.cloned().ok_or_else(|| {
                std::io::Error::other(format!(
                    "{kind} listener {spec} uses TLS but no TLS certificate is configured"
                ))
            })?)
        } else {
            None
        };
        let listener = TcpListener::bind(spec.addr).await?;
        let addr = listener.local_addr()?;
        Ok(BoundListener {
            listener,
            spec: ListenerSpec {
                protocol: spec.protocol,
                addr,
            },
            tls,
        })
    }
}

impl BoundListener {
    /// A PLAINTEXT listener on a socket bound elsewhere (tests, benchmarks).
    pub fn plaintext(listener: TcpListener) -> std::io::Result<BoundListener> {
        Ok(BoundListener {
            spec: ListenerSpec {
                protocol: SecurityProtocol::Plaintext,
                addr: listener.local_addr()?,
            },
            listener,
            tls: None,
        })
    }
}

/// A Kafka listener's advertised address, `PROTOCOL://host:port`, as in Kafka's
/// `advertised.listeners`: the host may be a name, and the entry applies to the listener with
/// the same protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdvertisedListener {
    pub protocol: SecurityProtocol,
    pub host: String,
    pub port: u16,
}

impl fmt::Display for AdvertisedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.protocol, self.host, self.port)
    }
}

impl FromStr for AdvertisedListener {
    type Err = String;

    fn from_str(s: &str) -> Result<AdvertisedListener, String> {
        let (protocol, address) = s
            .split_once("://")
            .ok_or_else(|| format!("advertised listener {s:?} is not PROTOCOL://host:port"))?;
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| format!("advertised listener {s:?} has no :port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("advertised listener {s:?}: bad host {host:?}"));
        }
        Ok(AdvertisedListener {
            protocol: protocol.parse()?,
            host: host.to_string(),
            port: port
                .parse()
                .map_err(|e| format!("advertised listener {s:?}: port {port:?}: {e}"))?,
        })
    }
}

impl Serialize for AdvertisedListener {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AdvertisedListener {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AdvertisedListener, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An accepted connection's byte stream: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Runs the TLS handshake when the listener uses TLS, within `timeout`, and returns the stream
/// with the connection's session: the listener's protocol, and the client certificate's
/// principal when one was verified. `client_certificates`: whether to ask for one as
/// `client_auth` says (an `SSL` listener) or never (`SASL_SSL`, the broker's HTTPS ports).
pub async fn establish(
    socket: TcpStream,
    peer: SocketAddr,
    protocol: SecurityProtocol,
    tls: Option<&ServerTls>,
    client_certificates: bool,
    timeout: Duration,
) -> Result<(Stream, Session), String> {
    let mut session = Session::new(protocol, peer);
    let Some(tls) = tls else {
        return Ok((Stream::Plain(socket), session));
    };
    let stream = tokio::time::timeout(
        timeout,
        tls.acceptor_for(client_certificates).accept(socket),
    )
    .await
    .map_err(|_| format!("TLS handshake not completed within {timeout:?}"))?
    .map_err(|e| format!("TLS handshake failed: {e}"))?;
    // rustls hands out peer certificates only once its verifier has accepted them.
    if let Some(cert) = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        match principal_from_certificate(cert) {
            Some(principal) => session.principal = principal,
            None => return Err("the client certificate's subject cannot be read".into()),
        }
    }
    Ok((Stream::Tls(Box::new(stream)), session))
}

/// Accepts connections until `shutdown` turns true, runs the TLS handshake (within
/// `handshake_timeout`) when the listener uses TLS, runs `connection` for each admitted one,
/// then waits for them all to end. `connection` returns why it closed, if not cleanly.
pub async fn serve<F, Fut>(
    bound: BoundListener,
    admission: Arc<Admission>,
    handshake_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    connection: F,
) where
    F: Fn(Stream, Session) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let BoundListener {
        listener,
        spec,
        tls,
    } = bound;
    let connection = Arc::new(connection);
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
        let tls = tls.clone();
        let connection = connection.clone();
        let mut stop = shutdown.clone();
        connections.spawn(async move {
            let established = tokio::select! {
                established = establish(
                    socket,
                    peer,
                    spec.protocol,
                    tls.as_deref(),
                    spec.protocol == SecurityProtocol::Ssl,
                    handshake_timeout,
                ) => established,
                _ = stopped(&mut stop) => return,
            };
            let result = match established {
                Ok((stream, session)) => connection(stream, session).await,
                Err(reason) => Err(reason),
            };
            if let Err(reason) = result {
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

/// Handshakes one HTTP listener runs at once at most, besides the connection caps (which also
/// count them): each is a task with a socket and a TLS state.
const HTTP_HANDSHAKES_MAX: usize = 256;

/// A TCP listener for axum with the connection caps, whose connections are closed when a
/// read waits longer than `read_timeout` (idle keep-alive connections, slowloris) or a write
/// longer than `write_timeout` (clients that do not read their answers). On a TLS listener
/// the handshakes run in their own tasks (one slow client must not hold up accepting) and must
/// finish within `read_timeout`.
#[derive(Debug)]
pub struct GuardedListener {
    listener: TcpListener,
    spec: ListenerSpec,
    tls: Option<Arc<ServerTls>>,
    admission: Arc<Admission>,
    read_timeout: Duration,
    write_timeout: Duration,
    handshakes: JoinSet<Option<(GuardedStream, SocketAddr)>>,
}

impl GuardedListener {
    /// Refuses a SASL listener: HTTP authenticates with bearer tokens, not SASL.
    pub fn new(
        bound: BoundListener,
        admission: Arc<Admission>,
        read_timeout: Duration,
        write_timeout: Duration,
    ) -> std::io::Result<GuardedListener> {
        if bound.spec.protocol.uses_sasl() {
            return Err(std::io::Error::other(format!(
                "HTTP listener {}: HTTP listeners are PLAINTEXT or SSL, not SASL",
                bound.spec
            )));
        }
        Ok(GuardedListener {
            listener: bound.listener,
            spec: bound.spec,
            tls: bound.tls,
            admission,
            read_timeout,
            write_timeout,
            handshakes: JoinSet::new(),
        })
    }

    pub fn spec(&self) -> ListenerSpec {
        self.spec
    }
}

impl axum::serve::Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedStream, SocketAddr) {
        loop {
            let (socket, peer) = match next_http(
                &self.listener,
                &mut self.handshakes,
                self.admission.listener,
            )
            .await
            {
                Next::Accepted(socket, peer) => (socket, peer),
                Next::Established(established) => return established,
                Next::Nothing => continue,
            };
            let Ok(admitted) = self.admission.admit(peer.ip()) else {
                continue;
            };
            let _ = socket.set_nodelay(true);
            let (read_timeout, write_timeout) = (self.read_timeout, self.write_timeout);
            let guarded = move |stream| GuardedStream {
                stream,
                _admitted: admitted,
                read_timeout,
                write_timeout,
                read_deadline: None,
                write_deadline: None,
            };
            let Some(tls) = self.tls.clone() else {
                return (guarded(Stream::Plain(socket)), peer);
            };
            let listener_name = self.admission.listener;
            let protocol = self.spec.protocol;
            self.handshakes.spawn(async move {
                // Bearer tokens, not certificates, say who an HTTP client is.
                match establish(socket, peer, protocol, Some(&tls), false, read_timeout).await {
                    Ok((stream, _)) => Some((guarded(stream), peer)),
                    Err(reason) => {
                        tracing::info!(listener = listener_name, %peer, %reason, "closed connection");
                        None
                    }
                }
            });
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// What an HTTP listener's accept loop got next.
enum Next<T> {
    /// A new connection, its handshake not started.
    Accepted(TcpStream, SocketAddr),
    /// A connection whose TLS handshake (run in its own task) has finished.
    Established(T),
    /// An accept that failed (after a short back-off) or a handshake that did: try again.
    Nothing,
}

/// Waits for a new connection (while fewer than [`HTTP_HANDSHAKES_MAX`] handshakes run) or a
/// finished handshake, whichever comes first. Both branches are cancel-safe: axum drops the
/// accept future at shutdown.
async fn next_http<T: 'static>(
    listener: &TcpListener,
    handshakes: &mut JoinSet<Option<T>>,
    name: &str,
) -> Next<T> {
    let accepting = handshakes.len() < HTTP_HANDSHAKES_MAX;
    tokio::select! {
        accepted = listener.accept(), if accepting => match accepted {
            Ok((socket, peer)) => Next::Accepted(socket, peer),
            Err(e) => {
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                Next::Nothing
            }
        },
        Some(done) = handshakes.join_next() => match done {
            Ok(Some(established)) => Next::Established(established),
            _ => Next::Nothing,
        },
    }
}

/// An HTTPS listener for axum without connection caps, for the saga API and the bridge's HTTP
/// port: handshakes run in their own tasks (at most [`HTTP_HANDSHAKES_MAX`] at once, each within
/// `handshake_timeout`), so one slow client does not hold up accepting, and a failed handshake
/// closes only its connection.
#[derive(Debug)]
pub struct TlsListener {
    listener: TcpListener,
    tls: Arc<ServerTls>,
    handshake_timeout: Duration,
    handshakes: JoinSet<Option<(Stream, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        tls: Arc<ServerTls>,
        handshake_timeout: Duration,
    ) -> TlsListener {
        TlsListener {
            listener,
            tls,
            handshake_timeout,
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        loop {
            let (socket, peer) =
                match next_http(&self.listener, &mut self.handshakes, "https").await {
                    Next::Accepted(socket, peer) => (socket, peer),
                    Next::Established(established) => return established,
                    Next::Nothing => continue,
                };
            let _ = socket.set_nodelay(true);
            let tls = self.tls.clone();
            let timeout = self.handshake_timeout;
            self.handshakes.spawn(async move {
                match establish(
                    socket,
                    peer,
                    SecurityProtocol::Ssl,
                    Some(&tls),
                    true,
                    timeout,
                )
                .await
                {
                    Ok((stream, _)) => Some((stream, peer)),
                    Err(reason) => {
                        tracing::info!(%peer, %reason, "closed connection");
                        None
                    }
                }
            });
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `app` on `listener` until `shutdown` resolves: over TLS (handshakes within
/// `handshake_timeout`) when `tls` is given, else plain HTTP. For the saga API and the bridge.
pub async fn serve_http(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    handshake_timeout: Duration,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => {
            axum::serve(TlsListener::new(listener, tls, handshake_timeout), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// A TCP stream that fails a read or write that has waited past its timeout.
#[derive(Debug)]
pub struct GuardedStream {
    stream: Stream,
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
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
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
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
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
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        guard(
            polled,
            &mut this.write_deadline,
            this.write_timeout,
            cx,
            "a flush",
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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
