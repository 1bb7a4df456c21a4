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

use crate::quantized::{QuantizedQuery, Quantizer};
use crate::vectors::UnitCosine;

/// Marks the end of a point's bottom-layer list when it has fewer links than the widest.
const NO_LINK: u32 = u32::MAX;

pub(crate) struct FlatGraph {
    /// One block of `block` bytes per point: its bottom-layer links, `width` little-endian
    /// `u32` slot numbers with `NO_LINK` after the last, then its quantized vector, `dimension`
    /// bytes, then padding to whole cache lines.
    blocks: Vec<u8>,
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

thread_local! {
    /// Per thread: the search number each slot was last visited in, and the current number.
    /// Bumping the number forgets every visit without clearing the list.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

impl FlatGraph {
    /// The graph of no points.
    pub(crate) fn empty(dimension: usize) -> FlatGraph {
        FlatGraph {
            blocks: Vec::new(),
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
        let block = (4 * width + dimension).next_multiple_of(64);
        let mut blocks = vec![0u8; points * block];
        let mut scales = Vec::with_capacity(points);
        let mut upper = HashMap::new();
        let quantizer = Quantizer::fit(vectors, dimension);
        for ((slot, mut layers), (vector, out)) in lists
            .into_iter()
            .enumerate()
            .zip(vectors.chunks_exact(dimension).zip(blocks.chunks_exact_mut(block)))
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
        FlatGraph { blocks, block, width, dimension, scales, quantizer, upper, entry }
    }

    fn points(&self) -> usize {
        self.scales.len()
    }

    fn block(&self, slot: u32) -> &[u8] {
        &self.blocks[slot as usize * self.block..(slot as usize + 1) * self.block]
    }

    /// The bottom-layer links of `slot`, in order.
    fn bottom_links(&self, slot: u32) -> impl Iterator<Item = u32> + '_ {
        self.block(slot)[..4 * self.width]
            .chunks_exact(4)
            .map(|link| u32::from_le_bytes([link[0], link[1], link[2], link[3]]))
            .take_while(|&link| link != NO_LINK)
    }

    /// The quantized vector of `slot`.
    fn codes(&self, slot: u32) -> &[u8] {
        &self.block(slot)[4 * self.width..4 * self.width + self.dimension]
    }

    fn upper_links(&self, slot: u32, layer: usize) -> &[u32] {
        self.upper.get(&slot).and_then(|layers| layers.get(layer - 1)).map_or(&[], Vec::as_slice)
    }

    /// The approximate cosine distance of the query to `slot`.
    fn distance(&self, query: &QuantizedQuery, slot: u32) -> f32 {
        1.0 - query.dot(self.codes(slot), self.scales[slot as usize])
    }

    /// Asks the CPU to start loading the quantized vector of `slot`.
    fn prefetch(&self, slot: u32) {
        #[cfg(target_arch = "x86_64")]
        for line in self.codes(slot).chunks(64) {
            // SAFETY: a prefetch only hints at an address inside the slice; it cannot fault.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
            }
        }
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

        VISITED.with(|visited| {
            let (marks, stamp) = &mut *visited.borrow_mut();
            let points = self.points();
            if marks.len() < points || *stamp == u32::MAX {
                *marks = vec![0; points];
                *stamp = 0;
            }
            *stamp += 1;
            let stamp = *stamp;
            marks[nearest.slot as usize] = stamp;

            // `frontier`: nearest first; `found`: farthest first, at most `ef`, accepted only.
            let mut frontier = BinaryHeap::from([Reverse(nearest)]);
            let mut found = BinaryHeap::with_capacity(ef + 1);
            if accept(nearest.slot) {
                found.push(nearest);
            }
            // The links of the point being expanded that were not visited yet.
            let mut fresh = Vec::with_capacity(self.width);
            while let Some(Reverse(current)) = frontier.pop() {
                if found.len() >= ef && found.peek().is_some_and(|worst| current > *worst) {
                    break;
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
                for &link in &fresh {
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
            found.into_sorted_vec().into_iter().map(|c| c.slot).collect()
        })
    }
}
