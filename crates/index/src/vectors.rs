//! The vector side of a collection: one vector per document (or per window of a long document)
//! in an HNSW graph, with the document ids they belong to.
//!
//! Vectors live in numbered generations, each a complete, immutable folder:
//!
//! ```text
//! vectors/<generation>/vectors.f32        every slot's vector, little-endian f32
//! vectors/<generation>/hnsw.hnsw.graph    the HNSW graph (hnsw_rs's dump)
//! vectors/<generation>/hnsw.hnsw.data
//! vectors/<generation>/slots.json         slot -> document id, tombstones, checksums; written last
//! ```
//!
//! A write builds the next generation beside the current one; the tantivy commit that makes the
//! same documents visible names it (the commit payload), so the two indexes change together or
//! not at all. A generation no commit names is debris of an interrupted write and is removed.
//!
//! hnsw_rs cannot delete a point, so a replaced or deleted document's slots become tombstones,
//! skipped by a search filter, until [`VectorIndex::compacted`] rebuilds the graph without them.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::prelude::{AnnT, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::IndexError;
use crate::files::{io_error, read_all, remove_dir, sync_dir, write_synced};
use crate::flat_graph::{prefetch, FlatGraph};
use crate::manifest::HnswSettings;

pub(crate) const VECTORS_DIR: &str = "vectors";
const SLOTS_FILE: &str = "slots.json";
const VECTORS_FILE: &str = "vectors.f32";
const HNSW_BASENAME: &str = "hnsw";
/// hnsw_rs's layer cap; with M = 16 it is reached only past billions of points.
const MAX_LAYERS: usize = 16;

/// Cosine distance between unit vectors: 1 - dot. anndists' `DistDot` asserts the result is not
/// negative, which rounding breaks for near-identical vectors.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// The dot product: most of the time of building the graph, of exact search and of scoring
/// what a graph walk found, so where the CPU has AVX2 and FMA (checked at run time: the binary
/// itself targets any x86-64) they are used. AVX-512 was slower on an AMD EPYC.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_fma(a, b) };
    }
    dot_lanes(a, b)
}

/// Four independent sums of eight lanes, each step a fused multiply-add: the compiler never
/// fuses a multiply and an add by itself (the rounding would differ), and one sum would wait on
/// the latency of the one before.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    let n = a.len().min(b.len());
    let (a_ptr, b_ptr) = (a.as_ptr(), b.as_ptr());
    // SAFETY: every load reads 8 floats starting at `i + offset`, and `i + offset + 8 <= n`.
    let load = |i: usize| unsafe { (_mm256_loadu_ps(a_ptr.add(i)), _mm256_loadu_ps(b_ptr.add(i))) };
    let mut sums: [__m256; 4] = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (lane, sum) in sums.iter_mut().enumerate() {
            let (x, y) = load(i + 8 * lane);
            *sum = _mm256_fmadd_ps(x, y, *sum);
        }
        i += 32;
    }
    while i + 8 <= n {
        let (x, y) = load(i);
        sums[0] = _mm256_fmadd_ps(x, y, sums[0]);
        i += 8;
    }
    let total = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds the 8 floats written.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
    let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Sums in sixteen independent lanes: a single running sum must add in order, which keeps the
/// compiler from using SIMD registers.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    let mut lanes = [0f32; LANES];
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            lanes[lane] += x[lane] * y[lane];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A filtered search that lets at most this many vectors through compares the query with each
/// of them: exact, and cheaper than steering the graph around the many documents it must skip.
const EXACT_FILTERED_SLOTS: usize = 10_000;

/// What `slots.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotsFile {
    dimension: usize,
    /// The document id of each slot.
    owners: Vec<String>,
    /// Slots of replaced or deleted documents, ascending.
    tombstones: Vec<usize>,
    /// SHA-256 of each data file of the generation, by name.
    checksums: HashMap<String, String>,
}

/// A nearest slot: its document and cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub id: String,
    pub similarity: f32,
}

