//! BM25's collection figures over the live documents only.
//!
//! tantivy counts a deleted document in its segment's document count, term frequencies and
//! token total until a merge removes it, and a merge of a segment with deletions replaces the
//! exact token total with an estimate from the one-byte lengths it keeps per document. Its
//! figures therefore depend on a collection's history of commits and merges, not only on the
//! documents it holds: two replicas of one partition, one copied from a snapshot and one that
//! applied the log, would rank the same query differently. The figures here depend on the live
//! documents alone, and equal tantivy's on a collection written once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tantivy::index::SegmentId;
use tantivy::schema::IndexRecordOption;
use tantivy::{Searcher, SegmentReader, TantivyDocument, Term};

use crate::analyzer::analyze;
use crate::collection::Collection;
use crate::error::IndexError;

/// The exact body length, in analysed tokens, of each document of each segment, measured
/// once per segment (segments never change; only their deletions grow). Lengths are also kept
/// by a hash of the body, so the documents of a merged segment are not analysed again.
#[derive(Clone, Default)]
pub(crate) struct BodyLengths(Arc<Mutex<Measured>>);

#[derive(Default)]
struct Measured {
    segments: HashMap<SegmentId, Arc<Vec<u32>>>,
    bodies: HashMap<u64, u32>,
}

impl Collection {
    /// Tokens in the bodies of the documents `searcher` sees as live, as BM25 counts them.
    ///
    /// The first call after a commit analyses the new segment's documents once more; a node
    /// that applies writes calls it right after each commit, so searches do not wait for it.
    pub fn live_body_tokens(&self, searcher: &Searcher) -> Result<u64, IndexError> {
        let mut total = 0u64;
        for segment in searcher.segment_readers() {
            let known = self
                .body_lengths()
                .0
                .lock()
                .expect("not poisoned")
                .segments
                .get(&segment.segment_id())
                .cloned();
            let lengths = match known {
                Some(lengths) => lengths,
                None => {
                    let lengths = Arc::new(self.measure_bodies(segment)?);
                    let mut measured = self.body_lengths().0.lock().expect("not poisoned");
                    measured.segments.insert(segment.segment_id(), lengths.clone());
                    // Forget segments merged away, once they outnumber the live ones.
                    if measured.segments.len() > 2 * searcher.segment_readers().len() + 8 {
                        let live: std::collections::HashSet<SegmentId> =
                            searcher.segment_readers().iter().map(|s| s.segment_id()).collect();
                        measured.segments.retain(|id, _| live.contains(id));
                    }
                    lengths
                }
            };
            total += match segment.alive_bitset() {
                None => lengths.iter().map(|&n| u64::from(n)).sum::<u64>(),
                Some(alive) => alive.iter_alive().map(|doc| u64::from(lengths[doc as usize])).sum(),
            };
        }
        Ok(total)
    }

    /// How many live documents `searcher` sees holding `term`.
    pub fn live_doc_freq(&self, searcher: &Searcher, term: &Term) -> Result<u64, IndexError> {
        let mut frequency = 0u64;
        for segment in searcher.segment_readers() {
            let index = segment.inverted_index(term.field()).map_err(|e| self.tantivy_error(e))?;
            frequency += match segment.alive_bitset() {
                None => u64::from(index.doc_freq(term).map_err(|e| self.tantivy_error(e.into()))?),
                Some(alive) => match index
                    .read_postings(term, IndexRecordOption::Basic)
                    .map_err(|e| self.tantivy_error(e.into()))?
                {
                    Some(postings) => u64::from(postings.doc_freq_given_deletes(alive)),
                    None => 0,
                },
            };
        }
        Ok(frequency)
    }

    /// Analyses each live document's stored title and text again, as they were indexed, unless
    /// the same body was measured before.
    fn measure_bodies(&self, segment: &SegmentReader) -> Result<Vec<u32>, IndexError> {
        let store = segment.get_store_reader(8).map_err(|e| self.tantivy_error(e.into()))?;
        let mut analyzer = self.analyzer();
        let mut lengths = vec![0u32; segment.max_doc() as usize];
        let mut found = Vec::new();
        {
            let measured = self.body_lengths().0.lock().expect("not poisoned");
            for doc in segment.doc_ids_alive() {
                let stored: TantivyDocument = store.get(doc).map_err(|e| self.tantivy_error(e))?;
                let body = self.body_of(&stored);
                let hash = hash_of(&body);
                lengths[doc as usize] = match measured.bodies.get(&hash) {
                    Some(&length) => length,
                    None => {
                        let length = analyze(&mut analyzer, &body).len() as u32;
                        found.push((hash, length));
                        length
                    }
                };
            }
        }
        let mut measured = self.body_lengths().0.lock().expect("not poisoned");
        // Bodies no longer in the collection are forgotten, all at once, now and then.
        if measured.bodies.len() > 2 * self.searcher().num_docs() as usize + 1024 {
            measured.bodies.clear();
        }
        measured.bodies.extend(found);
        Ok(lengths)
    }
}

fn hash_of(body: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}
