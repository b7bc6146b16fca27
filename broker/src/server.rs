//! The native protocol listener (see `docs/native-protocol.md`).
//!
//! Shaped like mini-redis: a semaphore bounds connections before `accept`; each connection has
//! a reader (framing, decoding, dispatch) and a writer task fed by a bounded channel. Produce
//! requests are appended in the order they arrive on the connection; everything that waits
//! (durable acks, long-polls, admin work) runs in its own task under a per-connection in-flight
//! semaphore, so answers can complete out of order and a client that stops reading stalls only
//! itself. Shutdown stops accepting and reading, lets in-flight requests finish, and returns
//! when every connection has closed.
//!
//! The connection caps are [`crate::listener`]'s; request frames and fetched records are
//! charged to the broker's one [`Budget`] (shared with the Kafka listener) before they are
//! read, and the charge travels with the answer until the writer has written it.
//!
//! On a `SASL_*` listener a connection may send only Handshake, SaslHandshake and
//! SaslAuthenticate until it has authenticated; anything else is answered
//! `IllegalSaslState` and the connection is closed, as is one whose authentication fails. The
//! SASL requests are served in the reader, in order, and replace the connection's session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::{Bytes, BytesMut};
use strand_client::batch::Batches;
use strand_client::native::frame::{self, REQUEST_HEADER_BYTES};
use strand_client::native::messages::{
    AclBinding, AclBindingFilter, GroupInfo, GroupMember, GroupOffset, OffsetEntry, PartitionState,
    TopicDescription,
};
use strand_client::native::{
    Acks, ApiKey, ErrorCode, OffsetQuery, Push, Request, Response, ResponseBody,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::budget::{Budget, Charge};
use crate::group::{
    Assignor, CommitError, CommittedOffset, GroupDescription, GroupError, GroupState, JoinRequest,
};
use crate::listener::{self, Admission, BoundListener, Stream};
use crate::log::{FileRegion, FirstBatch, LogError};
use crate::security::acl::{self, Operation, ResourceType};
use crate::security::sasl::{Authenticator, Exchange, Step};
use crate::security::users::UsersError;
use crate::security::{Principal, Session};
use crate::service::{Broker, OffsetSpec, ServiceError, TopicInfo};
use crate::topics::{TopicConfig, TopicError};

/// A connection may hold at most this fraction of the in-flight budget (but at least one
/// frame).
const CONNECTION_SHARE_OF_BUDGET: usize = 8;

/// Bytes an idle connection reads at once while it waits for its next request: enough for a
/// small request whole, so that waiting costs no buffer.
const IDLE_READ_BYTES: usize = 1024;

/// Limits of the native listener.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub connections_max: usize,
    /// Open connections from one IP address at most.
    pub connections_per_ip_max: usize,
    pub in_flight_per_connection_max: usize,
    pub frame_bytes_max: usize,
    /// Push subscriptions one connection may hold.
    pub subscriptions_per_connection_max: usize,
    /// A frame that has started arriving must be complete within this, or the connection is
    /// closed (slowloris).
    pub frame_read_timeout: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// A connection whose client takes longer than this to accept one frame is closed, so a
    /// client that stops reading cannot hold its connection (and its queued answers) forever.
    pub write_timeout: Duration,
    /// Record bytes one fetch answer carries at most (besides the frame limit).
    pub fetch_bytes_max: usize,
    /// Bytes in flight across every connection (shared with the Kafka listener); one
    /// connection may hold an eighth of it at most (but always one frame).
    pub budget: Budget,
    /// Users and SASL mechanisms: what a SASL listener authenticates against and what the
    /// user requests change. `None`: no user store (SASL handshakes and user requests fail).
    pub authenticator: Option<Arc<Authenticator>>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 1024,
            connections_per_ip_max: 256,
            in_flight_per_connection_max: 64,
            frame_bytes_max: frame::FRAME_BYTES_MAX_DEFAULT,
            subscriptions_per_connection_max: 64,
            frame_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(60),
            fetch_bytes_max: 50 << 20,
            budget: Budget::default(),
            authenticator: None,
        }
    }
}

/// Serves connections from every listener until `shutdown` turns true, then waits for them to
/// end. The connection caps count the connections of all listeners together.
pub async fn serve(
    listeners: Vec<BoundListener>,
    broker: Broker,
    config: ServerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let config = Arc::new(config);
    let admission = Admission::new(
        "native",
        config.connections_max,
        config.connections_per_ip_max,
        broker.metrics.clone(),
    );
    let served = listeners.into_iter().map(|bound| {
        let broker = broker.clone();
        let config = config.clone();
        let shutdown = shutdown.clone();
        listener::serve(
            bound,
            admission.clone(),
            config.frame_read_timeout,
            shutdown.clone(),
            move |stream, session| {
                // Each connection charges its own share of the budget first, so that one client
                // (say, one pipelining fetches it never reads) cannot take the whole budget.
                let share = (config.budget.bytes_max() / CONNECTION_SHARE_OF_BUDGET)
                    .max(config.frame_bytes_max);
                let connection = Connection {
                    broker: broker.clone(),
                    config: config.clone(),
                    budget: config.budget.share(share),
                    shutdown: shutdown.clone(),
                    session: Arc::new(session),
                    sasl: SaslState::Start,
                    zero_copy: false,
                };
                connection.run(stream)
            },
        )
    });
    futures::future::join_all(served).await;
}

struct Connection {
    broker: Broker,
    config: Arc<ServerConfig>,
    /// This connection's share of the broker's budget.
    budget: Budget,
    shutdown: watch::Receiver<bool>,
    /// Who this connection is; replaced when it authenticates. Requests in flight keep the
    /// session they were read under.
    session: Arc<Session>,
    sasl: SaslState,
    /// Fetch answers go out with `sendfile`, straight from the segment files (plain TCP; over
    /// TLS the bytes are encrypted in user space, so they are read into memory first).
    zero_copy: bool,
}