/// Vectors in an HNSW graph, each owned by a document id. A collection keeps one beside its
/// keyword index; it is public so benchmarks can drive the very search the service runs.
pub struct VectorIndex {
    dimension: usize,
    settings: HnswSettings,
    owners: Vec<String>,
    /// Slot-major, `dimension` floats per slot.
    vectors: Vec<f32>,
    dead: Vec<bool>,
    dead_count: usize,
    /// The live slots of each document.
    slots_of: HashMap<String, Vec<usize>>,
    /// `'static`: a loaded graph owns its points (no memory map), see [`load_graph`]. It
    /// builds and persists the graph; searches walk `flat`, a copy of its links.
    graph: Hnsw<'static, f32, UnitCosine>,
    flat: FlatGraph,
}

impl VectorIndex {
    pub fn empty(dimension: usize, settings: HnswSettings) -> VectorIndex {
        VectorIndex {
            dimension,
            settings,
            owners: Vec::new(),
            vectors: Vec::new(),
            dead: Vec::new(),
            dead_count: 0,
            slots_of: HashMap::new(),
            graph: new_graph(&settings, 0),
            flat: FlatGraph::empty(dimension),
        }
    }

    pub(crate) fn dimension(&self) -> usize {
        self.dimension
    }

    /// Live documents with vectors.
    pub(crate) fn document_count(&self) -> usize {
        self.slots_of.len()
    }

    pub(crate) fn live_slots(&self) -> usize {
        self.owners.len() - self.dead_count
    }

    pub(crate) fn dead_count(&self) -> usize {
        self.dead_count
    }

    /// The share of slots that are tombstones.
    pub(crate) fn dead_fraction(&self) -> f64 {
        self.dead_count as f64 / self.owners.len().max(1) as f64
    }

