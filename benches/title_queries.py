"""Titles as pseudo-queries: judged queries made of a collection's titles, to tune fusion on.

    python3 benches/title_queries.py CORPUS_JSONL MODEL_DIR OUT_DIR

`cloze tune` without judgments makes its queries of sentences; this makes them of titles, to
compare. Of the documents the model left out of its training (MODEL_DIR/held_out_documents.json)
that have a title of at least 3 words and a text of at least 12, 300 drawn at random (seed 0)
each give a query, their title, with that document the one relevant to it. OUT_DIR receives
queries.jsonl, qrels.tsv and corpus.jsonl, the corpus with those documents' titles taken out,
so that a query does not match its document word for word. Index OUT_DIR/corpus.jsonl with the
model, then `cloze tune --queries OUT_DIR/queries.jsonl --qrels OUT_DIR/qrels.tsv` on it.
"""
import hashlib
import json
import os
import random
import sys

QUERIES = 300


def searchable_text(document):
    """Title and text joined as Cloze joins them before hashing a held-out document."""
    title, text = document.get("title", ""), document.get("text", "")
    if not title:
        return text
    return f"{title}\n{text}" if text else title


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    corpus_path, model, out = sys.argv[1:4]
    held_out = {}
    for entry in json.load(open(os.path.join(model, "held_out_documents.json")))["documents"]:
        held_out.setdefault(entry["id"], set()).add(entry["sha256"])
    corpus = [json.loads(line) for line in open(corpus_path, encoding="utf-8")]
    sources = [
        document for document in corpus
        if hashlib.sha256(searchable_text(document).encode()).hexdigest() in held_out.get(document["_id"], ())
        and len(document.get("title", "").split()) >= 3 and len(document.get("text", "").split()) >= 12
    ]
    random.Random(0).shuffle(sources)
    sources = {document["_id"]: document for document in sources[:QUERIES]}
    if not sources:
        sys.exit(f"{corpus_path}: no held-out document of {model} has a title of 3 words")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "queries.jsonl"), "w", encoding="utf-8") as queries, \
            open(os.path.join(out, "qrels.tsv"), "w", encoding="utf-8") as qrels:
        qrels.write("query-id\tcorpus-id\tscore\n")
        for n, (id, document) in enumerate(sources.items(), 1):
            queries.write(json.dumps({"_id": f"title-{n}", "text": document["title"]}) + "\n")
            qrels.write(f"title-{n}\t{id}\t1\n")
    with open(os.path.join(out, "corpus.jsonl"), "w", encoding="utf-8") as written:
        for document in corpus:
            if document["_id"] in sources:
                document = dict(document, title="")
            written.write(json.dumps(document) + "\n")
    print(f"{len(sources)} title queries", file=sys.stderr)


if __name__ == "__main__":
    main()
