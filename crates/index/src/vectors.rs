//! The vector side of a collection: one vector per document (or per window of a long document),
//! kept in segments, with the document ids they belong to.
//!
//! ```text
//! vectors/commit-<gen>.json    the segments of commit <gen> and which tombstone file each reads
//! vectors/<segment>/           one segment (see the segment module)
//! ```
//!
//! This is Lucene's design, which Elasticsearch and OpenSearch run on: a write adds one small
//! segment with its own vectors and marks the vectors it replaces or deletes as tombstones in
//! the segments that hold them, so it writes what it changes and nothing else; a commit file
//! names the segment set, and the tantivy commit that makes the same documents visible names
//! that file (its payload), so the two indexes change together or not at all. Segments are
//! merged in the background ([`crate::merge`]), which builds their graphs and drops their
//! tombstones. Files no commit names are debris of interrupted writes and superseded commits,
//! and are removed.
//!
//! A document's live vectors are all in one segment. How segments are searched is in the
//! nearest module, how they are merged in the merge module.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::IndexError;
use crate::files::{io_error, read_all, remove_dir, sync_dir, write_synced};
use crate::manifest::HnswSettings;
use crate::segment::{new_graph, Segment};

pub(crate) const VECTORS_DIR: &str = "vectors";
/// What `commit-<gen>.json` holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitFile {
    segments: Vec<CommittedSegment>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommittedSegment {
    name: String,
    /// The commit whose tombstone file holds this segment's dead slots; None when only those
    /// dead at its birth are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tombstones: Option<u64>,
}

/// A segment and which of its slots are dead as of this state of the index.
#[derive(Clone)]
pub(crate) struct Part {
    pub(crate) segment: Arc<Segment>,
    /// Copied on write: a state being changed never changes the one searches read.
    pub(crate) dead: Arc<Vec<bool>>,
    pub(crate) dead_slots: usize,
    /// Documents with live vectors here.
    pub(crate) live_documents: usize,
    tombstones: Option<u64>,
    /// Slots died since the tombstones were last written.
    changed: bool,
    /// Not on disk yet.
    unsaved: bool,
}

impl Part {
    pub(crate) fn new(segment: Segment, unsaved: bool) -> Part {
        let mut dead = vec![false; segment.slots()];
        for &slot in &segment.born_dead {
            dead[slot as usize] = true;
        }
        Part::with_dead(Arc::new(segment), dead, unsaved)
    }

    /// `segment` with the slots `dead` marks dead.
    pub(crate) fn with_dead(segment: Arc<Segment>, dead: Vec<bool>, unsaved: bool) -> Part {
        let dead_slots = dead.iter().filter(|&&d| d).count();
        let live_documents = segment
            .slots_of
            .values()
            .filter(|slots| slots.first().is_some_and(|&s| !dead[s as usize]))
            .count();
        Part {
            segment,
            dead: Arc::new(dead),
            dead_slots,
            live_documents,
            tombstones: None,
            changed: false,
            unsaved,
        }
    }

    pub(crate) fn live_slots(&self) -> usize {
        self.segment.slots() - self.dead_slots
    }

    pub(crate) fn dead_fraction(&self) -> f64 {
        self.dead_slots as f64 / self.segment.slots().max(1) as f64
    }

    pub(crate) fn is_live(&self, slot: u32) -> bool {
        !self.dead[slot as usize]
    }

    /// The live slots of `id` here, if it has any.
    pub(crate) fn live_slots_of(&self, id: &str) -> Option<&[u32]> {
        let slots = self.segment.slots_of.get(id)?;
        slots.first().is_some_and(|&slot| self.is_live(slot)).then_some(slots.as_slice())
    }

    /// Marks `slots` dead (the slots of one document).
    pub(crate) fn kill(&mut self, slots: &[u32]) {
        let dead = Arc::make_mut(&mut self.dead);
        let mut killed = 0;
        for &slot in slots {
            if !std::mem::replace(&mut dead[slot as usize], true) {
                killed += 1;
            }
        }
        if killed > 0 {
            self.dead_slots += killed;
            self.live_documents -= 1;
            self.changed = true;
        }
    }
}