    /// The ids of documents with vectors, in no order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.slots_of.keys().map(String::as_str)
    }

    /// Tombstones the vectors of `id`, if it has any.
    pub(crate) fn remove(&mut self, id: &str) {
        for slot in self.slots_of.remove(id).unwrap_or_default() {
            self.dead[slot] = true;
            self.dead_count += 1;
        }
    }

    /// Gives each document its vectors (one per window), replacing any it had.
    pub fn insert(&mut self, documents: Vec<(String, Vec<Vec<f32>>)>) {
        let first = self.owners.len();
        for (id, vectors) in documents {
            // Also covers an id given twice in one batch: the last vectors win.
            self.remove(&id);
            let mut slots = Vec::with_capacity(vectors.len());
            for vector in vectors {
                debug_assert_eq!(vector.len(), self.dimension);
                slots.push(self.owners.len());
                self.owners.push(id.clone());
                self.vectors.extend_from_slice(&vector);
                self.dead.push(false);
            }
            self.slots_of.insert(id, slots);
        }
        let points: Vec<(&[f32], usize)> =
            (first..self.owners.len()).map(|slot| (self.vector(slot), slot)).collect();
        self.graph.parallel_insert_slice(&points);
        self.flat = FlatGraph::from_hnsw(&self.graph, &self.vectors, self.dimension);
    }

    fn vector(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dimension..(slot + 1) * self.dimension]
    }

    /// The same live vectors in a fresh graph, without tombstones.
    pub(crate) fn compacted(&self) -> VectorIndex {
        let mut fresh = VectorIndex::empty(self.dimension, self.settings);
        // Slots in order keep each document's windows in order.
        let live = (0..self.owners.len())
            .filter(|&slot| !self.dead[slot])
            .map(|slot| (self.owners[slot].as_str(), slot));
        let mut documents: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
        let mut position: HashMap<&str, usize> = HashMap::new();
        for (id, slot) in live {
            let index = *position.entry(id).or_insert_with(|| {
                documents.push((id.to_string(), Vec::new()));
                documents.len() - 1
            });
            documents[index].1.push(self.vector(slot).to_vec());
        }
        fresh.insert(documents);
        fresh
    }

    /// The documents nearest to `query` by their best vector, best first: at most `limit`,
    /// searched with `ef` candidates (raised to the number of vectors asked for). With
    /// `allowed`, only those documents are considered.
    pub fn nearest(
        &self,
        query: &[f32],
        limit: usize,
        ef: usize,
        allowed: Option<&HashSet<String>>,
    ) -> Vec<Neighbour> {
        self.nearest_with(query, limit, ef, allowed, EXACT_FILTERED_SLOTS)
    }

    fn nearest_with(
        &self,
        query: &[f32],
        limit: usize,
        ef: usize,
        allowed: Option<&HashSet<String>>,
        exact_filtered_slots: usize,
    ) -> Vec<Neighbour> {
        let allowed_slots: Option<Vec<usize>> = allowed.map(|allowed| {
            allowed.iter().filter_map(|id| self.slots_of.get(id)).flatten().copied().collect()
        });
        if let Some(slots) = &allowed_slots {
            if slots.len() <= exact_filtered_slots {
                return self.exact_among(query, slots.iter().copied(), limit);
            }
        }
        let live = allowed_slots.as_ref().map_or(self.live_slots(), Vec::len);
        if limit == 0 || live == 0 {
            return Vec::new();
        }
        let accept = |slot: u32| {
            let slot = slot as usize;
            !self.dead[slot] && allowed.is_none_or(|allowed| allowed.contains(&self.owners[slot]))
        };
        // With windows a document has several slots: ask for enough slots to find `limit`
        // documents, and more if the best slots crowd into few documents.
        let per_document = self.live_slots().div_ceil(self.document_count().max(1));
        let mut wanted = (limit * per_document).min(live);
        loop {
            // The walk's distances are approximate: what it found is scored with the full vectors.
            let found = self.flat.search(ef.max(wanted), query, accept);
            for &slot in &found {
                prefetch(self.vector(slot as usize));
            }
            let neighbours =
                self.exact_among(query, found.into_iter().map(|slot| slot as usize), limit);
            if neighbours.len() >= limit || wanted == live {
                return neighbours;
            }
            wanted = (wanted * 2).min(live);
        }
    }

    /// The cosine similarity of `query` to the best vector of each document of `ids`, None for
    /// a document without vectors: what [`Self::nearest`] would score it, for documents it did
    /// not return.
    pub fn similarities(&self, query: &[f32], ids: &[&str]) -> Vec<Option<f32>> {
        ids.iter()
            .map(|id| {
                let slots = self.slots_of.get(*id)?;
                slots.iter().map(|&slot| dot(query, self.vector(slot))).reduce(f32::max)
            })
            .collect()
    }

    /// The mean of the vectors of the documents of `ids` that have any, each document
    /// weighing the same (its windows averaged first); None if none has vectors.
    pub fn mean_vector(&self, ids: &[&str]) -> Option<Vec<f32>> {
        let mut sum = vec![0.0f32; self.dimension];
        let mut documents = 0usize;
        for slots in ids.iter().filter_map(|id| self.slots_of.get(*id)) {
            let share = 1.0 / slots.len() as f32;
            for &slot in slots {
                for (total, x) in sum.iter_mut().zip(self.vector(slot)) {
                    *total += share * x;
                }
            }
            documents += 1;
        }
        if documents == 0 {
            return None;
        }
        sum.iter_mut().for_each(|x| *x /= documents as f32);
        Some(sum)
    }

    /// What [`Self::nearest`] approximates: every live vector compared with the query.
    pub fn exact_nearest(&self, query: &[f32], limit: usize) -> Vec<Neighbour> {
        self.exact_among(query, (0..self.owners.len()).filter(|&slot| !self.dead[slot]), limit)
    }

    /// The documents nearest to `query` by their best vector among `slots`, compared one by one.
    fn exact_among(
        &self,
        query: &[f32],
        slots: impl Iterator<Item = usize>,
        limit: usize,
    ) -> Vec<Neighbour> {
        let mut scored: Vec<(usize, f32)> =
            slots.map(|slot| (slot, dot(query, self.vector(slot)))).collect();
        scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        best_per_document(scored.into_iter(), &self.owners, limit)
    }

    /// Writes this index as generation `generation` under `vectors_dir`, durably.
    pub(crate) fn save(&self, vectors_dir: &Path, generation: u64) -> Result<(), IndexError> {
        let dir = generation_dir(vectors_dir, generation);
        if dir.exists() {
            // Debris of an interrupted write that reached no commit.
            remove_dir(&dir)?;
        }
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let mut checksums = HashMap::new();
        let bytes: Vec<u8> = self.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_synced(&dir.join(VECTORS_FILE), &bytes)?;
        checksums.insert(VECTORS_FILE.to_string(), sha256(&bytes));
        if !self.owners.is_empty() {
            let basename = self.graph.file_dump(&dir, HNSW_BASENAME).map_err(|e| {
                IndexError::Io { path: dir.clone(), source: std::io::Error::other(e.to_string()) }
            })?;
            if basename != HNSW_BASENAME {
                return Err(IndexError::CorruptVectors {
                    path: dir,
                    message: format!("hnsw_rs wrote {basename}.* instead of {HNSW_BASENAME}.*"),
                });
            }
            for name in graph_files() {
                let path = dir.join(&name);
                let bytes = std::fs::read(&path).map_err(io_error(&path))?;
                std::fs::File::open(&path)
                    .and_then(|file| file.sync_all())
                    .map_err(io_error(&path))?;
                checksums.insert(name, sha256(&bytes));
            }
        }
        let mut tombstones: Vec<usize> = (0..self.dead.len()).filter(|&s| self.dead[s]).collect();
        tombstones.sort_unstable();
        let slots = SlotsFile {
            dimension: self.dimension,
            owners: self.owners.clone(),
            tombstones,
            checksums,
        };
        let json = serde_json::to_vec(&slots).expect("slots always serialize");
        write_synced(&dir.join(SLOTS_FILE), &json)?;
        sync_dir(&dir)?;
        sync_dir(vectors_dir)
    }

    /// Reads generation `generation`, checking every file against the checksums it was
    /// written with; generation 0 is the empty index of a collection never written to.
    pub(crate) fn load(
        vectors_dir: &Path,
        generation: u64,
        dimension: usize,
        settings: HnswSettings,
    ) -> Result<VectorIndex, IndexError> {
        if generation == 0 {
            return Ok(VectorIndex::empty(dimension, settings));
        }
        let dir = generation_dir(vectors_dir, generation);
        let corrupt = |message: String| IndexError::CorruptVectors { path: dir.clone(), message };
        let slots_path = dir.join(SLOTS_FILE);
        let slots: SlotsFile =
            serde_json::from_slice(&std::fs::read(&slots_path).map_err(io_error(&slots_path))?)
                .map_err(|e| corrupt(format!("{SLOTS_FILE}: {e}")))?;
        if slots.dimension != dimension {
            return Err(corrupt(format!(
                "{} dimensions, but the manifest says {dimension}",
                slots.dimension
            )));
        }
        let checked = |name: &str| -> Result<Vec<u8>, IndexError> {
            let path = dir.join(name);
            let bytes = read_all(&path)?;
            match slots.checksums.get(name) {
                Some(expected) if *expected == sha256(&bytes) => Ok(bytes),
                Some(_) => Err(corrupt(format!("{name} does not match its checksum"))),
                None => Err(corrupt(format!("{SLOTS_FILE} has no checksum for {name}"))),
            }
        };
        let bytes = checked(VECTORS_FILE)?;
        if bytes.len() != slots.owners.len() * dimension * 4 {
            return Err(corrupt(format!(
                "{VECTORS_FILE} has {} bytes for {} vectors of {dimension} dimensions",
                bytes.len(),
                slots.owners.len()
            )));
        }
        let vectors: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("chunks of 4")))
            .collect();
        let graph = if slots.owners.is_empty() {
            new_graph(&settings, 0)
        } else {
            for name in graph_files() {
                checked(&name)?;
            }
            let graph = load_graph(&dir).map_err(corrupt)?;
            if graph.get_nb_point() != slots.owners.len() {
                return Err(corrupt(format!(
                    "the graph has {} points for {} slots",
                    graph.get_nb_point(),
                    slots.owners.len()
                )));
            }
            graph
        };
        let mut dead = vec![false; slots.owners.len()];
        for &slot in &slots.tombstones {
            *dead.get_mut(slot).ok_or_else(|| corrupt(format!("tombstone {slot} is no slot")))? =
                true;
        }
        let mut slots_of: HashMap<String, Vec<usize>> = HashMap::new();
        for (slot, id) in slots.owners.iter().enumerate() {
            if !dead[slot] {
                slots_of.entry(id.clone()).or_default().push(slot);
            }
        }
        let flat = FlatGraph::from_hnsw(&graph, &vectors, dimension);
        Ok(VectorIndex {
            dimension,
            settings,
            dead_count: dead.iter().filter(|d| **d).count(),
            owners: slots.owners,
            vectors,
            dead,
            slots_of,
            flat,
            graph,
        })
    }
}

