//! One pipelined connection to a broker: many requests in flight, answers matched to their
//! requests by correlation id, pushes routed to their subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::ClientError;
use crate::native::frame::{self, SERVER_HEADER_BYTES};
use crate::native::{
    ApiKey, Push, Request, Response, ResponseBody, ServerFrameKind, FRAME_BYTES_MAX_DEFAULT,
};
use crate::sasl::{plain_message, Mechanism, SaslConfig};
use crate::scram::ScramClient;
use crate::tls::ClientTlsConfig;

/// How a connection behaves.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Requests in flight at most; more wait. Default 64 (the broker's default limit).
    pub in_flight_max: usize,
    /// Largest server frame accepted. Default 8 MiB.
    pub frame_bytes_max: usize,
    /// Longest wait for a TCP connection and its TLS handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest wait for an answer beyond what the request itself asks to wait. Default 30 s.
    pub request_timeout: Duration,
    /// TLS to the broker (its `SSL` or `SASL_SSL` listener). Default `None`: plain TCP.
    pub tls: Option<ClientTlsConfig>,
    /// SASL credentials, for brokers whose native listener is `SASL_PLAINTEXT` or
    /// `SASL_SSL`: every connection (reconnects too) authenticates right after the handshake.
    /// Default none.
    pub sasl: Option<SaslConfig>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            in_flight_max: 64,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            tls: None,
            sasl: None,
        }
    }
}

/// A connection's halves: plain TCP or TLS.
type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

type Pending = HashMap<u32, (ApiKey, oneshot::Sender<Result<Response, ClientError>>)>;

struct Shared {
    pending: Mutex<Option<Pending>>,
    subscriptions: Mutex<HashMap<u32, mpsc::UnboundedSender<Result<Push, ClientError>>>>,
}

/// A connection to one broker. Cheap to clone; all clones share the socket.
#[derive(Clone)]
pub struct Connection {
    out: mpsc::Sender<(Bytes, Bytes)>,
    shared: Arc<Shared>,
    next_id: Arc<AtomicU32>,
    in_flight: Arc<Semaphore>,
    config: ConnectionConfig,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("config", &self.config)
            .finish()
    }
}

