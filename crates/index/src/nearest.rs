//! Searching the segments of a [`VectorIndex`]: each segment is asked for its best documents
//! (through its graph, or by comparing the query with each vector of a segment without one, or
//! of the few a filter lets through), and the answers are merged.
//!
//! Every score is an exact cosine with the document's stored vector (a graph walk only chooses
//! the candidates), and a document lives in one segment, so the merged ranking is exact over
//! what the segments found.

use std::collections::HashSet;

use crate::distance::prefetch;
use crate::vectors::{Part, VectorIndex};

/// A filtered search that lets at most this many vectors of a segment through compares the
/// query with each of them: exact, and cheaper than steering the graph around the many
/// documents it must skip.
const EXACT_FILTERED_SLOTS: usize = 10_000;

/// Similarities computed at once when many queries are compared with a segment without a
/// graph (64 MiB of them): a block of queries against every slot.
const SIMILARITY_BLOCK: usize = 16 << 20;

/// A nearest document: its id and cosine similarity to the query.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub id: String,
    pub similarity: f32,
}

/// One search, as every segment is asked it: at most `limit` documents nearest to `vector`,
/// with `ef` candidates through a graph, among `allowed` documents if given (compared one by
/// one when they have at most `exact_filtered_slots` vectors in the segment).
#[derive(Clone, Copy)]
struct Probe<'a> {
    vector: &'a [f32],
    limit: usize,
    ef: usize,
    allowed: Option<&'a HashSet<String>>,
    exact_filtered_slots: usize,
}

impl Part {
    /// The documents nearest to the probe's vector by their best live vector among this
    /// segment's, best first.
    fn nearest(&self, probe: &Probe) -> Vec<Neighbour> {
        let Probe { vector: query, limit, ef, allowed, exact_filtered_slots } = *probe;
        let segment = &self.segment;
        let allowed_slots: Option<Vec<u32>> = allowed.map(|allowed| {
            allowed.iter().filter_map(|id| self.live_slots_of(id)).flatten().copied().collect()
        });
        let Some(graph) = &segment.graph else {
            return match &allowed_slots {
                Some(slots) => self.exact_among(query, slots.iter().copied(), limit),
                None => self.exact_among(query, self.live(), limit),
            };
        };
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
            self.is_live(slot)
                && allowed.is_none_or(|allowed| allowed.contains(&segment.owners[slot as usize]))
        };
        // With windows a document has several slots: ask for enough slots to find `limit`
        // documents, and more if the best slots crowd into few documents.
        let per_document = self.live_slots().div_ceil(self.live_documents.max(1));
        let mut wanted = (limit * per_document).min(live);
        loop {
            // The walk's distances are approximate: what it found is scored with the full vectors.
            let found = graph.search(ef.max(wanted), query, accept);
            for &slot in &found {
                prefetch(segment.vector(slot));
            }
            let neighbours = self.exact_among(query, found.into_iter(), limit);
            if neighbours.len() >= limit || wanted == live {
                return neighbours;
            }
            wanted = (wanted * 2).min(live);
        }
    }

    fn live(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.segment.slots() as u32).filter(|&slot| self.is_live(slot))
    }

    /// The documents nearest to `query` by their best vector among `slots`, compared one by one.
    fn exact_among(
        &self,
        query: &[f32],
        slots: impl Iterator<Item = u32>,
        limit: usize,
    ) -> Vec<Neighbour> {
        self.best_scored(
            slots.map(|slot| (slot, self.segment.similarity(query, slot))).collect(),
            limit,
        )
    }

    /// The nearest documents to each query by their best live vector, every vector compared,
    /// as [`Self::exact_among`] finds them: one matrix product per block of queries, which
    /// the many queries of a document expansion need (each of a write's documents asked
    /// against the write's own vectors).
    fn exact_each(
        &self,
        queries: &[Vec<f32>],
        limit: usize,
        found: &mut [Vec<Neighbour>],
    ) -> Result<(), candle_core::Error> {
        let slots = self.segment.slots();
        if slots == 0 || limit == 0 || queries.is_empty() {
            return Ok(());
        }
        let dimension = self.segment.dimension;
        let device = candle_core::Device::Cpu;
        let vectors =
            candle_core::Tensor::from_slice(&self.segment.vectors, (slots, dimension), &device)?;
        let block = (SIMILARITY_BLOCK / slots).max(1);
        for (queries, found) in queries.chunks(block).zip(found.chunks_mut(block)) {
            let queries = candle_core::Tensor::from_slice(
                &queries.concat(),
                (queries.len(), dimension),
                &device,
            )?;
            let similarities = queries.matmul(&vectors.t()?)?.flatten_all()?.to_vec1::<f32>()?;
            for (row, found) in similarities.chunks(slots).zip(found.iter_mut()) {
                let live = row.iter().enumerate().filter(|&(slot, _)| self.is_live(slot as u32));
                let scored = live.map(|(slot, &similarity)| (slot as u32, similarity)).collect();
                found.extend(self.best_scored(scored, limit));
            }
        }
        Ok(())
    }

    /// The best `limit` documents of scored slots, each by its best slot.
    fn best_scored(&self, mut scored: Vec<(u32, f32)>, limit: usize) -> Vec<Neighbour> {
        let best_first = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        // A segment without a graph may hold many vectors: sort only the best few, more if
        // they crowd into fewer than `limit` documents (windows).
        let mut sorted = (4 * limit).max(16);
        loop {
            if sorted < scored.len() {
                scored.select_nth_unstable_by(sorted, best_first);
            }
            let end = sorted.min(scored.len());
            let head = &mut scored[..end];
            head.sort_unstable_by(best_first);
            let found = best_per_document(head.iter().copied(), &self.segment.owners, limit);
            if found.len() >= limit || sorted >= scored.len() {
                return found;
            }
            sorted *= 4;
        }
    }
}

