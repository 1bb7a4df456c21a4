//! The HNSW graph's links in flat arrays, and the search that walks them.
//!
//! hnsw_rs builds the graph well and writes it to disk, but searches it slowly: every neighbour
//! list sits behind a lock, every point behind an `Arc`, and the set of visited points is a
//! hash map. A search reads a few thousand links and vectors, so that indirection is most of its
//! cost. After every change the links are copied here (four bytes each), with a visited list
//! reused between searches. The algorithm is the paper's (Malkov and Yashunin, 2018): greedy
//! descent through the upper layers, then a best-first search of `ef` candidates in the bottom
//! one.
//!
//! A search waits on memory more than it computes, so each point's bottom-layer links and its
//! vector, quantized to a byte per value ([`crate::quantized`]), share one block, as in
//! hnswlib: the links of a point being expanded were loaded with its vector when its distance
//! was computed. The walk's distances are approximate; the caller scores what it finds again
//! with the full vectors.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use hnsw_rs::prelude::Hnsw;

use crate::distance::{prefetch, with_avx2, UnitCosine};
use crate::quantized::{QuantizedQuery, Quantizer};

const CACHE_LINE: usize = 64;

/// Marks the end of a point's bottom-layer list when it has fewer links than the widest.
const NO_LINK: u32 = u32::MAX;

pub(crate) struct FlatGraph {
    /// One block of `block` bytes per point: its bottom-layer links, `width` little-endian
    /// `u32` slot numbers with `NO_LINK` after the last, then its quantized vector, `dimension`
    /// bytes, then padding to whole cache lines. The first block starts at `start`, the first
    /// cache-line boundary: a block that straddled one more line would cost one more load.
    blocks: Vec<u8>,
    start: usize,
    block: usize,
    width: usize,
    dimension: usize,
    /// Each point's quantization scale.
    scales: Vec<f32>,
    quantizer: Quantizer,
    /// Links above the bottom layer, for the few points that reach there: `[layer - 1]`.
    upper: HashMap<u32, Vec<Vec<u32>>>,
    /// Where searches start: a point of the top layer, and that layer.
    entry: Option<(u32, usize)>,
}

/// A point and its distance to the query, ordered by distance (then slot, for determinism).
#[derive(Clone, Copy, PartialEq)]
struct Candidate {
    distance: f32,
    slot: u32,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance).then(self.slot.cmp(&other.slot))
    }
}

/// What a search needs besides the graph, kept per thread so that a search allocates only its
/// answer.
#[derive(Default)]
struct Scratch {
    /// The search number each slot was last visited in; bumping `stamp` forgets every visit
    /// without clearing the list.
    marks: Vec<u32>,
    stamp: u32,
    /// Points to expand, nearest first.
    frontier: BinaryHeap<Reverse<Candidate>>,
    /// The accepted points nearest so far, farthest first, at most `ef`.
    found: BinaryHeap<Candidate>,
    /// The links of the point being expanded that were not visited yet.
    fresh: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl FlatGraph {
    /// The graph of no points.
    pub(crate) fn empty(dimension: usize) -> FlatGraph {
        FlatGraph {
            blocks: Vec::new(),
            start: 0,
            block: 64,
            width: 1,
            dimension,
            scales: Vec::new(),
            quantizer: Quantizer::fit(&[], dimension),
            upper: HashMap::new(),
            entry: None,
        }
    }

    /// Copies the links of `graph`, whose points' ids are their slot numbers, and quantizes
    /// the points' `vectors` (slot-major, `dimension` floats each).
    pub(crate) fn from_hnsw(
        graph: &Hnsw<'_, f32, UnitCosine>,
        vectors: &[f32],
        dimension: usize,
    ) -> FlatGraph {
        let points = vectors.len() / dimension.max(1);
        // hnsw_rs's point iterator panics on a graph of no points.
        if points == 0 || graph.get_nb_point() == 0 {
            return FlatGraph::empty(dimension);
        }
        let mut lists: Vec<Vec<Vec<u32>>> = vec![Vec::new(); points];
        let mut entry: Option<(u32, usize)> = None;
        for point in graph.get_point_indexation() {
            let slot = point.get_origin_id();
            let level = point.get_point_id().0 as usize;
            if slot >= points {
                continue;
            }
            lists[slot] = point
                .get_neighborhood_id()
                .into_iter()
                .map(|layer| layer.iter().map(|n| n.get_origin_id() as u32).collect())
                .collect();
            if entry.is_none_or(|(_, top)| level > top) {
                entry = Some((slot as u32, level));
            }
        }
        let width = lists.iter().filter_map(|l| l.first()).map(Vec::len).max().unwrap_or(0).max(1);
        let block = (4 * width + dimension).next_multiple_of(CACHE_LINE);
        let mut blocks = vec![0u8; points * block + CACHE_LINE - 1];
        let start = blocks.as_ptr().align_offset(CACHE_LINE);
        let mut scales = Vec::with_capacity(points);
        let mut upper = HashMap::new();
        let quantizer = Quantizer::fit(vectors, dimension);
        for ((slot, mut layers), (vector, out)) in lists
            .into_iter()
            .enumerate()
            .zip(vectors.chunks_exact(dimension).zip(blocks[start..].chunks_exact_mut(block)))
        {
            let (links, rest) = out.split_at_mut(4 * width);
            let bottom = layers.first().map_or(&[][..], Vec::as_slice);
            for (i, link) in links.chunks_exact_mut(4).enumerate() {
                link.copy_from_slice(&bottom.get(i).copied().unwrap_or(NO_LINK).to_le_bytes());
            }
            scales.push(quantizer.encode(vector, &mut rest[..dimension]));
            if layers.len() > 1 && layers[1..].iter().any(|l| !l.is_empty()) {
                upper.insert(slot as u32, layers.split_off(1));
            }
        }
        FlatGraph { blocks, start, block, width, dimension, scales, quantizer, upper, entry }
    }

    fn points(&self) -> usize {
        self.scales.len()
    }

    #[inline(always)]
    fn block(&self, slot: u32) -> &[u8] {
        let at = self.start + slot as usize * self.block;
        &self.blocks[at..at + self.block]
    }

    /// The bytes of the bottom-layer links of `slot`.
    #[inline(always)]
    fn link_bytes(&self, slot: u32) -> &[u8] {
        &self.block(slot)[..4 * self.width]
    }

    /// The bottom-layer links of `slot`, in order.
    #[inline(always)]
    fn bottom_links(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        self.link_bytes(slot)
            .chunks_exact(4)
            .map(|link| u32::from_le_bytes([link[0], link[1], link[2], link[3]]))
            .take_while(|&link| link != NO_LINK)
    }

    /// The quantized vector of `slot`.
    #[inline(always)]
    fn codes(&self, slot: u32) -> &[u8] {
        &self.block(slot)[4 * self.width..4 * self.width + self.dimension]
    }

    fn upper_links(&self, slot: u32, layer: usize) -> &[u32] {
        self.upper.get(&slot).and_then(|layers| layers.get(layer - 1)).map_or(&[], Vec::as_slice)
    }

    /// The approximate cosine distance of the query to `slot`.
    #[inline(always)]
    fn distance(&self, query: &QuantizedQuery, slot: u32) -> f32 {
        1.0 - query.dot(self.codes(slot), self.scales[slot as usize])
    }

    /// Asks the CPU to start loading the quantized vector of `slot`.
    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        prefetch(self.codes(slot));
    }

