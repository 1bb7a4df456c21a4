"""Reference p-values for paired per-query scores, read as JSON from standard input:
[{"a": [...], "b": [...]}, ...]. Prints, per pair, scipy's paired t-test p-value and a paired
randomization test p-value from numpy (random sign flips of the differences, 200,000 trials)."""
import json
import sys

import numpy as np
from scipy import stats

TRIALS = 200_000

out = []
rng = np.random.default_rng(12345)
for pair in json.load(sys.stdin):
    a, b = np.array(pair["a"]), np.array(pair["b"])
    t_p = float(stats.ttest_rel(a, b).pvalue)
    d = a - b
    observed = abs(d.sum())
    extreme = 0
    for start in range(0, TRIALS, 10_000):
        signs = rng.choice([-1.0, 1.0], size=(10_000, len(d)))
        extreme += int((np.abs(signs @ d) >= observed - 1e-9 * (1 + observed)).sum())
    out.append({"t_test_p": t_p, "randomization_p": (extreme + 1) / (TRIALS + 1)})
json.dump(out, sys.stdout)
