//! Which node holds which partition: the collection map, in a JetStream key-value bucket.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::{self, kv};
use cloze_index::{AnalyzerSettings, SemanticSettings};
use serde::{Deserialize, Serialize};

use crate::{ClusterError, MAP_BUCKET, NODES_BUCKET, NODE_TTL};

/// The partition of a document id: FNV-1a over its bytes, modulo the partition count. Stable
/// across versions and machines, as routing must be.
pub fn partition_of(id: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// One copy of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: String,
    /// A replica added after the collection was created: it starts from a live replica's
    /// snapshot, never empty.
    #[serde(default)]
    pub from_snapshot: bool,
}

/// A clustered collection: its settings and where each partition lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMap {
    pub name: String,
    pub partitions: u32,
    /// Copies of each partition, each on a different node.
    pub replicas: u32,
    pub analyzer: AnalyzerSettings,
    pub semantic: Option<SemanticSettings>,
    /// For each partition, its replicas, in the order searches try them.
    pub assignment: Vec<Vec<Replica>>,
}

impl CollectionMap {
    /// The local collection that holds partition `partition` on a node.
    pub fn partition_collection(&self, partition: u32) -> String {
        partition_collection(&self.name, partition)
    }

    /// The partitions `node` holds.
    pub fn partitions_of(&self, node: &str) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| self.assignment[*p as usize].iter().any(|r| r.node == node))
            .collect()
    }

    pub fn nodes(&self) -> BTreeSet<String> {
        self.assignment.iter().flatten().map(|r| r.node.clone()).collect()
    }
}

/// The local collection name of a partition.
pub fn partition_collection(collection: &str, partition: u32) -> String {
    format!("{collection}.p{partition}")
}

/// Spreads `partitions` x `replicas` copies over `nodes` as evenly as possible, no two copies of
/// a partition on one node.
pub fn assign(
    partitions: u32,
    replicas: u32,
    nodes: &[String],
) -> Result<Vec<Vec<Replica>>, ClusterError> {
    if nodes.len() < replicas as usize {
        return Err(ClusterError::Invalid(format!(
            "replicas: {replicas} copies of each partition need {replicas} nodes, and {} are up",
            nodes.len()
        )));
    }
    let empty = vec![Vec::new(); partitions as usize];
    Ok(rebalance(&empty, replicas, nodes)
        .into_iter()
        .map(|p| p.into_iter().map(|node| Replica { node, from_snapshot: false }).collect())
        .collect())
}

/// The assignment that keeps as many current copies as it can, on `nodes` only, with every
/// partition at `replicas` copies and each node's count within one of every other's.
pub fn rebalance(current: &[Vec<String>], replicas: u32, nodes: &[String]) -> Vec<Vec<String>> {
    let allowed: BTreeSet<&String> = nodes.iter().collect();
    let mut target: Vec<Vec<String>> = current
        .iter()
        .map(|p| {
            let mut kept: Vec<String> = Vec::new();
            for node in p {
                if allowed.contains(node) && !kept.contains(node) && kept.len() < replicas as usize
                {
                    kept.push(node.clone());
                }
            }
            kept
        })
        .collect();
    let load = |target: &Vec<Vec<String>>| {
        let mut load: BTreeMap<String, usize> = nodes.iter().map(|n| (n.clone(), 0)).collect();
        target.iter().flatten().for_each(|n| *load.entry(n.clone()).or_default() += 1);
        load
    };
    for partition in 0..target.len() {
        while target[partition].len() < (replicas as usize).min(nodes.len()) {
            let loads = load(&target);
            let least = loads
                .iter()
                .filter(|(node, _)| !target[partition].contains(node))
                .min_by_key(|(node, count)| (**count, (*node).clone()))
                .map(|(node, _)| node.clone());
            match least {
                Some(node) => target[partition].push(node),
                None => break,
            }
        }
    }
    // Moves from the busiest node to the idlest until they are within one.
    for _ in 0..current.len() * replicas as usize {
        let loads = load(&target);
        let (Some(busiest), Some(idlest)) = (
            loads.iter().max_by_key(|(n, c)| (**c, std::cmp::Reverse((*n).clone()))),
            loads.iter().min_by_key(|(n, c)| (**c, (*n).clone())),
        ) else {
            break;
        };
        if busiest.1 - idlest.1 <= 1 {
            break;
        }
        let movable = target.iter().position(|p| p.contains(busiest.0) && !p.contains(idlest.0));
        let Some(partition) = movable else { break };
        let slot = target[partition].iter().position(|n| n == busiest.0).expect("holds it");
        target[partition][slot] = idlest.0.clone();
    }
    target
}

