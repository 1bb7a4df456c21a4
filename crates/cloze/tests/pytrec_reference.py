"""Per-query reference scores from pytrec_eval (trec_eval's own code) for a qrels and a run file.

Usage: python3 pytrec_reference.py QRELS RUN  ->  JSON {query: {metric: value}} on stdout, with
Cloze's metric names. Qrels may be BEIR TSV (with header) or TREC; the run is TREC.
"""

import json
import sys

import pytrec_eval


def read_qrels(path):
    qrels = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            columns = line.split()
            if not columns or (number == 1 and not columns[-1].lstrip("-").isdigit()):
                continue
            query, document, grade = (columns[0], columns[-2], columns[-1])
            qrels.setdefault(query, {})[document] = int(grade)
    return qrels


def read_run(path):
    run = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            query, _, document, _, score, _ = line.split()
            run.setdefault(query, {})[document] = float(score)
    return run


def main():
    qrels = read_qrels(sys.argv[1])
    run = read_run(sys.argv[2])
    measures = {"ndcg_cut.10", "ndcg", "recall.100", "P.10", "map", "map_cut.100", "recip_rank"}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    # trec_eval has no reciprocal rank at a cutoff: cut each ranking at 10 in trec_eval's own
    # order (score descending, then document id descending) and take recip_rank of that.
    top10 = {
        query: dict(sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)[:10])
        for query, docs in run.items()
    }
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    names = {
        "ndcg_cut_10": "ndcg@10",
        "ndcg": "ndcg",
        "recall_100": "recall@100",
        "P_10": "p@10",
        "map": "map",
        "map_cut_100": "map@100",
        "recip_rank": "mrr",
    }
    scores = {
        query: {**{names[m]: v for m, v in values.items()}, "mrr@10": cut[query]["recip_rank"]}
        for query, values in full.items()
    }
    json.dump(scores, sys.stdout)


if __name__ == "__main__":
    main()
