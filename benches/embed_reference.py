"""sentence-transformers embedding the same documents as Cloze, for benches/embed_reference.rs.

Usage: python embed_reference.py MODEL_DIR TEXTS_JSONL OUT_VECTORS_F32
Prints one JSON line of the settings used once the model is loaded and warm, then, for each
line read from standard input, embeds every text, writes the vectors and prints one JSON
line with the pass's seconds: the Rust side takes turns with it.
"""
import json
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(int(os.environ.get("CLOZE_THREADS", "2")))
from sentence_transformers import SentenceTransformer  # noqa: E402

model_dir, texts_file, out_file = sys.argv[1:4]
texts = [json.loads(line)["text"] for line in open(texts_file, encoding="utf-8")]
model = SentenceTransformer(model_dir, device="cpu")
# A folder without modules.json (a plain BERT, as `cloze train` writes) loads with the position
# limit as its length; sentence_bert_config.json says the length the model was trained at, and
# Cloze reads it, so give it to sentence-transformers too.
settings = os.path.join(model_dir, "sentence_bert_config.json")
if not os.path.exists(os.path.join(model_dir, "modules.json")) and os.path.exists(settings):
    model.max_seq_length = json.load(open(settings))["max_seq_length"]
model.encode(texts[:64], batch_size=32)  # warm-up
print(json.dumps({
    "max_seq_length": model.max_seq_length,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
}), flush=True)
for _ in sys.stdin:
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    np.asarray(vectors, dtype="<f4").tofile(out_file)
    print(json.dumps({"seconds": seconds}), flush=True)