/// A connection's write half: whether it is a plain socket that file regions can be sent to
/// with `sendfile`.
trait AnswerSink: AsyncWrite + Send + Unpin + 'static {
    fn socket(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

impl AnswerSink for tokio::net::tcp::OwnedWriteHalf {
    fn socket(&self) -> Option<&tokio::net::TcpStream> {
        Some(self.as_ref())
    }
}

impl<T: AsyncRead + AsyncWrite + Send + 'static> AnswerSink for tokio::io::WriteHalf<T> {}

/// Where a connection is in its SASL exchange.
enum SaslState {
    Start,
    Authenticating(Exchange),
    /// Authenticated, or failed (the connection is closing).
    Over,
}

/// A push subscription's credit in bytes (it may dip below zero by at most one batch) and a
/// wake-up for grants, shared by the connection (which adds credit) and the pushing task.
struct Credit {
    bytes: AtomicI64,
    granted: Notify,
}

/// What a request holds while it is dispatched: its in-flight slot, and the budget charge of
/// its frame (given back once the frame's bytes are no longer needed).
struct Held {
    slot: tokio::sync::OwnedSemaphorePermit,
    frame_charge: Charge,
}

struct Subscription {
    credit: Arc<Credit>,
    task: tokio::task::AbortHandle,
}

impl Connection {
    async fn run(self, stream: Stream) -> Result<(), String> {
        // A plain socket splits without a lock between its halves; a TLS stream's halves share
        // one TLS state.
        match stream {
            Stream::Plain(socket) => {
                let (reader, writer) = socket.into_split();
                self.serve(reader, writer).await
            }
            Stream::Tls(stream) => {
                let (reader, writer) = tokio::io::split(*stream);
                self.serve(reader, writer).await
            }
        }
    }

    async fn serve<R, W>(mut self, mut reader: R, writer: W) -> Result<(), String>
    where
        R: AsyncRead + Unpin,
        W: AnswerSink,
    {
        self.zero_copy = writer.socket().is_some();
        // Room for every in-flight answer plus pushes; the channel holds encoded frames.
        let (out_tx, out_rx) =
            mpsc::channel::<(OutFrame, Charge)>(self.config.in_flight_per_connection_max * 2);
        let writer_task = tokio::spawn(write_frames(writer, out_rx, self.config.write_timeout));
        let in_flight = Arc::new(Semaphore::new(self.config.in_flight_per_connection_max));
        let mut tasks = JoinSet::new();
        let mut subscriptions: HashMap<u32, Subscription> = HashMap::new();
        // Allocated once the client sends something: idle connections hold no buffer.
        let mut buf = BytesMut::new();
        // The budget charge of the frame being read, taken once its length is known.
        let mut frame_charge: Option<Charge> = None;
        // The in-flight slot of the frame being read. It is taken before the budget charge:
        // the reader never holds budget while it waits for its own requests to finish (they
        // may be waiting for budget themselves).
        let mut frame_slot: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let budget = self.budget.clone();
        let result = loop {
            if out_tx.is_closed() {
                break Err("answers could not be written".into());
            }
            // Take every whole frame buffered so far.
            let frame = match frame::check(&buf, self.config.frame_bytes_max, REQUEST_HEADER_BYTES)
            {
                Ok(Some(len)) => Some(buf.split_to(len).freeze()),
                Ok(None) => None,
                Err(e) => break Err(format!("unframeable input: {e}")),
            };
            if let Some(frame) = frame {
                // A frame that came whole in one read gets its in-flight slot and its budget
                // charge now, before it is handled.
                let permit = match frame_slot.take() {
                    Some(permit) => permit,
                    None => tokio::select! {
                        permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
                        _ = stopped(&mut self.shutdown) => break Ok(()),
                    },
                };
                let charge = match frame_charge.take() {
                    Some(charge) => charge,
                    None => tokio::select! {
                        charge = budget.charge(frame.len()) => charge,
                        _ = stopped(&mut self.shutdown) => break Ok(()),
                    },
                };
                let (header, body) = frame::split_request(frame);
                let request = match Request::decode(&header, body) {
                    Ok(request) => request,
                    Err(e) => {
                        tracing::debug!(correlation_id = header.correlation_id, error = %e, "undecodable request");
                        let response = Response::error(e.code(), e.to_string());
                        drop(charge);
                        if send(&out_tx, response, header.correlation_id, Charge::default())
                            .await
                            .is_err()
                        {
                            break Err("writer gone".into());
                        }
                        continue;
                    }
                };
                let sasl_request = matches!(
                    request,
                    Request::SaslHandshake { .. } | Request::SaslAuthenticate { .. }
                );
                if sasl_request
                    || (!self.session.may_send_requests()
                        && !matches!(request, Request::Handshake { .. }))
                {
                    // Served here, in order: the answer may change the session every later
                    // request is read under.
                    drop(charge);
                    let (response, close) = match request {
                        Request::SaslHandshake { mechanism } => self.sasl_handshake(&mechanism),
                        Request::SaslAuthenticate { token } => self.sasl_authenticate(&token).await,
                        other => {
                            let reason = format!(
                                "{} needs SASL authentication first on this {} listener",
                                other.api_key().name(),
                                self.session.protocol
                            );
                            (
                                Response::error(ErrorCode::IllegalSaslState, reason.clone()),
                                Some(reason),
                            )
                        }
                    };
                    let sent =
                        send(&out_tx, response, header.correlation_id, Charge::default()).await;
                    drop(permit);
                    match (close, sent) {
                        (Some(reason), _) => break Err(reason),
                        (None, Err(())) => break Err("writer gone".into()),
                        (None, Ok(())) => continue,
                    }
                }
                self.dispatch(
                    request,
                    header.correlation_id,
                    Held {
                        slot: permit,
                        frame_charge: charge,
                    },
                    &out_tx,
                    &mut tasks,
                    &mut subscriptions,
                )
                .await;
                while tasks.try_join_next().is_some() {}
                continue;
            }
            // Need more bytes. A partial frame must finish within the frame timeout; an idle
            // connection may wait for the idle timeout.
            if buf.is_empty() {
                // Idle: wait for the next request without holding a buffer. The first bytes
                // land in a small array (the stream may be TLS, which cannot announce
                // readability without reading), and only they are copied into the buffer.
                let mut first = [0u8; IDLE_READ_BYTES];
                let read = tokio::select! {
                    read = tokio::time::timeout(self.config.idle_timeout, reader.read(&mut first)) => read,
                    // The writer gave up (write timeout): no need to wait for more requests.
                    _ = out_tx.closed() => break Err("answers could not be written".into()),
                    _ = stopped(&mut self.shutdown) => break Ok(()),
                };
                match read {
                    Err(_) => break Err("idle timeout".into()),
                    Ok(Ok(0)) => break Ok(()),
                    Ok(Ok(n)) => buf.extend_from_slice(&first[..n]),
                    Ok(Err(e)) => break Err(format!("read failed: {e}")),
                }
                continue;
            } else if frame_charge.is_none() && buf.len() >= frame::LENGTH_BYTES {
                // The frame's length is known (and within the limit, `check` said): charge it
                // before reading its body, so that while the budget is spent the broker stops
                // reading rather than buffering.
                let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
                frame_slot = Some(tokio::select! {
                    permit = in_flight.clone().acquire_owned() => permit.expect("never closed"),
                    _ = stopped(&mut self.shutdown) => break Ok(()),
                });
                frame_charge = Some(tokio::select! {
                    charge = budget.charge(frame::LENGTH_BYTES + len) => charge,
                    _ = stopped(&mut self.shutdown) => break Ok(()),
                });
            }
            let limit = if buf.is_empty() {
                self.config.idle_timeout
            } else {
                self.config.frame_read_timeout
            };
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            let read = tokio::select! {
                read = tokio::time::timeout(limit, reader.read_buf(&mut buf)) => read,
                _ = out_tx.closed() => break Err("answers could not be written".into()),
                _ = stopped(&mut self.shutdown) => break Ok(()),
            };
            match read {
                Err(_) if buf.is_empty() => break Err("idle timeout".into()),
                Err(_) => break Err(format!("frame not completed within {:?}", limit)),
                Ok(Ok(0)) if buf.is_empty() => break Ok(()),
                Ok(Ok(0)) => {
                    break Err(format!(
                        "peer closed mid-frame with {} bytes pending",
                        buf.len()
                    ))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => break Err(format!("read failed: {e}")),
            }
        };
        for subscription in subscriptions.values() {
            subscription.task.abort();
        }
        // Finish what is in flight, then let the writer drain and close.
        while tasks.join_next().await.is_some() {}
        drop(out_tx);
        let _ = writer_task.await;
        result
    }

    /// SaslHandshake: the answer, and the reason to close the connection after it, if any.
    fn sasl_handshake(&mut self, mechanism: &str) -> (Response, Option<String>) {
        let authenticator = match &self.config.authenticator {
            Some(a) if self.session.protocol.uses_sasl() => a,
            _ => {
                return (
                    Response::error(
                        ErrorCode::UnsupportedSaslMechanism,
                        format!("this {} listener does not use SASL", self.session.protocol),
                    ),
                    None,
                )
            }
        };
        if !matches!(self.sasl, SaslState::Start) {
            let reason = "a second SaslHandshake on the connection".to_string();
            return (
                Response::error(ErrorCode::IllegalSaslState, reason.clone()),
                Some(reason),
            );
        }
        let enabled = authenticator.mechanism_names();
        let Some(m) = authenticator.mechanism(mechanism) else {
            let reason = format!(
                "SASL mechanism {:?} is not enabled; enabled: {}",
                mechanism.chars().take(64).collect::<String>(),
                enabled.join(", ")
            );
            return (
                Response::error(ErrorCode::UnsupportedSaslMechanism, reason.clone()),
                Some(reason),
            );
        };
        self.sasl = SaslState::Authenticating(Exchange::new(m));
        (
            Response::Ok(ResponseBody::SaslMechanisms(
                enabled.into_iter().map(String::from).collect(),
            )),
            None,
        )
    }

    /// SaslAuthenticate: the answer, and the reason to close the connection after it, if any.
    async fn sasl_authenticate(&mut self, token: &[u8]) -> (Response, Option<String>) {
        let (Some(authenticator), SaslState::Authenticating(exchange)) =
            (self.config.authenticator.clone(), &mut self.sasl)
        else {
            let reason = "SaslAuthenticate without a SaslHandshake before it".to_string();
            return (
                Response::error(ErrorCode::IllegalSaslState, reason.clone()),
                Some(reason),
            );
        };
        match exchange.step(&authenticator, token).await {
            Ok(Step::Continue(token)) => {
                (Response::Ok(ResponseBody::SaslToken(token.into())), None)
            }
            Ok(Step::Done { user, token }) => {
                tracing::info!(peer = %self.session.peer, %user, "SASL authenticated");
                let mut session = (*self.session).clone();
                session.principal = Principal::user(user);
                session.sasl_authenticated = true;
                self.session = Arc::new(session);
                self.sasl = SaslState::Over;
                (Response::Ok(ResponseBody::SaslToken(token.into())), None)
            }
            Err(e) => {
                self.sasl = SaslState::Over;
                (
                    Response::error(ErrorCode::SaslAuthenticationFailed, e.0.clone()),
                    Some(format!("SASL authentication failed: {e}")),
                )
            }
        }
    }

    async fn dispatch(
        &mut self,
        request: Request,
        correlation_id: u32,
        held: Held,
        out: &mpsc::Sender<(OutFrame, Charge)>,
        tasks: &mut JoinSet<()>,
        subscriptions: &mut HashMap<u32, Subscription>,
    ) {
        let Held {
            slot: permit,
            frame_charge,
        } = held;
        let started = Instant::now();
        let key = request.api_key();
        let broker = self.broker.clone();
        let out = out.clone();
        match request {
            Request::Produce {
                topic,
                partition,
                acks,
                records,
            } => {
                // Appended here, in arrival order; only the wait runs apart.
                let span =
                    tracing::info_span!("native.produce", otel.kind = "server", %topic, partition);
                let entered = span.enter();
                let mut records = records.to_vec();
                let appended = authorize(
                    &broker,
                    &self.session,
                    Operation::Write,
                    ResourceType::Topic,
                    &topic,
                )
                .and_then(|()| broker.append(&topic, partition, &mut records));
                drop(records);
                drop(frame_charge);
                drop(entered);
                if acks == Acks::None {
                    if let Err(e) = appended {
                        tracing::debug!(%topic, partition, error = %e, "acks=none produce failed");
                    }
                    return;
                }
                tasks.spawn(
                    async move {
                        let result = match appended {
                            Ok(info) if acks == Acks::Durable => broker
                                .wait_durable(&topic, partition, info.last_offset)
                                .await
                                .map(|()| info),
                            other => other,
                        };
                        let response = match result {
                            Ok(info) => Response::Ok(ResponseBody::Produced {
                                base_offset: info.base_offset,
                                last_offset: info.last_offset,
                            }),
                            Err(e) => error_response(&e),
                        };
                        broker
                            .metrics
                            .observe_request(key.name(), started.elapsed());
                        let _ = send(&out, response, correlation_id, Charge::default()).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Request::Subscribe {
                topic,
                partition,
                offset,
                credit_bytes,
            } => {
                let response = if subscriptions.len()
                    >= self.config.subscriptions_per_connection_max
                {
                    Response::error(
                        ErrorCode::TooLarge,
                        "too many subscriptions on this connection",
                    )
                } else if subscriptions.contains_key(&correlation_id) {
                    Response::error(
                        ErrorCode::InvalidRequest,
                        "subscription id already in use on this connection",
                    )
                } else if let Err(e) = authorize(
                    &broker,
                    &self.session,
                    Operation::Read,
                    ResourceType::Topic,
                    &topic,
                ) {
                    error_response(&e)
                } else {
                    match broker.partition_info(&topic, partition) {
                        Err(e) => error_response(&e),
                        Ok(info)
                            if offset < info.log_start_offset || offset > info.high_watermark =>
                        {
                            error_response(&ServiceError::Log(LogError::OffsetOutOfRange {
                                offset,
                                log_start_offset: info.log_start_offset,
                                high_watermark: info.high_watermark,
                            }))
                        }
                        Ok(_) => Response::Ok(ResponseBody::Empty),
                    }
                };
                let ok = matches!(response, Response::Ok(_));
                if send(&out, response, correlation_id, Charge::default())
                    .await
                    .is_err()
                    || !ok
                {
                    return;
                }
                let credit = Arc::new(Credit {
                    bytes: AtomicI64::new(i64::from(credit_bytes)),
                    granted: Notify::new(),
                });
                let task = tokio::spawn(run_subscription(
                    broker,
                    self.session.clone(),
                    topic,
                    partition,
                    offset,
                    correlation_id,
                    credit.clone(),
                    out,
                    self.config.frame_bytes_max,
                    self.budget.clone(),
                ));
                subscriptions.insert(
                    correlation_id,
                    Subscription {
                        credit,
                        task: task.abort_handle(),
                    },
                );
                drop(permit);
            }
            Request::AddCredit {
                subscription,
                credit_bytes,
            } => {
                if let Some(s) = subscriptions.get(&subscription) {
                    s.credit
                        .bytes
                        .fetch_add(i64::from(credit_bytes), Ordering::AcqRel);
                    s.credit.granted.notify_one();
                }
                drop(permit);
            }
            Request::Unsubscribe { subscription } => {
                let response = match subscriptions.remove(&subscription) {
                    Some(s) => {
                        s.task.abort();
                        Response::Ok(ResponseBody::Empty)
                    }
                    None => Response::error(
                        ErrorCode::UnknownSubscription,
                        format!("no subscription {subscription}"),
                    ),
                };
                let _ = send(&out, response, correlation_id, Charge::default()).await;
                drop(permit);
            }
            other => {
                let config = self.config.clone();
                let budget = self.budget.clone();
                let session = self.session.clone();
                let zero_copy = self.zero_copy;
                tasks.spawn(async move {
                    let (response, charge, region) =
                        handle(&broker, &session, other, &config, &budget, zero_copy).await;
                    broker
                        .metrics
                        .observe_request(key.name(), started.elapsed());
                    let _ = match region {
                        Some(region) => {
                            send_region(&out, response, correlation_id, charge, region).await
                        }
                        None => send(&out, response, correlation_id, charge).await,
                    };
                    drop(permit);
                });
            }
        }
    }
}

/// Pushes batches from `offset` while there is credit, waiting for data at the high watermark
/// and for credit when it runs out. Ends with an error response if the partition fails, or if
/// the session may no longer Read the topic (rights are checked before every read, as Kafka
/// checks every fetch).
#[allow(clippy::too_many_arguments)]
async fn run_subscription(
    broker: Broker,
    session: Arc<Session>,
    topic: String,
    partition: u32,
    mut offset: u64,
    subscription: u32,
    credit: Arc<Credit>,
    out: mpsc::Sender<(OutFrame, Charge)>,
    frame_bytes_max: usize,
    budget: Budget,
) {
    // Room for the push header and lengths inside a frame.
    let records_max = frame_bytes_max.saturating_sub(64).max(1);
    loop {
        let available = credit.bytes.load(Ordering::Acquire);
        if available <= 0 {
            credit.granted.notified().await;
            continue;
        }
        let max_bytes = (available as usize).min(records_max);
        if let Err(e) = authorize(
            &broker,
            &session,
            Operation::Read,
            ResourceType::Topic,
            &topic,
        ) {
            let _ = send(&out, error_response(&e), subscription, Charge::default()).await;
            return;
        }
        let read = broker
            .read_charged(
                &topic,
                partition,
                offset,
                max_bytes,
                FirstBatch::Whole,
                &budget,
            )
            .await;
        let (result, charge) = match read {
            Ok(read) => read,
            Err(e) => {
                let _ = send(&out, error_response(&e), subscription, Charge::default()).await;
                return;
            }
        };
        let Some((last, _)) = Batches::new(&result.batches).last() else {
            if broker
                .wait_for_data(&topic, partition, offset)
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        offset = (last.last_offset() as u64 + 1).max(offset);
        credit
            .bytes
            .fetch_sub(result.batches.len() as i64, Ordering::AcqRel);
        let push = Push {
            high_watermark: result.high_watermark,
            records: result.batches,
        };
        let mut buf = BytesMut::with_capacity(32);
        push.encode_head(subscription, &mut buf);
        let frame = OutFrame {
            head: buf.freeze(),
            records: push.records,
            region: None,
        };
        if out.send((frame, charge)).await.is_err() {
            return;
        }
    }
}

/// Answers every request that needs no connection state.
/// With the answer comes the budget charge of the records it carries (fetch), if any, and,
/// with `zero_copy`, a fetch answer's records as a region of a segment file to be sent after
/// the answer (whose own records are then empty).
async fn handle(
    broker: &Broker,
    session: &Session,
    request: Request,
    config: &ServerConfig,
    budget: &Budget,
    zero_copy: bool,
) -> (Response, Charge, Option<FileRegion>) {
    let frame_bytes_max = config.frame_bytes_max;
    let in_flight_max = config.in_flight_per_connection_max;
    let mut charge = Charge::default();
    let mut region = None;
    let check = |operation, resource_type, name: &str| {
        authorize(broker, session, operation, resource_type, name)
    };
    let allowed = |operation, resource_type, name: &str| {
        broker
            .authorizer
            .authorize(session, operation, resource_type, name)
    };
    if matches!(
        request,
        Request::UpsertUser { .. } | Request::DeleteUser { .. } | Request::ListUsers
    ) {
        // As Kafka's AlterUserScramCredentials and DescribeUserScramCredentials.
        let operation = match request {
            Request::ListUsers => Operation::Describe,
            _ => Operation::Alter,
        };
        if let Err(e) = check_cluster(broker, session, operation) {
            return (error_response(&e), charge, None);
        }
        return (users_request(config, request).await, charge, None);
    }
    let result: Result<ResponseBody, ServiceError> = async {
        Ok(match request {
            Request::Handshake { .. } => ResponseBody::Handshake {
                server: format!("strand-broker {}", env!("CARGO_PKG_VERSION")),
                versions: ApiKey::ALL
                    .iter()
                    .map(|k| {
                        let (min, max) = k.versions();
                        (*k as u16, min, max)
                    })
                    .collect(),
                frame_bytes_max: frame_bytes_max as u32,
                in_flight_max: in_flight_max as u32,
            },
            Request::CreateTopic { name, settings } => {
                if !broker
                    .authorizer
                    .authorize_cluster(session, Operation::Create)
                {
                    check(Operation::Create, ResourceType::Topic, &name)?;
                }
                let partitions = settings.partitions;
                let config = TopicConfig {
                    partitions,
                    compact: settings.compact,
                    retention_ms: settings.retention_ms,
                    retention_bytes: settings.retention_bytes,
                    segment_bytes_max: match settings.segment_bytes {
                        None => None,
                        Some(b) => Some(u64::try_from(b).map_err(|_| {
                            ServiceError::Topic(TopicError::InvalidConfig(
                                "segment_bytes must be positive".into(),
                            ))
                        })?),
                    },
                };
                broker.create_topic(name, config).await?;
                ResponseBody::Empty
            }
            Request::DeleteTopic { name } => {
                check(Operation::Delete, ResourceType::Topic, &name)?;
                broker.delete_topic(name).await?;
                ResponseBody::Empty
            }
            Request::ListTopics => ResponseBody::Topics(
                broker
                    .list_topics()
                    .iter()
                    .filter(|t| allowed(Operation::Describe, ResourceType::Topic, &t.name))
                    .map(|t| description(broker, t))
                    .collect(),
            ),
            Request::DescribeTopic { name } => {
                check(Operation::Describe, ResourceType::Topic, &name)?;
                ResponseBody::Topic(description(broker, &broker.describe_topic(&name)?))
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                check(Operation::Read, ResourceType::Topic, &topic)?;
                // A fetch answer must fit in a frame and within the broker's fetch limit.
                let max_bytes = (max_bytes as usize)
                    .min(frame_bytes_max.saturating_sub(64))
                    .min(config.fetch_bytes_max)
                    .max(1);
                let wait = Duration::from_millis(max_wait_ms.into());
                let span = tracing::info_span!(
                    "native.fetch",
                    otel.kind = "server",
                    %topic,
                    partition
                );
                if zero_copy {
                    let (result, records_charge) = broker
                        .fetch_region_charged(&topic, partition, offset, max_bytes, wait, budget)
                        .instrument(span)
                        .await?;
                    charge = records_charge;
                    region = result.region;
                    ResponseBody::Fetched {
                        high_watermark: result.high_watermark,
                        log_start_offset: result.log_start_offset,
                        records: Bytes::new(),
                    }
                } else {
                    let (result, records_charge) = broker
                        .fetch_charged(&topic, partition, offset, max_bytes, wait, budget)
                        .instrument(span)
                        .await?;
                    charge = records_charge;
                    ResponseBody::Fetched {
                        high_watermark: result.high_watermark,
                        log_start_offset: result.log_start_offset,
                        records: result.batches,
                    }
                }
            }
            Request::ListOffsets {
                topic,
                partition,
                query,
            } => {
                check(Operation::Describe, ResourceType::Topic, &topic)?;
                let spec = match query {
                    OffsetQuery::Earliest => OffsetSpec::Earliest,
                    OffsetQuery::Latest => OffsetSpec::Latest,
                    OffsetQuery::Timestamp(ts) => OffsetSpec::Timestamp(ts),
                };
                ResponseBody::Offset(broker.list_offset(&topic, partition, spec).await?)
            }
            Request::JoinGroup {
                group,
                member_id,
                client_id,
                topics,
                session_timeout_ms,
                rebalance_timeout_ms,
                assignor,
            } => {
                check(Operation::Read, ResourceType::Group, &group)?;
                let assignor = assignor
                    .parse::<Assignor>()
                    .map_err(|reason| ServiceError::Topic(TopicError::InvalidConfig(reason)))?;
                let joined = broker
                    .groups
                    .join(JoinRequest {
                        group,
                        member_id: (!member_id.is_empty()).then_some(member_id),
                        client_id,
                        topics: topics.into_iter().collect(),
                        session_timeout_ms: session_timeout_ms.into(),
                        rebalance_timeout_ms: rebalance_timeout_ms.into(),
                        assignor,
                        client_protocol: None,
                    })
                    .await
                    .map_err(ServiceError::Group)?;
                ResponseBody::Joined {
                    member_id: joined.member_id,
                    generation: joined.generation,
                    assignment: joined.assignment,
                }
            }
            Request::Heartbeat {
                group,
                member_id,
                generation,
            } => {
                check(Operation::Read, ResourceType::Group, &group)?;
                broker
                    .groups
                    .heartbeat(&group, &member_id, generation)
                    .map_err(ServiceError::Group)?;
                ResponseBody::Empty
            }
            Request::LeaveGroup { group, member_id } => {
                check(Operation::Read, ResourceType::Group, &group)?;
                broker
                    .groups
                    .leave(&group, &member_id)
                    .map_err(ServiceError::Group)?;
                ResponseBody::Empty
            }
            Request::OffsetCommit {
                group,
                member_id,
                generation,
                offsets,
            } => {
                // Refused whole, so nothing is committed when any part is not allowed.
                check(Operation::Read, ResourceType::Group, &group)?;
                for o in &offsets {
                    check(Operation::Read, ResourceType::Topic, &o.topic)?;
                }
                let offsets = offsets
                    .into_iter()
                    .map(|o| {
                        (
                            (o.topic, o.partition),
                            CommittedOffset {
                                offset: o.offset,
                                metadata: o.metadata,
                            },
                        )
                    })
                    .collect();
                broker
                    .groups
                    .commit(&group, &member_id, generation, offsets)
                    .await
                    .map_err(|e| match e {
                        CommitError::Fenced(e) => ServiceError::Group(e),
                        CommitError::Storage(e) => e,
                    })?;
                ResponseBody::Empty
            }
            Request::OffsetFetch { group, partitions } => ResponseBody::Committed({
                check(Operation::Describe, ResourceType::Group, &group)?;
                for (topic, _) in &partitions {
                    check(Operation::Describe, ResourceType::Topic, topic)?;
                }
                partitions
                    .into_iter()
                    .map(|tp| {
                        broker.groups.committed(&group, &tp).map(|c| OffsetEntry {
                            topic: tp.0,
                            partition: tp.1,
                            offset: c.offset,
                            metadata: c.metadata,
                        })
                    })
                    .collect()
            }),
            Request::ListGroups => {
                let all = broker
                    .authorizer
                    .authorize_cluster(session, Operation::Describe);
                ResponseBody::Groups(
                    broker
                        .groups
                        .list()
                        .into_iter()
                        .filter(|g| all || allowed(Operation::Describe, ResourceType::Group, g))
                        .collect(),
                )
            }
            Request::DescribeGroup { group } => {
                check(Operation::Describe, ResourceType::Group, &group)?;
                let mut described = broker
                    .groups
                    .describe(&group)
                    .ok_or_else(|| ServiceError::UnknownGroup(group.clone()))?;
                // Offsets (and lag) only of topics the principal may Describe.
                described
                    .committed
                    .retain(|tp, _| allowed(Operation::Describe, ResourceType::Topic, &tp.0));
                ResponseBody::Group(group_info(broker, described))
            }
            Request::DeleteGroup { group } => {
                check(Operation::Delete, ResourceType::Group, &group)?;
                broker.groups.delete(&group).await?;
                tracing::info!(principal = %session.principal, %group, "deleted group");
                ResponseBody::Empty
            }
            Request::CreateAcls { bindings } => {
                check_cluster(broker, session, Operation::Alter)?;
                let bindings = bindings
                    .iter()
                    .map(|b| {
                        acl::AclBinding::from_codes(
                            b.resource_type as i8,
                            &b.resource_name,
                            b.pattern_type as i8,
                            &b.principal,
                            &b.host,
                            b.operation as i8,
                            b.permission as i8,
                        )
                        .map_err(acl::AclError::Invalid)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let n = bindings.len();
                let authorizer = broker.authorizer.clone();
                blocking_acls(move || authorizer.create(bindings)).await?;
                tracing::info!(principal = %session.principal, n_acls = n, "created ACLs");
                ResponseBody::Empty
            }
            Request::DescribeAcls { filter } => {
                check_cluster(broker, session, Operation::Describe)?;
                ResponseBody::Acls(match acl_filter(&filter)? {
                    None => Vec::new(),
                    Some(f) => broker
                        .authorizer
                        .describe(&f)
                        .iter()
                        .map(wire_acl)
                        .collect(),
                })
            }
            Request::DeleteAcls { filters } => {
                check_cluster(broker, session, Operation::Alter)?;
                let filters: Vec<acl::AclFilter> = filters
                    .iter()
                    .map(acl_filter)
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .flatten()
                    .collect();
                let authorizer = broker.authorizer.clone();
                let deleted = blocking_acls(move || authorizer.delete(&filters)).await?;
                // A binding several filters matched is listed once.
                let deleted: std::collections::BTreeSet<_> =
                    deleted.into_iter().flatten().collect();
                if !deleted.is_empty() {
                    tracing::info!(principal = %session.principal, n_acls = deleted.len(), "deleted ACLs");
                }
                ResponseBody::Acls(deleted.iter().map(wire_acl).collect())
            }
            Request::Produce { .. }
            | Request::Subscribe { .. }
            | Request::AddCredit { .. }
            | Request::Unsubscribe { .. }
            | Request::SaslHandshake { .. }
            | Request::SaslAuthenticate { .. } => {
                unreachable!("connection-level requests are dispatched by the connection")
            }
            Request::UpsertUser { .. } | Request::DeleteUser { .. } | Request::ListUsers => {
                unreachable!("user requests are answered by users_request")
            }
        })
    }
    .await;
    let response = match result {
        Ok(body) => Response::Ok(body),
        Err(e) => error_response(&e),
    };
    (response, charge, region)
}

/// UpsertUser, DeleteUser and ListUsers on the user store. Changes write a file with fsyncs:
/// they run off the async threads.
async fn users_request(config: &ServerConfig, request: Request) -> Response {
    use strand_client::native::messages::UserEntry;
    use strand_client::scram::{ScramMechanism, StoredCredential};
    let Some(authenticator) = &config.authenticator else {
        return Response::error(
            ErrorCode::UnsupportedRequest,
            "this broker has no user store",
        );
    };
    let users = authenticator.users.clone();
    let mechanism = |name: &str| {
        name.parse::<ScramMechanism>()
            .map_err(|e| Box::new(Response::error(ErrorCode::InvalidRequest, e)))
    };
    let change = match request {
        Request::ListUsers => {
            return Response::Ok(ResponseBody::Users(
                users
                    .list()
                    .into_iter()
                    .map(|u| UserEntry {
                        name: u.name,
                        mechanisms: u
                            .mechanisms
                            .into_iter()
                            .map(|(m, iterations)| (m.name().to_string(), iterations))
                            .collect(),
                    })
                    .collect(),
            ))
        }
        Request::UpsertUser {
            name,
            mechanism: m,
            iterations,
            salt,
            salted_password,
        } => {
            let m = match mechanism(&m) {
                Ok(m) => m,
                Err(response) => return *response,
            };
            let credential =
                StoredCredential::from_salted_password(m, &salted_password, &salt, iterations);
            if salted_password.len() != m.hash_bytes() {
                return Response::error(
                    ErrorCode::InvalidRequest,
                    format!("a {m} salted password is {} bytes", m.hash_bytes()),
                );
            }
            tokio::task::spawn_blocking(move || users.upsert(&name, credential)).await
        }
        Request::DeleteUser { name, mechanism: m } => {
            let m = match m.as_str() {
                "" => None,
                m => match mechanism(m) {
                    Ok(m) => Some(m),
                    Err(response) => return *response,
                },
            };
            tokio::task::spawn_blocking(move || users.delete(&name, m)).await
        }
        _ => unreachable!("only user requests come here"),
    };
    match change {
        Ok(Ok(())) => Response::Ok(ResponseBody::Empty),
        Ok(Err(e)) => {
            let code = match &e {
                UsersError::NotFound(_)
                | UsersError::InvalidName { .. }
                | UsersError::InvalidCredential(_) => ErrorCode::InvalidRequest,
                UsersError::LimitReached { .. } => ErrorCode::LimitReached,
                _ => {
                    tracing::error!(error = %e, "changing users failed");
                    ErrorCode::StorageError
                }
            };
            Response::error(code, e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "user change task failed");
            Response::error(ErrorCode::Internal, "internal error")
        }
    }
}

/// The authorizer's answer as a [`ServiceError`].
fn authorize(
    broker: &Broker,
    session: &Session,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
) -> Result<(), ServiceError> {
    broker
        .authorizer
        .check(session, operation, resource_type, name)
        .map_err(ServiceError::Denied)
}

fn check_cluster(
    broker: &Broker,
    session: &Session,
    operation: Operation,
) -> Result<(), ServiceError> {
    authorize(
        broker,
        session,
        operation,
        ResourceType::Cluster,
        acl::CLUSTER_NAME,
    )
}

/// A filter off the wire; `None` when it can match none of Strand's bindings.
fn acl_filter(f: &AclBindingFilter) -> Result<Option<acl::AclFilter>, ServiceError> {
    acl::AclFilter::from_codes(
        f.resource_type as i8,
        f.resource_name.as_deref(),
        f.pattern_type as i8,
        f.principal.as_deref(),
        f.host.as_deref(),
        f.operation as i8,
        f.permission as i8,
    )
    .map_err(|reason| ServiceError::Acl(acl::AclError::Invalid(reason)))
}

fn wire_acl(b: &acl::AclBinding) -> AclBinding {
    AclBinding {
        resource_type: b.pattern.resource_type.code() as u8,
        resource_name: b.pattern.name.clone(),
        pattern_type: b.pattern.pattern_type.code() as u8,
        principal: b.entry.principal.to_string(),
        host: b.entry.host.clone(),
        operation: b.entry.operation.code() as u8,
        permission: b.entry.permission.code() as u8,
    }
}

/// Runs an ACL change (it writes and fsyncs the file) on the blocking pool.
async fn blocking_acls<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, acl::AclError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("ACL task failed: {e}")))?
        .map_err(ServiceError::Acl)
}

fn group_info(broker: &Broker, g: GroupDescription) -> GroupInfo {
    let state = match g.state {
        GroupState::Empty => "empty",
        GroupState::Rebalancing => "rebalancing",
        GroupState::AwaitingSync => "awaiting-sync",
        GroupState::Stable => "stable",
    };
    GroupInfo {
        group: g.group,
        state: state.into(),
        generation: g.generation,
        assignor: format!("{:?}", g.assignor),
        members: g
            .members
            .into_iter()
            .map(|m| GroupMember {
                member_id: m.member_id,
                client_id: m.client_id,
                assignment: m.assignment,
            })
            .collect(),
        offsets: g
            .committed
            .into_iter()
            .map(|((topic, partition), c)| {
                let lag = broker
                    .partition_info(&topic, partition)
                    .map_or(-1, |p| p.high_watermark as i64 - c.offset as i64);
                GroupOffset {
                    topic,
                    partition,
                    offset: c.offset,
                    lag,
                }
            })
            .collect(),
    }
}

fn description(broker: &Broker, topic: &TopicInfo) -> TopicDescription {
    let log = topic.config.log_config(broker.topics.defaults());
    let limit = |v: Option<u64>| v.map_or(-1, |v| v as i64);
    TopicDescription {
        name: topic.name.clone(),
        compact: topic.config.compact,
        retention_ms: limit(log.retention_ms),
        retention_bytes: limit(log.retention_bytes),
        partitions: topic
            .partitions
            .iter()
            .map(|p| PartitionState {
                partition: p.partition,
                log_start_offset: p.log_start_offset,
                high_watermark: p.high_watermark,
            })
            .collect(),
    }
}

/// The protocol's error code for a broker error. Internal detail is logged, not sent.
fn error_response(e: &ServiceError) -> Response {
    use strand_client::batch::BatchError;
    let code = match e {
        ServiceError::UnknownTopicOrPartition { .. }
        | ServiceError::Topic(TopicError::NotFound(_)) => ErrorCode::UnknownTopicOrPartition,
        ServiceError::Topic(TopicError::AlreadyExists(_)) => ErrorCode::TopicAlreadyExists,
        ServiceError::Topic(TopicError::InvalidName { .. }) => ErrorCode::InvalidTopic,
        ServiceError::Topic(TopicError::InvalidConfig(_)) => ErrorCode::InvalidConfig,
        ServiceError::Topic(TopicError::LimitReached { .. })
        | ServiceError::Group(GroupError::GroupMaxSizeReached | GroupError::GroupsMaxReached) => {
            ErrorCode::LimitReached
        }
        ServiceError::InternalTopic { .. } => ErrorCode::InternalTopic,
        ServiceError::Log(LogError::InvalidBatch(BatchError::TooLarge { .. }))
        | ServiceError::Group(GroupError::OffsetMetadataTooLarge) => ErrorCode::TooLarge,
        ServiceError::Log(LogError::InvalidBatch(_)) => ErrorCode::CorruptBatch,
        ServiceError::Log(LogError::OffsetOutOfRange { .. }) => ErrorCode::OffsetOutOfRange,
        ServiceError::Log(LogError::Closed { .. }) => ErrorCode::ShuttingDown,
        ServiceError::Log(LogError::Poisoned { .. } | LogError::Io { .. })
        | ServiceError::Topic(TopicError::Log(_) | TopicError::Io { .. }) => {
            ErrorCode::StorageError
        }
        ServiceError::Group(GroupError::UnknownMember | GroupError::MemberRemoved) => {
            ErrorCode::UnknownMember
        }
        ServiceError::Group(GroupError::IllegalGeneration) => ErrorCode::IllegalGeneration,
        ServiceError::Group(GroupError::RebalanceInProgress) => ErrorCode::RebalanceInProgress,
        ServiceError::Group(GroupError::InvalidSessionTimeout) => ErrorCode::InvalidSessionTimeout,
        ServiceError::UnknownGroup(_) => ErrorCode::UnknownGroup,
        ServiceError::GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
        ServiceError::Sequence(_) | ServiceError::IdempotentBatchCount | ServiceError::Txn(_) => {
            ErrorCode::InvalidRequest
        }
        ServiceError::Group(GroupError::InconsistentGroupProtocol) => {
            ErrorCode::InconsistentGroupProtocol
        }
        ServiceError::Denied(_) => ErrorCode::AuthorizationFailed,
        ServiceError::Acl(acl::AclError::Invalid(_)) => ErrorCode::InvalidRequest,
        ServiceError::Acl(acl::AclError::LimitReached { .. }) => ErrorCode::LimitReached,
        ServiceError::Acl(_) => ErrorCode::StorageError,
        _ => ErrorCode::Internal,
    };
    if matches!(code, ErrorCode::Internal | ErrorCode::StorageError) {
        tracing::error!(error = %e, "request failed");
    }
    Response::error(code, e.to_string())
}

/// Queues an answer for the writer with the budget charge of its bytes (none for the small
/// answers), which the writer gives back once the answer is written.
async fn send(
    out: &mpsc::Sender<(OutFrame, Charge)>,
    response: Response,
    correlation_id: u32,
    charge: Charge,
) -> Result<(), ()> {
    // A fetch answer's records are not copied: they are written after the head, as read.
    let mut buf = BytesMut::with_capacity(64);
    let records = response.encode_head(correlation_id, &mut buf);
    // Only the encoded head and the records wait in the queue.
    drop(response);
    let frame = OutFrame {
        head: buf.freeze(),
        records,
        region: None,
    };
    out.send((frame, charge)).await.map_err(|_| ())
}

/// Queues a fetch answer whose records are `region`, sent from the segment file after the
/// answer's head.
async fn send_region(
    out: &mpsc::Sender<(OutFrame, Charge)>,
    response: Response,
    correlation_id: u32,
    charge: Charge,
    region: FileRegion,
) -> Result<(), ()> {
    let Response::Ok(ResponseBody::Fetched {
        high_watermark,
        log_start_offset,
        ..
    }) = response
    else {
        return send(out, response, correlation_id, charge).await;
    };
    let mut buf = BytesMut::with_capacity(64);
    Response::encode_fetched_head(
        correlation_id,
        high_watermark,
        log_start_offset,
        region.len,
        &mut buf,
    );
    let frame = OutFrame {
        head: buf.freeze(),
        records: Bytes::new(),
        region: Some(region),
    };
    out.send((frame, charge)).await.map_err(|_| ())
}

/// An answer or push on its way to the writer: the encoded head, and the records a fetch
/// answer or push ends with (empty for the others), kept apart so they are never copied;
/// or, instead of the records, the region of a segment file that holds them.
struct OutFrame {
    head: Bytes,
    records: Bytes,
    region: Option<FileRegion>,
}

/// Writes frames as they come, flushing when no more are queued, so that a burst of small
/// answers goes out in few system calls. Records of a fetch answer or push go out with their
/// head in one vectored write (with whatever small answers are buffered before it flushed
/// first), straight from the buffer they were read into.
async fn write_frames<W: AnswerSink>(
    writer: W,
    mut frames: mpsc::Receiver<(OutFrame, Charge)>,
    timeout: Duration,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    while let Some((frame, charge)) = frames.recv().await {
        let written = tokio::time::timeout(timeout, async {
            write_frame(&mut writer, &frame).await?;
            if frames.is_empty() {
                writer.flush().await?;
            }
            std::io::Result::Ok(())
        })
        .await;
        drop(charge);
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The client went away; dropping the receiver ends the connection's tasks.
                tracing::debug!(error = %e, "writing an answer failed");
                return;
            }
            Err(_) => {
                tracing::info!("closing a connection whose client does not read its answers");
                return;
            }
        }
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

/// Writes one frame: its head and records in vectored writes until both are out. Small
/// frames land in the writer's buffer; large ones pass it by.
async fn write_frame<W: AnswerSink>(
    writer: &mut BufWriter<W>,
    frame: &OutFrame,
) -> std::io::Result<()> {
    if let Some(region) = &frame.region {
        writer.write_all(&frame.head).await?;
        writer.flush().await?;
        return match writer.get_ref().socket() {
            Some(socket) => send_file(socket, region).await,
            None => {
                let region = region.clone();
                let records = tokio::task::spawn_blocking(move || region.read())
                    .await
                    .map_err(std::io::Error::other)??;
                writer.write_all(&records).await
            }
        };
    }
    let (mut head, mut records) = (&frame.head[..], &frame.records[..]);
    while !head.is_empty() || !records.is_empty() {
        let slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(records)];
        let n = writer.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        records = &records[n - from_head..];
    }
    Ok(())
}

/// Sends `region` from its segment file to the socket with `sendfile`: the bytes go from the
/// page cache to the socket without passing through the broker's memory.
async fn send_file(socket: &tokio::net::TcpStream, region: &FileRegion) -> std::io::Result<()> {
    let mut position = region.position;
    let end = region.position + region.len as u64;
    while position < end {
        socket.writable().await?;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            let left = (end - position) as usize;
            rustix::fs::sendfile(socket, region.file(), Some(&mut position), left)
                .map_err(std::io::Error::from)
        });
        match sent {
            // The file ended early: it cannot, for bytes below the high watermark.
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Resolves once shutdown has been signalled (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
