//! The write log: one JetStream stream per partition of a clustered collection.
//!
//! One stream per partition, as Kafka has one log per partition, numbers each partition's
//! writes 1, 2, 3, ... with nothing in between. A replica then knows the exact position that
//! must come next, so a write that never reaches it (lost in transit, or dropped by the server)
//! is seen as a gap and read again, never silently skipped.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use cloze_corpus::Document;
use cloze_index::Change;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ClusterError;

/// How long JetStream remembers a message id to drop a retried duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The largest message the router publishes (NATS takes 1 MiB by default).
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// The stream of a partition.
pub fn stream_name(collection: &str, partition: u32) -> String {
    format!("cloze-{}-p{partition}", collection.replace('.', "_"))
}

/// The subject a partition's writes go to.
pub fn subject(collection: &str, partition: u32) -> String {
    format!("cloze.log.{}.{partition}", collection.replace('.', "_"))
}

/// The name of the first durable consumer through which `node` reads `partition`. Each
/// time the replica starts reading it makes a new one, `{name}-g{generation}`: see
/// [`restart_consumer`].
pub fn consumer_name(partition: u32, node: &str) -> String {
    format!("p{partition}-{node}")
}

fn generation_of(name: &str, first: &str) -> Option<u64> {
    if name == first {
        return Some(0);
    }
    name.strip_prefix(first)?.strip_prefix("-g")?.parse().ok()
}

/// The names of a replica's consumers, oldest generation first.
async fn consumer_generations(
    stream: &stream::Stream,
    partition: u32,
    node: &str,
) -> Result<Vec<(u64, String)>, ClusterError> {
    use futures::TryStreamExt;
    let first = consumer_name(partition, node);
    let names: Vec<String> =
        stream.consumer_names().try_collect().await.map_err(ClusterError::jetstream)?;
    let mut found: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|name| generation_of(&name, &first).map(|g| (g, name)))
        .collect();
    found.sort();
    Ok(found)
}

fn consumer_config(
    name: String,
    collection: &str,
    partition: u32,
    node: &str,
    deliver: consumer::DeliverPolicy,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name),
        description: Some(format!("Cloze: node {node}'s replica of partition {partition}")),
        filter_subject: subject(collection, partition),
        deliver_policy: deliver,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(60),
        max_ack_pending: 100_000,
        ..Default::default()
    }
}

/// Creates a partition's stream: replicated on `replicas` NATS servers (a write is
/// acknowledged once a quorum stored it), and keeping each message until every durable
/// consumer — one per replica of the partition — has acknowledged it.
pub async fn create_stream(
    js: &jetstream::Context,
    collection: &str,
    partition: u32,
    replicas: usize,
) -> Result<stream::Stream, ClusterError> {
    js.get_or_create_stream(stream::Config {
        name: stream_name(collection, partition),
        description: Some(format!(
            "Cloze: writes to partition {partition} of the clustered collection \"{collection}\""
        )),
        subjects: vec![subject(collection, partition)],
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    })
    .await
    .map_err(ClusterError::jetstream)
}

/// Finds the replica's newest durable consumer, or creates its first one. It must exist before
/// the replica needs the log: under interest retention the stream drops what no consumer still
/// wants.
pub async fn ensure_consumer(
    stream: &stream::Stream,
    collection: &str,
    partition: u32,
    node: &str,
) -> Result<consumer::PullConsumer, ClusterError> {
    let name = match consumer_generations(stream, partition, node).await?.pop() {
        Some((_, newest)) => newest,
        None => consumer_name(partition, node),
    };
    let config =
        consumer_config(name.clone(), collection, partition, node, consumer::DeliverPolicy::All);
    stream.get_or_create_consumer(&name, config).await.map_err(ClusterError::jetstream)
}

/// A replica's newest consumer, and the older ones it replaces.
pub struct Rotation {
    pub consumer: consumer::PullConsumer,
    /// The replica's older consumers: delete them (with [`delete_named`]) once the new one has
    /// acknowledged `retire_at`, never before.
    pub older: Vec<String>,
    /// The last position the log held when the new consumer was made.
    pub retire_at: u64,
}

/// Gives the replica a new consumer that delivers from `applied + 1`. A consumer delivers in
/// log order only while nothing it sent is lost: a delivery lost with a crash or a cut
/// connection comes again only after the ack wait, behind later messages. Starting a new
/// consumer at the last committed position whenever the replica (re)starts reading, or sees a
/// gap, keeps it applying the log in order. The older consumers stay until the new one has
/// acknowledged everything the log held when it was made, so the stream's interest in those
/// messages never rests on a consumer only just created.
pub async fn restart_consumer(
    stream: &stream::Stream,
    collection: &str,
    partition: u32,
    node: &str,
    applied: u64,
) -> Result<Rotation, ClusterError> {
    let older = consumer_generations(stream, partition, node).await?;
    let generation = older.last().map_or(1, |(g, _)| g + 1);
    let name = format!("{}-g{generation}", consumer_name(partition, node));
    let deliver = consumer::DeliverPolicy::ByStartSequence { start_sequence: applied + 1 };
    let config = consumer_config(name.clone(), collection, partition, node, deliver);
    let consumer = stream.create_consumer(config).await.map_err(ClusterError::jetstream)?;
    // One stream per partition numbers its messages without holes.
    let retire_at = applied + consumer.cached_info().num_pending;
    Ok(Rotation { consumer, older: older.into_iter().map(|(_, name)| name).collect(), retire_at })
}

