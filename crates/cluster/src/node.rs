//! A node: the replicas of partitions the map gives it, fed from the log, and the answers to
//! the router's requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, object_store};
use cloze_index::{Change, Collection, DataDir, IndexError};
use cloze_search::{
    candidates, fill_documents, search, Filter, Hit, KeywordStatistics, Mode, SearchRequest,
};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::log::{self, LogEntry};
use crate::map::{partition_collection, ClusterState, CollectionMap, NodeRecord};
use crate::protocol::*;
use crate::{archive, ClusterError, HEARTBEAT, SNAPSHOT_BUCKET};

/// Messages a replica takes from its consumer per commit at most.
const BATCH: usize = 512;
/// How often a node reads the maps to start and stop replicas.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// How long a node waits for another to pack and hand over a snapshot of one partition. A node
/// that dies while packing never answers, so this bounds the wait before the next source.
const SNAPSHOT_PATIENCE: Duration = Duration::from_secs(30);
/// How often a replica whose consumer delivers nothing compares its position with the log's.
/// After a NATS server was cut off and came back, a consumer can stop delivering although the
/// log holds more; a replica seen behind at two looks in a row reads what it misses from the
/// log's leader, then goes on through a new consumer instead of waiting on that one forever.
const STALL_CHECK: Duration = Duration::from_secs(5);
/// How long a replica waits before it tries again to delete its older consumers.
const RETIRE_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name in the cluster: unique, and kept across restarts.
    pub id: String,
    /// NATS server URLs, comma-separated.
    pub nats: String,
    /// Where the node keeps its replicas.
    pub data_dir: PathBuf,
    /// Copies of the buckets and streams this node creates, on the NATS servers (at most
    /// their number).
    pub nats_replicas: usize,
}

/// A running node.
pub struct Node {
    shared: Arc<Shared>,
}

struct Shared {
    id: String,
    data: DataDir,
    client: async_nats::Client,
    js: jetstream::Context,
    state: ClusterState,
    nats_replicas: usize,
    replicas: Mutex<HashMap<(String, u32), Arc<ReplicaHandle>>>,
    /// One copy of each model for all the node's replicas, by weights checksum: a node holds
    /// many partitions of a collection, and a copy each would multiply its memory.
    encoders: Mutex<HashMap<String, Arc<cloze_index::Encoder>>>,
    /// Applies that embed take turns: each uses every core, and side by side they would only
    /// multiply the memory in use.
    applying: tokio::sync::Semaphore,
}

/// One replica: its current state for searches, and how far it has applied the log.
struct ReplicaHandle {
    collection: RwLock<Option<Collection>>,
    log_position: AtomicU64,
    ready: AtomicBool,
    stop: AtomicBool,
    /// Writes and snapshots take turns: both need the collection's write lock.
    writing: tokio::sync::Mutex<()>,
}

impl ReplicaHandle {
    fn current(&self) -> Option<Collection> {
        self.collection.read().expect("not poisoned").clone()
    }

    fn publish(&self, collection: Collection) {
        self.log_position.store(collection.log_position().unwrap_or(0), Ordering::SeqCst);
        *self.collection.write().expect("not poisoned") = Some(collection);
    }

    /// Lets searches use the replica, from now on.
    fn mark_ready(&self, collection: &str, partition: u32) {
        if !self.ready.swap(true, Ordering::SeqCst) {
            tracing::info!(
                collection,
                partition,
                position = self.log_position.load(Ordering::SeqCst),
                "replica caught up with the log: searches may use it"
            );
        }
    }
}

impl Node {
    /// Connects to NATS, opens the shared buckets and registers the node.
    pub async fn start(config: NodeConfig) -> Result<Node, ClusterError> {
        crate::map::validate_node_id(&config.id)?;
        let client = crate::connect(&config.nats, &format!("cloze node {}", config.id)).await?;
        let js = jetstream::new(client.clone());
        let state = ClusterState::open(&js, config.nats_replicas).await?;
        let data = DataDir::new(&config.data_dir);
        data.clear_debris()?;
        let shared = Arc::new(Shared {
            id: config.id,
            data,
            client,
            js,
            state,
            nats_replicas: config.nats_replicas,
            replicas: Mutex::new(HashMap::new()),
            encoders: Mutex::new(HashMap::new()),
            applying: tokio::sync::Semaphore::new(1),
        });
        Ok(Node { shared })
    }

