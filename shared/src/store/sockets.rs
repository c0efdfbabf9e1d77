//! The WebSocket connections that follow a job: a set per job (read by every append in
//! the same round trip) and a key per connection for `$disconnect`.

use std::time::Duration;

use logstream_core::ids::JobId;

use super::keys::{JobKeys, WS_CONNECTION_TTL_SECS, ws_connection_key};
use super::{LogStore, StoreError};

impl LogStore {
    /// Registers WebSocket connection `connection` as following `job`: added to the
    /// job's connection set (which takes the job's TTL) and remembered under its own key
    /// for `$disconnect`, which only knows the connection id. The two keys are in
    /// different cluster slots, so they are two requests sent at once: on one node they
    /// share the multiplexed connection's round trip, in a cluster they go to their
    /// nodes in parallel.
    pub async fn add_connection(&self, job: &JobId, connection: &str) -> Result<(), StoreError> {
        let ws = JobKeys::new(job).ws;
        let by_id = ws_connection_key(connection);
        let ttl = self.retention.ttl_secs;
        let follow = self.run(|mut c| {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD").arg(&ws).arg(connection).ignore();
            pipe.cmd("EXPIRE").arg(&ws).arg(ttl).ignore();
            async move { pipe.query_async::<()>(&mut c).await }
        });
        let remember = self.run(|mut c| {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&by_id)
                .arg(job.as_str())
                .arg("EX")
                .arg(WS_CONNECTION_TTL_SECS);
            async move { cmd.query_async::<()>(&mut c).await }
        });
        tokio::try_join!(follow, remember).map(|_| ())
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

    /// Removes `connections` from `job`'s set: what a push does with connections that
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
            let mut cmd = redis::cmd("SREM");
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

    /// The WebSocket connections following `job`.
    pub async fn connections(&self, job: &JobId) -> Result<Vec<String>, StoreError> {
        let ws = JobKeys::new(job).ws;
        self.run(|mut c| {
            let mut cmd = redis::cmd("SMEMBERS");
            cmd.arg(&ws);
            async move { cmd.query_async(&mut c).await }
        })
        .await
    }
}
