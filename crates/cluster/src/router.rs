//! The router: stateless, it splits writes by partition into the log and fans searches out to
//! one replica per partition, merging and fusing at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, context::Publish};
use cloze_index::{AnalyzerSettings, Change, SemanticSettings};
use cloze_search::{fuse, Explanation, Hit, KeywordStatistics, Mode, SearchRequest, SideScore};
use futures::future::join_all;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::log::{self, LoggedChange};
use crate::map::{self, partition_of, ClusterState, CollectionMap, Replica};
use crate::node::request_json;
use crate::protocol::*;
use crate::ClusterError;

/// How long a node that failed to answer is asked last.
const SUSPICION: Duration = Duration::from_secs(5);

/// Passes over a partition's replicas before a search gives it up. A second pass, within twice
/// the node timeout, finds a node that restarted while the first pass waited on it, when the
/// other replica failed meanwhile.
const ROUNDS: usize = 2;

/// How long a bulk keeps retrying a publish JetStream did not acknowledge, and a request
/// keeps retrying a read of a map it has never read.
const RETRY_PATIENCE: Duration = Duration::from_secs(30);

/// How long `refresh=wait_for` waits for a replica to apply a bulk: long enough for replicas
/// that embed every document with a model to work through a large backlog.
const WAIT_PATIENCE: Duration = Duration::from_secs(600);

/// How long one wait request asks a node to wait before it says how far its replica got. A
/// request or its answer lost on the way (NATS delivers at most once, and a route between
/// servers can drop while a server is cut off) then costs one round, not the whole patience.
const WAIT_ROUND: Duration = Duration::from_secs(10);

/// Rounds in a row a replica may leave unanswered before a bulk stops waiting on it.
const SILENT_ROUNDS: u32 = 2;

/// How long one read of a collection's map may take before the router answers from the copy it
/// read last. While a NATS server is cut off, its clients and the streams it led take seconds
/// to move on; a partition count never changes and a stale replica list only costs a retry.
const MAP_READ_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Router {
    id: String,
    client: async_nats::Client,
    js: jetstream::Context,
    state: ClusterState,
    nats_replicas: usize,
    /// How long a node has to answer one phase of a search before another replica is asked.
    timeout: Duration,
    /// Rotates which replica of each partition a search asks first.
    turn: AtomicUsize,
    /// Nodes that lately failed to answer, and when: asked last until [`SUSPICION`] passes,
    /// so a node that is down costs one timeout, not one per search.
    suspects: Mutex<HashMap<String, Instant>>,
    /// Each collection's map as last read, for when JetStream cannot answer at once.
    maps: Mutex<HashMap<String, CollectionMap>>,
    bulks: AtomicU64,
}

/// A new clustered collection.
#[derive(Debug, Clone)]
pub struct NewCollection {
    pub name: String,
    pub partitions: u32,
    pub replicas: u32,
    pub analyzer: AnalyzerSettings,
    pub semantic: Option<SemanticSettings>,
}

