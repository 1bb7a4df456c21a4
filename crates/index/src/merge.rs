//! Merging segments: which to merge (the policy), and building the merged one apart from the
//! index that searches and writes use, so that neither waits for it.
//!
//! The policy, in order:
//! - a segment with a graph whose tombstones pass a quarter of its vectors is rewritten without
//!   them;
//! - segments sorted largest first, segment *i* and every smaller one are merged when *i* holds
//!   fewer live vectors than [`MERGE_RATIO`] times all the smaller ones together, once those
//!   add up to [`MIN_MERGE_SLOTS`] or number [`MAX_SMALL_SEGMENTS`]; a segment without a graph
//!   (what writes make) is merged once it and the smaller ones reach that size.
//!
//! So segment sizes grow geometrically and there are about log₅(N / 2,048) segments with
//! graphs, plus a few small ones; the largest input's graph is the start of the merged one
//! (its vectors are not inserted again), so a vector is inserted into a graph about once per
//! size step. When writes pause, [`plan`] with `force` merges everything into one segment,
//! which searches fastest (Elasticsearch's force merge, made automatic by the server).
//!
//! A merge is planned and built on a clone of the index (no lock held), and applied under the
//! write lock: deletes that reached its inputs meanwhile become tombstones of the merged
//! segment, and a merge whose inputs are gone (another merge or a compaction won) is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::IndexError;
use crate::files::{remove_dir, rename_synced};
use crate::segment::{new_graph, Graph, Segment};
use crate::vectors::{merging_folder, new_segment_name, Part, VectorIndex};

/// A segment is left alone while it holds at least this many times the live vectors of all
/// smaller segments together.
pub const MERGE_RATIO: usize = 4;
/// Small segments wait to be merged until they hold this many live vectors together...
pub const MIN_MERGE_SLOTS: usize = 2_048;
/// ...or until there are this many of them.
pub const MAX_SMALL_SEGMENTS: usize = 16;
/// A segment with more than this share of tombstones is rewritten without them.
pub const REWRITE_DEAD_FRACTION: f64 = 0.25;

/// Which segments to merge.
#[derive(Debug, Clone, PartialEq)]
pub struct MergePlan {
    /// Segment names; the first is the base when `reuse_base`.
    inputs: Vec<String>,
    /// Start from the first input's graph instead of building a new one.
    reuse_base: bool,
}

impl MergePlan {
    pub fn segments(&self) -> usize {
        self.inputs.len()
    }
}

/// For each slot of a merged segment: the input (by index in its plan's inputs) and slot it
/// came from.
type Sources = Vec<(u32, u32)>;

/// A merged segment, built and on disk under a working name, waiting to replace its inputs.
pub struct BuiltMerge {
    plan: MergePlan,
    segment: Segment,
    sources: Sources,
    /// Where it was written; None for one built in memory only.
    working_dir: Option<PathBuf>,
}

impl BuiltMerge {
    pub fn vectors(&self) -> usize {
        self.segment.slots()
    }
}