/// Deletes the named consumers; those already gone are no error, so a deletion cut short can
/// be tried again with the same names.
pub async fn delete_named(stream: &stream::Stream, names: &[String]) -> Result<(), ClusterError> {
    for name in names {
        if let Err(error) = stream.delete_consumer(name).await {
            let gone = matches!(
                error.kind(),
                stream::ConsumerErrorKind::JetStream(ref e)
                    if e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND
            );
            if !gone {
                return Err(ClusterError::jetstream(error));
            }
        }
    }
    Ok(())
}

/// Deletes the streams of a collection's partitions; those already gone are no error.
pub async fn delete_streams(js: &jetstream::Context, collection: &str, partitions: u32) {
    for partition in 0..partitions {
        if let Err(error) = js.delete_stream(stream_name(collection, partition)).await {
            tracing::debug!(collection, partition, "deleting the log: {error}");
        }
    }
}

/// Deletes every consumer of a replica that moved away.
pub async fn delete_consumers(
    stream: &stream::Stream,
    partition: u32,
    node: &str,
) -> Result<(), ClusterError> {
    let names: Vec<String> =
        consumer_generations(stream, partition, node).await?.into_iter().map(|(_, n)| n).collect();
    delete_named(stream, &names).await
}

/// One change in the log: the same as a bulk line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum LoggedChange {
    Index {
        id: String,
        title: String,
        text: String,
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        metadata: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vector: Option<Vec<f32>>,
    },
    Delete {
        id: String,
    },
}

impl LoggedChange {
    pub fn id(&self) -> &str {
        match self {
            LoggedChange::Index { id, .. } | LoggedChange::Delete { id } => id,
        }
    }
}

impl From<Change> for LoggedChange {
    fn from(change: Change) -> LoggedChange {
        match change {
            Change::Upsert(d) => LoggedChange::Index {
                id: d.id,
                title: d.title,
                text: d.text,
                metadata: d.metadata,
                vector: d.vector,
            },
            Change::Delete(id) => LoggedChange::Delete { id },
        }
    }
}

impl From<LoggedChange> for Change {
    fn from(change: LoggedChange) -> Change {
        match change {
            LoggedChange::Index { id, title, text, metadata, vector } => {
                Change::Upsert(Document { id, title, text, metadata, vector })
            }
            LoggedChange::Delete { id } => Change::Delete(id),
        }
    }
}

/// One log message: changes to one partition, applied in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub changes: Vec<LoggedChange>,
}

/// Cuts one partition's changes into entries of at most [`MAX_MESSAGE_BYTES`] (a change larger
/// than that goes alone), each serialized.
pub fn entries(changes: Vec<LoggedChange>) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut bytes = 0;
    let close = |current: &mut Vec<String>, entries: &mut Vec<Vec<u8>>| {
        if !current.is_empty() {
            entries.push(format!("{{\"changes\":[{}]}}", current.join(",")).into_bytes());
            current.clear();
        }
    };
    for change in changes {
        let json = serde_json::to_string(&change).expect("serializes");
        if bytes + json.len() > MAX_MESSAGE_BYTES {
            close(&mut current, &mut entries);
            bytes = 0;
        }
        bytes += json.len() + 1;
        current.push(json);
    }
    close(&mut current, &mut entries);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replicas_consumers_are_told_from_another_nodes() {
        let first = consumer_name(3, "node-1");
        assert_eq!(generation_of("p3-node-1", &first), Some(0));
        assert_eq!(generation_of("p3-node-1-g12", &first), Some(12));
        assert_eq!(generation_of("p3-node-10", &first), None);
        assert_eq!(generation_of("p3-node-10-g2", &first), None);
        assert_eq!(generation_of("p3-node-1-gx", &first), None);
    }

    #[test]
    fn entries_round_trip_and_stay_under_the_limit() {
        let changes: Vec<LoggedChange> = (0..3000)
            .map(|i| LoggedChange::Index {
                id: format!("d{i}"),
                title: String::new(),
                text: "word ".repeat(100),
                metadata: Map::new(),
                vector: None,
            })
            .chain([LoggedChange::Delete { id: "d1".into() }])
            .collect();
        let entries = entries(changes.clone());
        assert!(entries.len() > 1);
        assert!(entries.iter().all(|e| e.len() <= MAX_MESSAGE_BYTES + 16));
        let back: Vec<LoggedChange> = entries
            .iter()
            .flat_map(|e| serde_json::from_slice::<LogEntry>(e).unwrap().changes)
            .collect();
        assert_eq!(back, changes);
    }
}