    /// Serves until the process ends: answers requests, and keeps the replicas the maps give
    /// this node, starting and dropping them as the maps change.
    pub async fn run(self) -> Result<(), ClusterError> {
        let shared = self.shared;
        let mut requests = shared
            .client
            .subscribe(subject(&shared.id, "*"))
            .await
            .map_err(ClusterError::jetstream)?;
        let responder = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some(message) = requests.next().await {
                    let shared = shared.clone();
                    tokio::spawn(async move { shared.answer(message).await });
                }
            })
        };
        let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let record = NodeRecord { id: shared.id.clone(), started };
        let mut last_heartbeat: Option<Instant> = None;
        tracing::info!(node = %shared.id, "node started");
        loop {
            if last_heartbeat.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                match shared.state.heartbeat(&record).await {
                    Ok(()) => last_heartbeat = Some(Instant::now()),
                    Err(error) => tracing::warn!("heartbeat: {error}"),
                }
            }
            if let Err(error) = shared.reconcile().await {
                tracing::warn!("reading the collection maps: {error}");
            }
            if responder.is_finished() {
                return Err(ClusterError::JetStream("the NATS subscription ended".into()));
            }
            tokio::time::sleep(RECONCILE_EVERY).await;
        }
    }
}

impl Shared {
    /// Starts a replica for each partition the maps give this node that has none running, and
    /// stops and deletes those the maps no longer give it.
    async fn reconcile(self: &Arc<Self>) -> Result<(), ClusterError> {
        let maps = self.state.collections().await?;
        let mut wanted = HashMap::new();
        for map in &maps {
            for partition in map.partitions_of(&self.id) {
                wanted.insert((map.name.clone(), partition), map.clone());
            }
        }
        let (to_start, to_stop) = {
            let replicas = self.replicas.lock().expect("not poisoned");
            let to_start: Vec<_> =
                wanted.iter().filter(|(key, _)| !replicas.contains_key(*key)).collect();
            let to_stop: Vec<_> = replicas
                .iter()
                .filter(|(key, _)| !wanted.contains_key(*key))
                .map(|(key, handle)| (key.clone(), handle.clone()))
                .collect();
            (to_start.into_iter().map(|(k, m)| (k.clone(), m.clone())).collect::<Vec<_>>(), to_stop)
        };
        for ((collection, partition), map) in to_start {
            let handle = Arc::new(ReplicaHandle {
                collection: RwLock::new(None),
                log_position: AtomicU64::new(0),
                ready: AtomicBool::new(false),
                stop: AtomicBool::new(false),
                writing: tokio::sync::Mutex::new(()),
            });
            self.replicas
                .lock()
                .expect("not poisoned")
                .insert((collection.clone(), partition), handle.clone());
            let shared = self.clone();
            tokio::spawn(async move { shared.replicate(map, partition, handle).await });
        }
        for ((collection, partition), handle) in to_stop {
            handle.stop.store(true, Ordering::SeqCst);
            // Wait for an apply in progress, then drop the copy.
            let _writing = handle.writing.lock().await;
            *handle.collection.write().expect("not poisoned") = None;
            self.replicas.lock().expect("not poisoned").remove(&(collection.clone(), partition));
            let name = partition_collection(&collection, partition);
            let data = self.data.clone();
            let deleted = tokio::task::spawn_blocking(move || match data.exists(&name) {
                Ok(true) => data.delete(&name),
                other => other.map(drop),
            })
            .await
            .expect("joins");
            match deleted {
                Ok(()) => {
                    tracing::info!(%collection, partition, "replica moved away, copy deleted")
                }
                Err(error) => {
                    tracing::warn!(%collection, partition, "deleting a moved replica: {error}")
                }
            }
        }
        Ok(())
    }

