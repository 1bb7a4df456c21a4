"""bm25s's side of benches/keyword.rs: the same documents and queries, timed the same way.

`python keyword_bm25s.py CORPUS.jsonl QUERIES.jsonl INDEX_REPETITIONS QUERY_PASSES` indexes the
title and text of every document (English stop words and Snowball stemmer, as Cloze's default
analyzer; BM25 with Lucene's formula at k1 = 1.2, b = 0.75, as tantivy), several times, then
answers every query one by one (tokenise and retrieve the top 10 ids) after a warm-up pass,
and prints JSON: the median indexing rate and the median and p99 query latency.
"""

import json
import sys
import time

import bm25s
import numpy as np
import Stemmer

corpus_file, queries_file, repetitions, passes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
documents = [json.loads(line) for line in open(corpus_file, encoding="utf-8")]
texts = [f"{d.get('title', '')} {d['text']}".strip() for d in documents]
queries = [json.loads(line)["text"] for line in open(queries_file, encoding="utf-8")]
stemmer = Stemmer.Stemmer("english")

rates = []
for _ in range(repetitions):
    started = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
    retriever = bm25s.BM25(method="lucene", k1=1.2, b=0.75)
    retriever.index(tokens, show_progress=False)
    rates.append(len(texts) / (time.perf_counter() - started))

latencies = []
for query_pass in range(passes + 1):
    for query in queries:
        started = time.perf_counter()
        query_tokens = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, show_progress=False)
        if query_tokens.vocab:
            retriever.retrieve(query_tokens, k=10, show_progress=False, n_threads=1)
        elapsed = (time.perf_counter() - started) * 1e6
        if query_pass > 0:
            latencies.append(elapsed)
latencies.sort()
pick = lambda fraction: latencies[round((len(latencies) - 1) * fraction)]
print(json.dumps({
    "documents": len(texts), "queries": len(queries),
    "index_documents_per_second_median": float(np.median(rates)),
    "top10_ids_latency_us": {"median": pick(0.5), "p99": pick(0.99)},
    "version": bm25s.__version__,
}))
