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
        let mut scored: Vec<(u32, f32)> =
            slots.map(|slot| (slot, self.segment.similarity(query, slot))).collect();
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
