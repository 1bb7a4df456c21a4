//! One segment of a collection's vectors: the vectors written together by one write, or made by
//! one merge, immutable once on disk.
//!
//! ```text
//! vectors/<segment>/vectors.f32              every slot's vector, little-endian f32
//! vectors/<segment>/graph.links              the graph's links as searches walk them, merged
//!                                            segments only: what opening a collection reads
//! vectors/<segment>/hnsw.hnsw.graph          the same graph as hnsw_rs dumps it: what a merge
//! vectors/<segment>/hnsw.hnsw.data           starts from to insert more points
//! vectors/<segment>/slots.json               slot -> document id, slots dead at birth, checksums;
//!                                            written last
//! vectors/<segment>/tombstones-<gen>.json    the slots dead as of commit <gen>, when any died since
//! ```
//!
//! A segment a write makes has no graph: it is small, and a search compares the query with each
//! of its vectors (Milvus's "growing" segments are searched the same way). A merge builds a
//! graph, starting from the graph of its largest input when it has one, so that a merge costs
//! the inserts of the smaller inputs rather than of everything.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use hnsw_rs::prelude::{AnnT, Hnsw, HnswIo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::distance::{dot, UnitCosine};
use crate::error::IndexError;
use crate::files::{io_error, read_all, sync_dir, write_synced};
use crate::flat_graph::FlatGraph;
use crate::manifest::HnswSettings;

const SLOTS_FILE: &str = "slots.json";
const VECTORS_FILE: &str = "vectors.f32";
const LINKS_FILE: &str = "graph.links";
const HNSW_BASENAME: &str = "hnsw";
/// hnsw_rs's layer cap; with M = 16 it is reached only past billions of points.
const MAX_LAYERS: usize = 16;

/// What `slots.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotsFile {
    dimension: usize,
    /// The document id of each slot.
    owners: Vec<String>,
    /// Slots already dead when the segment was written (a merge keeps its base graph's), ascending.
    tombstones: Vec<u32>,
    /// SHA-256 of each data file of the segment, by name.
    checksums: HashMap<String, String>,
}

/// The vectors of one segment, each slot owned by a document id.
pub(crate) struct Segment {
    /// Its folder's name under `vectors/`.
    pub(crate) name: String,
    pub(crate) dimension: usize,
    pub(crate) owners: Vec<String>,
    /// Slot-major, `dimension` floats per slot.
    pub(crate) vectors: Vec<f32>,
    /// The slots of each document, as last written here.
    pub(crate) slots_of: HashMap<String, Vec<u32>>,
    /// Slots dead when the segment was written.
    pub(crate) born_dead: Vec<u32>,
    /// None: searched by comparing with every vector.
    pub(crate) graph: Option<FlatGraph>,
    /// The HNSW graph of a segment built in memory, until [`Segment::write`] writes it.
    unwritten_graph: Mutex<Option<Graph>>,
}

/// The HNSW graph while a segment is built: what hnsw_rs inserts into and writes to disk.
pub(crate) type Graph = Hnsw<'static, f32, UnitCosine>;

impl Segment {
    /// A segment of `documents` (each with its vectors, one per window) with no graph.
    pub(crate) fn flat(
        name: String,
        dimension: usize,
        documents: Vec<(String, Vec<Vec<f32>>)>,
    ) -> Segment {
        let mut segment = Segment::from_slots(name, dimension, Vec::new(), Vec::new(), Vec::new());
        for (id, vectors) in documents {
            let mut slots = Vec::with_capacity(vectors.len());
            for vector in vectors {
                debug_assert_eq!(vector.len(), dimension);
                slots.push(segment.owners.len() as u32);
                segment.owners.push(id.clone());
                segment.vectors.extend_from_slice(&vector);
            }
            segment.slots_of.insert(id, slots);
        }
        segment
    }

    pub(crate) fn slots(&self) -> usize {
        self.owners.len()
    }

    pub(crate) fn vector(&self, slot: u32) -> &[f32] {
        let at = slot as usize * self.dimension;
        &self.vectors[at..at + self.dimension]
    }

