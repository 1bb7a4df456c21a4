"""Expansion by neighbours with and without the encoder: which documents should lend their text?

    python3 benches/neighbours_tfidf.py VECTORS_DIR

`cloze index --expand` indexes each document with the text of its nearest documents by the
collection's vectors, in a second field that BM25 scores at a lower weight. This prototype scores
the same thing in numpy (its own BM25, Lucene's formula at k1 = 1.2, b = 0.75, English stop words
and Snowball stemming, the top 100 per query) for neighbours found two ways: by the encoder's
document vectors (`cloze embed --model MODEL_DIR` as VECTORS_DIR/COLLECTION.vec) and by TF-IDF
cosine, which needs no model. For 5, 10 and 20 neighbours at weights 0.1, 0.2 and 0.3 it prints
nDCG@10 (pytrec_eval) on SciFact's training judgments and on each collection's test judgments.
The corpora come from $CLOZE_TEST_DATA (default ../shared/data). Needs numpy, scipy, PyStemmer and
pytrec_eval.
"""
import json
import math
import os
import re
import sys

import numpy as np
import pytrec_eval
import scipy.sparse as sp
import Stemmer

COLLECTIONS = ["scifact", "cranfield", "cisi", "cacm", "npl"]
NEIGHBOURS = [5, 10, 20]
WEIGHTS = [0.1, 0.2, 0.3]
STOP_WORDS = set("a an and are as at be but by for if in into is it no not of on or such that the "
                 "their then there these they this to was will with".split())
STEMMER = Stemmer.Stemmer("english")


def analyze(text):
    return STEMMER.stemWords([w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP_WORDS])


def read_qrels(path):
    qrels = {}
    for number, line in enumerate(open(path, encoding="utf-8")):
        parts = line.rstrip("\n").split("\t")
        if number == 0 and not parts[2].strip().isdigit():
            continue
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return qrels


def bm25_weights(tf, document_frequency, documents, k1=1.2, b=0.75):
    """Each (document, term) cell of `tf` as its BM25 weight, the field's own average length."""
    lengths = np.asarray(tf.sum(1)).ravel()
    tf = tf.tocoo()
    idf = np.log(1 + (documents - document_frequency + 0.5) / (document_frequency + 0.5))
    weights = idf[tf.col] * tf.data * (k1 + 1) / (tf.data + k1 * (1 - b + b * lengths[tf.row] / lengths.mean()))
    return sp.csr_matrix((weights, (tf.row, tf.col)), shape=tf.shape)


def ndcg(ids, score, queries, qrels):
    run = {}
    for query_id in qrels:
        if query_id in queries:
            scores = score(queries[query_id])
            top = np.argpartition(-scores, 100)[:100]
            run[query_id] = {ids[i]: float(scores[i]) for i in top}
    evaluated = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return np.mean([measures["ndcg_cut_10"] for measures in evaluated.values()])


def main():
    vectors_dir = sys.argv[1]
    data = os.environ.get("CLOZE_TEST_DATA", "../shared/data")
    results = {}
    for collection in COLLECTIONS:
        documents = [json.loads(line) for line in open(f"{data}/{collection}/corpus.jsonl", encoding="utf-8")]
        ids = [d["_id"] for d in documents]
        vectors = {}
        for line in open(f"{vectors_dir}/{collection}.vec", encoding="utf-8"):
            record = json.loads(line)
            vectors[record["id"]] = record["vector"]
        embedded = np.array([vectors[i] for i in ids], dtype=np.float32)
        vocabulary = {}
        rows, columns = [], []
        for row, d in enumerate(documents):
            for term in analyze(f"{d.get('title') or ''} {d.get('text') or ''}"):
                rows.append(row)
                columns.append(vocabulary.setdefault(term, len(vocabulary)))
        n = len(ids)
        tf = sp.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(n, len(vocabulary)))
        document_frequency = np.asarray((tf > 0).sum(0)).ravel()
        own = bm25_weights(tf, document_frequency, n)
        queries = {}
        for line in open(f"{data}/{collection}/queries.jsonl", encoding="utf-8"):
            query = json.loads(line)
            terms = np.zeros(len(vocabulary))
            for term in analyze(query["text"]):
                if term in vocabulary:
                    terms[vocabulary[term]] += 1
            queries[query["_id"]] = terms
        splits = ["train", "test"] if collection == "scifact" else ["test"]
        qrels = {split: read_qrels(f"{data}/{collection}/qrels/{split}.tsv") for split in splits}
        for split in splits:
            results[(collection, split, "plain")] = ndcg(ids, lambda q: own @ q, queries, qrels[split])
        tfidf = sp.csr_matrix(tf.multiply(np.log(n / document_frequency)[None, :]))
        norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(1)).ravel())
        tfidf = sp.diags(1 / np.maximum(norms, 1e-9)) @ tfidf
        for source in ["encoder", "tfidf"]:
            similarity = embedded @ embedded.T if source == "encoder" else (tfidf @ tfidf.T).toarray()
            np.fill_diagonal(similarity, -np.inf)
            nearest = np.argsort(-similarity, axis=1)[:, :max(NEIGHBOURS)]
            for count in NEIGHBOURS:
                lenders = sp.csr_matrix((np.ones(n * count), (np.repeat(np.arange(n), count), nearest[:, :count].ravel())), shape=(n, n))
                # The expansion field: the neighbours' text, concatenated.
                expansion = bm25_weights(sp.csr_matrix(lenders @ tf), document_frequency, n)
                for weight in WEIGHTS:
                    for split in splits:
                        results[(collection, split, source, count, weight)] = ndcg(
                            ids, lambda q: own @ q + weight * (expansion @ q), queries, qrels[split])
        print(f"scored {collection}", file=sys.stderr)

    def row(key):
        tests = [results[(c, "test") + key] for c in COLLECTIONS]
        return f"{np.mean(tests):.4f}  {results[('scifact', 'train') + key]:.4f}  " + " ".join(f"{t:.4f}" for t in tests)

    print("neighbours          mean    scifact-train  " + " ".join(COLLECTIONS))
    print(f"{'plain BM25':<19} {row(('plain',))}")
    for source in ["encoder", "tfidf"]:
        for count in NEIGHBOURS:
            for weight in WEIGHTS:
                print(f"{source:<7} {count:>2} x {weight:<4}   {row((source, count, weight))}")


if __name__ == "__main__":
    main()
