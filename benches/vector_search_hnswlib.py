"""hnswlib's side of benches/vector_search.rs: the same vectors, settings and queries.

Reads WORK/vectors.f32, WORK/queries.f32 and WORK/request.json (dimension, m, ef_construction,
k, build_threads, truth: each query's exact top-k as row numbers); builds an inner-product
index (the vectors have unit length, so this is cosine) and prints one JSON line: the build
time and hnswlib's version. Then, for each ef_search read from stdin (one per line), it answers
all queries once on one thread and prints a JSON line with the seconds it took and recall@k,
so that the Rust side can alternate with it.
"""

import json
import sys
import time
from pathlib import Path

import hnswlib
import numpy as np

work = Path(sys.argv[1])
request = json.loads((work / "request.json").read_text())
dim, k = request["dimension"], request["k"]
vectors = np.fromfile(work / "vectors.f32", dtype="<f4").reshape(-1, dim)
queries = np.fromfile(work / "queries.f32", dtype="<f4").reshape(-1, dim)
truth = [set(row) for row in request["truth"]]

started = time.perf_counter()
index = hnswlib.Index(space="ip", dim=dim)
index.init_index(max_elements=len(vectors), M=request["m"], ef_construction=request["ef_construction"])
index.set_num_threads(request["build_threads"])
index.add_items(vectors, np.arange(len(vectors)))
build_seconds = time.perf_counter() - started
print(json.dumps({"build_seconds": build_seconds,
                  "version": getattr(hnswlib, "__version__", "unknown")}), flush=True)

# One thread, as for Cloze; one batch call, so Python's per-call overhead is not counted.
index.set_num_threads(1)
for line in sys.stdin:
    ef = int(line)
    index.set_ef(max(ef, k))
    started = time.perf_counter()
    labels, _ = index.knn_query(queries, k=k)
    seconds = time.perf_counter() - started
    hits = sum(len(truth[i] & set(row.tolist())) for i, row in enumerate(labels))
    print(json.dumps({"seconds": seconds, "recall": hits / (len(truth) * k)}), flush=True)
