//! The HNSW graph's links in flat arrays, and the search that walks them.
//!
//! hnsw_rs builds the graph well and writes it to disk, but searches it slowly: every neighbour
//! list sits behind a lock, every point behind an `Arc`, and the set of visited points is a
//! hash map. A search reads a few thousand links and vectors, so that indirection is most of its
//! cost. After every change the links are copied here (four bytes each) and searches run over
//! them and the index's own contiguous vectors, with a visited list reused between searches.
//! The algorithm is the paper's (Malkov and Yashunin, 2018): greedy descent through the upper
//! layers, then a best-first search of `ef` candidates in the bottom one.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use hnsw_rs::prelude::Hnsw;

use crate::vectors::UnitCosine;

/// Marks the end of a point's bottom-layer list when it has fewer links than the widest.
const NO_LINK: u32 = u32::MAX;

pub(crate) struct FlatGraph {
    /// Bottom-layer links, `width` slots per point (the point's slot number), `NO_LINK` after
    /// the last.
    bottom: Vec<u32>,
    width: usize,
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
    pub(crate) fn empty() -> FlatGraph {
        FlatGraph { bottom: Vec::new(), width: 1, upper: HashMap::new(), entry: None }
    }

    /// Copies the links of `graph`, whose points' ids are their slot numbers `0..points`.
    pub(crate) fn from_hnsw(graph: &Hnsw<'_, f32, UnitCosine>, points: usize) -> FlatGraph {
        // hnsw_rs's point iterator panics on a graph of no points.
        if points == 0 || graph.get_nb_point() == 0 {
            return FlatGraph::empty();
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
        let mut bottom = vec![NO_LINK; points * width];
        let mut upper = HashMap::new();
        for (slot, mut layers) in lists.into_iter().enumerate() {
            if layers.is_empty() {
                continue;
            }
            for (i, &link) in layers[0].iter().enumerate() {
                bottom[slot * width + i] = link;
            }
            if layers.len() > 1 && layers[1..].iter().any(|l| !l.is_empty()) {
                upper.insert(slot as u32, layers.split_off(1));
            }
        }
        FlatGraph { bottom, width, upper, entry }
    }

    fn links(&self, slot: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let list = &self.bottom[slot as usize * self.width..(slot as usize + 1) * self.width];
            let end = list.iter().position(|&l| l == NO_LINK).unwrap_or(list.len());
            &list[..end]
        } else {
            self.upper
                .get(&slot)
                .and_then(|layers| layers.get(layer - 1))
                .map_or(&[], Vec::as_slice)
        }
    }

    /// The up to `ef` points nearest to the query among those `accept` takes, nearest first.
    /// `distance(slot)` is the query's distance to a point, and `prefetch(slot)` asks the CPU
    /// to start loading that point's vector. Points `accept` refuses are still walked through,
    /// so a filter narrows the answer without cutting the graph apart.
    pub(crate) fn search(
        &self,
        ef: usize,
        distance: impl Fn(u32) -> f32,
        prefetch: impl Fn(u32),
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        let Some((entry, top)) = self.entry else { return Vec::new() };
        let ef = ef.max(1);
        let mut nearest = Candidate { distance: distance(entry), slot: entry };
        for layer in (1..=top).rev() {
            let mut improved = true;
            while improved {
                improved = false;
                for &link in self.links(nearest.slot, layer) {
                    let candidate = Candidate { distance: distance(link), slot: link };
                    if candidate < nearest {
                        (nearest, improved) = (candidate, true);
                    }
                }
            }
        }

        VISITED.with(|visited| {
            let (marks, stamp) = &mut *visited.borrow_mut();
            let points = self.bottom.len() / self.width;
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
                for &link in self.links(current.slot, 0) {
                    let mark = &mut marks[link as usize];
                    if *mark != stamp {
                        *mark = stamp;
                        fresh.push(link);
                        prefetch(link);
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
            found.into_sorted_vec().into_iter().map(|c| (c.slot, c.distance)).collect()
        })
    }
}