/// Keeps the first (best) score of each document, in the order given, until there are
/// `limit`: a search rescores `ef` slots (up to hundreds) for ten documents, and hashing and
/// copying the id of every one of them showed in profiles (Gutenberg, 30,000 vectors: 0.70 of
/// hnswlib's queries/s before stopping at `limit`, 0.94 after, in two runs).
fn best_per_document(
    scored_slots: impl Iterator<Item = (usize, f32)>,
    owners: &[String],
    limit: usize,
) -> Vec<Neighbour> {
    let mut seen = std::collections::HashSet::new();
    scored_slots
        .filter(|(slot, _)| seen.insert(owners[*slot].as_str()))
        .take(limit)
        .map(|(slot, similarity)| Neighbour { id: owners[slot].clone(), similarity })
        .collect()
}

fn new_graph(settings: &HnswSettings, capacity: usize) -> Hnsw<'static, f32, UnitCosine> {
    Hnsw::new(settings.m, capacity.max(1024), MAX_LAYERS, settings.ef_construction, UnitCosine)
}

fn graph_files() -> [String; 2] {
    [format!("{HNSW_BASENAME}.hnsw.graph"), format!("{HNSW_BASENAME}.hnsw.data")]
}

/// Reloads a dumped graph. hnsw_rs ties the graph's lifetime to its loader because a loader may
/// memory-map the vectors; this one does not (points are copied in), so the small loader is
/// leaked to give the graph a `'static` lifetime. hnsw_rs asserts on malformed files, so a
/// panic there is caught and reported (the checksums make it unlikely).
fn load_graph(dir: &Path) -> Result<Hnsw<'static, f32, UnitCosine>, String> {
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, HNSW_BASENAME)));
    match std::panic::catch_unwind(AssertUnwindSafe(move || {
        { loader }.load_hnsw::<f32, UnitCosine>()
    })) {
        Ok(Ok(graph)) => Ok(graph),
        Ok(Err(error)) => Err(format!("reading the HNSW graph: {error}")),
        Err(_) => Err("the HNSW graph files are malformed".to_string()),
    }
}

