"""Document expansion from a static encoder's own words, for benches/expansion.sh.

    python3 benches/nearest_words.py MODEL_DIR VECTORS_DIR OUT_DIR [--in-document]

A static encoder (`model.num_hidden_layers = 0`) embeds a text as a weighted mean of its tokens'
vectors, so the vocabulary words whose vectors lie nearest a document's vector are the words the
model places it among. For each document of the five test collections this writes the 50
nearest whole words, with their cosine as the weight, in the form `expansion.sh` reads
(`{"_id", "terms": [[word, weight], ...]}`): words the document lacks (no word of it shares
their first five letters, so that plurals and the like do not count as new), or with
`--in-document` the document's own words, which repeating raises in BM25. A word must occur in
at least two documents of its collection, since WordPiece also keeps word beginnings. Document
vectors come from `cloze embed --model MODEL_DIR` as VECTORS_DIR/COLLECTION.vec; the corpora
from $CLOZE_TEST_DATA (default ../shared/data). Needs numpy and the model's train_config.toml (the
crop length sets the positions averaged).
"""
import json
import os
import re
import struct
import sys
import tomllib
from collections import Counter

import numpy as np

COLLECTIONS = ["scifact", "cranfield", "cisi", "cacm", "npl"]
TERMS = 50


def read_tensors(path, names):
    """The named float32 tensors of a safetensors file."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        tensors = {}
        for name in names:
            entry = header[name]
            if entry["dtype"] != "F32":
                sys.exit(f"{path}: {name} is {entry['dtype']}, not F32")
            start, end = entry["data_offsets"]
            f.seek(8 + size + start)
            tensors[name] = np.frombuffer(f.read(end - start), dtype=np.float32).reshape(entry["shape"])
    return tensors


def word_vectors(model):
    """Each token's vector as the static encoder sees it at an average position of its crops."""
    config = json.load(open(f"{model}/config.json"))
    with open(f"{model}/train_config.toml", "rb") as f:
        crop_length = tomllib.load(f)["training"]["max_len"]
    if config["num_hidden_layers"] != 0:
        sys.exit(f"{model}: num_hidden_layers is {config['num_hidden_layers']}; this needs a static encoder (0)")
    prefix = "bert.embeddings."
    t = read_tensors(f"{model}/model.safetensors", [
        prefix + "word_embeddings.weight", prefix + "position_embeddings.weight",
        prefix + "token_type_embeddings.weight", prefix + "LayerNorm.weight", prefix + "LayerNorm.bias"])
    x = (t[prefix + "word_embeddings.weight"] + t[prefix + "position_embeddings.weight"][:crop_length].mean(0)
         + t[prefix + "token_type_embeddings.weight"][0])
    x = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + config["layer_norm_eps"])
    x = x * t[prefix + "LayerNorm.weight"] + t[prefix + "LayerNorm.bias"]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def words_of(document):
    return re.findall(r"[a-z]+", (document.get("title", "") + " " + document.get("text", "")).lower())


def main():
    if len(sys.argv) not in (4, 5) or (len(sys.argv) == 5 and sys.argv[4] != "--in-document"):
        sys.exit(__doc__)
    model, vectors_dir, out_dir = sys.argv[1:4]
    in_document = len(sys.argv) == 5
    data = os.environ.get("CLOZE_TEST_DATA", "../shared/data")
    vectors = word_vectors(model)
    vocab = [line.rstrip("\n") for line in open(f"{model}/vocab.txt", encoding="utf-8")]
    os.makedirs(out_dir, exist_ok=True)
    for collection in COLLECTIONS:
        corpus = [json.loads(line) for line in open(f"{data}/{collection}/corpus.jsonl", encoding="utf-8")]
        word_sets = [set(words_of(document)) for document in corpus]
        document_frequency = Counter(w for words in word_sets for w in words)
        candidates = np.array([i for i, token in enumerate(vocab)
                               if re.fullmatch(r"[a-z]{3,}", token) and document_frequency[token] >= 2])
        candidate_vectors = vectors[candidates]
        document_vectors = {}
        for line in open(f"{vectors_dir}/{collection}.vec"):
            record = json.loads(line)
            document_vectors[record["id"]] = np.array(record["vector"], dtype=np.float32)
        with open(f"{out_dir}/{collection}.jsonl", "w", encoding="utf-8") as out:
            for document, words in zip(corpus, word_sets):
                vector = document_vectors.get(document["_id"])
                if vector is None:
                    sys.exit(f"{vectors_dir}/{collection}.vec: no vector for document {document['_id']}")
                stems = {w[:5] for w in words}
                cosine = candidate_vectors @ vector
                terms = []
                for i in np.argsort(-cosine):
                    word = vocab[candidates[i]]
                    if (word in words) if in_document else (word[:5] not in stems):
                        terms.append([word, float(cosine[i])])
                        if len(terms) == TERMS:
                            break
                out.write(json.dumps({"_id": document["_id"], "terms": terms}) + "\n")


if __name__ == "__main__":
    main()