impl VectorIndex {
    /// [`Self::nearest`] for many queries, no filter: for each, at most `limit` documents, best
    /// first. A segment without a graph (a write's new one) is searched by matrix products.
    pub(crate) fn nearest_each(
        &self,
        queries: &[Vec<f32>],
        limit: usize,
        ef: usize,
    ) -> Result<Vec<Vec<Neighbour>>, candle_core::Error> {
        let mut found: Vec<Vec<Neighbour>> = vec![Vec::new(); queries.len()];
        for part in &self.parts {
            if part.segment.graph.is_none() {
                part.exact_each(queries, limit, &mut found)?;
                continue;
            }
            for (query, found) in queries.iter().zip(&mut found) {
                let probe = Probe {
                    vector: query,
                    limit,
                    ef,
                    allowed: None,
                    exact_filtered_slots: EXACT_FILTERED_SLOTS,
                };
                found.extend(part.nearest(&probe));
            }
        }
        Ok(found.into_iter().map(|found| best_of(std::iter::once(found), limit)).collect())
    }

    /// The documents nearest to `query` by their best vector, best first: at most `limit`,
    /// searched with `ef` candidates per segment (raised to the number of vectors asked for).
    /// With `allowed`, only those documents are considered.
    pub fn nearest(
        &self,
        query: &[f32],
        limit: usize,
        ef: usize,
        allowed: Option<&HashSet<String>>,
    ) -> Vec<Neighbour> {
        self.nearest_with(query, limit, ef, allowed, EXACT_FILTERED_SLOTS)
    }

    pub(crate) fn nearest_with(
        &self,
        query: &[f32],
        limit: usize,
        ef: usize,
        allowed: Option<&HashSet<String>>,
        exact_filtered_slots: usize,
    ) -> Vec<Neighbour> {
        let probe = Probe { vector: query, limit, ef, allowed, exact_filtered_slots };
        best_of(self.parts.iter().map(|part| part.nearest(&probe)), limit)
    }

    /// The cosine similarity of `query` to the best vector of each document of `ids`, None for
    /// a document without vectors: what [`Self::nearest`] would score it, for documents it did
    /// not return.
    pub fn similarities(&self, query: &[f32], ids: &[&str]) -> Vec<Option<f32>> {
        ids.iter()
            .map(|id| {
                let (part, slots) = self.locate(id)?;
                slots.iter().map(|&slot| part.segment.similarity(query, slot)).reduce(f32::max)
            })
            .collect()
    }

