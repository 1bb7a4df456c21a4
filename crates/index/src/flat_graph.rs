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
/// The first word of a links file: "CLZG" read as a little-endian number.
const LINKS_MAGIC: u32 = u32::from_le_bytes(*b"CLZG");
/// Bounds a links file is checked against: hnsw_rs's bottom layer has at most 2 M links, and M
/// is at most 255 (`HnswSettings`); graphs have at most 16 layers.
const MAX_WIDTH: u32 = 512;
const MAX_LAYERS: usize = 16;

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
    /// Links above the bottom layer, for the few points that reach there: where in
    /// `upper_words` each such point's layers start.
    upper: HashMap<u32, u32>,
    /// For each point with upper layers: how many, then each layer's length and links. One
    /// array rather than a list per point: those would be small blocks allocated while a graph
    /// is loaded or built, scattered among its freed ones, keeping their pages resident.
    upper_words: Vec<u32>,
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
            upper_words: Vec::new(),
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
        let mut upper = HashMap::new();
        let mut upper_words = Vec::new();
        let mut bottom = Vec::with_capacity(points * width);
        for (slot, layers) in lists.iter().enumerate() {
            let links = layers.first().map_or(&[][..], Vec::as_slice);
            bottom.extend((0..width).map(|i| links.get(i).copied().unwrap_or(NO_LINK)));
            if layers.len() > 1 && layers[1..].iter().any(|l| !l.is_empty()) {
                upper.insert(slot as u32, upper_words.len() as u32);
                upper_words.push(layers.len() as u32 - 1);
                for layer in &layers[1..] {
                    upper_words.push(layer.len() as u32);
                    upper_words.extend(layer);
                }
            }
        }
        drop(lists);
        FlatGraph::from_links(width, &bottom, (upper, upper_words), entry, vectors, dimension)
    }

    /// The graph of `bottom` (each point's `width` bottom-layer links, `NO_LINK` after the
    /// last), `upper` and `entry`, with the points' `vectors` quantized beside their links.
    fn from_links(
        width: usize,
        bottom: &[u32],
        (upper, upper_words): (HashMap<u32, u32>, Vec<u32>),
        entry: Option<(u32, usize)>,
        vectors: &[f32],
        dimension: usize,
    ) -> FlatGraph {
        let points = vectors.len() / dimension.max(1);
        let block = (4 * width + dimension).next_multiple_of(CACHE_LINE);
        let mut blocks = vec![0u8; points * block + CACHE_LINE - 1];
        let start = blocks.as_ptr().align_offset(CACHE_LINE);
        let mut scales = Vec::with_capacity(points);
        let quantizer = Quantizer::fit(vectors, dimension);
        for ((links, vector), out) in bottom
            .chunks_exact(width)
            .zip(vectors.chunks_exact(dimension))
            .zip(blocks[start..].chunks_exact_mut(block))
        {
            let (link_bytes, rest) = out.split_at_mut(4 * width);
            for (link, bytes) in links.iter().zip(link_bytes.chunks_exact_mut(4)) {
                bytes.copy_from_slice(&link.to_le_bytes());
            }
            scales.push(quantizer.encode(vector, &mut rest[..dimension]));
        }
        FlatGraph {
            blocks,
            start,
            block,
            width,
            dimension,
            scales,
            quantizer,
            upper,
            upper_words,
            entry,
        }
    }

    /// The links in the form [`FlatGraph::read`] takes back: a segment keeps them in a file of
    /// its own, so that opening a collection costs a few large reads rather than rebuilding
    /// hnsw_rs's graph (millions of small allocations, which left the heap fragmented: a
    /// server holding a million vectors stayed at 4 GB resident with 1.5 GB in use).
    ///
    /// Little-endian `u32`s: [`LINKS_MAGIC`], the points, the width, the entry point and its
    /// layer (`NO_LINK` for none), each point's `width` bottom-layer links, then the number of
    /// points with upper layers and, for each in slot order, its slot, its layer count and each
    /// layer as a length and that many links.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut words = vec![LINKS_MAGIC, self.points() as u32, self.width as u32];
        let (entry, level) = self.entry.map_or((NO_LINK, NO_LINK), |(s, l)| (s, l as u32));
        words.extend([entry, level]);
        for slot in 0..self.points() as u32 {
            words.extend(
                self.link_bytes(slot)
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        let mut upper: Vec<(u32, u32)> = self.upper.iter().map(|(&s, &at)| (s, at)).collect();
        upper.sort_unstable();
        words.push(upper.len() as u32);
        for (slot, at) in upper {
            let at = at as usize;
            let layers = self.upper_words[at] as usize;
            let mut end = at + 1;
            for _ in 0..layers {
                end += 1 + self.upper_words[end] as usize;
            }
            words.push(slot);
            words.extend(&self.upper_words[at..end]);
        }
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The graph [`FlatGraph::to_bytes`] wrote, over the same `vectors`; an error says what
    /// in `bytes` is malformed.
    pub(crate) fn read(
        bytes: &[u8],
        vectors: &[f32],
        dimension: usize,
    ) -> Result<FlatGraph, String> {
        if !bytes.len().is_multiple_of(4) {
            return Err("the links file is not whole 32-bit words".to_string());
        }
        let words: Vec<u32> =
            bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u32], String> {
            let taken = words.get(at..at + n).ok_or("the links file ends early")?;
            at += n;
            Ok(taken)
        };
        let header = take(5)?;
        let [magic, points, width, entry, level] = [0, 1, 2, 3, 4].map(|i| header[i]);
        let points_expected = vectors.len() / dimension.max(1);
        if magic != LINKS_MAGIC {
            return Err("the links file does not start with its mark".to_string());
        }
        if points as usize != points_expected || width == 0 || width > MAX_WIDTH {
            return Err(format!(
                "the links file has {points} points of width {width} for {points_expected} vectors"
            ));
        }
        let is_link = |link: u32| link < points;
        let entry = match (entry, level) {
            (NO_LINK, _) => None,
            (slot, level) if is_link(slot) && (level as usize) < MAX_LAYERS => {
                Some((slot, level as usize))
            }
            _ => return Err(format!("the entry point {entry} at layer {level} is out of range")),
        };
        let bottom = take(points as usize * width as usize)?.to_vec();
        if let Some(bad) = bottom.iter().find(|&&link| link != NO_LINK && !is_link(link)) {
            return Err(format!("link {bad} is no point"));
        }
        let mut upper = HashMap::new();
        let mut upper_words = Vec::new();
        let count = take(1)?[0];
        for _ in 0..count {
            let [slot, layers] = take(2)?.try_into().expect("two words");
            if !is_link(slot) || layers as usize >= MAX_LAYERS {
                return Err(format!("upper layers of point {slot}: out of range"));
            }
            upper.insert(slot, upper_words.len() as u32);
            upper_words.push(layers);
            for _ in 0..layers {
                let length = take(1)?[0] as usize;
                let links = take(length)?;
                if let Some(bad) = links.iter().find(|&&link| !is_link(link)) {
                    return Err(format!("link {bad} is no point"));
                }
                upper_words.push(length as u32);
                upper_words.extend(links);
            }
        }
        if at != words.len() {
            return Err("the links file has bytes after its end".to_string());
        }
        let upper = (upper, upper_words);
        Ok(FlatGraph::from_links(width as usize, &bottom, upper, entry, vectors, dimension))
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
        let Some(&at) = self.upper.get(&slot) else { return &[] };
        let words = &self.upper_words;
        let mut at = at as usize;
        if layer > words[at] as usize {
            return &[];
        }
        at += 1;
        for _ in 1..layer {
            at += 1 + words[at] as usize;
        }
        &words[at + 1..at + 1 + words[at] as usize]
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

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    const DIMENSION: usize = 16;

    fn graph_of(points: usize) -> (FlatGraph, Vec<f32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let vectors: Vec<f32> =
            (0..points * DIMENSION).map(|_| rng.random_range(-1.0..1.0)).collect();
        // M 16, ef_construction 200: the defaults a collection gets.
        let graph = Hnsw::new(16, points, 16, 200, UnitCosine);
        let slots: Vec<(&[f32], usize)> = vectors.chunks_exact(DIMENSION).zip(0..).collect();
        graph.parallel_insert_slice(&slots);
        (FlatGraph::from_hnsw(&graph, &vectors, DIMENSION), vectors)
    }

    #[test]
    fn links_written_and_read_back_search_the_same() {
        let (graph, vectors) = graph_of(3000);
        assert!(!graph.upper.is_empty(), "a graph this size has upper layers");
        let bytes = graph.to_bytes();
        let read = FlatGraph::read(&bytes, &vectors, DIMENSION).unwrap();
        assert_eq!(read.to_bytes(), bytes);
        for query in vectors.chunks_exact(DIMENSION).step_by(101) {
            assert_eq!(read.search(20, query, |_| true), graph.search(20, query, |_| true));
        }
    }

    #[test]
    fn malformed_links_are_an_error_not_a_panic() {
        let (graph, vectors) = graph_of(300);
        let bytes = graph.to_bytes();
        let read = |bytes: &[u8]| FlatGraph::read(bytes, &vectors, DIMENSION).err().unwrap();
        assert!(read(&bytes[..bytes.len() - 4]).contains("ends early"));
        assert!(read(&bytes[..bytes.len() - 1]).contains("whole 32-bit words"));
        assert!(read(&[bytes.as_slice(), &[0; 4]].concat()).contains("after its end"));
        assert!(FlatGraph::read(&bytes, &vectors[DIMENSION..], DIMENSION).is_err());
        let mut wrong_link = bytes.clone();
        wrong_link[20..24].copy_from_slice(&5000u32.to_le_bytes());
        assert!(read(&wrong_link).contains("link 5000 is no point"));
        let mut wrong_mark = bytes;
        wrong_mark[0] ^= 1;
        assert!(read(&wrong_mark).contains("mark"));
    }
}