/// The cluster's shared state in JetStream: collection maps and live nodes.
#[derive(Clone)]
pub struct ClusterState {
    pub(crate) maps: kv::Store,
    pub(crate) nodes: kv::Store,
}

/// What a node says about itself in the nodes bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    /// Seconds since the Unix epoch when the node started.
    pub started: u64,
}

impl ClusterState {
    /// Opens the buckets, creating them on first use (with `replicas` copies on the NATS
    /// servers), waiting up to [`crate::JETSTREAM_PATIENCE`] for JetStream to be ready.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<ClusterState, ClusterError> {
        let started = std::time::Instant::now();
        loop {
            match ClusterState::try_open(js, replicas).await {
                Ok(state) => return Ok(state),
                Err(error) if started.elapsed() > crate::JETSTREAM_PATIENCE => return Err(error),
                Err(error) => {
                    tracing::info!("waiting for JetStream: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn try_open(
        js: &jetstream::Context,
        replicas: usize,
    ) -> Result<ClusterState, ClusterError> {
        let maps = bucket(
            js,
            kv::Config {
                bucket: MAP_BUCKET.to_string(),
                description: "Cloze: clustered collections and where their partitions live".into(),
                history: 5,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let nodes = bucket(
            js,
            kv::Config {
                bucket: NODES_BUCKET.to_string(),
                description: "Cloze: live nodes, each key refreshed while its node runs".into(),
                max_age: NODE_TTL,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        Ok(ClusterState { maps, nodes })
    }

    pub async fn collection(
        &self,
        name: &str,
    ) -> Result<Option<(CollectionMap, u64)>, ClusterError> {
        let entry = self.maps.entry(map_key(name)).await.map_err(ClusterError::jetstream)?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let map = serde_json::from_slice(&entry.value).map_err(|e| {
                    ClusterError::JetStream(format!("the map of \"{name}\" in {MAP_BUCKET}: {e}"))
                })?;
                Ok(Some((map, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    pub async fn collections(&self) -> Result<Vec<CollectionMap>, ClusterError> {
        let mut found = Vec::new();
        for name in self.keys(&self.maps).await? {
            if let Some(name) = name.strip_prefix("collections.") {
                if let Some((map, _)) = self.collection(name).await? {
                    found.push(map);
                }
            }
        }
        Ok(found)
    }

    /// Writes a new map, or replaces the one at `revision`; fails if another changed it since.
    pub async fn put_collection(
        &self,
        map: &CollectionMap,
        revision: Option<u64>,
    ) -> Result<u64, ClusterError> {
        let value = serde_json::to_vec(map).expect("serializes").into();
        let key = map_key(&map.name);
        match revision {
            None => self
                .maps
                .create(&key, value)
                .await
                .map_err(|_| ClusterError::CollectionExists(map.name.clone())),
            Some(revision) => self.maps.update(&key, value, revision).await.map_err(|e| {
                ClusterError::JetStream(format!(
                    "the map of \"{}\" changed meanwhile: {e}",
                    map.name
                ))
            }),
        }
    }

    pub async fn delete_collection(&self, name: &str) -> Result<(), ClusterError> {
        self.maps.delete(map_key(name)).await.map_err(ClusterError::jetstream)
    }

    /// Live nodes, by id.
    pub async fn live_nodes(&self) -> Result<BTreeMap<String, NodeRecord>, ClusterError> {
        let mut nodes = BTreeMap::new();
        for key in self.keys(&self.nodes).await? {
            if let Some(entry) =
                self.nodes.entry(key.clone()).await.map_err(ClusterError::jetstream)?
            {
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                if let Ok(record) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                    nodes.insert(record.id.clone(), record);
                }
            }
        }
        Ok(nodes)
    }

    pub(crate) async fn heartbeat(&self, record: &NodeRecord) -> Result<(), ClusterError> {
        let value = serde_json::to_vec(record).expect("serializes").into();
        self.nodes
            .put(format!("nodes.{}", record.id), value)
            .await
            .map_err(ClusterError::jetstream)?;
        Ok(())
    }

    async fn keys(&self, store: &kv::Store) -> Result<Vec<String>, ClusterError> {
        use futures::TryStreamExt;
        match store.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(ClusterError::jetstream),
            Err(error) => Err(ClusterError::jetstream(error)),
        }
    }
}

fn map_key(name: &str) -> String {
    format!("collections.{name}")
}

/// Opens a key-value bucket, creating its stream first if needed. The stream is made here, as
/// the client library would, because the library's own way first reads account fields that
/// NATS servers before 2.10 (Debian's 2.9 among them) do not send.
async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(&config.bucket).await {
        return Ok(store);
    }
    let stream = jetstream::stream::Config {
        name: format!("KV_{}", config.bucket),
        description: Some(config.description),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history.max(1),
        max_age: config.max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: config.num_replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let created = js.create_stream(stream).await;
    // Another process may have created it in between.
    js.get_key_value(&config.bucket).await.map_err(|error| {
        let cause = created.err().map_or_else(|| error.to_string(), |e| e.to_string());
        ClusterError::JetStream(format!("creating the bucket {}: {cause}", config.bucket))
    })
}

/// A node id becomes part of NATS subjects and consumer names: letters, digits, '-' and '_'.
pub fn validate_node_id(id: &str) -> Result<(), ClusterError> {
    let valid = (1..=64).contains(&id.len())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "node id \"{id}\": use 1 to 64 letters, digits, '-' and '_'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn routing_is_stable_and_spreads_ids() {
        assert_eq!(partition_of("doc-1", 12), partition_of("doc-1", 12));
        let mut counts = [0usize; 12];
        (0..12_000).for_each(|i| counts[partition_of(&format!("doc-{i}"), 12) as usize] += 1);
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn assignment_puts_copies_on_distinct_nodes_evenly() {
        let assignment = assign(12, 2, &nodes(3)).unwrap();
        let mut load = BTreeMap::new();
        for partition in &assignment {
            assert_eq!(partition.len(), 2);
            assert_ne!(partition[0].node, partition[1].node);
            partition.iter().for_each(|r| *load.entry(r.node.clone()).or_insert(0) += 1);
        }
        assert_eq!(load.values().copied().collect::<Vec<_>>(), [8, 8, 8]);
        assert!(assign(12, 3, &nodes(2)).is_err());
    }

    #[test]
    fn rebalancing_onto_a_new_node_moves_only_its_share() {
        let current: Vec<Vec<String>> = assign(12, 2, &nodes(3))
            .unwrap()
            .into_iter()
            .map(|p| p.into_iter().map(|r| r.node).collect())
            .collect();
        let target = rebalance(&current, 2, &nodes(4));
        let moved: usize = current
            .iter()
            .zip(&target)
            .map(|(a, b)| b.iter().filter(|n| !a.contains(n)).count())
            .sum();
        assert_eq!(moved, 6, "{target:?}");
        assert!(target.iter().all(|p| p.len() == 2 && p[0] != p[1]));
        // Removing a node puts its copies elsewhere.
        let without = rebalance(&target, 2, &nodes(3));
        assert!(without.iter().all(|p| p.len() == 2 && !p.contains(&"n4".to_string())));
    }
}