/// Vectors in segments, each owned by a document id. A collection keeps one beside its keyword
/// index; it is public so benchmarks can drive the very search the service runs.
///
/// Cloning is cheap (segments are shared): a write changes its own copy and publishes it whole.
#[derive(Clone)]
pub struct VectorIndex {
    dimension: usize,
    settings: HnswSettings,
    pub(crate) parts: Vec<Part>,
}

impl VectorIndex {
    pub fn empty(dimension: usize, settings: HnswSettings) -> VectorIndex {
        VectorIndex { dimension, settings, parts: Vec::new() }
    }

    pub(crate) fn dimension(&self) -> usize {
        self.dimension
    }

    pub(crate) fn settings(&self) -> &HnswSettings {
        &self.settings
    }

    /// Live documents with vectors.
    pub(crate) fn document_count(&self) -> usize {
        self.parts.iter().map(|part| part.live_documents).sum()
    }

    pub fn live_slots(&self) -> usize {
        self.parts.iter().map(Part::live_slots).sum()
    }

    pub(crate) fn dead_count(&self) -> usize {
        self.parts.iter().map(|part| part.dead_slots).sum()
    }

    /// How many segments hold the vectors.
    pub fn segment_count(&self) -> usize {
        self.parts.len()
    }

    /// The ids of documents with vectors, in no order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().flat_map(|part| {
            part.segment
                .slots_of
                .iter()
                .filter(|(_, slots)| slots.first().is_some_and(|&slot| part.is_live(slot)))
                .map(|(id, _)| id.as_str())
        })
    }

    /// The segment holding the live vectors of `id`, and those vectors' slots.
    pub(crate) fn locate(&self, id: &str) -> Option<(&Part, &[u32])> {
        self.parts.iter().find_map(|part| part.live_slots_of(id).map(|slots| (part, slots)))
    }

    /// Tombstones the vectors of `id`, if it has any.
    pub(crate) fn remove(&mut self, id: &str) {
        for part in &mut self.parts {
            if let Some(slots) = part.live_slots_of(id).map(<[u32]>::to_vec) {
                part.kill(&slots);
                return;
            }
        }
    }

    /// Gives each document its vectors (one per window), replacing any it had: they become
    /// one new segment, searched exactly until a merge gives it a graph.
    pub fn insert(&mut self, documents: Vec<(String, Vec<Vec<f32>>)>) {
        // An id given twice keeps its last vectors.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (position, (id, _)) in documents.iter().enumerate() {
            last.insert(id, position);
        }
        let keep: Vec<bool> = (0..documents.len())
            .map(|position| last[documents[position].0.as_str()] == position)
            .collect();
        let documents: Vec<(String, Vec<Vec<f32>>)> = documents
            .into_iter()
            .zip(keep)
            .filter_map(|(document, keep)| keep.then_some(document))
            .collect();
        for (id, _) in &documents {
            self.remove(id);
        }
        self.add_segment(documents);
    }

    /// Adds `documents` as one new segment, for a caller that has removed any vectors they
    /// had already (and gives each id once): looking an id up costs a probe of every segment,
    /// which a write of new documents need not pay.
    pub(crate) fn add_segment(&mut self, documents: Vec<(String, Vec<Vec<f32>>)>) {
        if documents.is_empty() {
            return;
        }
        let segment = Segment::flat(new_segment_name(), self.dimension, documents);
        self.parts.push(Part::new(segment, true));
    }

    /// Gives each segment not yet saved (a write's new one) that holds at least `min_slots`
    /// vectors its graph now, rather than at the next merge. A segment without one is searched
    /// by comparing the query with each of its vectors, which suits a few searches; expansion
    /// searches for the neighbours of every document of the write, and that cost grows with
    /// the square of the write. The graph is the one a merge would build for the segment, kept
    /// to be written with it at the commit.
    pub(crate) fn link_unsaved_segments(&mut self, min_slots: usize) {
        for part in &mut self.parts {
            let segment = &part.segment;
            if !part.unsaved || segment.graph.is_some() || segment.slots() < min_slots {
                continue;
            }
            // Only this write holds a segment it has not saved yet.
            let Some(segment) = Arc::get_mut(&mut part.segment) else { continue };
            let graph = new_graph(&self.settings, segment.slots());
            segment.insert_into(&graph, 0);
            segment.index_with(&graph);
            segment.keep_unwritten_graph(graph);
        }
    }

    /// Writes what changed since the last save, durably, and the file of commit `generation`
    /// naming every segment: new segments, and tombstones where slots died. What the last
    /// commit names is not touched, so a crash before the tantivy commit leaves it whole.
    pub(crate) fn save(&mut self, vectors_dir: &Path, generation: u64) -> Result<(), IndexError> {
        std::fs::create_dir_all(vectors_dir).map_err(io_error(vectors_dir))?;
        for part in &mut self.parts {
            let dir = vectors_dir.join(&part.segment.name);
            if part.unsaved {
                if dir.exists() {
                    remove_dir(&dir)?;
                }
                part.segment.write(&dir, None)?;
            }
            if part.changed {
                let dead: Vec<u32> = part.live_or_dead(false).collect();
                let path = dir.join(tombstones_file(generation));
                write_synced(&path, &serde_json::to_vec(&dead).expect("serializes"))?;
                sync_dir(&dir)?;
            }
        }
        let commit = self.commit_file(generation);
        let path = vectors_dir.join(commit_file_name(generation));
        write_synced(&path, &serde_json::to_vec_pretty(&commit).expect("serializes"))?;
        sync_dir(vectors_dir)?;
        for part in &mut self.parts {
            if part.changed {
                part.tombstones = Some(generation);
            }
            part.unsaved = false;
            part.changed = false;
        }
        Ok(())
    }

    /// The commit file of this state; `generation` is where changed tombstones are written.
    fn commit_file(&self, generation: u64) -> CommitFile {
        let segments = self
            .parts
            .iter()
            .map(|part| CommittedSegment {
                name: part.segment.name.clone(),
                tombstones: if part.changed { Some(generation) } else { part.tombstones },
            })
            .collect();
        CommitFile { segments }
    }

    /// Reads the segments that commit `generation` names, checking every file against its
    /// checksum; generation 0 is the empty index of a collection never written to.
    pub(crate) fn load(
        vectors_dir: &Path,
        generation: u64,
        dimension: usize,
        settings: HnswSettings,
    ) -> Result<VectorIndex, IndexError> {
        let mut index = VectorIndex::empty(dimension, settings);
        for committed in read_commit(vectors_dir, generation)?.segments {
            let dir = vectors_dir.join(&committed.name);
            let segment = Segment::load(&dir, dimension)?;
            let mut part = Part::new(segment, false);
            if let Some(tombstones) = committed.tombstones {
                let path = dir.join(tombstones_file(tombstones));
                let dead_slots: Vec<u32> =
                    serde_json::from_slice(&read_all(&path)?).map_err(|e| {
                        IndexError::CorruptVectors { path: path.clone(), message: e.to_string() }
                    })?;
                let mut dead = vec![false; part.segment.slots()];
                for slot in dead_slots {
                    *dead.get_mut(slot as usize).ok_or_else(|| IndexError::CorruptVectors {
                        path: path.clone(),
                        message: format!("tombstone {slot} is no slot"),
                    })? = true;
                }
                part = Part::with_dead(part.segment, dead, false);
                part.tombstones = Some(tombstones);
                part.changed = false;
            }
            index.parts.push(part);
        }
        Ok(index)
    }

    /// The paths, relative to the collection, of every file commit `generation` needs: what
    /// a snapshot copies.
    pub(crate) fn committed_files(
        vectors_dir: &Path,
        generation: u64,
    ) -> Result<HashSet<PathBuf>, IndexError> {
        let mut files = HashSet::new();
        if generation == 0 || !vectors_dir.is_dir() {
            return Ok(files);
        }
        let relative = Path::new(VECTORS_DIR);
        let commit = read_commit(vectors_dir, generation)?;
        if vectors_dir.join(commit_file_name(generation)).is_file() {
            files.insert(relative.join(commit_file_name(generation)));
        }
        for segment in commit.segments {
            let dir = relative.join(&segment.name);
            for entry in std::fs::read_dir(vectors_dir.join(&segment.name))
                .map_err(io_error(&vectors_dir.join(&segment.name)))?
                .filter_map(Result::ok)
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let current = segment.tombstones.map(tombstones_file);
                if !name.starts_with("tombstones-") || Some(&name) == current.as_ref() {
                    files.insert(dir.join(name));
                }
            }
            files.insert(dir);
        }
        Ok(files)
    }

    /// Removes what commit `generation` does not name: other commit files, segments of
    /// interrupted or superseded writes and merges, and the older tombstone files of the
    /// segments whose tombstones that commit wrote. Merges still
    /// being built (see [`merging_folder`]) are left alone.
    pub(crate) fn remove_uncommitted(
        &self,
        vectors_dir: &Path,
        generation: u64,
    ) -> Result<(), IndexError> {
        let entries = match std::fs::read_dir(vectors_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(IndexError::Io { path: vectors_dir.to_path_buf(), source }),
        };
        let current: HashMap<&str, Option<u64>> =
            self.parts.iter().map(|part| (part.segment.name.as_str(), part.tombstones)).collect();
        let commit = commit_file_name(generation);
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.rsplit_once(".merging-").is_some_and(|(_, owner)| merge_is_running(owner)) {
                continue;
            }
            match current.get(name.as_str()) {
                // Only a segment whose tombstones this commit wrote has an older file to drop.
                Some(tombstones) if *tombstones == Some(generation) => {
                    let keep = tombstones.map(tombstones_file);
                    for file in std::fs::read_dir(&path).map_err(io_error(&path))?.flatten() {
                        let file_name = file.file_name().to_string_lossy().into_owned();
                        if file_name.starts_with("tombstones-") && Some(&file_name) != keep.as_ref()
                        {
                            std::fs::remove_file(file.path()).map_err(io_error(&file.path()))?;
                        }
                    }
                }
                Some(_) => {}
                None if name == commit => {}
                None if path.is_dir() => remove_dir(&path)?,
                None => std::fs::remove_file(&path).map_err(io_error(&path))?,
            }
        }
        Ok(())
    }
}