/// A search through the router.
#[derive(Debug, Clone)]
pub struct ClusterSearch {
    pub request: SearchRequest,
    /// The request's filter as JSON, as the nodes read it.
    pub filter: Option<Value>,
    /// Fail, rather than answer from the partitions that answered, when one cannot.
    pub require_all_partitions: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchAnswer {
    pub hits: Vec<Hit>,
    pub total: usize,
    /// Partitions with no replica that answered: their documents are missing from `hits`.
    pub missing_partitions: Vec<u32>,
    pub partitions: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkAnswer {
    /// Each change's action ("index" or "delete") and id, in order.
    pub items: Vec<(&'static str, String)>,
    /// The log position of each partition's last message of this bulk.
    pub positions: BTreeMap<u32, u64>,
}

impl Router {
    pub async fn connect(
        nats: &str,
        nats_replicas: usize,
        timeout: Duration,
    ) -> Result<Router, ClusterError> {
        let client = crate::connect(nats, "cloze router").await?;
        let js = jetstream::new(client.clone());
        let state = ClusterState::open(&js, nats_replicas).await?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        Ok(Router {
            id: format!("r{nanos:x}"),
            client,
            js,
            state,
            nats_replicas,
            timeout,
            turn: AtomicUsize::new(0),
            suspects: Mutex::new(HashMap::new()),
            maps: Mutex::new(HashMap::new()),
            bulks: AtomicU64::new(0),
        })
    }

    pub async fn collection(&self, name: &str) -> Result<CollectionMap, ClusterError> {
        let started = Instant::now();
        loop {
            let error =
                match tokio::time::timeout(MAP_READ_TIMEOUT, self.state.collection(name)).await {
                    Ok(Ok(Some((map, _)))) => {
                        self.maps.lock().expect("map cache").insert(name.to_string(), map.clone());
                        return Ok(map);
                    }
                    Ok(Ok(None)) => {
                        self.maps.lock().expect("map cache").remove(name);
                        return Err(ClusterError::UnknownCollection(name.to_string()));
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer in {} ms", MAP_READ_TIMEOUT.as_millis()),
                };
            if let Some(map) = self.maps.lock().expect("map cache").get(name) {
                tracing::debug!("reading the map of {name}: {error}; using the copy read last");
                return Ok(map.clone());
            }
            if started.elapsed() > RETRY_PATIENCE {
                return Err(ClusterError::JetStream(format!(
                    "reading the map of \"{name}\": {error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn collections(&self) -> Result<Vec<CollectionMap>, ClusterError> {
        self.state.collections().await
    }

    /// Creates a clustered collection over the live nodes: its stream, a durable consumer per
    /// replica (so no write is dropped before its replica starts), then its map, which the
    /// nodes pick up.
    pub async fn create_collection(
        &self,
        new: NewCollection,
    ) -> Result<CollectionMap, ClusterError> {
        check_collection_name(&new.name)?;
        if !(1..=1024).contains(&new.partitions) {
            return Err(ClusterError::Invalid(format!(
                "partitions: between 1 and 1024 (found {})",
                new.partitions
            )));
        }
        if new.replicas == 0 {
            return Err(ClusterError::Invalid("replicas: at least 1".into()));
        }
        if self.state.collection(&new.name).await?.is_some() {
            return Err(ClusterError::CollectionExists(new.name));
        }
        let nodes: Vec<String> = self.state.live_nodes().await?.into_keys().collect();
        let assignment = map::assign(new.partitions, new.replicas, &nodes)?;
        for (partition, replicas) in assignment.iter().enumerate() {
            let partition = partition as u32;
            let stream =
                log::create_stream(&self.js, &new.name, partition, self.nats_replicas).await?;
            for replica in replicas {
                log::ensure_consumer(&stream, &new.name, partition, &replica.node).await?;
            }
        }
        let map = CollectionMap {
            name: new.name,
            partitions: new.partitions,
            replicas: new.replicas,
            analyzer: new.analyzer,
            semantic: new.semantic,
            assignment,
        };
        self.state.put_collection(&map, None).await?;
        Ok(map)
    }

    /// Removes a clustered collection: its map (the nodes then delete their copies) and its log.
    pub async fn delete_collection(&self, name: &str) -> Result<(), ClusterError> {
        let map = self.collection(name).await?;
        self.state.delete_collection(name).await?;
        self.maps.lock().expect("map cache").remove(name);
        log::delete_streams(&self.js, name, map.partitions).await;
        Ok(())
    }

    /// Publishes each partition's changes to its subject and returns once JetStream stored
    /// every message on a quorum of its servers; with `wait`, once every replica that answers
    /// has applied them too. Each message has an id, so a publish retried after a lost
    /// acknowledgement is stored once.
    pub async fn bulk(
        &self,
        name: &str,
        changes: Vec<Change>,
        wait: bool,
    ) -> Result<BulkAnswer, ClusterError> {
        let map = self.collection(name).await?;
        let items: Vec<(&'static str, String)> = changes
            .iter()
            .map(|change| match change {
                Change::Upsert(document) => ("index", document.id.clone()),
                Change::Delete(id) => ("delete", id.clone()),
            })
            .collect();
        let mut by_partition: BTreeMap<u32, Vec<LoggedChange>> = BTreeMap::new();
        for change in changes {
            let change = LoggedChange::from(change);
            by_partition.entry(partition_of(change.id(), map.partitions)).or_default().push(change);
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let bulk_id =
            format!("{}-{nanos:x}-{}", self.id, self.bulks.fetch_add(1, Ordering::Relaxed));
        let mut publishes = Vec::new();
        for (partition, changes) in by_partition {
            for (i, entry) in log::entries(changes).into_iter().enumerate() {
                let subject = log::subject(name, partition);
                let id = format!("{bulk_id}.{partition}.{i}");
                publishes.push(async move {
                    self.publish(subject, id, entry).await.map(|position| (partition, position))
                });
            }
        }
        let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
        for published in join_all(publishes).await {
            let (partition, position) = published?;
            let at = positions.entry(partition).or_default();
            *at = (*at).max(position);
        }
        if wait {
            self.wait_for(&map, &positions).await?;
        }
        Ok(BulkAnswer { items, positions })
    }

    async fn publish(
        &self,
        subject: String,
        id: String,
        entry: Vec<u8>,
    ) -> Result<u64, ClusterError> {
        let started = Instant::now();
        let payload = bytes::Bytes::from(entry);
        let mut delay = Duration::from_millis(50);
        loop {
            let publish = Publish::build().message_id(&id).payload(payload.clone());
            let attempt = async {
                let ack = self.js.send_publish(subject.clone(), publish).await?;
                ack.await.map_err(async_nats::Error::from)
            };
            let error = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(ack)) => return Ok(ack.sequence),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no acknowledgement in 5 s".to_string(),
            };
            if started.elapsed() > RETRY_PATIENCE {
                return Err(ClusterError::JetStream(format!(
                    "{subject}: not stored after {} s: {error}",
                    RETRY_PATIENCE.as_secs()
                )));
            }
            tracing::debug!("publishing to {subject}: {error}; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    /// Waits until every replica that answers has applied each partition up to its position;
    /// at least one replica of each partition must. A replica that is behind says so at the
    /// end of each round and is waited on again; one that does not answer for
    /// [`SILENT_ROUNDS`] rounds is not.
    async fn wait_for(
        &self,
        map: &CollectionMap,
        positions: &BTreeMap<u32, u64>,
    ) -> Result<(), ClusterError> {
        struct Waiting<'a> {
            partition: u32,
            position: u64,
            node: &'a str,
            silent: u32,
        }
        let mut waiting: Vec<Waiting> = positions
            .iter()
            .flat_map(|(&partition, &position)| {
                map.assignment[partition as usize].iter().map(move |replica| Waiting {
                    partition,
                    position,
                    node: &replica.node,
                    silent: 0,
                })
            })
            .collect();
        let deadline = Instant::now() + WAIT_PATIENCE;
        let mut confirmed: BTreeSet<u32> = BTreeSet::new();
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let round = WAIT_ROUND.min(left);
            let answers = join_all(waiting.iter().map(|wait| {
                let request = WaitRequest {
                    collection: map.name.clone(),
                    partition: wait.partition,
                    position: wait.position,
                    timeout_ms: round.as_millis() as u64,
                };
                let subject = subject(wait.node, WAIT);
                async move {
                    request_json::<_, WaitAnswer>(
                        &self.client,
                        &subject,
                        &request,
                        round + Duration::from_secs(5),
                    )
                    .await
                }
            }))
            .await;
            let mut still = Vec::new();
            for (mut wait, answer) in waiting.into_iter().zip(answers) {
                match answer {
                    Ok(Ok(_)) => {
                        confirmed.insert(wait.partition);
                    }
                    Ok(Err(behind)) => {
                        tracing::debug!("waiting on: {behind}");
                        wait.silent = 0;
                        still.push(wait);
                    }
                    Err(error) => {
                        tracing::debug!("waiting on node {}: {error}", wait.node);
                        wait.silent += 1;
                        if wait.silent < SILENT_ROUNDS {
                            still.push(wait);
                        }
                    }
                }
            }
            waiting = still;
        }
        let unconfirmed: Vec<u32> =
            positions.keys().filter(|p| !confirmed.contains(p)).copied().collect();
        if unconfirmed.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::Unavailable {
                collection: map.name.clone(),
                partitions: unconfirmed,
                reason: "stored in the log, but no replica confirmed applying it".into(),
            })
        }
    }

    /// Runs one search over every partition, ranking as one collection holding all the
    /// documents would: keyword scores use the partitions' summed statistics, each side's
    /// rankings are merged before fusion, and documents are read for the final page only.
    pub async fn search(
        &self,
        name: &str,
        search: &ClusterSearch,
    ) -> Result<SearchAnswer, ClusterError> {
        let map = self.collection(name).await?;
        let request = &search.request;
        if request.mode != Mode::Keyword && map.semantic.is_none() {
            return Err(ClusterError::Invalid(format!(
                "mode: {} search needs a collection with a model, and \"{name}\" has none",
                request.mode
            )));
        }
        if request.expansion_weight.is_some() {
            return Err(ClusterError::Invalid(format!(
                "expansion_weight: \"{name}\" is a clustered collection, and those do not \
                 expand their documents"
            )));
        }
        let fusion = request.fusion.unwrap_or_default();
        if request.mode == Mode::Hybrid && fusion.feedback.is_some() {
            return Err(ClusterError::Invalid(
                "fusion.feedback_docs: feedback is not available on a clustered collection".into(),
            ));
        }
        let depth = match request.mode {
            Mode::Hybrid => fusion.depth,
            _ => request.offset + request.limit,
        };
        let all: Vec<u32> = (0..map.partitions).collect();
        let mut missing: BTreeSet<u32> = BTreeSet::new();

        // Phase one: statistics for BM25, and the query's vector.
        let wants_vector = request.mode != Mode::Keyword
            && request.vector.is_none()
            && !request.query.trim().is_empty();
        let statistics = async {
            if request.mode == Mode::Semantic {
                return (BTreeMap::new(), Vec::new());
            }
            self.fan_out(
                &map,
                &all,
                |partitions| StatisticsRequest {
                    collection: map.name.clone(),
                    partitions,
                    query: request.query.clone(),
                },
                STATISTICS,
            )
            .await
        };
        let vector = async {
            if wants_vector {
                self.embed(&map, &request.query).await.map(Some)
            } else {
                Ok(request.vector.clone())
            }
        };
        let ((statistics, failed), vector) = tokio::join!(statistics, vector);
        let vector = vector?;
        missing.extend(failed);
        let mut summed: Option<KeywordStatistics> = None;
        if request.mode != Mode::Semantic {
            let mut sum = KeywordStatistics::default();
            statistics.values().for_each(|s: &KeywordStatistics| sum.add(s));
            summed = Some(sum);
        }

        // Phase two: both rankings from each partition, scored alike.
        let asked: Vec<u32> = all.iter().filter(|p| !missing.contains(p)).copied().collect();
        let (ranked, failed) = self
            .fan_out(
                &map,
                &asked,
                |partitions| RankRequest {
                    collection: map.name.clone(),
                    partitions,
                    query: request.query.clone(),
                    mode: request.mode.name().to_string(),
                    vector: vector.clone(),
                    depth,
                    ef_search: request.ef_search,
                    filter: search.filter.clone(),
                    statistics: summed.clone(),
                },
                RANK,
            )
            .await;
        missing.extend(failed);
        if search.require_all_partitions && !missing.is_empty() {
            return Err(ClusterError::Unavailable {
                collection: map.name.clone(),
                partitions: missing.into_iter().collect(),
                reason: "no replica answered".into(),
            });
        }
        let ranked: Vec<Ranked> = ranked.into_values().collect();
        let merged = |side: fn(&Ranked) -> &Vec<(String, f32)>| {
            let mut all: Vec<(String, f32)> =
                ranked.iter().flat_map(|r| side(r).iter().cloned()).collect();
            // Ties by id: replicas of one partition may hold tied documents in another order.
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            all
        };
        let (mut hits, total): (Vec<Hit>, usize) = match request.mode {
            Mode::Keyword | Mode::Semantic => {
                let keyword = request.mode == Mode::Keyword;
                let ranking =
                    if keyword { merged(|r| &r.keyword) } else { merged(|r| &r.semantic) };
                let total = ranked.iter().map(|r| r.total).sum();
                let hits = ranking
                    .into_iter()
                    .enumerate()
                    .skip(request.offset)
                    .take(request.limit)
                    .map(|(rank, (id, score))| {
                        let side = Some(SideScore { rank: rank + 1, score });
                        let mut hit = Hit::ranked(id, score);
                        hit.explanation = Some(if keyword {
                            Explanation { keyword: side, semantic: None, fused: score }
                        } else {
                            Explanation { keyword: None, semantic: side, fused: score }
                        });
                        hit
                    })
                    .collect();
                (hits, total)
            }
            Mode::Hybrid => {
                let fused = fuse(&merged(|r| &r.keyword), &merged(|r| &r.semantic), &fusion);
                let total = fused.len();
                let hits = fused
                    .into_iter()
                    .skip(request.offset)
                    .take(request.limit)
                    .map(Hit::from)
                    .collect();
                (hits, total)
            }
        };

        // Phase three: the page's documents, from the partitions that hold them.
        if request.with_documents && !hits.is_empty() {
            let fetched = self.fetch(&map, &hits, request).await;
            for hit in &mut hits {
                if let Some(document) = fetched.get(&hit.id) {
                    hit.title = document.title.clone();
                    hit.snippet = document.snippet.clone();
                    hit.highlight = document.highlight.clone();
                    hit.metadata = document.metadata.clone();
                }
            }
        }
        Ok(SearchAnswer {
            hits,
            total,
            missing_partitions: missing.into_iter().collect(),
            partitions: map.partitions,
        })
    }

    /// The replicas of `partition` in the order to try them: each search starts at another.
    /// Nodes that failed lately go last.
    fn replicas_in_turn<'a>(
        &self,
        map: &'a CollectionMap,
        partition: u32,
        turn: usize,
    ) -> Vec<&'a Replica> {
        let replicas = &map.assignment[partition as usize];
        let start = (turn + partition as usize) % replicas.len().max(1);
        let mut ordered: Vec<&Replica> =
            replicas.iter().cycle().skip(start).take(replicas.len()).collect();
        let suspects = self.suspects.lock().expect("not poisoned");
        let suspected = |node: &str| suspects.get(node).is_some_and(|at| at.elapsed() < SUSPICION);
        // A stable sort: the rotation holds among the others.
        ordered.sort_by_key(|replica| suspected(&replica.node));
        ordered
    }

    /// Records whether `node` answered.
    fn answered(&self, node: &str, answered: bool) {
        let mut suspects = self.suspects.lock().expect("not poisoned");
        if answered {
            suspects.remove(node);
        } else {
            suspects.insert(node.to_string(), Instant::now());
        }
    }

    /// [`request_json`], keeping track of the nodes that fail to answer.
    async fn ask<Q: Serialize, A: DeserializeOwned>(
        &self,
        node: &str,
        operation: &str,
        request: &Q,
    ) -> Result<A, ClusterError> {
        let answer =
            request_json(&self.client, &subject(node, operation), request, self.timeout).await;
        // A node that answers with an error is up; one that does not answer at all is not.
        let silent = matches!(&answer, Err(ClusterError::JetStream(m)) if m.contains("no answer in") || m.contains("no responders"));
        self.answered(node, !silent);
        answer
    }

    /// Asks one replica of each partition, grouped into one request per node; a partition whose
    /// replica fails is asked of the next, until none is left. Returns each partition's answer
    /// and the partitions none answered.
    async fn fan_out<Q, T>(
        &self,
        map: &CollectionMap,
        partitions: &[u32],
        make: impl Fn(Vec<u32>) -> Q,
        operation: &str,
    ) -> (BTreeMap<u32, T>, Vec<u32>)
    where
        Q: Serialize,
        T: DeserializeOwned,
    {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut answers: BTreeMap<u32, T> = BTreeMap::new();
        let mut failures: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut pending: Vec<u32> = partitions.to_vec();
        // The order is chosen once: a node that fails now must not come round again.
        let orders: BTreeMap<u32, Vec<&Replica>> =
            partitions.iter().map(|&p| (p, self.replicas_in_turn(map, p, turn))).collect();
        let started = Instant::now();
        let replicas = map.replicas as usize;
        for attempt in 0..ROUNDS * replicas {
            if pending.is_empty()
                || (attempt >= replicas && started.elapsed() >= self.timeout * ROUNDS as u32)
            {
                break;
            }
            let mut by_node: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
            for &partition in &pending {
                let order = &orders[&partition];
                if let Some(replica) = order.get(attempt % order.len().max(1)) {
                    by_node.entry(replica.node.as_str()).or_default().push(partition);
                }
            }
            let requests = by_node.into_iter().map(|(node, partitions)| {
                let request = make(partitions.clone());
                async move {
                    let answer: Result<Vec<PartitionAnswer<T>>, _> =
                        self.ask(node, operation, &request).await;
                    (node, partitions, answer)
                }
            });
            for (node, asked, answer) in join_all(requests).await {
                match answer {
                    Ok(partition_answers) => {
                        for answer in partition_answers {
                            match answer.result {
                                Ok(value) => {
                                    answers.insert(answer.partition, value);
                                }
                                Err(error) => failures
                                    .entry(answer.partition)
                                    .or_default()
                                    .push(format!("{node}: {error}")),
                            }
                        }
                    }
                    Err(error) => {
                        for partition in asked {
                            failures.entry(partition).or_default().push(format!("{node}: {error}"));
                        }
                    }
                }
            }
            pending.retain(|p| !answers.contains_key(p));
        }
        for partition in &pending {
            let reasons = failures
                .get(partition)
                .map(|f| f.join("; "))
                .unwrap_or_else(|| "no replica".into());
            tracing::warn!(collection = %map.name, partition, "{operation}: no replica answered: {reasons}");
        }
        (answers, pending)
    }

    /// The query's vector from the first replica that embeds it.
    async fn embed(&self, map: &CollectionMap, query: &str) -> Result<Vec<f32>, ClusterError> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut last_error = String::from("no replicas");
        for partition in 0..map.partitions {
            for replica in self.replicas_in_turn(map, partition, turn) {
                let request = EmbedRequest {
                    collection: map.name.clone(),
                    partition,
                    query: query.to_string(),
                };
                let answer: Result<EmbedAnswer, _> = self.ask(&replica.node, EMBED, &request).await;
                match answer {
                    Ok(Ok(vector)) => return Ok(vector),
                    Ok(Err(error)) => last_error = error,
                    Err(error) => last_error = error.to_string(),
                }
            }
        }
        Err(ClusterError::Unavailable {
            collection: map.name.clone(),
            partitions: (0..map.partitions).collect(),
            reason: format!("no node embedded the query: {last_error}"),
        })
    }

    async fn fetch(
        &self,
        map: &CollectionMap,
        hits: &[Hit],
        request: &SearchRequest,
    ) -> HashMap<String, FetchedDocument> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for hit in hits {
            by_partition
                .entry(partition_of(&hit.id, map.partitions))
                .or_default()
                .push(hit.id.clone());
        }
        let fetches = by_partition.into_iter().map(|(partition, ids)| {
            let replicas = self.replicas_in_turn(map, partition, turn);
            let request = FetchRequest {
                collection: map.name.clone(),
                partition,
                ids,
                query: request.query.clone(),
                highlight: request.highlight,
            };
            async move {
                let started = Instant::now();
                for (attempt, replica) in
                    replicas.iter().cycle().take(ROUNDS * replicas.len()).enumerate()
                {
                    if attempt >= replicas.len()
                        && started.elapsed() >= self.timeout * ROUNDS as u32
                    {
                        break;
                    }
                    let answer: Result<FetchAnswer, _> =
                        self.ask(&replica.node, FETCH, &request).await;
                    if let Ok(Ok(documents)) = answer {
                        return documents;
                    }
                }
                Vec::new()
            }
        });
        join_all(fetches).await.into_iter().flatten().map(|d| (d.id.clone(), d)).collect()
    }

    /// The cluster as its nodes see it: live nodes, each collection's map and log, and what
    /// each node holds (with `checksums`, a checksum of each copy's documents).
    pub async fn status(&self, checksums: bool) -> Result<Value, ClusterError> {
        let nodes = self.state.live_nodes().await?;
        let maps = self.state.collections().await?;
        let mut known: BTreeSet<String> = nodes.keys().cloned().collect();
        maps.iter().for_each(|m| known.extend(m.nodes()));
        let request = StatusRequest { checksums };
        let statuses = join_all(known.iter().map(|node| {
            let request = &request;
            async move {
                let timeout = if checksums { Duration::from_secs(120) } else { self.timeout };
                let status: Result<NodeStatus, _> =
                    request_json(&self.client, &subject(node, STATUS), request, timeout).await;
                (node.clone(), status)
            }
        }))
        .await;
        let mut collections = Vec::new();
        for map in &maps {
            let logs: Vec<Value> = join_all((0..map.partitions).map(|partition| async move {
                let Ok(mut found) =
                    self.js.get_stream(log::stream_name(&map.name, partition)).await
                else {
                    return json!(null);
                };
                match found.info().await {
                    Ok(info) => json!({
                        "name": info.config.name,
                        "messages": info.state.messages,
                        "first_position": info.state.first_sequence,
                        "last_position": info.state.last_sequence,
                        "consumers": info.state.consumer_count,
                        "replicas": info.config.num_replicas,
                    }),
                    Err(_) => json!(null),
                }
            }))
            .await;
            let partitions: Vec<Value> = (0..map.partitions)
                .map(|partition| {
                    let replicas: Vec<Value> = map.assignment[partition as usize]
                        .iter()
                        .map(|replica| {
                            let held = statuses.iter().find(|(n, _)| *n == replica.node).and_then(
                                |(_, s)| {
                                    s.as_ref().ok().and_then(|s| {
                                        s.replicas.iter().find(|r| {
                                            r.collection == map.name && r.partition == partition
                                        })
                                    })
                                },
                            );
                            match held {
                                Some(status) => json!({
                                    "node": replica.node,
                                    "state": if status.ready { "ready" } else { "catching up" },
                                    "documents": status.documents,
                                    "log_position": status.log_position,
                                    "checksum": status.checksum,
                                }),
                                None => json!({ "node": replica.node, "state": "unreachable" }),
                            }
                        })
                        .collect();
                    json!({
                        "partition": partition,
                        "log": logs[partition as usize],
                        "replicas": replicas,
                    })
                })
                .collect();
            collections.push(json!({
                "name": map.name,
                "partitions": map.partitions,
                "replicas": map.replicas,
                "settings": { "analyzer": map.analyzer, "semantic": map.semantic },
                "assignment": partitions,
            }));
        }
        let nodes: Vec<Value> = known
            .iter()
            .map(|id| {
                let reachable = statuses.iter().any(|(n, s)| n == id && s.is_ok());
                json!({
                    "id": id,
                    "live": nodes.contains_key(id),
                    "reachable": reachable,
                    "started": nodes.get(id).map(|n| n.started),
                })
            })
            .collect();
        Ok(json!({ "nodes": nodes, "collections": collections }))
    }

    /// Spreads every collection's partitions evenly over the live nodes not in `exclude`:
    /// each new replica gets its consumer, copies a snapshot of a live replica and replays the
    /// log; once all are caught up, the replicas they replace are dropped. `on_progress` hears
    /// each step. Returns the moves made, as "collection/partition: from -> to".
    pub async fn rebalance(
        &self,
        exclude: &[String],
        patience: Duration,
        on_progress: impl Fn(&str),
    ) -> Result<Vec<String>, ClusterError> {
        let nodes: Vec<String> =
            self.state.live_nodes().await?.into_keys().filter(|n| !exclude.contains(n)).collect();
        let mut moves = Vec::new();
        for map in self.state.collections().await? {
            let Some((mut current, revision)) = self.state.collection(&map.name).await? else {
                continue;
            };
            if nodes.len() < current.replicas as usize {
                return Err(ClusterError::Invalid(format!(
                    "\"{}\" keeps {} copies of each partition and only {} nodes would be left",
                    current.name,
                    current.replicas,
                    nodes.len()
                )));
            }
            let holders: Vec<Vec<String>> = current
                .assignment
                .iter()
                .map(|p| p.iter().map(|r| r.node.clone()).collect())
                .collect();
            let target = map::rebalance(&holders, current.replicas, &nodes);
            if target == holders {
                continue;
            }
            let mut added: Vec<(u32, String)> = Vec::new();
            for (partition, (now, wanted)) in holders.iter().zip(&target).enumerate() {
                let partition_stream = log::create_stream(
                    &self.js,
                    &current.name,
                    partition as u32,
                    self.nats_replicas,
                )
                .await?;
                for node in wanted.iter().filter(|n| !now.contains(n)) {
                    log::ensure_consumer(&partition_stream, &current.name, partition as u32, node)
                        .await?;
                    current.assignment[partition]
                        .push(Replica { node: node.clone(), from_snapshot: true });
                    added.push((partition as u32, node.clone()));
                }
            }
            let revision = self.state.put_collection(&current, Some(revision)).await?;
            on_progress(&format!("{}: {} new replicas copying", current.name, added.len()));
            let deadline = Instant::now() + patience;
            loop {
                let mut waiting = 0;
                for node in added.iter().map(|(_, n)| n).collect::<BTreeSet<_>>() {
                    let status: Result<NodeStatus, _> = request_json(
                        &self.client,
                        &subject(node, STATUS),
                        &StatusRequest::default(),
                        self.timeout,
                    )
                    .await;
                    let ready: BTreeSet<u32> = status
                        .map(|s| {
                            s.replicas
                                .into_iter()
                                .filter(|r| r.collection == current.name && r.ready)
                                .map(|r| r.partition)
                                .collect()
                        })
                        .unwrap_or_default();
                    waiting +=
                        added.iter().filter(|(p, n)| n == node && !ready.contains(p)).count();
                }
                if waiting == 0 {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(ClusterError::Unavailable {
                        collection: current.name.clone(),
                        partitions: added.iter().map(|(p, _)| *p).collect(),
                        reason: format!(
                            "{waiting} new replicas not caught up in {} s",
                            patience.as_secs()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let mut removed: Vec<(u32, String)> = Vec::new();
            for (partition, wanted) in target.iter().enumerate() {
                let replicas = &mut current.assignment[partition];
                for replica in replicas.iter().filter(|r| !wanted.contains(&r.node)) {
                    removed.push((partition as u32, replica.node.clone()));
                }
                replicas.retain(|r| wanted.contains(&r.node));
            }
            self.state.put_collection(&current, Some(revision)).await?;
            for (partition, node) in &removed {
                let stream = self.js.get_stream(log::stream_name(&current.name, *partition)).await;
                let deleted = match stream {
                    Ok(stream) => log::delete_consumers(&stream, *partition, node).await,
                    Err(error) => Err(ClusterError::jetstream(error)),
                };
                if let Err(error) = deleted {
                    tracing::warn!("the consumers of {node}'s former replica of partition {partition}: {error}");
                }
            }
            for ((partition, to), (_, from)) in added.iter().zip(removed.iter()) {
                moves.push(format!("{}/{partition}: {from} -> {to}", current.name));
            }
            on_progress(&format!("{}: {} replicas moved", current.name, added.len()));
        }
        Ok(moves)
    }
}

/// Clustered collection names follow local collection names, and leave room for a
/// partition's suffix.
fn check_collection_name(name: &str) -> Result<(), ClusterError> {
    let valid = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if valid {
        Ok(())
    } else {
        Err(ClusterError::Invalid(format!(
            "collection name \"{name}\": use up to 100 letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}