    /// The mean of the vectors of the documents of `ids` that have any, each document
    /// weighing the same (its windows averaged first); None if none has vectors.
    pub fn mean_vector(&self, ids: &[&str]) -> Option<Vec<f32>> {
        let mut sum = vec![0.0f32; self.dimension()];
        let mut documents = 0usize;
        for (part, slots) in ids.iter().filter_map(|id| self.locate(id)) {
            let share = 1.0 / slots.len() as f32;
            for &slot in slots {
                for (total, x) in sum.iter_mut().zip(part.segment.vector(slot)) {
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
        best_of(self.parts.iter().map(|part| part.exact_among(query, part.live(), limit)), limit)
    }
}

/// The best `limit` documents of several segments' answers, best first. A document is in one
/// segment only, so no id repeats; equal scores keep the segments' order.
fn best_of(found: impl Iterator<Item = Vec<Neighbour>>, limit: usize) -> Vec<Neighbour> {
    let mut all: Vec<Neighbour> = found.flatten().collect();
    all.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    all.truncate(limit);
    all
}

/// Keeps the first (best) score of each document, in the order given, until there are
/// `limit`: a search rescores `ef` slots (up to hundreds) for ten documents, and hashing and
/// copying the id of every one of them showed in profiles (Gutenberg, 30,000 vectors: 0.70 of
/// hnswlib's queries/s before stopping at `limit`, 0.94 after, in two runs).
fn best_per_document(
    scored_slots: impl Iterator<Item = (u32, f32)>,
    owners: &[String],
    limit: usize,
) -> Vec<Neighbour> {
    let mut seen = HashSet::new();
    scored_slots
        .filter(|(slot, _)| seen.insert(owners[*slot as usize].as_str()))
        .take(limit)
        .map(|(slot, similarity)| Neighbour { id: owners[slot as usize].clone(), similarity })
        .collect()
}

// The vector index's tests, saving and loading included, check what searches find, so they
// live beside the search: vectors.rs, below it, does not reach up here.
#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::distance::dot;
    use crate::manifest::HnswSettings;
    use crate::vectors::*;

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

    /// One segment with a graph, as merges leave a collection.
    fn index_of(vectors: &[Vec<f32>]) -> VectorIndex {
        let mut index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.insert(
            vectors.iter().enumerate().map(|(i, v)| (format!("d{i}"), vec![v.clone()])).collect(),
        );
        index.build_graph().unwrap();
        assert_eq!(index.segment_count(), 1);
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

        assert_eq!(index.segment_count(), 2);
        let mut compacted = index.clone();
        compacted.build_graph().unwrap();
        assert_eq!(compacted.segment_count(), 1);
        assert_eq!((compacted.live_slots(), compacted.dead_count()), (299, 0));
        for query in unit_vectors(20, 5) {
            assert_eq!(compacted.exact_nearest(&query, 10), index.exact_nearest(&query, 10));
        }
    }

    /// "long" with two windows (the first two vectors), "short" with one (the third).
    fn long_and_short(vectors: &[Vec<f32>]) -> VectorIndex {
        let mut index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.insert(vec![
            ("long".to_string(), vec![vectors[0].clone(), vectors[1].clone()]),
            ("short".to_string(), vec![vectors[2].clone()]),
        ]);
        index
    }

    #[test]
    fn a_document_with_windows_scores_by_its_best_window() {
        let vectors = unit_vectors(4, 6);
        let mut index = long_and_short(&vectors);
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
        let mut index = long_and_short(&vectors);
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
    fn a_saved_commit_loads_back_with_its_tombstones_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = unit_vectors(200, 7);
        let mut index = index_of(&vectors[..150]);
        index.insert((150..200).map(|i| (format!("d{i}"), vec![vectors[i].clone()])).collect());
        index.remove("d3");
        index.remove("d160");
        index.save(dir.path(), 1).unwrap();
        let loaded = VectorIndex::load(dir.path(), 1, DIMENSION, HnswSettings::default()).unwrap();
        assert_eq!(loaded.segment_count(), 2);
        assert_eq!(
            (loaded.live_slots(), loaded.dead_count(), loaded.document_count()),
            (198, 2, 198)
        );
        for query in unit_vectors(10, 8) {
            assert_eq!(loaded.exact_nearest(&query, 5), index.exact_nearest(&query, 5));
            assert_eq!(
                ids(&loaded.nearest(&query, 5, 100, None)),
                ids(&index.nearest(&query, 5, 100, None))
            );
        }
        // A second commit writes only what changed: a new segment and one tombstone file.
        let mut second = loaded.clone();
        second.insert(vec![("new".to_string(), vec![vectors[3].clone()])]);
        second.remove("d4");
        second.save(dir.path(), 2).unwrap();
        second.remove_uncommitted(dir.path(), 2).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with("seg-"))
            .collect();
        assert_eq!(names, ["commit-0000000002.json"]);
        let reloaded =
            VectorIndex::load(dir.path(), 2, DIMENSION, HnswSettings::default()).unwrap();
        assert_eq!(reloaded.segment_count(), 3);
        assert_eq!(reloaded.nearest(&vectors[3], 1, 50, None)[0].id, "new");
        assert_eq!(reloaded.similarities(&vectors[4], &["d4", "d5"])[0], None);

        let wrong_dimension = VectorIndex::load(dir.path(), 2, 8, HnswSettings::default());
        assert!(wrong_dimension.err().unwrap().to_string().contains("24 dimensions"));
        let graph_segment = dir.path().join(&index.parts[0].segment.name);
        for name in ["vectors.f32", "graph.links", "hnsw.hnsw.graph", "hnsw.hnsw.data"] {
            let path = graph_segment.join(name);
            let original = std::fs::read(&path).unwrap();
            let mut damaged = original.clone();
            let middle = damaged.len() / 2;
            damaged[middle] ^= 0x55;
            std::fs::write(&path, &damaged).unwrap();
            let error = VectorIndex::load(dir.path(), 2, DIMENSION, HnswSettings::default())
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains(&format!("{name} does not match its checksum")), "{error}");
            std::fs::write(&path, &original).unwrap();
        }
        std::fs::write(graph_segment.join("slots.json"), "{").unwrap();
        assert!(VectorIndex::load(dir.path(), 2, DIMENSION, HnswSettings::default()).is_err());
    }