    /// Keeps one replica applying its log until it is stopped (it moved away, or its collection
    /// was deleted); errors are retried.
    async fn replicate(
        self: Arc<Self>,
        map: CollectionMap,
        partition: u32,
        handle: Arc<ReplicaHandle>,
    ) {
        while !handle.stop.load(Ordering::SeqCst) {
            match self.follow_log(&map, partition, &handle).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(collection = %map.name, partition, "replica: {error}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // The router deletes a moved replica's consumers too, but this task may have made a new
        // one since; left behind, it would hold the log forever.
        if let Ok(stream) = self.js.get_stream(log::stream_name(&map.name, partition)).await {
            if let Err(error) = log::delete_consumers(&stream, partition, &self.id).await {
                tracing::debug!(collection = %map.name, partition, "the consumers of a stopped replica: {error}");
            }
        }
    }

    async fn follow_log(
        &self,
        map: &CollectionMap,
        partition: u32,
        handle: &ReplicaHandle,
    ) -> Result<(), ClusterError> {
        let stream = log::create_stream(&self.js, &map.name, partition, self.nats_replicas).await?;
        if handle.current().is_none() {
            // The consumer first: from now on the stream keeps what this replica has not
            // applied. An open replica skips this: its newest consumer already keeps the log,
            // and may be the one that went quiet (after a NATS server was cut off, a
            // consumer can be left with no leader, and every request to it fails).
            let consumer = log::ensure_consumer(&stream, &map.name, partition, &self.id).await?;
            let acknowledged = consumer.cached_info().ack_floor.stream_sequence;
            let collection = self.open_or_copy(map, partition, acknowledged).await?;
            self.share_encoder(&collection).await?;
            handle.publish(collection);
        }
        let applied = handle.log_position.load(Ordering::SeqCst);
        let log::Rotation { mut consumer, mut older, retire_at } =
            log::restart_consumer(&stream, &map.name, partition, &self.id, applied).await?;
        let mut stall = StallWatch::new();
        let mut next_retirement = Instant::now();
        loop {
            if handle.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let mut messages = Vec::new();
            let mut lost = None;
            let batch = consumer.fetch().max_messages(BATCH).messages();
            let mut batch = within_pull_patience(batch).await?.map_err(ClusterError::jetstream)?;
            loop {
                match within_pull_patience(batch.next()).await {
                    Ok(Some(message)) => messages.push(message.map_err(ClusterError::jetstream)?),
                    Ok(None) => break,
                    Err(error) => {
                        lost = Some(error);
                        break;
                    }
                }
            }
            if messages.is_empty() && lost.is_none() {
                handle.mark_ready(&map.name, partition);
                // Wait for the next message, only one: the rest come with the next batch
                // instead of being left in flight when this pull is dropped.
                let waiting =
                    consumer.batch().max_messages(1).expires(Duration::from_millis(500)).messages();
                let mut waiting =
                    within_pull_patience(waiting).await?.map_err(ClusterError::jetstream)?;
                if let Some(message) = within_pull_patience(waiting.next()).await? {
                    messages.push(message.map_err(ClusterError::jetstream)?);
                }
                drop(waiting);
            }
            // Each message's log position and body, whether the consumer delivered it or it
            // was read from the log's leader past a consumer that went quiet.
            let mut entries: Vec<(u64, bytes::Bytes)> = Vec::with_capacity(messages.len());
            for message in &messages {
                let position = message.info().map_err(ClusterError::jetstream)?.stream_sequence;
                entries.push((position, message.payload.clone()));
            }
            let mut stalled = false;
            if entries.is_empty() && lost.is_none() {
                if !stall.due() {
                    continue;
                }
                let applied = handle.log_position.load(Ordering::SeqCst);
                let info = stream.get_info().await.map_err(ClusterError::jetstream)?;
                let last = info.state.last_sequence;
                if !stall.still_behind(applied, last) {
                    continue;
                }
                let until = last.min(applied + BATCH as u64);
                for position in applied + 1..=until {
                    let message =
                        stream.get_raw_message(position).await.map_err(ClusterError::jetstream)?;
                    entries.push((message.sequence, message.payload));
                }
                tracing::warn!(
                    collection = %map.name,
                    partition,
                    "the log holds position {last}, but its consumer delivered nothing past \
                     {applied} at two looks {} s apart: read {} to {until} from the log's leader",
                    STALL_CHECK.as_secs(),
                    applied + 1
                );
                stalled = true;
            } else {
                stall = StallWatch::new();
            }
            // The partition's log numbers its writes without holes: only the messages up to
            // the first one out of place are applied, and the log is read again from there.
            let applied = handle.log_position.load(Ordering::SeqCst);
            let mut changes: Vec<Change> = Vec::new();
            let mut last = applied;
            let mut in_order = entries.len();
            for (i, (position, payload)) in entries.iter().enumerate() {
                let position = *position;
                if position <= last {
                    continue; // already in the last commit, or delivered twice
                }
                if position != last + 1 {
                    lost = Some(ClusterError::JetStream(format!(
                        "the log gave position {position} where {} comes next",
                        last + 1
                    )));
                    in_order = i;
                    break;
                }
                match serde_json::from_slice::<LogEntry>(payload) {
                    Ok(entry) => changes.extend(entry.changes.into_iter().map(Change::from)),
                    Err(error) => tracing::error!(
                        collection = %map.name,
                        partition,
                        position,
                        "skipping a log message that is not a Cloze entry: {error}"
                    ),
                }
                last = position;
            }
            messages.truncate(in_order.min(messages.len()));
            if last > applied {
                // Only embedding needs the turn: keyword-only applies are light and many.
                let embeds = handle.current().is_some_and(|c| c.has_model());
                let _turn = match embeds {
                    true => Some(self.applying.acquire().await.expect("never closed")),
                    false => None,
                };
                let writing = handle.writing.lock().await;
                if handle.stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let mut working = handle.current().expect("opened above");
                let applying = tokio::task::spawn_blocking(move || {
                    let changes = changes.into_iter().map(Ok::<_, IndexError>);
                    working.apply_at_log_position(changes, last)?;
                    // Measured now, the new segment's lengths are ready for the next search.
                    working.live_body_tokens(&working.searcher())?;
                    Ok::<_, IndexError>(working)
                })
                .await
                .expect("joins");
                drop(writing);
                match applying {
                    Ok(collection) => handle.publish(collection),
                    Err(error) => {
                        for message in &messages {
                            let _ = message.ack_with(jetstream::AckKind::Nak(None)).await;
                        }
                        return Err(error.into());
                    }
                }
            }
            // Acknowledged only once committed: a crash before this replays them.
            for message in &messages {
                message.ack().await.map_err(ClusterError::jetstream)?;
            }
            // Under a steady load a pull may never come back empty, though the replica keeps
            // up: it is caught up once it has applied what the log held when it began reading.
            if handle.log_position.load(Ordering::SeqCst) >= retire_at {
                handle.mark_ready(&map.name, partition);
            }
            if !older.is_empty()
                && handle.log_position.load(Ordering::SeqCst) >= retire_at
                && next_retirement <= Instant::now()
            {
                // Acknowledgements are not confirmed one by one: ask the consumer.
                let acknowledged = consumer.info().await.map_err(ClusterError::jetstream)?;
                if acknowledged.ack_floor.stream_sequence >= retire_at {
                    // A consumer left with no leader may refuse to go for a while; this one
                    // keeps reading meanwhile.
                    match log::delete_named(&stream, &older).await {
                        Ok(()) => older.clear(),
                        Err(error) => {
                            tracing::debug!(collection = %map.name, partition, "retiring older consumers: {error}");
                            next_retirement = Instant::now() + RETIRE_RETRY;
                        }
                    }
                }
            }
            if let Some(error) = lost {
                return Err(ClusterError::JetStream(format!(
                    "{error}; reading the log again from position {}",
                    handle.log_position.load(Ordering::SeqCst)
                )));
            }
            if stalled {
                // The quiet consumer is left for a new one that starts past what was read.
                return Err(ClusterError::JetStream(format!(
                    "a consumer of the log went quiet; reading the log again from position {}",
                    handle.log_position.load(Ordering::SeqCst)
                )));
            }
        }
    }

    /// Gives a replica's collection the node's copy of its model, loading it on first use.
    async fn share_encoder(&self, collection: &Collection) -> Result<(), ClusterError> {
        let Some(model) = collection.manifest().semantic.as_ref().and_then(|s| s.model.clone())
        else {
            return Ok(());
        };
        let known = self.encoders.lock().expect("not poisoned").get(&model.weights_sha256).cloned();
        let encoder = match known {
            Some(encoder) => encoder,
            None => {
                let loading = collection.clone();
                let encoder = tokio::task::spawn_blocking(move || loading.shared_encoder())
                    .await
                    .expect("joins")?;
                self.encoders
                    .lock()
                    .expect("not poisoned")
                    .entry(model.weights_sha256)
                    .or_insert(encoder)
                    .clone()
            }
        };
        collection.use_encoder(encoder)?;
        Ok(())
    }

    /// The replica's local copy: the one on disk, else a snapshot of a live replica, else (for a
    /// replica of the collection's first assignment, when no other copy exists) an empty one.
    /// `acknowledged` is the last log position this replica's consumer acknowledged: an empty
    /// copy would miss everything up to it, so then only a snapshot will do.
    async fn open_or_copy(
        &self,
        map: &CollectionMap,
        partition: u32,
        acknowledged: u64,
    ) -> Result<Collection, ClusterError> {
        let name = map.partition_collection(partition);
        let data = self.data.clone();
        let local = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || match data.exists(&name)? {
                true => data.open(&name).map(Some),
                false => Ok(None),
            })
            .await
            .expect("joins")?
        };
        if let Some(collection) = local {
            return Ok(collection);
        }
        let me = map.assignment[partition as usize].iter().find(|r| r.node == self.id);
        let from_snapshot = me.is_some_and(|r| r.from_snapshot);
        // Only from nodes that are up: one that is down would only cost a timeout.
        let live = self.state.live_nodes().await?;
        for source in map.assignment[partition as usize]
            .iter()
            .filter(|r| r.node != self.id && live.contains_key(&r.node))
        {
            let started = Instant::now();
            match self.copy_from(&source.node, map, partition).await {
                Ok(collection) => {
                    tracing::info!(
                        collection = %map.name, partition, from = %source.node,
                        position = collection.log_position().unwrap_or(0),
                        ms = started.elapsed().as_millis() as u64,
                        "replica copied from a snapshot"
                    );
                    return Ok(collection);
                }
                Err(error) => tracing::info!(
                    collection = %map.name, partition, from = %source.node,
                    "no snapshot: {error}"
                ),
            }
        }
        if from_snapshot || acknowledged > 0 {
            return Err(ClusterError::Invalid(format!(
                "partition {partition} of \"{}\" has no local copy and no live replica to copy from yet",
                map.name
            )));
        }
        let (data, analyzer, semantic) =
            (self.data.clone(), map.analyzer.clone(), map.semantic.clone());
        Ok(tokio::task::spawn_blocking(move || data.create(&name, analyzer, semantic))
            .await
            .expect("joins")?)
    }

