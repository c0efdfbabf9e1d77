//! [`StoreError`]: what went wrong talking to Redis, classified the way the API answers
//! it (503 for "try again later", 500 for the rest).

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What went wrong talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached (refused, dropped, timed out): the API's 503.
    #[error("redis unreachable: {0}")]
    Unavailable(#[source] RedisError),
    /// Redis answered with an error: a bug or a misconfigured server, the API's 500.
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
    /// Redis answered something this code did not write.
    #[error("unexpected data in redis: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// "Try again later" for a reason of this code's own, such as a connection another
    /// caller failed to make a moment ago.
    pub fn unavailable(why: String) -> Self {
        Self::Unavailable(RedisError::from(std::io::Error::other(why)))
    }
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        if is_unreachable(&e) {
            Self::Unavailable(e)
        } else {
            Self::Redis(e)
        }
    }
}

/// Whether `e` means "try again later" rather than "something is wrong": the network,
/// a timeout, or a cluster in the middle of a failover or resharding (after the cluster
/// client's own retries ran out).
fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                        | ServerErrorKind::BusyLoading
                )
        )
}
