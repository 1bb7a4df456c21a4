"""hnswlib's side of benches/vector_search.rs: the same vectors, settings and queries.

Reads WORK/vectors.f32, WORK/queries.f32 and WORK/request.json (dimension, m, ef_construction,
ef_search, k, repetitions, build_threads, truth: each query's exact top-k as row numbers);
builds an inner-product index (the vectors have unit length, so this is cosine), then, for each
ef_search, answers all queries on one thread, `repetitions` times, and prints JSON: the build
time, and each ef's recall@k and queries/s (median of the repetitions).
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

# One thread, as for Cloze; one batch call, so Python's per-call overhead is not counted.
index.set_num_threads(1)
curve = []
for ef in request["ef_search"]:
    index.set_ef(max(ef, k))
    times = []
    for _ in range(request["repetitions"]):
        started = time.perf_counter()
        labels, _ = index.knn_query(queries, k=k)
        times.append(time.perf_counter() - started)
    hits = sum(len(truth[i] & set(row.tolist())) for i, row in enumerate(labels))
    curve.append({"ef": ef, "recall": hits / (len(truth) * k), "qps": len(queries) / float(np.median(times))})

print(json.dumps({"build_seconds": build_seconds, "curve": curve,
                  "version": getattr(hnswlib, "__version__", "unknown")}))