    /// The up to `ef` points nearest to `query` among those `accept` takes, by approximate
    /// distance, nearest first: the caller scores them exactly, and with `ef` above the number
    /// it wants, its nearest are among them. Points `accept` refuses are still walked through,
    /// so a filter narrows the answer without cutting the graph apart.
    pub(crate) fn search(
        &self,
        ef: usize,
        query: &[f32],
        accept: impl Fn(u32) -> bool,
    ) -> Vec<u32> {
        with_avx2(|| self.walk(ef, query, accept))
    }

    #[inline(always)]
    fn walk(&self, ef: usize, query: &[f32], accept: impl Fn(u32) -> bool) -> Vec<u32> {
        let Some((entry, top)) = self.entry else { return Vec::new() };
        let ef = ef.max(1);
        let query = self.quantizer.query(query);
        let distance = |slot: u32| self.distance(&query, slot);
        let mut nearest = Candidate { distance: distance(entry), slot: entry };
        for layer in (1..=top).rev() {
            let mut improved = true;
            while improved {
                improved = false;
                for &link in self.upper_links(nearest.slot, layer) {
                    let candidate = Candidate { distance: distance(link), slot: link };
                    if candidate < nearest {
                        (nearest, improved) = (candidate, true);
                    }
                }
            }
        }

        SCRATCH.with(|scratch| {
            let Scratch { marks, stamp, frontier, found, fresh } = &mut *scratch.borrow_mut();
            let points = self.points();
            if marks.len() < points || *stamp == u32::MAX {
                *marks = vec![0; points];
                *stamp = 0;
            }
            *stamp += 1;
            let stamp = *stamp;
            marks[nearest.slot as usize] = stamp;

            frontier.clear();
            found.clear();
            frontier.push(Reverse(nearest));
            if accept(nearest.slot) {
                found.push(nearest);
            }
            while let Some(Reverse(current)) = frontier.pop() {
                if found.len() >= ef && found.peek().is_some_and(|worst| current > *worst) {
                    break;
                }
                // The next point to expand is most likely the nearest left: its links load
                // while this one's neighbours are scored.
                if let Some(Reverse(next)) = frontier.peek() {
                    prefetch(self.link_bytes(next.slot));
                }
                // All the new neighbours' vectors are requested from memory before the first
                // distance is computed, so their loads overlap instead of queueing.
                fresh.clear();
                for link in self.bottom_links(current.slot) {
                    let mark = &mut marks[link as usize];
                    if *mark != stamp {
                        *mark = stamp;
                        fresh.push(link);
                        self.prefetch(link);
                    }
                }
                for &link in fresh.iter() {
                    let candidate = Candidate { distance: distance(link), slot: link };
                    let full = found.len() >= ef;
                    if !full || found.peek().is_some_and(|worst| candidate < *worst) {
                        frontier.push(Reverse(candidate));
                        if accept(link) {
                            found.push(candidate);
                            if found.len() > ef {
                                found.pop();
                            }
                        }
                    }
                }
            }
            let mut nearest_first: Vec<Candidate> = found.drain().collect();
            nearest_first.sort_unstable();
            nearest_first.into_iter().map(|c| c.slot).collect()
        })
    }
}
