//! Collections partitioned and replicated over NATS JetStream.
//!
//! Cloze does not run a cluster manager of its own: the log, its replication and the cluster's
//! shared state come from JetStream, a Raft-replicated log that acknowledges a write once a
//! quorum of its servers stored it. Cloze does the search on top:
//!
//! - A clustered collection has a fixed number of partitions; a document belongs to partition
//!   `hash(_id) mod P` ([`partition_of`]). Each partition is held by R replicas on distinct
//!   nodes; which node holds which is the [`CollectionMap`], kept in a JetStream key-value
//!   bucket ([`map`]).
//! - Writes go to one stream per partition ([`log`]), which numbers them without holes. The
//!   [`Router`] answers a bulk only once JetStream acknowledged every message.
//! - Each replica on a [`node`] consumes its partition through a durable consumer, applies a
//!   batch in one commit that records the log position, and acknowledges afterwards. The stream
//!   keeps a message until every replica's consumer acknowledged it (interest retention), so
//!   a replica that restarts replays from where its last commit stopped, and a new replica,
//!   whose consumer is created before it copies a live replica's snapshot, replays from that
//!   snapshot's position. Each time a replica starts reading, it makes itself a new consumer
//!   that starts after its last commit (and deletes the old one only then); a position that
//!   does not follow the last one applied means a delivery was lost, and the replica reads the
//!   log again from its last commit, so it applies every write in order, never skipping one.
//! - Searches fan out from the [`Router`] to one replica per partition, in three phases:
//!   keyword statistics, then both rankings scored with the summed statistics, merged and
//!   fused at the router, then the documents of the final page only ([`protocol`]).

mod archive;
pub mod log;
pub mod map;
pub mod node;
pub mod protocol;
pub mod router;

pub use map::{partition_of, CollectionMap, Replica};
pub use node::{Node, NodeConfig};
pub use router::{BulkAnswer, ClusterSearch, Router, SearchAnswer};

use std::time::Duration;

/// The key-value bucket that holds every clustered collection's map.
pub const MAP_BUCKET: &str = "cloze-cluster";
/// The key-value bucket where each live node keeps a key, refreshed every
/// [`HEARTBEAT`]; a node's key expires [`NODE_TTL`] after its last refresh.
pub const NODES_BUCKET: &str = "cloze-nodes";
/// The object store that carries snapshots from a live replica to a new one.
pub const SNAPSHOT_BUCKET: &str = "cloze-snapshots";
pub const HEARTBEAT: Duration = Duration::from_secs(2);
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// How long a node or router waits for JetStream to come up (a cluster of NATS servers elects
/// its leader first).
pub const JETSTREAM_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("no clustered collection named \"{0}\"")]
    UnknownCollection(String),
    #[error("a clustered collection named \"{0}\" already exists")]
    CollectionExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("partitions {partitions:?} of \"{collection}\" did not answer: {reason}")]
    Unavailable { collection: String, partitions: Vec<u32>, reason: String },
    #[error(transparent)]
    Index(#[from] cloze_index::IndexError),
    #[error(transparent)]
    Search(#[from] cloze_search::SearchError),
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

impl ClusterError {
    pub(crate) fn jetstream(error: impl std::fmt::Display) -> ClusterError {
        ClusterError::JetStream(error.to_string())
    }
}

/// Connects to NATS: `urls` is one or more server URLs, comma-separated, tried in that order
/// (list the server on the same machine first); the client moves to another when one fails.
pub async fn connect(urls: &str, name: &str) -> Result<async_nats::Client, ClusterError> {
    let addresses: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|url| {
            url.trim().parse().map_err(|e| ClusterError::Connect {
                url: url.to_string(),
                message: format!("not a NATS URL: {e}"),
            })
        })
        .collect::<Result<_, _>>()?;
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .retain_servers_order()
        // A server cut off from the network is noticed in about three seconds (three pings
        // unanswered), and another one used.
        .ping_interval(Duration::from_secs(1))
        .connection_timeout(Duration::from_secs(2))
        .connect(addresses)
        .await
        .map_err(|e| ClusterError::Connect { url: urls.to_string(), message: e.to_string() })
}