    async fn copy_from(
        &self,
        node: &str,
        map: &CollectionMap,
        partition: u32,
    ) -> Result<Collection, ClusterError> {
        let request = SnapshotRequest { collection: map.name.clone(), partition };
        let reply: SnapshotAnswer =
            request_json(&self.client, &subject(node, SNAPSHOT), &request, SNAPSHOT_PATIENCE)
                .await?;
        let reply = reply.map_err(ClusterError::Invalid)?;
        let store = snapshot_store(&self.js, self.nats_replicas).await?;
        // An object's description may be read from a NATS server that has not yet stored all
        // of it (it shows as missing, or as a wrong digest): a short wait sets that right.
        let mut attempt = 1;
        let packed = loop {
            match read_object(&store, &reply.object).await {
                Ok(packed) => break packed,
                Err(error) if attempt < SNAPSHOT_READS => {
                    tracing::debug!(object = %reply.object, "reading a snapshot: {error}; again");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        };
        let _ = store.delete(&reply.object).await;
        let name = map.partition_collection(partition);
        let data = self.data.clone();
        tokio::task::spawn_blocking(move || {
            let incoming = data.path().join(format!(".incoming-{name}"));
            let _ = std::fs::remove_dir_all(&incoming);
            let restored = archive::unpack(&packed, &incoming)
                .and_then(|()| data.restore(&name, &incoming, true).map_err(ClusterError::from));
            let _ = std::fs::remove_dir_all(&incoming);
            restored
        })
        .await
        .expect("joins")
    }

    /// Answers one request from the router or another node.
    async fn answer(self: Arc<Self>, message: async_nats::Message) {
        let Some(reply) = message.reply.clone() else { return };
        let operation = message.subject.rsplit('.').next().unwrap_or_default().to_string();
        let payload = message.payload.clone();
        let answer = match operation.as_str() {
            SNAPSHOT => self.clone().snapshot(&payload).await,
            WAIT => self.clone().wait(&payload).await,
            _ => {
                let shared = self.clone();
                tokio::task::spawn_blocking(move || shared.answer_now(&operation, &payload))
                    .await
                    .unwrap_or_else(|e| Err(format!("the request failed: {e}")))
            }
        };
        let body = match answer {
            Ok(body) => body,
            Err(message) => {
                serde_json::to_vec(&serde_json::json!({ "error": message })).expect("serializes")
            }
        };
        if let Err(error) = self.client.publish(reply, body.into()).await {
            tracing::warn!("answering a request: {error}");
        }
    }

    /// The requests answered from the replicas' current state.
    fn answer_now(&self, operation: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
        fn reply<T: Serialize>(answer: T) -> Result<Vec<u8>, String> {
            Ok(serde_json::to_vec(&answer).expect("serializes"))
        }
        match operation {
            STATISTICS => {
                let request: StatisticsRequest = parse(payload)?;
                reply(self.each_partition(&request.collection, &request.partitions, |collection| {
                    KeywordStatistics::of(collection, &request.query).map_err(|e| e.to_string())
                }))
            }
            EMBED => {
                let request: EmbedRequest = parse(payload)?;
                let answer: EmbedAnswer = self
                    .ready_copy(&request.collection, request.partition)
                    .and_then(|c| {
                        c.encoder()
                            .and_then(|e| e.encode(&[&request.query]))
                            .map_err(|e| e.to_string())
                    })
                    .map(|mut vectors| vectors.remove(0));
                reply(answer)
            }
            RANK => {
                let request: RankRequest = parse(payload)?;
                reply(self.each_partition(&request.collection, &request.partitions, |collection| {
                    rank(collection, &request).map_err(|e| e.to_string())
                }))
            }
            FETCH => {
                let request: FetchRequest = parse(payload)?;
                let answer: FetchAnswer = self
                    .ready_copy(&request.collection, request.partition)
                    .and_then(|collection| fetch(&collection, &request).map_err(|e| e.to_string()));
                reply(answer)
            }
            STATUS => {
                let request: StatusRequest = parse(payload)?;
                reply(self.status(request.checksums))
            }
            other => Err(format!("unknown request \"{other}\"")),
        }
    }

    fn handle(&self, collection: &str, partition: u32) -> Option<Arc<ReplicaHandle>> {
        self.replicas
            .lock()
            .expect("not poisoned")
            .get(&(collection.to_string(), partition))
            .cloned()
    }

    /// The replica's state if it has caught up with the log since it started.
    fn ready_copy(&self, collection: &str, partition: u32) -> Result<Collection, String> {
        let handle = self
            .handle(collection, partition)
            .ok_or_else(|| format!("node {} holds no replica of partition {partition}", self.id))?;
        if !handle.ready.load(Ordering::SeqCst) {
            return Err(format!(
                "node {}'s replica of partition {partition} is catching up",
                self.id
            ));
        }
        handle.current().ok_or_else(|| {
            format!("node {}'s replica of partition {partition} is not open", self.id)
        })
    }

    fn each_partition<T>(
        &self,
        collection: &str,
        partitions: &[u32],
        work: impl Fn(&Collection) -> Result<T, String>,
    ) -> Vec<PartitionAnswer<T>> {
        partitions
            .iter()
            .map(|&partition| PartitionAnswer {
                partition,
                result: self.ready_copy(collection, partition).and_then(|c| work(&c)),
            })
            .collect()
    }

    fn status(&self, checksums: bool) -> NodeStatus {
        let handles: Vec<_> = self
            .replicas
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(key, handle)| (key.clone(), handle.clone()))
            .collect();
        let mut replicas: Vec<ReplicaStatus> = handles
            .into_iter()
            .map(|((collection, partition), handle)| {
                let copy = handle.current();
                let checksum = match (&copy, checksums) {
                    (Some(copy), true) => Some(checksum(copy)),
                    _ => None,
                };
                let (checksum, error) = match checksum {
                    Some(Err(error)) => (None, Some(error.to_string())),
                    Some(Ok(sum)) => (Some(sum), None),
                    None => (None, None),
                };
                ReplicaStatus {
                    collection,
                    partition,
                    ready: handle.ready.load(Ordering::SeqCst),
                    documents: copy.as_ref().map_or(0, Collection::document_count),
                    log_position: handle.log_position.load(Ordering::SeqCst),
                    checksum,
                    error,
                }
            })
            .collect();
        replicas.sort_by(|a, b| (&a.collection, a.partition).cmp(&(&b.collection, b.partition)));
        NodeStatus { node: self.id.clone(), replicas }
    }

    async fn wait(self: Arc<Self>, payload: &[u8]) -> Result<Vec<u8>, String> {
        let request: WaitRequest = parse(payload)?;
        let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
        // A collection created a moment ago reaches this node with its next look at the maps.
        let handle = loop {
            if let Some(handle) = self.handle(&request.collection, request.partition) {
                break handle;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {} holds no replica of partition {}",
                    self.id, request.partition
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            let position = handle.log_position.load(Ordering::SeqCst);
            if position >= request.position {
                return Ok(serde_json::to_vec(&WaitAnswer::Ok(position)).expect("serializes"));
            }
            if Instant::now() >= deadline {
                // An answer, not a failure: the replica is there, still applying.
                let behind = WaitAnswer::Err(format!(
                    "node {}'s replica of partition {} reached log position {position} of {} in {} ms",
                    self.id, request.partition, request.position, request.timeout_ms
                ));
                return Ok(serde_json::to_vec(&behind).expect("serializes"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Packs a snapshot of a replica into the object store for another node to copy.
    async fn snapshot(self: Arc<Self>, payload: &[u8]) -> Result<Vec<u8>, String> {
        let request: SnapshotRequest = parse(payload)?;
        let handle = self
            .handle(&request.collection, request.partition)
            .filter(|h| h.current().is_some())
            .ok_or_else(|| {
                format!("node {} has no copy of partition {}", self.id, request.partition)
            })?;
        let name = partition_collection(&request.collection, request.partition);
        let (data, node) = (self.data.clone(), self.id.clone());
        let packed = {
            let _writing = handle.writing.lock().await;
            tokio::task::spawn_blocking(move || {
                let folder = data.path().join(format!(".outgoing-{name}-{node}"));
                let _ = std::fs::remove_dir_all(&folder);
                let taken = data
                    .snapshot_into(&name, &folder)
                    .map_err(ClusterError::from)
                    .and_then(|_| archive::pack(&folder));
                let position = data.open(&name).map(|c| c.log_position().unwrap_or(0));
                let _ = std::fs::remove_dir_all(&folder);
                Ok::<_, ClusterError>((taken?, position?))
            })
            .await
            .expect("joins")
            .map_err(|e| e.to_string())?
        };
        let (packed, log_position) = packed;
        let object = format!(
            "{}.p{}.{}.{}",
            request.collection,
            request.partition,
            self.id,
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let store =
            snapshot_store(&self.js, self.nats_replicas).await.map_err(|e| e.to_string())?;
        store.put(object.as_str(), &mut packed.as_slice()).await.map_err(|e| e.to_string())?;
        let answer: SnapshotAnswer = Ok(SnapshotReply { object, log_position });
        Ok(serde_json::to_vec(&answer).expect("serializes"))
    }
}

/// How many times a snapshot is read before the copy is given up (and started again).
const SNAPSHOT_READS: u32 = 5;

/// Reads a whole object. Not with `read_to_end`: async-nats's reader fills the buffer before it
/// reports a wrong digest, which `read_to_end` does not allow for.
async fn read_object(
    store: &object_store::ObjectStore,
    name: &str,
) -> Result<Vec<u8>, ClusterError> {
    use tokio::io::AsyncReadExt;
    let mut object = store.get(name).await.map_err(ClusterError::jetstream)?;
    let mut packed = Vec::new();
    let mut chunk = vec![0; 1 << 16];
    loop {
        let read = object
            .read(&mut chunk)
            .await
            .map_err(|source| ClusterError::Io { path: name.into(), source })?;
        if read == 0 {
            return Ok(packed);
        }
        packed.extend_from_slice(&chunk[..read]);
    }
}

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("a malformed request: {e}"))
}

/// One partition's part of phase two.
fn rank(collection: &Collection, request: &RankRequest) -> Result<Ranked, ClusterError> {
    let mode: Mode = request.mode.parse()?;
    let mut search_request = SearchRequest::new(request.query.clone(), mode, request.depth);
    search_request.with_documents = false;
    search_request.vector = request.vector.clone();
    search_request.ef_search = request.ef_search;
    search_request.statistics = request.statistics.clone().map(Arc::new);
    if let Some(filter) = &request.filter {
        let filter = Filter::from_json(filter)
            .map_err(|e| ClusterError::Invalid(format!("filter.{}: {}", e.path, e.message)))?;
        search_request.filter = Some(filter);
    }
    let pairs = |hits: Vec<Hit>| hits.into_iter().map(|h| (h.id, h.score)).collect::<Vec<_>>();
    Ok(match mode {
        Mode::Keyword => {
            let found = search(collection, &search_request)?;
            Ranked { keyword: pairs(found.hits), semantic: Vec::new(), total: found.total }
        }
        Mode::Semantic => {
            let found = search(collection, &search_request)?;
            Ranked { keyword: Vec::new(), semantic: pairs(found.hits), total: found.total }
        }
        Mode::Hybrid => {
            let found = candidates(collection, &search_request, request.depth)?;
            Ranked { keyword: found.keyword, semantic: found.semantic, total: 0 }
        }
    })
}

fn fetch(
    collection: &Collection,
    request: &FetchRequest,
) -> Result<Vec<FetchedDocument>, ClusterError> {
    let mut hits: Vec<Hit> = request.ids.iter().map(|id| Hit::ranked(id.clone(), 0.0)).collect();
    let mut search_request = SearchRequest::new(request.query.clone(), Mode::Keyword, hits.len());
    search_request.highlight = request.highlight;
    fill_documents(collection, &mut hits, &search_request)?;
    Ok(hits
        .into_iter()
        .map(|hit| FetchedDocument {
            id: hit.id,
            title: hit.title,
            snippet: hit.snippet,
            highlight: hit.highlight,
            metadata: hit.metadata,
        })
        .collect())
}

/// FNV-1a over every document's id, title and text, in id order: equal on two replicas that
/// hold the same documents.
fn checksum(collection: &Collection) -> Result<String, IndexError> {
    let searcher = collection.searcher();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for id in collection.document_ids()? {
        if let Some(address) = collection.address(&searcher, &id)? {
            let document = collection.stored_document(&searcher, address)?;
            for part in [&document.id, &document.title, &document.text] {
                feed(part.as_bytes());
                feed(&[0]);
            }
        }
    }
    Ok(format!("{hash:016x}"))
}

pub(crate) async fn snapshot_store(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<object_store::ObjectStore, ClusterError> {
    match js.get_object_store(SNAPSHOT_BUCKET).await {
        Ok(store) => Ok(store),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: SNAPSHOT_BUCKET.to_string(),
                description: Some("Cloze: snapshots on their way to a new replica".into()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(ClusterError::jetstream),
    }
}

/// Sends `request` as JSON and reads the JSON answer; a node's `{"error": ...}` becomes an
/// error.
pub(crate) async fn request_json<Q: Serialize, A: DeserializeOwned>(
    client: &async_nats::Client,
    subject: &str,
    request: &Q,
    timeout: Duration,
) -> Result<A, ClusterError> {
    let body = serde_json::to_vec(request).expect("serializes");
    // The client's own request timeout (10 s) would cut a long snapshot short: this one rules.
    let request = async_nats::Request::new().payload(body.into()).timeout(Some(timeout));
    let message =
        client.send_request(subject.to_string(), request).await.map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::TimedOut => ClusterError::JetStream(format!(
                "{subject}: no answer in {} ms",
                timeout.as_millis()
            )),
            _ => ClusterError::JetStream(format!("{subject}: {e}")),
        })?;
    if let Ok(error) = serde_json::from_slice::<NodeError>(&message.payload) {
        return Err(ClusterError::JetStream(format!("{subject}: {}", error.error)));
    }
    serde_json::from_slice(&message.payload)
        .map_err(|e| ClusterError::JetStream(format!("{subject}: a malformed answer: {e}")))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeError {
    error: String,
}

/// Tells a replica whose consumer went quiet while the log holds more from one that is
/// simply idle.
struct StallWatch {
    idle_since: Instant,
    /// The position the replica was at when it was last seen behind the log.
    behind_at: Option<u64>,
}

impl StallWatch {
    fn new() -> StallWatch {
        StallWatch { idle_since: Instant::now(), behind_at: None }
    }

    /// Whether it is time to look at the log again; restarts the clock if so.
    fn due(&mut self) -> bool {
        let due = self.idle_since.elapsed() >= STALL_CHECK;
        if due {
            self.idle_since = Instant::now();
        }
        due
    }

    /// Records a look at the log: true when the replica was behind it at the last look too,
    /// without having moved. One look behind is not enough: a write published a moment ago
    /// is on its way.
    fn still_behind(&mut self, applied: u64, log_last: u64) -> bool {
        if log_last <= applied {
            self.behind_at = None;
            return false;
        }
        let stalled = self.behind_at == Some(applied);
        self.behind_at = Some(applied);
        stalled
    }
}

/// How long a pull from a consumer may go unanswered. A pull request sent to a NATS server
/// that was then cut off is never answered, and the client library does not give up on it:
/// without this bound the replica would wait forever instead of asking again.
const PULL_PATIENCE: Duration = Duration::from_secs(20);

async fn within_pull_patience<T>(
    pull: impl std::future::Future<Output = T>,
) -> Result<T, ClusterError> {
    tokio::time::timeout(PULL_PATIENCE, pull).await.map_err(|_| {
        ClusterError::JetStream(format!(
            "no messages nor an end from the log in {} s",
            PULL_PATIENCE.as_secs()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::StallWatch;

    #[test]
    fn a_replica_is_stalled_only_when_seen_behind_twice_without_moving() {
        let mut watch = StallWatch::new();
        assert!(!watch.still_behind(10, 10), "caught up");
        assert!(!watch.still_behind(10, 12), "a write on its way");
        assert!(watch.still_behind(10, 12), "behind at the same position twice");
        let mut watch = StallWatch::new();
        assert!(!watch.still_behind(10, 12));
        assert!(!watch.still_behind(11, 12), "it moved");
        assert!(!watch.still_behind(12, 12));
        assert!(!watch.still_behind(12, 13), "caught up in between");
    }
}
