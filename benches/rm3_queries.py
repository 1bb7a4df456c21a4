"""RM3 query expansion (relevance model 3, Lavrenko and Croft; Abdul-Jaleel et al., 2004) as
queries for `cloze eval`, to measure pseudo-relevance feedback on the keyword side.

    python3 benches/rm3_queries.py CORPUS_JSONL QUERIES_JSONL RUN OUT_JSONL \
        [--docs 10] [--terms 20] [--original-weight 0.8] [--copies 4]

RUN is a first-pass TREC run (`cloze eval --run-out`). For each query, its best --docs documents
lend words: each word's share of a document's words, weighted by the document's share of their
scores, summed (words in more than a tenth of the documents and English stop words left out).
The best --terms of them join the query at 1 - --original-weight of its mass. `cloze eval` weighs
a word said twice twice, so the weights become repetitions: each of the query's own words
--copies times, each added word in proportion to its weight. Run `cloze eval --queries OUT_JSONL`
on the same collection to score it.
"""
import argparse
import json
import re
from collections import Counter, defaultdict

STOP_WORDS = set("""a about above after again against all am an and any are as at be because been
before being below between both but by can cannot could did do does doing down during each few for
from further had has have having he her here hers herself him himself his how i if in into is it
its itself let me more most my myself no nor not of off on once only or other ought our ours
ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which
while who whom why with would you your yours yourself yourselves also may might must shall will
one two three use used using however thus therefore within without upon via per""".split())


def words(text):
    return [w for w in re.findall(r"[a-z][a-z0-9\-]+", text.lower())
            if w not in STOP_WORDS and len(w) > 2]


def main():
    parser = argparse.ArgumentParser()
    for name in ["corpus", "queries", "run", "out"]:
        parser.add_argument(name)
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--terms", type=int, default=20)
    parser.add_argument("--original-weight", type=float, default=0.8)
    parser.add_argument("--copies", type=int, default=4)
    args = parser.parse_args()

    documents = {}
    for line in open(args.corpus):
        document = json.loads(line)
        documents[document["_id"]] = words(f"{document.get('title') or ''} {document.get('text') or ''}")
    document_frequency = Counter()
    for terms in documents.values():
        document_frequency.update(set(terms))
    too_common = 0.1 * len(documents)

    ranked = defaultdict(list)
    for line in open(args.run):
        query, _, document, _, score, _ = line.split()
        ranked[query].append((float(score), document))

    with open(args.out, "w") as out:
        for line in open(args.queries):
            query = json.loads(line)
            own = words(query["text"])
            best = sorted(ranked.get(query["_id"], []), reverse=True)[:args.docs]
            total = sum(score for score, _ in best) or 1.0
            relevance = Counter()
            for score, document in best:
                terms = documents.get(document) or []
                for word, count in Counter(terms).items():
                    if document_frequency[word] <= too_common:
                        relevance[word] += score / total * count / len(terms)
            chosen = relevance.most_common(args.terms)
            chosen_mass = sum(weight for _, weight in chosen) or 1.0
            added_mass = len(own) * args.copies * (1 - args.original_weight) / args.original_weight
            text = [word for word in own for _ in range(args.copies)]
            for word, weight in chosen:
                text += [word] * round(added_mass * weight / chosen_mass)
            out.write(json.dumps({"_id": query["_id"], "text": " ".join(text)}) + "\n")


if __name__ == "__main__":
    main()
