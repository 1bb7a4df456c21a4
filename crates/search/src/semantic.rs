//! Semantic ranking: the query embedded by the collection's model (or the query's own vector),
//! its nearest documents found in the collection's vector segments.

use std::collections::HashSet;
use std::time::Instant;

use cloze_index::{analyze, Collection};

use crate::keyword::fill_documents;
use crate::{
    query_vector, Explanation, Hit, Results, SearchError, SearchRequest, SideScore, Timings,
};

pub(crate) fn search(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Results, SearchError> {
    let mut timings = Timings::default();
    let Some(query) = query_vector(collection, request, &mut timings)? else {
        return Ok(Results { hits: Vec::new(), total: 0, timings });
    };
    let started = Instant::now();
    let allowed = allowed_documents(collection, request)?;
    let total = match &allowed {
        Some(allowed) => allowed.len(),
        None => collection.vector_document_count() as usize,
    };
    let wanted = request.offset.saturating_add(request.limit);
    let neighbours = collection.nearest(&query, wanted, request.ef_search, allowed.as_ref())?;
    timings.vector = started.elapsed();
    let mut hits: Vec<Hit> = neighbours
        .into_iter()
        .enumerate()
        .skip(request.offset)
        .map(|(i, n)| {
            let mut hit = Hit::ranked(n.id, n.similarity);
            let side = SideScore { rank: i + 1, score: n.similarity };
            hit.explanation =
                Some(Explanation { keyword: None, semantic: Some(side), fused: n.similarity });
            hit
        })
        .collect();
    if request.with_documents {
        let started = Instant::now();
        fill_documents_by_id(collection, &mut hits, request)?;
        timings.documents = started.elapsed();
    }
    Ok(Results { hits, total, timings })
}

/// The documents the request's filter lets through; None without a filter.
pub(crate) fn allowed_documents(
    collection: &Collection,
    request: &SearchRequest,
) -> Result<Option<HashSet<String>>, SearchError> {
    match &request.filter {
        Some(filter) => Ok(Some(filter.document_ids(collection, &collection.searcher())?)),
        None => Ok(None),
    }
}

/// Gives hits found by id (not through tantivy) their titles and snippets.
pub(crate) fn fill_documents_by_id(
    collection: &Collection,
    hits: &mut [Hit],
    request: &SearchRequest,
) -> Result<(), SearchError> {
    let searcher = collection.searcher();
    let mut addresses = Vec::with_capacity(hits.len());
    for hit in hits.iter() {
        // The vector index and the keyword index share their ids and commit together.
        let address =
            collection.address(&searcher, &hit.id)?.ok_or_else(|| SearchError::Inconsistent {
                collection: collection.name().to_string(),
                id: hit.id.clone(),
            })?;
        addresses.push(address);
    }
    let terms = analyze(&mut collection.analyzer(), &request.query);
    fill_documents(collection, &searcher, hits, &addresses, &terms, request.highlight)
}
