"""Passages of the Gutenberg pre-training corpus as a corpus of documents, to train beside a
collection's own (`cloze train --corpus ... OUT_JSONL`).

    python3 benches/gutenberg_passages.py GUTENBERG_TXT_GZ OUT_JSONL [COUNT]

Consecutive paragraphs (non-blank lines) are joined until a passage has at least 150 words, about
an abstract's length; COUNT of them (default 11,000) drawn at random (seed 0) are written as
`{"_id": "gutenberg-N", "title": "", "text": ...}` lines.
"""
import gzip
import json
import random
import sys

MIN_WORDS = 150


def main():
    source, out = sys.argv[1:3]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 11000
    passages, paragraphs, words = [], [], 0
    with gzip.open(source, "rt") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            paragraphs.append(line)
            words += len(line.split())
            if words >= MIN_WORDS:
                passages.append(" ".join(paragraphs))
                paragraphs, words = [], 0
    random.seed(0)
    random.shuffle(passages)
    with open(out, "w") as file:
        for number, text in enumerate(passages[:count]):
            file.write(json.dumps({"_id": f"gutenberg-{number}", "title": "", "text": text}) + "\n")


if __name__ == "__main__":
    main()