    #[test]
    fn segments_are_searched_together_and_a_document_lives_in_one() {
        let vectors = unit_vectors(600, 21);
        let mut index = index_of(&vectors[..400]);
        // Three more writes: new documents, and new vectors for old ones.
        index.insert((400..500).map(|i| (format!("d{i}"), vec![vectors[i].clone()])).collect());
        index.insert((500..600).map(|i| (format!("d{i}"), vec![vectors[i].clone()])).collect());
        let moved = unit_vectors(50, 22);
        index.insert((0..50).map(|i| (format!("d{i}"), vec![moved[i].clone()])).collect());
        assert_eq!((index.segment_count(), index.document_count()), (4, 600));
        assert_eq!(index.dead_count(), 50);
        // Ranked as one index of the same vectors ranks.
        let mut current = vectors.clone();
        current[..50].clone_from_slice(&moved);
        let whole = index_of(&current);
        for query in unit_vectors(20, 23) {
            assert_eq!(
                ids(&index.exact_nearest(&query, 10)),
                ids(&whole.exact_nearest(&query, 10))
            );
            let found = index.nearest(&query, 10, 100, None);
            let exact = whole.exact_nearest(&query, 10);
            let shared = ids(&found).iter().filter(|id| ids(&exact).contains(id)).count();
            assert!(shared >= 9, "{shared} of 10");
        }
        assert_eq!(index.similarities(&moved[7], &["d7"]), [Some(dot(&moved[7], &moved[7]))]);
        // A filter reaches into every segment.
        let allowed: HashSet<String> = ["d7", "d450", "d550", "d300"].map(String::from).into();
        let found = index.nearest(&moved[7], 10, 50, Some(&allowed));
        assert_eq!(found.len(), 4);
        assert_eq!(found[0].id, "d7");
    }

    #[test]
    fn an_index_saved_in_the_layout_before_segments_loads_as_one_segment() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = unit_vectors(100, 31);
        // The layout before: one folder named by the generation, with a graph of every slot
        // and the tombstones in slots.json.
        let owners: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
        let segment = crate::segment::Segment::from_slots(
            "0000000007".to_string(),
            DIMENSION,
            owners,
            vectors.concat(),
            vec![5],
        );
        let graph = crate::segment::new_graph(&HnswSettings::default(), 100);
        let points: Vec<(&[f32], usize)> =
            vectors.iter().enumerate().map(|(i, v)| (v.as_slice(), i)).collect();
        graph.parallel_insert_slice(&points);
        segment.write(&dir.path().join("0000000007"), Some(&graph)).unwrap();
        let loaded = VectorIndex::load(dir.path(), 7, DIMENSION, HnswSettings::default()).unwrap();
        assert_eq!((loaded.segment_count(), loaded.document_count()), (1, 99));
        assert!(loaded.parts[0].segment.graph.is_some());
        assert_eq!(loaded.nearest(&vectors[9], 1, 50, None)[0].id, "d9");
        assert!(loaded.similarities(&vectors[5], &["d5"])[0].is_none());
    }

    #[test]
    fn an_empty_index_saves_loads_and_finds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut index = VectorIndex::empty(DIMENSION, HnswSettings::default());
        index.save(dir.path(), 3).unwrap();
        let loaded = VectorIndex::load(dir.path(), 3, DIMENSION, HnswSettings::default()).unwrap();
        assert!(loaded.nearest(&unit_vectors(1, 9)[0], 10, 10, None).is_empty());
        let empty = VectorIndex::load(dir.path(), 0, DIMENSION, HnswSettings::default()).unwrap();
        assert_eq!(empty.segment_count(), 0);
        std::fs::create_dir_all(dir.path().join("seg-debris")).unwrap();
        loaded.remove_uncommitted(dir.path(), 3).unwrap();
        assert!(dir.path().join("commit-0000000003.json").is_file());
        assert!(!dir.path().join("seg-debris").exists());
    }
}