impl Part {
    /// This part's slots that are live (`live`) or dead, ascending.
    fn live_or_dead(&self, live: bool) -> impl Iterator<Item = u32> + '_ {
        (0..self.segment.slots() as u32).filter(move |&slot| self.is_live(slot) == live)
    }

    /// Slots that are live, for a merge to carry over.
    pub(crate) fn live_slot_list(&self) -> Vec<u32> {
        self.live_or_dead(true).collect()
    }

    pub(crate) fn dead_slot_list(&self) -> Vec<u32> {
        self.live_or_dead(false).collect()
    }

    /// Marks this part as holding slots that died after it was written, for the next save.
    pub(crate) fn mark_changed(&mut self) {
        self.changed = true;
    }
}

/// The commit file of `generation`. A vector generation of the layout before segments (a
/// folder named by the generation, holding everything) reads as a commit of that one segment.
fn read_commit(vectors_dir: &Path, generation: u64) -> Result<CommitFile, IndexError> {
    if generation == 0 {
        return Ok(CommitFile { segments: Vec::new() });
    }
    let path = vectors_dir.join(commit_file_name(generation));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| IndexError::CorruptVectors { path, message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let legacy = format!("{generation:010}");
            if vectors_dir.join(&legacy).is_dir() {
                Ok(CommitFile {
                    segments: vec![CommittedSegment { name: legacy, tombstones: None }],
                })
            } else {
                Err(IndexError::Io { path, source: e })
            }
        }
        Err(source) => Err(IndexError::Io { path, source }),
    }
}

fn commit_file_name(generation: u64) -> String {
    format!("commit-{generation:010}.json")
}

fn tombstones_file(generation: u64) -> String {
    format!("tombstones-{generation:010}.json")
}

/// The working folder name of a merge into segment `name` by this process: `.merging-`, the
/// process's id and a tag drawn once per process (the time of its first merge), so that a
/// process that reuses a dead one's id (as the first process of every container does) knows
/// that folder is not its own.
pub(crate) fn merging_folder(name: &str) -> String {
    format!("{name}.merging-{}", process_tag())
}

fn process_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{started:x}", std::process::id())
    })
}

/// Whether the merge that owns a working folder tagged `owner` may still be running.
fn merge_is_running(owner: &str) -> bool {
    if owner == process_tag() {
        return true;
    }
    match owner.split_once('-').and_then(|(pid, _)| pid.parse::<u32>().ok()) {
        Some(pid) => pid != std::process::id() && crate::files::process_is_running(pid),
        None => false,
    }
}

/// A name no other segment of this process has had, and (by the time in it) none of an earlier
/// process.
pub(crate) fn new_segment_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("seg-{nanos:016x}-{:04}", NEXT.fetch_add(1, Ordering::Relaxed))
}