impl Connection {
    /// Connects to `addr` (`host:port`), over TLS when `config.tls` says so, and runs the
    /// protocol handshake.
    pub async fn connect(addr: &str, config: ConnectionConfig) -> Result<Connection, ClientError> {
        let (reader, mut writer) = tokio::time::timeout(config.connect_timeout, async {
            let socket = TcpStream::connect(addr).await?;
            socket.set_nodelay(true)?;
            Ok::<_, ClientError>(match &config.tls {
                None => {
                    let (reader, writer) = socket.into_split();
                    (Box::new(reader) as Reader, Box::new(writer) as Writer)
                }
                Some(tls) => {
                    let stream = tls.connect(addr, socket).await?;
                    let (reader, writer) = tokio::io::split(stream);
                    (Box::new(reader) as Reader, Box::new(writer) as Writer)
                }
            })
        })
        .await
        .map_err(|_| ClientError::Timeout("connect"))??;
        // A frame travels as its head and a produce request's records, written together by
        // one vectored write (the records are never copied into the frame).
        let (out, mut out_rx) = mpsc::channel::<(Bytes, Bytes)>(config.in_flight_max * 2);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            subscriptions: Mutex::new(HashMap::new()),
        });
        tokio::spawn(async move {
            while let Some((head, records)) = out_rx.recv().await {
                if writer
                    .write_all_buf(&mut head.chain(records))
                    .await
                    .is_err()
                {
                    return;
                }
                // On TLS a write may leave its last records in the TLS layer (the socket was
                // full); with nothing more to send they must be pushed out now.
                if out_rx.is_empty() && writer.flush().await.is_err() {
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        tokio::spawn(read_frames(reader, shared.clone(), config.frame_bytes_max));
        let connection = Connection {
            out,
            shared,
            next_id: Arc::new(AtomicU32::new(1)),
            in_flight: Arc::new(Semaphore::new(config.in_flight_max)),
            config,
        };
        let versions = ApiKey::ALL
            .iter()
            .map(|k| {
                let (min, max) = k.versions();
                (*k as u16, min, max)
            })
            .collect();
        connection
            .request(Request::Handshake {
                client: format!("strand-client {}", env!("CARGO_PKG_VERSION")),
                versions,
            })
            .await?;
        if let Some(sasl) = connection.config.sasl.clone() {
            connection.authenticate(&sasl).await?;
        }
        Ok(connection)
    }

    /// Runs the SASL exchange (see `docs/native-protocol.md`, Authentication). A refusal is
    /// the broker's `SaslAuthenticationFailed` (or `UnsupportedSaslMechanism`), after which
    /// the broker closes the connection.
    async fn authenticate(&self, sasl: &SaslConfig) -> Result<(), ClientError> {
        self.request(Request::SaslHandshake {
            mechanism: sasl.mechanism.name().to_string(),
        })
        .await?;
        match sasl.mechanism {
            Mechanism::Plain => {
                self.sasl_step(plain_message(&sasl.username, &sasl.password))
                    .await?;
            }
            Mechanism::Scram(m) => {
                let client = ScramClient::new(m, &sasl.username, &sasl.password);
                let server_first = self.sasl_step(client.client_first()).await?;
                let (client_final, last) = client
                    .server_first(&server_first)
                    .map_err(|e| ClientError::Authentication(e.to_string()))?;
                let server_final = self.sasl_step(client_final).await?;
                last.server_final(&server_final)
                    .map_err(|e| ClientError::Authentication(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn sasl_step(&self, token: Vec<u8>) -> Result<Bytes, ClientError> {
        match self
            .request(Request::SaslAuthenticate {
                token: token.into(),
            })
            .await?
        {
            ResponseBody::SaslToken(token) => Ok(token),
            other => Err(ClientError::Invalid(format!(
                "unexpected answer to SaslAuthenticate: {other:?}"
            ))),
        }
    }

    /// Whether the connection is still usable.
    pub fn is_open(&self) -> bool {
        !self.out.is_closed() && self.shared.pending.lock().expect("pending lock").is_some()
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&self, request: Request) -> Result<ResponseBody, ClientError> {
        self.send(request).await?.wait().await
    }

    /// Puts the request on the wire (in call order) and returns a handle to await its answer
    /// with. Two requests sent one after the other reach the broker in that order, which is what
    /// keeps a partition's produce requests in order while several are in flight.
    pub async fn send(&self, request: Request) -> Result<PendingResponse, ClientError> {
        let wait = match &request {
            Request::Fetch { max_wait_ms, .. } => Duration::from_millis((*max_wait_ms).into()),
            // A join is answered when the rebalance completes, within the rebalance timeout.
            Request::JoinGroup {
                rebalance_timeout_ms,
                ..
            } => Duration::from_millis((*rebalance_timeout_ms).into()),
            _ => Duration::ZERO,
        };
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            pending
                .as_mut()
                .ok_or(ClientError::Closed)?
                .insert(id, (request.api_key(), tx));
        }
        self.send_frame(&request, id).await?;
        Ok(PendingResponse {
            connection: self.clone(),
            id,
            name: request.api_key().name(),
            timeout: self.config.request_timeout + wait,
            rx,
            _permit: permit,
        })
    }

    /// Sends a request that gets no answer (acks=none produce, AddCredit).
    pub async fn send_only(&self, request: Request) -> Result<(), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send_frame(&request, id).await
    }

    /// Opens a push subscription; pushes (and a final error, if the broker ends it) arrive on
    /// the returned channel. Returns the subscription id for AddCredit and Unsubscribe.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        credit_bytes: u32,
    ) -> Result<(u32, mpsc::UnboundedReceiver<Result<Push, ClientError>>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        // Registered before the request goes out: the first push may follow the answer at once.
        self.shared
            .subscriptions
            .lock()
            .expect("subscriptions lock")
            .insert(id, push_tx);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().expect("pending lock");
            pending
                .as_mut()
                .ok_or(ClientError::Closed)?
                .insert(id, (ApiKey::Subscribe, tx));
        }
        let request = Request::Subscribe {
            topic: topic.to_string(),
            partition,
            offset,
            credit_bytes,
        };
        self.send_frame(&request, id).await?;
        let response = tokio::time::timeout(self.config.request_timeout, rx)
            .await
            .map_err(|_| ClientError::Timeout("subscribe"))?
            .map_err(|_| ClientError::Closed)??;
        match response {
            Response::Ok(_) => Ok((id, push_rx)),
            Response::Err { code, message } => {
                self.shared
                    .subscriptions
                    .lock()
                    .expect("subscriptions lock")
                    .remove(&id);
                Err(ClientError::Broker { code, message })
            }
        }
    }

    async fn send_frame(&self, request: &Request, id: u32) -> Result<(), ClientError> {
        let mut head = BytesMut::with_capacity(64);
        let records = request.encode_head(id, &mut head);
        let len = head.len() + records.len();
        if len - frame::LENGTH_BYTES > self.config.frame_bytes_max {
            self.forget(id);
            return Err(ClientError::TooLarge {
                len,
                max: self.config.frame_bytes_max,
            });
        }
        self.out.send((head.freeze(), records)).await.map_err(|_| {
            self.forget(id);
            ClientError::Closed
        })
    }

    fn forget(&self, id: u32) {
        if let Some(pending) = self.shared.pending.lock().expect("pending lock").as_mut() {
            pending.remove(&id);
        }
    }
}

/// Reads server frames and hands each to whoever waits for it. On any failure every waiter
/// gets `Closed` and later requests fail at once.
async fn read_frames(mut reader: Reader, shared: Arc<Shared>, frame_bytes_max: usize) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let failure = 'outer: loop {
        loop {
            match frame::check(&buf, frame_bytes_max, SERVER_HEADER_BYTES) {
                Ok(Some(len)) => {
                    let frame = buf.split_to(len).freeze();
                    if let Err(e) = route(frame, &shared) {
                        break 'outer e;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'outer ClientError::Decode(e),
            }
        }
        // A frame whose length is known (and checked against the limit above) gets room for
        // all of it at once: a large fetch answer is read in few system calls, into one
        // buffer, without being copied as the buffer grows.
        let missing = if buf.len() >= frame::LENGTH_BYTES {
            let len = u32::from_be_bytes(buf[..frame::LENGTH_BYTES].try_into().expect("4 bytes"));
            (frame::LENGTH_BYTES + len as usize).saturating_sub(buf.len())
        } else {
            0
        };
        if buf.capacity() - buf.len() < missing.max(4096) {
            buf.reserve(missing.max(64 * 1024));
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => break ClientError::Closed,
            Ok(_) => {}
            Err(e) => break ClientError::Io(e),
        }
    };
    tracing::debug!(error = %failure, "connection closed");
    let pending = shared.pending.lock().expect("pending lock").take();
    for (_, (_, tx)) in pending.into_iter().flatten() {
        let _ = tx.send(Err(ClientError::Closed));
    }
    for (_, tx) in shared
        .subscriptions
        .lock()
        .expect("subscriptions lock")
        .drain()
    {
        let _ = tx.send(Err(ClientError::Closed));
    }
}

fn route(frame: Bytes, shared: &Shared) -> Result<(), ClientError> {
    let (header, body) = frame::split_server(frame)?;
    match header.kind {
        ServerFrameKind::Push => {
            let push = Push::decode(body)?;
            let subscriptions = shared.subscriptions.lock().expect("subscriptions lock");
            if let Some(tx) = subscriptions.get(&header.correlation_id) {
                let _ = tx.send(Ok(push));
            }
        }
        ServerFrameKind::Response => {
            let waiter = shared
                .pending
                .lock()
                .expect("pending lock")
                .as_mut()
                .and_then(|p| p.remove(&header.correlation_id));
            match waiter {
                Some((key, tx)) => {
                    let _ = tx.send(Response::decode(key, body).map_err(ClientError::Decode));
                }
                None => {
                    // A later answer for a subscription means the broker ended it with an error.
                    let tx = shared
                        .subscriptions
                        .lock()
                        .expect("subscriptions lock")
                        .remove(&header.correlation_id);
                    if let (Some(tx), Ok(Response::Err { code, message })) =
                        (tx, Response::decode(ApiKey::Subscribe, body))
                    {
                        let _ = tx.send(Err(ClientError::Broker { code, message }));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A request on the wire, waiting for its answer.
pub struct PendingResponse {
    connection: Connection,
    id: u32,
    name: &'static str,
    timeout: Duration,
    rx: oneshot::Receiver<Result<Response, ClientError>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for PendingResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingResponse")
            .field("id", &self.id)
            .field("request", &self.name)
            .finish()
    }
}

impl PendingResponse {
    pub async fn wait(self) -> Result<ResponseBody, ClientError> {
        let response = match tokio::time::timeout(self.timeout, self.rx).await {
            Ok(Ok(response)) => response?,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.connection.forget(self.id);
                return Err(ClientError::Timeout(self.name));
            }
        };
        match response {
            Response::Ok(body) => Ok(body),
            Response::Err { code, message } => Err(ClientError::Broker { code, message }),
        }
    }
}
