use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use prexor_domain::redact_uri;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::backend::{Acquired, LeaseBackend};
use crate::error::CoordError;

// Each lease operation is one script: Valkey runs it atomically, in one round trip, and judges
// expiry (`PX`) by its own clock. Plain GET/SET/PEXPIRE/DEL only, so Redis 7 and Valkey 8/9 behave
// the same (no `SET IFEQ`).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local current = redis.call('GET', KEYS[1])
        if current then return current end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return false
        ",
    )
});

static RENEW_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local renewed = {}
        for i = 1, #KEYS do
          if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
            redis.call('PEXPIRE', KEYS[i], ARGV[1])
            renewed[i] = 1
          else
            renewed[i] = 0
          end
        end
        return renewed
        ",
    )
});

static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          return redis.call('DEL', KEYS[1])
        end
        return 0
        ",
    )
});

/// Renewals are sent in batches of this many leases per script call.
const RENEW_BATCH: usize = 512;

/// Leases (and the replica registry) in a shared Valkey or Redis.
#[derive(Clone)]
pub struct ValkeyBackend {
    conn: ConnectionManager,
    client: std::sync::Arc<redis::Client>,
    uri: String,
    timeout: Duration,
}

impl std::fmt::Debug for ValkeyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeyBackend")
            .field("uri", &self.uri)
            .finish()
    }
}

/// TLS material for a `rediss://` (or `valkeys://`) connection, PEM: the CA to verify the
/// server with (the system's roots when absent) and a client certificate and key for servers
/// that require one (`tls-auth-clients yes`).
#[derive(Debug, Clone, Default)]
pub struct ValkeyTls {
    pub ca_pem: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl ValkeyTls {
    /// Reads the CA file and the client certificate and key files; an error names the file.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        client: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ValkeyTls, CoordError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| CoordError::ReadFile {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(ValkeyTls {
            ca_pem: ca.map(read).transpose()?,
            client: match client {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }
}

impl ValkeyBackend {
    /// Prepares a connection that is opened on first use and re-opened after failures.
    /// `timeout` bounds connecting and every command. A `rediss://` URI verifies the server
    /// against the system's roots; see [`ValkeyBackend::connect_tls`] for a private CA.
    pub fn connect(uri: &str, timeout: Duration) -> Result<ValkeyBackend, CoordError> {
        ValkeyBackend::connect_tls(uri, &ValkeyTls::default(), timeout)
    }

    /// [`ValkeyBackend::connect`] with TLS material for a `rediss://` URI.
    pub fn connect_tls(
        uri: &str,
        tls: &ValkeyTls,
        timeout: Duration,
    ) -> Result<ValkeyBackend, CoordError> {
        let redacted = redact_uri(uri);
        let opened = if tls.ca_pem.is_none() && tls.client.is_none() {
            redis::Client::open(uri)
        } else {
            redis::Client::build_with_tls(
                uri,
                redis::TlsCertificates {
                    client_tls: tls.client.clone().map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: tls.ca_pem.clone(),
                },
            )
        };
        let client = opened.map_err(|e| CoordError::Connect {
            uri: redacted.clone(),
            reason: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(|e| {
                CoordError::Connect {
                    uri: redacted.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(ValkeyBackend {
            conn,
            client: std::sync::Arc::new(client),
            uri: redacted,
            timeout,
        })
    }

    /// The shared connection, for other Valkey users in this crate (registry).
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, for blocking reads (`XREAD BLOCK`) that must not hold up the
    /// shared multiplexed connection. No response timeout: the caller bounds each read.
    pub(crate) async fn dedicated(&self) -> Result<redis::aio::MultiplexedConnection, CoordError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        self.bounded(
            "opening a connection for blocking reads",
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The value of a plain string key (the key is used as given: callers add the namespace).
    pub async fn get(&self, key: &str) -> Result<Option<String>, CoordError> {
        let mut conn = self.conn();
        self.bounded(
            &format!("reading {key}"),
            redis::cmd("GET").arg(key).query_async(&mut conn),
        )
        .await
    }

    /// Sets `key = value` unless the key exists; whether it was set.
    pub async fn set_nx(&self, key: &str, value: &str) -> Result<bool, CoordError> {
        let mut conn = self.conn();
        let set: Option<String> = self
            .bounded(
                &format!("writing {key}"),
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Runs one Valkey exchange with the configured time bound.
    pub(crate) async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CoordError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(CoordError::Valkey {
                op: op.to_owned(),
                source,
            }),
            Err(_) => Err(CoordError::Timeout {
                op: op.to_owned(),
                timeout: self.timeout,
            }),
        }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis().max(1) as u64
}

#[async_trait]
impl LeaseBackend for ValkeyBackend {
    async fn acquire(&self, key: &str, value: &str, ttl: Duration) -> Result<Acquired, CoordError> {
        let mut conn = self.conn();
        let current: Option<String> = self
            .bounded(
                &format!("acquiring {key}"),
                ACQUIRE
                    .key(key)
                    .arg(value)
                    .arg(ttl_ms(ttl))
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(match current {
            None => Acquired::Yes,
            Some(holder) => Acquired::HeldBy(holder),
        })
    }

    async fn take_over(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<String>, CoordError> {
        let mut conn = self.conn();
        self.bounded(
            &format!("taking over {key}"),
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_ms(ttl))
                .arg("GET")
                .query_async(&mut conn),
        )
        .await
    }

    async fn renew_many(
        &self,
        leases: &[(String, String)],
        ttl: Duration,
    ) -> Result<Vec<bool>, CoordError> {
        let mut renewed = Vec::with_capacity(leases.len());
        for batch in leases.chunks(RENEW_BATCH) {
            let mut invocation = RENEW_MANY.prepare_invoke();
            invocation.arg(ttl_ms(ttl));
            for (key, value) in batch {
                invocation.key(key);
                invocation.arg(value);
            }
            let mut conn = self.conn();
            let reply: Vec<i64> = self
                .bounded(
                    &format!("renewing {} lease(s)", batch.len()),
                    invocation.invoke_async(&mut conn),
                )
                .await?;
            if reply.len() != batch.len() {
                return Err(CoordError::Protocol {
                    op: "renewing leases".into(),
                    detail: format!("{} answers for {} leases", reply.len(), batch.len()),
                });
            }
            renewed.extend(reply.into_iter().map(|r| r == 1));
        }
        Ok(renewed)
    }

    async fn release(&self, key: &str, value: &str) -> Result<bool, CoordError> {
        let mut conn = self.conn();
        let deleted: i64 = self
            .bounded(
                &format!("releasing {key}"),
                RELEASE.key(key).arg(value).invoke_async(&mut conn),
            )
            .await?;
        Ok(deleted == 1)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, CoordError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let values: Vec<Option<String>> = self
            .bounded(
                &format!("reading {} lease key(s)", keys.len()),
                redis::cmd("MGET").arg(keys).query_async(&mut conn),
            )
            .await?;
        Ok(values)
    }

    async fn ping(&self) -> Result<(), CoordError> {
        let mut conn = self.conn();
        let reply: Value = self
            .bounded("pinging Valkey", redis::cmd("PING").query_async(&mut conn))
            .await?;
        match reply {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            other => Err(CoordError::Protocol {
                op: "pinging Valkey".into(),
                detail: format!("{other:?}"),
            }),
        }
    }

    fn describe(&self) -> String {
        format!("valkey {}", self.uri)
    }
}