impl Drop for BuiltMerge {
    fn drop(&mut self) {
        // Applied merges were renamed away; this removes only one that was not applied.
        if let Some(dir) = self.working_dir.as_ref().filter(|dir| dir.exists()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The next merge the policy asks for, if any; with `force`, everything into one segment
/// (with `drop_tombstones`, built anew without any, as a compaction).
pub fn plan(index: &VectorIndex, force: bool, drop_tombstones: bool) -> Option<MergePlan> {
    let mut parts: Vec<&Part> = index.parts.iter().collect();
    parts.sort_by(|a, b| {
        b.live_slots().cmp(&a.live_slots()).then(a.segment.name.cmp(&b.segment.name))
    });
    let reusable =
        |part: &Part| part.segment.graph.is_some() && part.dead_fraction() <= REWRITE_DEAD_FRACTION;
    let names = |parts: &[&Part]| parts.iter().map(|p| p.segment.name.clone()).collect();
    if force {
        let settled = parts.len() == 1
            && parts[0].segment.graph.is_some()
            && (!drop_tombstones || parts[0].dead_slots == 0);
        if parts.is_empty() || settled {
            return None;
        }
        let reuse_base = !drop_tombstones && reusable(parts[0]);
        return Some(MergePlan { inputs: names(&parts), reuse_base });
    }
    if let Some(part) = parts
        .iter()
        .find(|part| part.segment.graph.is_some() && part.dead_fraction() > REWRITE_DEAD_FRACTION)
    {
        return Some(MergePlan { inputs: vec![part.segment.name.clone()], reuse_base: false });
    }
    for i in 0..parts.len() {
        let rest: usize = parts[i + 1..].iter().map(|part| part.live_slots()).sum();
        let smaller = parts.len() - 1 - i;
        let worth = rest >= MIN_MERGE_SLOTS || smaller >= MAX_SMALL_SEGMENTS;
        let absorbs = rest > 0 && parts[i].live_slots() < MERGE_RATIO * rest && worth;
        let needs_graph = parts[i].segment.graph.is_none()
            && (parts[i].live_slots() + rest >= MIN_MERGE_SLOTS
                || smaller + 1 >= MAX_SMALL_SEGMENTS);
        if absorbs || needs_graph {
            return Some(MergePlan { inputs: names(&parts[i..]), reuse_base: reusable(parts[i]) });
        }
    }
    None
}

/// Builds the merged segment of `plan` from `index` (a clone: nothing waits for this) and
/// writes it under a working name in `vectors_dir`.
pub fn build(
    index: &VectorIndex,
    plan: MergePlan,
    vectors_dir: &Path,
) -> Result<BuiltMerge, IndexError> {
    let (merged, sources, graph) = assemble(index, &plan, Some(vectors_dir))?;
    let working_dir = vectors_dir.join(merging_folder(&merged.name));
    if working_dir.exists() {
        remove_dir(&working_dir)?;
    }
    let written = merged.write(&working_dir, Some(&graph));
    let built = BuiltMerge { plan, segment: merged, sources, working_dir: Some(working_dir) };
    written.map(|()| built)
}

impl VectorIndex {
    /// Merges every segment into one with a fresh graph, in memory: what a collection's
    /// merges do on disk, for benchmarks and tests that search an index of their own.
    pub fn build_graph(&mut self) -> Result<(), IndexError> {
        merge_in_memory(self)
    }
}

/// Merges every segment of `index` into one with a fresh graph, in memory only: for
/// benchmarks and tests that drive a [`VectorIndex`] without a collection.
pub(crate) fn merge_in_memory(index: &mut VectorIndex) -> Result<(), IndexError> {
    let Some(plan) = plan(index, true, true) else { return Ok(()) };
    let (mut segment, sources, graph) = assemble(index, &plan, None)?;
    segment.keep_unwritten_graph(graph);
    let built = BuiltMerge { plan, segment, sources, working_dir: None };
    apply(index, built, Path::new("")).map(drop)
}

/// The merged segment of `plan`, linked in its graph, with where each slot came from. The base
/// graph is read from `vectors_dir`; without one the graph is built anew.
fn assemble(
    index: &VectorIndex,
    plan: &MergePlan,
    vectors_dir: Option<&Path>,
) -> Result<(Segment, Sources, Graph), IndexError> {
    let vectors_dir = vectors_dir.unwrap_or(Path::new(""));
    let inputs: Vec<&Part> = plan
        .inputs
        .iter()
        .map(|name| {
            index.parts.iter().find(|part| &part.segment.name == name).ok_or_else(|| {
                IndexError::CorruptVectors {
                    path: vectors_dir.join(name),
                    message: "a merge input is not in the index".to_string(),
                }
            })
        })
        .collect::<Result<_, _>>()?;
    let dimension = index.dimension();
    let mut owners = Vec::new();
    let mut vectors = Vec::new();
    let mut born_dead = Vec::new();
    let mut sources = Vec::new();
    let reuse_base =
        plan.reuse_base && !vectors_dir.as_os_str().is_empty() && inputs[0].segment.graph.is_some();
    for (input, part) in inputs.iter().enumerate() {
        let segment = &part.segment;
        let carried: Vec<u32> = if reuse_base && input == 0 {
            // The base graph keeps every point, the dead ones as tombstones.
            born_dead = part.dead_slot_list();
            (0..segment.slots() as u32).collect()
        } else {
            part.live_slot_list()
        };
        for slot in carried {
            owners.push(segment.owners[slot as usize].clone());
            vectors.extend_from_slice(segment.vector(slot));
            sources.push((input as u32, slot));
        }
    }
    let mut merged = Segment::from_slots(new_segment_name(), dimension, owners, vectors, born_dead);
    // Read after the merged segment's own small allocations are made: the graph is millions of
    // small blocks, freed when the merge is done, and what outlives it should not sit between
    // them and keep their pages resident.
    let base = &inputs[0].segment;
    let graph = if reuse_base { base.load_graph(&vectors_dir.join(&base.name))? } else { None };
    let first_new = if graph.is_some() { base.slots() } else { 0 };
    let graph = graph.unwrap_or_else(|| new_graph(index.settings(), merged.slots()));
    merged.insert_into(&graph, first_new);
    merged.index_with(&graph);
    Ok((merged, sources, graph))
}

/// Puts a built merge in place of its inputs in `index`, keeping deletes that reached the
/// inputs since it was planned. Returns false, and drops it, if an input is gone.
pub(crate) fn apply(
    index: &mut VectorIndex,
    mut built: BuiltMerge,
    vectors_dir: &Path,
) -> Result<bool, IndexError> {
    let positions: Option<Vec<usize>> = built
        .plan
        .inputs
        .iter()
        .map(|name| index.parts.iter().position(|part| &part.segment.name == name))
        .collect();
    let Some(positions) = positions else { return Ok(false) };
    let dead: Vec<bool> = built
        .sources
        .iter()
        .map(|&(input, slot)| !index.parts[positions[input as usize]].is_live(slot))
        .collect();
    let died_since = dead.iter().filter(|&&d| d).count() > built.segment.born_dead.len();
    // One built in memory only is written with the next commit, as a write's segment is.
    let unsaved = built.working_dir.is_none();
    if let Some(working_dir) = built.working_dir.take() {
        rename_synced(&working_dir, &vectors_dir.join(&built.segment.name))?;
    }
    let segment = std::mem::replace(
        &mut built.segment,
        Segment::from_slots(String::new(), 0, Vec::new(), Vec::new(), Vec::new()),
    );
    let mut part = Part::with_dead(Arc::new(segment), dead, unsaved);
    if died_since {
        part.mark_changed();
    }
    let first = *positions.iter().min().expect("a merge has inputs");
    let mut doomed = positions;
    doomed.sort_unstable();
    for position in doomed.into_iter().rev() {
        index.parts.remove(position);
    }
    index.parts.insert(first.min(index.parts.len()), part);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::manifest::HnswSettings;

    const DIMENSION: usize = 16;
    /// Graphs of a few thousand points quickly (these tests are about which segments merge).
    const CHEAP: HnswSettings = HnswSettings { m: 8, ef_construction: 24, ef_search: 64 };

    fn documents(range: std::ops::Range<usize>, seed: u64) -> Vec<(String, Vec<Vec<f32>>)> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        range
            .map(|i| {
                let v: Vec<f32> = (0..DIMENSION).map(|_| rng.random_range(-1.0..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                (format!("d{i}"), vec![v.into_iter().map(|x| x / norm).collect()])
            })
            .collect()
    }

    fn sizes(index: &VectorIndex) -> Vec<(usize, bool)> {
        index.parts.iter().map(|p| (p.live_slots(), p.segment.graph.is_some())).collect()
    }

    #[test]
    fn the_policy_leaves_few_segments_and_waits_for_enough_small_ones() {
        let mut index = VectorIndex::empty(DIMENSION, CHEAP);
        // Small writes wait until there are enough of them.
        for write in 0..MAX_SMALL_SEGMENTS - 1 {
            index.insert(documents(write * 10..write * 10 + 10, write as u64));
            assert_eq!(plan(&index, false, false), None);
        }
        index.insert(documents(1000..1010, 99));
        let plan_all = plan(&index, false, false).unwrap();
        assert_eq!(plan_all.segments(), MAX_SMALL_SEGMENTS);
        assert!(!plan_all.reuse_base, "no input has a graph");
        // A large write needs a graph at once.
        let mut large = VectorIndex::empty(DIMENSION, CHEAP);
        large.insert(documents(0..MIN_MERGE_SLOTS, 1));
        assert_eq!(plan(&large, false, false).unwrap().segments(), 1);
        large.build_graph().unwrap();
        assert_eq!(plan(&large, false, false), None);
        // ...and a big segment absorbs smaller ones once they are over a quarter of it.
        large.insert(documents(10_000..10_000 + 3 * MIN_MERGE_SLOTS, 2));
        large.build_graph().unwrap();
        large.insert(documents(20_000..20_000 + MIN_MERGE_SLOTS - 1, 3));
        assert_eq!(plan(&large, false, false), None);
        large.insert(documents(30_000..30_002, 4));
        let absorbed = plan(&large, false, false).unwrap();
        assert_eq!((absorbed.segments(), absorbed.reuse_base), (3, true));
        // A forced merge leaves one segment; one segment with a graph needs none.
        assert_eq!(plan(&large, true, false).unwrap().segments(), 3);
        large.build_graph().unwrap();
        assert_eq!(sizes(&large), [(5 * MIN_MERGE_SLOTS + 1, true)]);
        assert_eq!(plan(&large, true, false), None);
        // Tombstones past a quarter get a segment rewritten.
        for i in 0..(MIN_MERGE_SLOTS * 3 / 10) {
            large.remove(&format!("d{i}"));
        }
        for i in 10_000..(10_000 + MIN_MERGE_SLOTS) {
            large.remove(&format!("d{i}"));
        }
        let rewrite = plan(&large, false, false).unwrap();
        assert_eq!((rewrite.segments(), rewrite.reuse_base), (1, false));
    }

    #[test]
    fn a_merge_builds_on_its_base_graph_and_keeps_deletes_made_while_it_ran() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = VectorIndex::empty(DIMENSION, CHEAP);
        index.insert(documents(0..6000, 1));
        index.build_graph().unwrap();
        index.remove("d10");
        index.insert(documents(6000..7500, 2));
        index.insert(documents(7500..8100, 3));
        index.save(dir.path(), 1).unwrap();
        let plan = plan(&index, false, false).unwrap();
        assert_eq!((plan.segments(), plan.reuse_base), (3, true));

        let built = build(&index.clone(), plan, dir.path()).unwrap();
        // The base keeps its dead slot; the others bring only their live ones.
        assert_eq!(built.vectors(), 8100);
        // Meanwhile a write deletes a document from the base and one from another input, and
        // adds a segment of its own.
        index.remove("d20");
        index.remove("d7000");
        index.insert(documents(9000..9005, 4));
        let truth = index.clone();
        assert!(apply(&mut index, built, dir.path()).unwrap());
        assert_eq!(sizes(&index), [(8097, true), (5, false)]);
        assert_eq!(index.document_count(), truth.document_count());
        index.save(dir.path(), 2).unwrap();
        index.remove_uncommitted(dir.path(), 2).unwrap();
        let loaded = VectorIndex::load(dir.path(), 2, DIMENSION, CHEAP).unwrap();
        let mut missed_itself = 0;
        for (query_id, query) in documents(0..6000, 1).into_iter().step_by(97) {
            let query = &query[0];
            assert_eq!(loaded.exact_nearest(query, 10), truth.exact_nearest(query, 10));
            let found = loaded.nearest(query, 10, 100, None);
            if !["d10", "d20"].contains(&query_id.as_str()) {
                missed_itself += usize::from(found[0].id != query_id);
            }
            assert!(found.iter().all(|n| !["d10", "d20", "d7000"].contains(&n.id.as_str())));
        }
        // Approximate search through a graph built in parallel: a rare query may miss itself.
        assert!(missed_itself <= 1, "{missed_itself} queries missed themselves");
        // Only the merged segment, the new one and the commit remain on disk.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_large_write_linked_before_its_commit_is_saved_with_its_graph() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = VectorIndex::empty(DIMENSION, CHEAP);
        index.insert(documents(0..3000, 1));
        index.save(dir.path(), 1).unwrap();
        // Two writes: a small one, and one large enough to be searched through a graph.
        index.insert(documents(3000..3100, 2));
        index.insert(documents(5000..7500, 3));
        index.link_unsaved_segments(1000);
        // A saved segment is left as it is, even without a graph: it is a merge's to build.
        assert_eq!(sizes(&index), [(3000, false), (100, false), (2500, true)]);
        let truth = index.clone();
        let queries: Vec<_> = documents(5000..7500, 3).into_iter().step_by(25).collect();
        let mut agreed = 0;
        let mut asked = 0;
        let mut found_itself = 0;
        for (query_id, query) in &queries {
            let found = index.nearest_each(query, 10, 100).unwrap().remove(0);
            found_itself += usize::from(found[0].id == *query_id);
            let exact = truth.exact_nearest(&query[0], 10);
            agreed += found.iter().filter(|n| exact.iter().any(|e| e.id == n.id)).count();
            asked += exact.len();
        }
        // HNSW is approximate and a parallel build's order varies from run to run, so a rare
        // query may miss itself; the recall bar is the real check.
        assert!(found_itself + 1 >= queries.len(), "{found_itself} of {} found", queries.len());
        assert!(agreed as f64 >= 0.95 * asked as f64, "{agreed} of {asked} nearest found");

        index.save(dir.path(), 2).unwrap();
        let loaded = VectorIndex::load(dir.path(), 2, DIMENSION, CHEAP).unwrap();
        assert_eq!(sizes(&loaded), sizes(&truth));
        // Saved with its graph, not rebuilt: the same links give the same answers.
        for (_, query) in &queries {
            assert_eq!(
                loaded.nearest(&query[0], 10, 100, None),
                index.nearest(&query[0], 10, 100, None)
            );
        }
    }

    #[test]
    fn a_merge_whose_inputs_are_gone_is_dropped_with_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = VectorIndex::empty(DIMENSION, CHEAP);
        index.insert(documents(0..MIN_MERGE_SLOTS, 1));
        index.save(dir.path(), 1).unwrap();
        let built = build(&index, plan(&index, false, false).unwrap(), dir.path()).unwrap();
        let working = built.working_dir.clone().unwrap();
        assert!(working.is_dir());
        index.build_graph().unwrap();
        assert!(!apply(&mut index, built, dir.path()).unwrap());
        assert!(!working.exists());
    }
}
