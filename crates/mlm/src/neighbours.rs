//! Each training document's nearest neighbour in words, for harder contrastive batches.
//!
//! In a batch drawn at random from several collections, most negatives are about something
//! else altogether, and telling them apart teaches the model little. Putting a document beside
//! the one BM25 finds most like it makes the loss separate texts that share their words, which
//! is what ranking needs (the idea of topic-aware batches, TAS-B, with BM25 as the topic).
//! Token ids stand in for words: the model's own WordPiece vocabulary is the analyzer.

use std::collections::HashMap;

use rayon::prelude::*;

/// BM25's usual constants (Lucene's, tantivy's).
const K1: f32 = 1.2;
const B: f32 = 0.75;
/// A neighbour sharing more than this share of its distinct tokens with the document is taken
/// for a copy of it, not a negative: crops of copies are each other's positives.
const DUPLICATE_OVERLAP: f64 = 0.8;

/// For each of `documents` (token ids), the index of the other document that scores highest
/// under BM25 for a query of its `query_tokens` highest tf-idf tokens, copies excepted; `None`
/// where no other document shares one of them. `idf` weighs each token id (0 leaves a token
/// out, as for special tokens).
pub fn lexical_neighbours(
    documents: &[Vec<u32>],
    idf: &[f32],
    query_tokens: usize,
) -> Vec<Option<usize>> {
    let frequencies: Vec<HashMap<u32, u32>> = documents.par_iter().map(|d| counts(d)).collect();
    let mut postings: HashMap<u32, Vec<(usize, u32)>> = HashMap::new();
    for (index, counts) in frequencies.iter().enumerate() {
        for (&token, &count) in counts {
            postings.entry(token).or_default().push((index, count));
        }
    }
    let mean_length =
        documents.iter().map(Vec::len).sum::<usize>() as f32 / documents.len().max(1) as f32;
    let weight = |token: u32| idf.get(token as usize).copied().unwrap_or(0.0);

    (0..documents.len())
        .into_par_iter()
        .map_init(
            || vec![0f32; documents.len()],
            |scores, index| {
                let mut query: Vec<(u32, f32)> = frequencies[index]
                    .iter()
                    .map(|(&token, &count)| (token, count as f32 * weight(token)))
                    .filter(|(_, score)| *score > 0.0)
                    .collect();
                query.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                query.truncate(query_tokens);
                let mut touched = Vec::new();
                for &(token, _) in &query {
                    for &(other, count) in &postings[&token] {
                        if other == index {
                            continue;
                        }
                        if scores[other] == 0.0 {
                            touched.push(other);
                        }
                        let length = documents[other].len() as f32 / mean_length;
                        let count = count as f32;
                        scores[other] += weight(token) * count * (K1 + 1.0)
                            / (count + K1 * (1.0 - B + B * length));
                    }
                }
                let mut ranked: Vec<(usize, f32)> =
                    touched.iter().map(|&other| (other, scores[other])).collect();
                for &other in &touched {
                    scores[other] = 0.0;
                }
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                ranked
                    .into_iter()
                    .map(|(other, _)| other)
                    .find(|&other| !is_copy(&frequencies[index], &frequencies[other]))
            },
        )
        .collect()
}

fn counts(document: &[u32]) -> HashMap<u32, u32> {
    let mut counts = HashMap::new();
    for &token in document {
        *counts.entry(token).or_insert(0) += 1;
    }
    counts
}

/// Whether the two documents share most of their distinct tokens (Jaccard overlap).
fn is_copy(a: &HashMap<u32, u32>, b: &HashMap<u32, u32>) -> bool {
    let shared = a.keys().filter(|token| b.contains_key(token)).count();
    let union = a.len() + b.len() - shared;
    union > 0 && shared as f64 / union as f64 > DUPLICATE_OVERLAP
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_neighbour_shares_the_rare_tokens() {
        // 0 and 2 share the rare tokens 10 and 11; everything shares the common token 1.
        let documents = vec![
            vec![1, 10, 11, 20, 1],
            vec![1, 30, 31, 32, 33],
            vec![1, 10, 11, 40, 41, 42],
            vec![1, 50],
        ];
        let mut idf = vec![2.0f32; 60];
        idf[1] = 0.1;
        let neighbours = lexical_neighbours(&documents, &idf, 3);
        assert_eq!(neighbours[0], Some(2));
        assert_eq!(neighbours[2], Some(0));
        // 1's three rarest tokens are its own, and the common token is not in its query.
        assert_eq!(neighbours[1], None);
        // 3's query reaches the common token, which 0 has twice.
        assert_eq!(neighbours[3], Some(0));
    }

    #[test]
    fn copies_and_unrelated_documents_are_not_neighbours() {
        let documents = vec![
            vec![10, 11, 12, 13, 14],
            vec![14, 13, 12, 11, 10, 10],
            vec![10, 11, 20, 21, 22],
            vec![30, 31],
        ];
        let idf = vec![1.0f32; 40];
        let neighbours = lexical_neighbours(&documents, &idf, 5);
        assert_eq!(neighbours[0], Some(2), "1 is a copy of 0");
        assert_eq!(neighbours[1], Some(2));
        assert_eq!(neighbours[3], None);
    }

    #[test]
    fn tokens_of_weight_zero_are_left_out_of_the_query() {
        let documents = vec![vec![3, 10], vec![3, 20], vec![10, 21, 22]];
        let mut idf = vec![1.0f32; 30];
        idf[3] = 0.0;
        let neighbours = lexical_neighbours(&documents, &idf, 5);
        assert_eq!(neighbours, vec![Some(2), None, Some(0)]);
    }
}
