//! The WebSocket connections that follow a job: a hash per job from connection id to
//! the expiry of the token it connected with (read by every append in the same round
//! trip, so a push can skip and close connections whose token has expired; a share
//! link's expiry is followed by `:` and the link's share generation, so that revoking
//! the job's links finds and closes them), and a key per connection for `$disconnect`.

use std::time::Duration;

use logstream_core::ids::JobId;

use super::keys::{JobKeys, WS_CONNECTION_TTL_SECS, ws_connection_key};
use super::scripts::FOLLOW;
use super::{LogStore, StoreError};

/// A WebSocket connection following a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socket {
    /// API Gateway's connection id.
    pub id: String,
    /// When the viewer's token expires (ms since the epoch); `None` when it had no
    /// expiry. The connection gets nothing after it and is closed.
    pub expires_at_ms: Option<u64>,
}

impl Socket {
    /// Connection ids and expiries as the scripts answer them: `id, exp, id, exp…`
    /// (`exp` 0 for none; a share link's `exp:generation`).
    pub(super) fn from_pairs(raw: &[String]) -> Result<Vec<Self>, StoreError> {
        if !raw.len().is_multiple_of(2) {
            return Err(StoreError::Corrupt("odd connection list".into()));
        }
        raw.chunks_exact(2)
            .map(|pair| {
                let exp = pair[1]
                    .split_once(':')
                    .map_or(pair[1].as_str(), |(exp, _)| exp);
                let exp: u64 = exp
                    .parse()
                    .map_err(|_| StoreError::Corrupt("connection expiry".into()))?;
                Ok(Self {
                    id: pair[0].clone(),
                    expires_at_ms: (exp > 0).then_some(exp),
                })
            })
            .collect()
    }

    /// Whether its token has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|exp| exp <= now_ms)
    }
}

/// What [`LogStore::add_connection`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Followed {
    /// The connection follows the job.
    Yes,
    /// The job is gone (deleted or expired since the caller read it).
    JobGone,
    /// The share link it connected with was revoked since the caller checked it.
    Revoked,
}

impl LogStore {
    /// Registers WebSocket connection `connection` as following `job` until
    /// `expires_at_ms` (its token's expiry): added to the job's connection hash (which
    /// takes the job's TTL) if the job still exists, and, for a share link (`share`:
    /// its generation), only while the job's links are not revoked; and remembered under
    /// its own key for `$disconnect`, which only knows the connection id. The two keys
    /// are in different cluster slots, so they are two requests sent at once: on one node
    /// they share the multiplexed connection's round trip, in a cluster they go to their
    /// nodes in parallel. Nothing of the job is written unless [`Followed::Yes`].
    pub async fn add_connection(
        &self,
        job: &JobId,
        connection: &str,
        expires_at_ms: Option<u64>,
        share: Option<u64>,
    ) -> Result<Followed, StoreError> {
        let keys = JobKeys::new(job);
        let by_id = ws_connection_key(connection);
        let ttl = self.retention.ttl_secs;
        let exp = expires_at_ms.unwrap_or(0);
        let (value, generation) = match share {
            Some(generation) => (format!("{exp}:{generation}"), generation.to_string()),
            None => (exp.to_string(), String::new()),
        };
        let follow = self.run(|mut c| {
            let mut inv = FOLLOW.key(&keys.ws);
            inv.key(&keys.meta)
                .key(&keys.share)
                .arg(connection)
                .arg(&value)
                .arg(ttl)
                .arg(&generation);
            async move { inv.invoke::<u8>(&mut c).await }
        });
        let remember = self.run(|mut c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&by_id)
                .arg(job.as_str())
                .arg("EX")
                .arg(WS_CONNECTION_TTL_SECS);
            async move { cmd.query_async::<()>(&mut c).await }
        });
        let (followed, ()) = tokio::try_join!(follow, remember)?;
        match followed {
            1 => Ok(Followed::Yes),
            0 => Ok(Followed::JobGone),
            2 => Ok(Followed::Revoked),
            other => Err(StoreError::Corrupt(format!("follow answered {other}"))),
        }
    }

    /// Forgets connection `connection` (its `$disconnect`); returns the job it followed,
    /// if it was known.
    pub async fn remove_connection(&self, connection: &str) -> Result<Option<JobId>, StoreError> {
        let by_id = ws_connection_key(connection);
        let job: Option<String> = self
            .run(|mut c| {
                let mut cmd = redis::cmd("GETDEL");
                cmd.arg(&by_id);
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        let Some(job) = job.and_then(|raw| JobId::parse(&raw).ok()) else {
            return Ok(None);
        };
        self.drop_connections(&job, &[connection.to_owned()])
            .await?;
        Ok(Some(job))
    }

    /// Removes `connections` from `job`'s hash: what a push does with connections that
    /// answered 410 Gone (`$disconnect` is best effort in API Gateway).
    pub async fn drop_connections(
        &self,
        job: &JobId,
        connections: &[String],
    ) -> Result<(), StoreError> {
        if connections.is_empty() {
            return Ok(());
        }
        let ws = JobKeys::new(job).ws;
        self.run(|mut c| {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(&ws).arg(connections);
            async move { cmd.query_async::<()>(&mut c).await }
        })
        .await
    }

    /// Of `connections`, which answered 410 Gone, removes from `job`'s set those that
    /// registered at least `grace` ago (or are not registered at all), and returns how
    /// many it removed. The grace matters on AWS: a connection is added during its
    /// `$connect`, before API Gateway completes the handshake, and a push in that window
    /// is answered 410 although the client is about to be connected. Two round trips:
    /// the `TTL`s (one request per connection key, all sent at once, since the keys lie in
    /// different cluster slots), then the removal.
    pub async fn drop_gone_connections(
        &self,
        job: &JobId,
        connections: &[String],
        grace: Duration,
    ) -> Result<usize, StoreError> {
        if connections.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = connections.iter().map(|c| ws_connection_key(c)).collect();
        let ttls: Vec<i64> = futures_util::future::try_join_all(keys.iter().map(|key| {
            self.run(move |mut c| async move {
                redis::cmd("TTL").arg(key).query_async::<i64>(&mut c).await
            })
        }))
        .await?;
        let full = i64::try_from(WS_CONNECTION_TTL_SECS).unwrap_or(i64::MAX);
        let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        let old: Vec<String> = connections
            .iter()
            .zip(ttls)
            .filter(|(_, ttl)| *ttl < 0 || full - *ttl >= grace)
            .map(|(c, _)| c.clone())
            .collect();
        self.drop_connections(job, &old).await?;
        Ok(old.len())
    }

    /// Forgets `connections` of `job` as their `$disconnect` would: out of the job's
    /// hash, and their own keys deleted (one request per key, sent at once: the keys lie
    /// in different cluster slots). What a push does with connections it closes.
    pub async fn forget_connections(
        &self,
        job: &JobId,
        connections: &[String],
    ) -> Result<(), StoreError> {
        if connections.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = connections.iter().map(|c| ws_connection_key(c)).collect();
        futures_util::future::try_join_all(keys.iter().map(|key| {
            self.run(move |mut c| async move {
                redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await
            })
        }))
        .await?;
        self.drop_connections(job, connections).await
    }

    /// The WebSocket connections following `job`.
    pub async fn connections(&self, job: &JobId) -> Result<Vec<String>, StoreError> {
        let ws = JobKeys::new(job).ws;
        self.run(|mut c| {
            let mut cmd = redis::cmd("HKEYS");
            cmd.arg(&ws);
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }
}
