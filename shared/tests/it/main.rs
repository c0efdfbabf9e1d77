//! The shared crate's integration tests, one binary: the store against a private
//! redis-server, and on a private Redis Cluster.

mod cluster_store;
mod store;
