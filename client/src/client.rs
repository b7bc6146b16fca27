//! `Client`: a broker address and a connection that is re-established, with backoff, when it
//! breaks; and `Admin`, the topic and offset operations.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::connection::{Connection, ConnectionConfig};
use crate::error::ClientError;
use crate::native::messages::UserEntry;
use crate::native::messages::{AclBinding, AclBindingFilter};
use crate::native::{OffsetQuery, Request, ResponseBody, TopicDescription, TopicSettings};
use crate::scram::{self, ScramMechanism};

/// Reconnection behaviour.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connection: ConnectionConfig,
    /// First wait before reconnecting; doubles up to `reconnect_backoff_max`. Default 50 ms.
    pub reconnect_backoff: Duration,
    /// Default 2 s.
    pub reconnect_backoff_max: Duration,
    /// Give up reconnecting after this long. Default 30 s.
    pub reconnect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connection: ConnectionConfig::default(),
            reconnect_backoff: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_secs(2),
            reconnect_timeout: Duration::from_secs(30),
        }
    }
}

/// A handle on one broker; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    addr: String,
    config: ClientConfig,
    current: Arc<Mutex<Option<Connection>>>,
}

impl Client {
    /// Connects now, so that a wrong address fails here rather than at the first request.
    pub async fn connect(
        addr: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        let addr = addr.into();
        let connection = Connection::connect(addr.as_str(), config.connection.clone()).await?;
        Ok(Client {
            addr,
            config,
            current: Arc::new(Mutex::new(Some(connection))),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A live connection, reconnecting with exponential backoff if the last one broke.
    pub async fn connection(&self) -> Result<Connection, ClientError> {
        let mut current = self.current.lock().await;
        if let Some(connection) = current.as_ref().filter(|c| c.is_open()) {
            return Ok(connection.clone());
        }
        let deadline = tokio::time::Instant::now() + self.config.reconnect_timeout;
        let mut backoff = self.config.reconnect_backoff;
        loop {
            match Connection::connect(self.addr.as_str(), self.config.connection.clone()).await {
                Ok(connection) => {
                    *current = Some(connection.clone());
                    return Ok(connection);
                }
                Err(e) if e.is_retriable() && tokio::time::Instant::now() + backoff < deadline => {
                    tracing::debug!(addr = %self.addr, error = %e, ?backoff, "reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `request`, retrying once on a fresh connection if the old one had broken.
    pub async fn request(&self, request: Request) -> Result<ResponseBody, ClientError> {
        let connection = self.connection().await?;
        match connection.request(request.clone()).await {
            Err(ClientError::Closed) => self.connection().await?.request(request).await,
            other => other,
        }
    }

    /// Puts `request` on the wire now, in call order, and returns the answer to await later;
    /// tries a fresh connection once if the old one had broken.
    pub async fn send(
        &self,
        request: Request,
    ) -> Result<crate::connection::PendingResponse, ClientError> {
        let connection = self.connection().await?;
        match connection.send(request.clone()).await {
            Err(ClientError::Closed) => self.connection().await?.send(request).await,
            other => other,
        }
    }

    pub fn admin(&self) -> Admin {
        Admin {
            client: self.clone(),
        }
    }
}

/// Topic and offset administration.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

fn unexpected(body: ResponseBody) -> ClientError {
    ClientError::Invalid(format!("unexpected answer from the broker: {body:?}"))
}

impl Admin {
    pub async fn create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<(), ClientError> {
        self.client
            .request(Request::CreateTopic {
                name: name.to_string(),
                settings,
            })
            .await?;
        Ok(())
    }

    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.client
            .request(Request::DeleteTopic {
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }

    pub async fn list_topics(&self) -> Result<Vec<TopicDescription>, ClientError> {
        match self.client.request(Request::ListTopics).await? {
            ResponseBody::Topics(topics) => Ok(topics),
            other => Err(unexpected(other)),
        }
    }

    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        match self
            .client
            .request(Request::DescribeTopic {
                name: name.to_string(),
            })
            .await?
        {
            ResponseBody::Topic(topic) => Ok(topic),
            other => Err(unexpected(other)),
        }
    }

    /// Adds ACL bindings (all or none).
    pub async fn create_acls(&self, bindings: Vec<AclBinding>) -> Result<(), ClientError> {
        self.client
            .request(Request::CreateAcls { bindings })
            .await?;
        Ok(())
    }

    /// The ACL bindings `filter` matches.
    pub async fn describe_acls(
        &self,
        filter: AclBindingFilter,
    ) -> Result<Vec<AclBinding>, ClientError> {
        match self
            .client
            .request(Request::DescribeAcls { filter })
            .await?
        {
            ResponseBody::Acls(bindings) => Ok(bindings),
            other => Err(unexpected(other)),
        }
    }

    /// Removes the ACL bindings any filter matches; returns them.
    pub async fn delete_acls(
        &self,
        filters: Vec<AclBindingFilter>,
    ) -> Result<Vec<AclBinding>, ClientError> {
        match self.client.request(Request::DeleteAcls { filters }).await? {
            ResponseBody::Acls(bindings) => Ok(bindings),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes a consumer group that has no members, with its committed offsets.
    pub async fn delete_group(&self, group: &str) -> Result<(), ClientError> {
        match self
            .client
            .request(Request::DeleteGroup {
                group: group.to_string(),
            })
            .await?
        {
            ResponseBody::Empty => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Resolves an offset query; `None` when no record is as new as a timestamp asked for.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<Option<u64>, ClientError> {
        match self
            .client
            .request(Request::ListOffsets {
                topic: topic.to_string(),
                partition,
                query,
            })
            .await?
        {
            ResponseBody::Offset(offset) => Ok(offset),
            other => Err(unexpected(other)),
        }
    }

    /// Adds a SCRAM user or replaces its credential for `mechanism`. The password is salted
    /// here (`iterations` rounds of PBKDF2 on a fresh random salt): only the salted form
    /// crosses the wire, and the broker keeps only the keys derived from it.
    pub async fn upsert_user(
        &self,
        name: &str,
        mechanism: ScramMechanism,
        password: &str,
        iterations: u32,
    ) -> Result<(), ClientError> {
        if !(scram::ITERATIONS_MIN..=scram::ITERATIONS_MAX).contains(&iterations) {
            return Err(ClientError::Invalid(format!(
                "iterations {iterations} outside {}..={}",
                scram::ITERATIONS_MIN,
                scram::ITERATIONS_MAX
            )));
        }
        if password.is_empty() {
            return Err(ClientError::Invalid(
                "the password must not be empty".into(),
            ));
        }
        let mut salt = [0u8; scram::SALT_BYTES];
        scram::random(&mut salt);
        let password = password.to_string();
        // PBKDF2 takes milliseconds: off the async threads.
        let salted_password = tokio::task::spawn_blocking(move || {
            mechanism.salted_password(password.as_bytes(), &salt, iterations)
        })
        .await
        .map_err(|e| ClientError::Invalid(format!("salting the password: {e}")))?;
        self.client
            .request(Request::UpsertUser {
                name: name.to_string(),
                mechanism: mechanism.name().to_string(),
                iterations,
                salt: salt.to_vec().into(),
                salted_password: salted_password.into(),
            })
            .await?;
        Ok(())
    }

    /// Deletes the user's credential for `mechanism`, or all of them.
    pub async fn delete_user(
        &self,
        name: &str,
        mechanism: Option<ScramMechanism>,
    ) -> Result<(), ClientError> {
        self.client
            .request(Request::DeleteUser {
                name: name.to_string(),
                mechanism: mechanism.map_or(String::new(), |m| m.name().to_string()),
            })
            .await?;
        Ok(())
    }

    pub async fn list_users(&self) -> Result<Vec<UserEntry>, ClientError> {
        match self.client.request(Request::ListUsers).await? {
            ResponseBody::Users(users) => Ok(users),
            other => Err(unexpected(other)),
        }
    }
}