pub(crate) fn generation_dir(vectors_dir: &Path, generation: u64) -> PathBuf {
    vectors_dir.join(format!("{generation:010}"))
}

/// Removes every generation folder but `keep`: what interrupted or superseded writes left.
pub(crate) fn remove_other_generations(vectors_dir: &Path, keep: u64) -> Result<(), IndexError> {
    let entries = match std::fs::read_dir(vectors_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(IndexError::Io { path: vectors_dir.to_path_buf(), source }),
    };
    for entry in entries.filter_map(Result::ok) {
        let generation = entry.file_name().to_str().and_then(|name| name.parse::<u64>().ok());
        if generation.is_some_and(|generation| generation != keep) {
            remove_dir(&entry.path())?;
        }
    }
    Ok(())
}

fn sha256(bytes: &[u8]) -> String {
    crate::encoder::hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn the_dot_product_matches_a_plain_sum_at_every_length() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for length in (0..80).chain([127, 128, 384, 385]) {
            let a: Vec<f32> = (0..length).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..length).map(|_| rng.random_range(-1.0..1.0)).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-4, "length {length}");
            assert!((f64::from(dot_lanes(&a, &b)) - plain).abs() < 1e-4, "length {length}");
        }
    }

    const DIMENSION: usize = 24;

    fn unit_vectors(count: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let v: Vec<f32> = (0..DIMENSION).map(|_| rng.random_range(-1.0..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    fn index_of(vectors: &[Vec<f32>]) -> VectorIndex {
        let mut index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.insert(
            vectors.iter().enumerate().map(|(i, v)| (format!("d{i}"), vec![v.clone()])).collect(),
        );
        index
    }

    fn ids(neighbours: &[Neighbour]) -> Vec<&str> {
        neighbours.iter().map(|n| n.id.as_str()).collect()
    }

    /// The share of each query's exact top 10 that the graph search at `ef` returns.
    fn recall_at_10(index: &VectorIndex, queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut found = 0;
        for query in queries {
            let exact = index.exact_nearest(query, 10);
            let approximate = index.nearest(query, 10, ef, None);
            found += ids(&approximate).iter().filter(|id| ids(&exact).contains(id)).count();
        }
        found as f64 / (10 * queries.len()) as f64
    }

    #[test]
    fn hnsw_finds_what_exact_search_finds() {
        let vectors = unit_vectors(2000, 1);
        let index = index_of(&vectors);
        let recall = recall_at_10(&index, &unit_vectors(100, 2), HnswSettings::default().ef_search);
        assert!(recall >= 0.95, "recall@10 {recall}");
        // A stored vector is its own nearest neighbour, at similarity 1.
        let nearest = index.nearest(&vectors[7], 1, 50, None);
        assert_eq!(nearest[0].id, "d7");
        assert!((nearest[0].similarity - 1.0).abs() < 1e-5);
    }

    /// Vectors in a narrow cone, as an undertrained encoder makes: a large common part and
    /// small differences. Quantized as they are, a byte per value rounds the differences away
    /// and the graph walk goes astray: recall@10 0.40 at ef_search 20 on these, against 0.66
    /// when they are quantized less their mean (what the graph itself allows at so small an
    /// ef_search on such crowded points).
    #[test]
    fn vectors_that_crowd_into_a_cone_are_found_as_well() {
        let cone = |vectors: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            vectors
                .into_iter()
                .map(|v| {
                    let v: Vec<f32> = v
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x * 0.02 + if i == 0 { 1.0 } else { 0.0 })
                        .collect();
                    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                    v.into_iter().map(|x| x / norm).collect()
                })
                .collect()
        };
        let index = index_of(&cone(unit_vectors(2000, 11)));
        let recall = recall_at_10(&index, &cone(unit_vectors(100, 12)), 20);
        assert!(recall >= 0.55, "recall@10 {recall}");
    }

    #[test]
    fn a_filtered_search_finds_only_allowed_documents_exactly_or_through_the_graph() {
        let vectors = unit_vectors(300, 6);
        let mut index = index_of(&vectors);
        index.remove("d4");
        let mut allowed: HashSet<String> = (100..200).map(|i| format!("d{i}")).collect();
        allowed.extend(["d3", "d4", "d10", "d11", "d12", "unknown"].map(String::from));
        for query in unit_vectors(10, 7) {
            let exact = index.nearest_with(&query, 20, 100, Some(&allowed), usize::MAX);
            let graph = index.nearest_with(&query, 20, 100, Some(&allowed), 0);
            assert_eq!(exact.len(), 20);
            for found in [&exact, &graph] {
                assert!(found.iter().all(|n| allowed.contains(&n.id) && n.id != "d4"));
            }
            // The graph may miss a neighbour, but it finds most of them.
            let shared = ids(&graph).iter().filter(|id| ids(&exact).contains(id)).count();
            assert!(shared >= 18, "{shared} of 20");
        }
        let few: HashSet<String> = ["d3".to_string()].into();
        assert_eq!(index.nearest(&vectors[9], 5, 50, Some(&few)).len(), 1);
    }

    #[test]
    fn replaced_and_removed_documents_are_never_found_and_compaction_drops_them() {
        let vectors = unit_vectors(300, 3);
        let mut index = index_of(&vectors);
        let replacement = unit_vectors(1, 4).remove(0);
        index.insert(vec![("d1".to_string(), vec![replacement.clone()])]);
        index.remove("d2");
        assert_eq!((index.document_count(), index.live_slots(), index.dead_count()), (299, 299, 2));
        for query in [&vectors[1], &vectors[2]] {
            let found = index.nearest(query, 300, 400, None);
            assert_eq!(found.len(), 299);
            assert!(!found.iter().any(|n| n.id == "d2"));
            assert_ne!(found[0].id, "d2");
        }
        assert_eq!(index.nearest(&replacement, 1, 50, None)[0].id, "d1");

        let compacted = index.compacted();
        assert_eq!((compacted.live_slots(), compacted.dead_count()), (299, 0));
        for query in unit_vectors(20, 5) {
            assert_eq!(compacted.exact_nearest(&query, 10), index.exact_nearest(&query, 10));
        }
    }

    #[test]
    fn a_document_with_windows_scores_by_its_best_window() {
        let vectors = unit_vectors(4, 6);
        let mut index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.insert(vec![
            ("long".to_string(), vec![vectors[0].clone(), vectors[1].clone()]),
            ("short".to_string(), vec![vectors[2].clone()]),
        ]);
        for found in [index.nearest(&vectors[1], 2, 10, None), index.exact_nearest(&vectors[1], 2)]
        {
            assert_eq!(ids(&found), ["long", "short"]);
            assert!((found[0].similarity - 1.0).abs() < 1e-5);
        }
        index.remove("long");
        assert_eq!(index.live_slots(), 1);
    }

    #[test]
    fn similarities_and_means_read_each_documents_own_vectors() {
        let vectors = unit_vectors(4, 8);
        let mut index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.insert(vec![
            ("long".to_string(), vec![vectors[0].clone(), vectors[1].clone()]),
            ("short".to_string(), vec![vectors[2].clone()]),
        ]);
        let query = &vectors[3];
        let similarities = index.similarities(query, &["short", "long", "gone"]);
        let expected_long = dot(query, &vectors[0]).max(dot(query, &vectors[1]));
        assert_eq!(similarities, [Some(dot(query, &vectors[2])), Some(expected_long), None]);
        // Exactly what a search that returns everything scores.
        for found in index.exact_nearest(query, 2) {
            let expected =
                if found.id == "long" { expected_long } else { similarities[0].unwrap() };
            assert_eq!(found.similarity, expected);
        }

        // Each document counts once: the long one's windows are averaged first.
        let mean = index.mean_vector(&["long", "short", "gone"]).unwrap();
        for (i, x) in mean.iter().enumerate() {
            let long = (vectors[0][i] + vectors[1][i]) / 2.0;
            assert!((x - (long + vectors[2][i]) / 2.0).abs() < 1e-6);
        }
        assert_eq!(index.mean_vector(&["gone"]), None);
        index.remove("short");
        assert_eq!(index.similarities(query, &["short"]), [None]);
    }

    #[test]
    fn a_saved_generation_loads_back_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = unit_vectors(200, 7);
        let mut index = index_of(&vectors);
        index.remove("d3");
        index.save(dir.path(), 1).unwrap();
        let loaded = VectorIndex::load(dir.path(), 1, DIMENSION, HnswSettings::default()).unwrap();
        assert_eq!((loaded.live_slots(), loaded.dead_count()), (199, 1));
        for query in unit_vectors(10, 8) {
            assert_eq!(loaded.exact_nearest(&query, 5), index.exact_nearest(&query, 5));
            assert_eq!(
                ids(&loaded.nearest(&query, 5, 100, None)),
                ids(&index.nearest(&query, 5, 100, None))
            );
        }
        // A loaded graph takes more points.
        let mut loaded = loaded;
        loaded.insert(vec![("new".to_string(), vec![vectors[3].clone()])]);
        assert_eq!(loaded.nearest(&vectors[3], 1, 50, None)[0].id, "new");

        let wrong_dimension = VectorIndex::load(dir.path(), 1, 8, HnswSettings::default());
        assert!(wrong_dimension.err().unwrap().to_string().contains("24 dimensions"));
        for name in ["vectors.f32", "hnsw.hnsw.graph", "hnsw.hnsw.data"] {
            let path = generation_dir(dir.path(), 1).join(name);
            let original = std::fs::read(&path).unwrap();
            let mut damaged = original.clone();
            let middle = damaged.len() / 2;
            damaged[middle] ^= 0x55;
            std::fs::write(&path, &damaged).unwrap();
            let error = VectorIndex::load(dir.path(), 1, DIMENSION, HnswSettings::default())
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains(&format!("{name} does not match its checksum")), "{error}");
            std::fs::write(&path, &original).unwrap();
        }
        std::fs::write(generation_dir(dir.path(), 1).join(SLOTS_FILE), "{").unwrap();
        assert!(VectorIndex::load(dir.path(), 1, DIMENSION, HnswSettings::default()).is_err());
    }

    #[test]
    fn an_empty_index_saves_loads_and_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.save(dir.path(), 3).unwrap();
        let loaded = VectorIndex::load(dir.path(), 3, DIMENSION, HnswSettings::default()).unwrap();
        assert!(loaded.nearest(&unit_vectors(1, 9)[0], 10, 10, None).is_empty());
        std::fs::create_dir_all(generation_dir(dir.path(), 5)).unwrap();
        remove_other_generations(dir.path(), 3).unwrap();
        assert!(generation_dir(dir.path(), 3).is_dir());
        assert!(!generation_dir(dir.path(), 5).exists());
    }
}
