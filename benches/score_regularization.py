"""Score regularization over the encoder's nearest-document graph (Diaz, 2005): does smoothing a
ranking's scores over each document's nearest documents help where expansion by neighbours has
already smoothed their text?

    python3 benches/score_regularization.py VECTORS_DIR RUNS_DIR SUFFIX [NEIGHBOURS] [WEIGHTS]

For each collection C, VECTORS_DIR/C.vec holds the documents' vectors (`cloze embed --model
MODEL_DIR`) and RUNS_DIR/C.SUFFIX.trec a run on its test queries (`cloze eval --depth 100
--run-out`). Each query's scores are scaled to [0, 1] (0 for a document outside the run), and each
document's becomes (1 - w) times its own plus w times the mean over its k nearest documents by
cosine. Prints nDCG@10 (pytrec_eval) on the test judgments for every k of NEIGHBOURS (default
5,10) and w of WEIGHTS (default 0,0.1,0.2,0.3); w = 0 is the run as it was. The judgments come
from $CLOZE_TEST_DATA (default ../shared/data). Needs numpy and pytrec_eval.
"""
import json
import os
import sys
from collections import defaultdict

import numpy as np
import pytrec_eval

COLLECTIONS = ["scifact", "cranfield", "cisi", "cacm", "npl"]
DATA = os.environ.get("CLOZE_TEST_DATA", "../shared/data")


def vectors(path):
    ids, rows = [], []
    for line in open(path):
        row = json.loads(line)
        ids.append(row["id"])
        rows.append(row["vector"])
    return ids, np.asarray(rows, dtype=np.float32)


def nearest(matrix, k):
    """The k nearest rows of each row by cosine (vectors have unit length), itself excluded."""
    found = np.zeros((len(matrix), k), dtype=np.int64)
    for start in range(0, len(matrix), 2048):
        similarity = matrix[start:start + 2048] @ matrix.T
        for offset in range(similarity.shape[0]):
            similarity[offset, start + offset] = -np.inf
        found[start:start + 2048] = np.argpartition(-similarity, k, axis=1)[:, :k]
    return found


def judgments(path):
    qrels = defaultdict(dict)
    for line in open(path):
        parts = line.split()
        if len(parts) >= 3 and parts[-1].lstrip("-").isdigit():
            qrels[parts[0]][parts[1]] = int(parts[-1])
    return qrels


def run(path):
    scores = defaultdict(dict)
    for line in open(path):
        query, _, document, _, score, _ = line.split()
        scores[query][document] = float(score)
    return scores


def regularized(scores, ids, position, neighbours, k, weight):
    out = {}
    for query, found in scores.items():
        values = np.array(list(found.values()))
        low, span = values.min(), values.max() - values.min() or 1.0
        scaled = {document: (score - low) / span for document, score in found.items()}
        out[query] = {
            document: (1 - weight) * score + weight * float(np.mean(
                [scaled.get(ids[j], 0.0) for j in neighbours[position[document], :k]]))
            for document, score in scaled.items()
        }
    return out


def main():
    vectors_dir, runs_dir, suffix = sys.argv[1:4]
    ks = [int(k) for k in (sys.argv[4] if len(sys.argv) > 4 else "5,10").split(",")]
    weights = [float(w) for w in (sys.argv[5] if len(sys.argv) > 5 else "0,0.1,0.2,0.3").split(",")]
    loaded = {}
    for collection in COLLECTIONS:
        ids, matrix = vectors(f"{vectors_dir}/{collection}.vec")
        loaded[collection] = (ids, {d: i for i, d in enumerate(ids)}, nearest(matrix, max(ks)),
                              judgments(f"{DATA}/{collection}/qrels/test.tsv"),
                              run(f"{runs_dir}/{collection}.{suffix}.trec"))
    for k in ks:
        for weight in weights:
            row = []
            for collection in COLLECTIONS:
                ids, position, neighbours, qrels, scores = loaded[collection]
                ranking = regularized(scores, ids, position, neighbours, k, weight)
                evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"})
                result = evaluator.evaluate({q: ranking.get(q, {}) for q in qrels})
                row.append(np.mean([r["ndcg_cut_10"] for r in result.values()]))
            print(f"k={k} w={weight}: " + " ".join(f"{x:.4f}" for x in row) + f"  mean {np.mean(row):.4f}")


if __name__ == "__main__":
    main()
