//! What the router asks nodes, and what they answer: JSON over NATS request-reply, one
//! subject per node and operation ([`subject`]). A request names several partitions the node
//! holds, so a search costs one round trip per node, not per partition; each partition
//! answers on its own, so one that cannot (not caught up, gone) fails alone and the router
//! asks another replica.

use cloze_search::KeywordStatistics;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The subject on which `node` answers `operation`.
pub fn subject(node: &str, operation: &str) -> String {
    format!("cloze.node.{node}.{operation}")
}

pub const STATISTICS: &str = "statistics";
pub const EMBED: &str = "embed";
pub const RANK: &str = "rank";
pub const FETCH: &str = "fetch";
pub const WAIT: &str = "wait";
pub const STATUS: &str = "status";
pub const SNAPSHOT: &str = "snapshot";

/// One partition's answer: its result or why it has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionAnswer<T> {
    pub partition: u32,
    pub result: Result<T, String>,
}

/// Phase one of a keyword or hybrid search: each partition's BM25 statistics for the query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatisticsRequest {
    pub collection: String,
    pub partitions: Vec<u32>,
    pub query: String,
}

pub type StatisticsAnswer = Vec<PartitionAnswer<KeywordStatistics>>;

/// The query's vector, embedded by a node with the collection's model (the router has none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub collection: String,
    pub partition: u32,
    pub query: String,
}

pub type EmbedAnswer = Result<Vec<f32>, String>;

/// Phase two: each partition's best `depth` ids on each side the mode needs, keyword scores
/// computed with the summed `statistics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankRequest {
    pub collection: String,
    pub partitions: Vec<u32>,
    pub query: String,
    /// "keyword", "semantic" or "hybrid".
    pub mode: String,
    pub vector: Option<Vec<f32>>,
    pub depth: usize,
    pub ef_search: Option<usize>,
    pub filter: Option<Value>,
    pub statistics: Option<KeywordStatistics>,
}

/// One partition's rankings, best first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ranked {
    pub keyword: Vec<(String, f32)>,
    pub semantic: Vec<(String, f32)>,
    /// Documents that match at all (keyword: a query term; semantic: a vector that passes
    /// the filter).
    pub total: usize,
}

pub type RankAnswer = Vec<PartitionAnswer<Ranked>>;

/// Phase three: titles, snippets and metadata of the final page's documents in one partition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    pub collection: String,
    pub partition: u32,
    pub ids: Vec<String>,
    pub query: String,
    pub highlight: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchedDocument {
    pub id: String,
    pub title: Option<String>,
    pub snippet: Option<String>,
    pub highlight: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

pub type FetchAnswer = Result<Vec<FetchedDocument>, String>;

/// Answers once the replica has applied the log up to `position`, or after `timeout_ms`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitRequest {
    pub collection: String,
    pub partition: u32,
    pub position: u64,
    pub timeout_ms: u64,
}

/// The position reached, or where the replica still was when the wait ran out.
pub type WaitAnswer = Result<u64, String>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusRequest {
    /// Also a checksum of each partition's documents (reads every stored document).
    #[serde(default)]
    pub checksums: bool,
}

/// What a node holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub collection: String,
    pub partition: u32,
    /// Caught up with the log once since it started: searches may use it.
    pub ready: bool,
    pub documents: u64,
    /// The last log message applied.
    pub log_position: u64,
    /// FNV-1a over every document's id, title and text, in id order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A replica's copy, for a new replica: the object-store name of the packed snapshot, and the
/// log position it includes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub collection: String,
    pub partition: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotReply {
    pub object: String,
    pub log_position: u64,
}

pub type SnapshotAnswer = Result<SnapshotReply, String>;