    /// The cosine similarity of `query` (unit length) to the vector of `slot`.
    pub(crate) fn similarity(&self, query: &[f32], slot: u32) -> f32 {
        dot(query, self.vector(slot))
    }

    /// Inserts this segment's slots from `first` on into `graph`, each the point of its slot.
    pub(crate) fn insert_into(&self, graph: &Graph, first: usize) {
        let points: Vec<(&[f32], usize)> =
            (first..self.slots()).map(|slot| (self.vector(slot as u32), slot)).collect();
        graph.parallel_insert_slice(&points);
    }

    /// Links `graph` (whose points are this segment's slots) for searching.
    pub(crate) fn index_with(&mut self, graph: &Graph) {
        self.graph = Some(FlatGraph::from_hnsw(graph, &self.vectors, self.dimension));
    }

    /// Keeps the graph it was linked with for [`Segment::write`]: a segment built in memory,
    /// written later.
    pub(crate) fn keep_unwritten_graph(&mut self, graph: Graph) {
        *self.unwritten_graph.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(graph);
    }

    /// Writes the segment into the new folder `dir`, durably; with `graph` (or one it was
    /// built with in memory), its HNSW graph too.
    pub(crate) fn write(&self, dir: &Path, graph: Option<&Graph>) -> Result<(), IndexError> {
        let unwritten = self.unwritten_graph.lock().unwrap_or_else(PoisonError::into_inner).take();
        let graph = graph.or(unwritten.as_ref());
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut checksums = HashMap::new();
        let bytes: Vec<u8> = self.vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
        write_synced(&dir.join(VECTORS_FILE), &bytes)?;
        checksums.insert(VECTORS_FILE.to_string(), sha256(&bytes));
        if let Some(graph) = graph.filter(|_| !self.owners.is_empty()) {
            // The links and hnsw_rs's dump are written together: opening reads the links, and a
            // merge that starts from this segment's graph reads the dump.
            if let Some(flat) = &self.graph {
                let bytes = flat.to_bytes();
                write_synced(&dir.join(LINKS_FILE), &bytes)?;
                checksums.insert(LINKS_FILE.to_string(), sha256(&bytes));
            }
            let basename = graph.file_dump(dir, HNSW_BASENAME).map_err(|e| IndexError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })?;
            if basename != HNSW_BASENAME {
                return Err(IndexError::CorruptVectors {
                    path: dir.to_path_buf(),
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
        let slots = SlotsFile {
            dimension: self.dimension,
            owners: self.owners.clone(),
            tombstones: self.born_dead.clone(),
            checksums,
        };
        let json = serde_json::to_vec(&slots).expect("slots always serialize");
        write_synced(&dir.join(SLOTS_FILE), &json)?;
        sync_dir(dir)
    }

    /// Reads the segment in folder `dir`, checking every file against the checksums it was
    /// written with. A vector generation of the layout before segments (one folder with a
    /// graph of everything) reads as a segment too.
    pub(crate) fn load(dir: &Path, dimension: usize) -> Result<Segment, IndexError> {
        let corrupt = |message: String| IndexError::CorruptVectors { path: dir.into(), message };
        let slots_path = dir.join(SLOTS_FILE);
        let slots: SlotsFile = serde_json::from_slice(&read_all(&slots_path)?)
            .map_err(|e| corrupt(format!("{SLOTS_FILE}: {e}")))?;
        if slots.dimension != dimension {
            return Err(corrupt(format!(
                "{} dimensions, but the manifest says {dimension}",
                slots.dimension
            )));
        }
        let checked = |name: &str| -> Result<Vec<u8>, IndexError> {
            let bytes = read_all(&dir.join(name))?;
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
        drop(bytes);
        if let Some(&slot) = slots.tombstones.iter().find(|&&s| s as usize >= slots.owners.len()) {
            return Err(corrupt(format!("tombstone {slot} is no slot")));
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut segment =
            Segment::from_slots(name, dimension, slots.owners, vectors, slots.tombstones);
        let has_hnsw = graph_files().iter().all(|name| slots.checksums.contains_key(name));
        if has_hnsw {
            for name in graph_files() {
                checked(&name)?;
            }
        }
        if slots.checksums.contains_key(LINKS_FILE) {
            let bytes = checked(LINKS_FILE)?;
            let graph = FlatGraph::read(&bytes, &segment.vectors, dimension)
                .map_err(|e| corrupt(format!("{LINKS_FILE}: {e}")))?;
            segment.graph = Some(graph);
        } else if has_hnsw {
            // Written before segments kept their links: rebuilt from hnsw_rs's dump.
            let graph = load_graph(dir).map_err(corrupt)?;
            if graph.get_nb_point() != segment.slots() {
                return Err(corrupt(format!(
                    "the graph has {} points for {} slots",
                    graph.get_nb_point(),
                    segment.slots()
                )));
            }
            segment.index_with(&graph);
        }
        Ok(segment)
    }

    /// A segment of `owners` and their `vectors`, slot by slot, with the slots `born_dead`
    /// dead already.
    pub(crate) fn from_slots(
        name: String,
        dimension: usize,
        owners: Vec<String>,
        vectors: Vec<f32>,
        born_dead: Vec<u32>,
    ) -> Segment {
        let mut slots_of: HashMap<String, Vec<u32>> = HashMap::new();
        for (slot, id) in owners.iter().enumerate() {
            slots_of.entry(id.clone()).or_default().push(slot as u32);
        }
        let mut segment = Segment {
            name,
            dimension,
            owners,
            vectors,
            slots_of,
            born_dead,
            graph: None,
            unwritten_graph: Mutex::new(None),
        };
        segment.drop_replaced_slots();
        segment
    }

    /// A document's slots in `slots_of` are those it was last written with: slots of an
    /// earlier version in the same segment (which a merge base may carry) are dead.
    fn drop_replaced_slots(&mut self) {
        let dead: std::collections::HashSet<u32> = self.born_dead.iter().copied().collect();
        for slots in self.slots_of.values_mut() {
            if slots.iter().any(|slot| !dead.contains(slot)) {
                slots.retain(|slot| !dead.contains(slot));
            }
        }
    }

    /// The HNSW graph written with this segment, for a merge to insert more points into.
    pub(crate) fn load_graph(&self, dir: &Path) -> Result<Option<Graph>, IndexError> {
        if self.graph.is_none() {
            return Ok(None);
        }
        let corrupt = |message: String| IndexError::CorruptVectors { path: dir.into(), message };
        load_graph(dir).map(Some).map_err(corrupt)
    }
}

/// An empty HNSW graph with room planned for `capacity` points.
pub(crate) fn new_graph(settings: &HnswSettings, capacity: usize) -> Graph {
    Hnsw::new(settings.m, capacity.max(1024), MAX_LAYERS, settings.ef_construction, UnitCosine)
}

fn graph_files() -> [String; 2] {
    [format!("{HNSW_BASENAME}.hnsw.graph"), format!("{HNSW_BASENAME}.hnsw.data")]
}

/// Reloads a dumped graph. hnsw_rs ties the graph's lifetime to its loader because a loader may
/// memory-map the vectors; this one does not (points are copied in), so the small loader is
/// leaked to give the graph a `'static` lifetime. hnsw_rs asserts on malformed files, so a
/// panic there is caught and reported (the checksums make it unlikely).
fn load_graph(dir: &Path) -> Result<Graph, String> {
    let loader: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, HNSW_BASENAME)));
    match std::panic::catch_unwind(AssertUnwindSafe(move || {
        { loader }.load_hnsw::<f32, UnitCosine>()
    })) {
        Ok(Ok(graph)) => Ok(graph),
        Ok(Err(error)) => Err(format!("reading the HNSW graph: {error}")),
        Err(_) => Err("the HNSW graph files are malformed".to_string()),
    }
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    crate::encoder::hex(&Sha256::digest(bytes))
}
