# Sourced by the relevance scripts under benches/: `reference QRELS RUN` prints pytrec_eval's
# mean nDCG@10 of the run over the judged queries (a query the run misses scores 0), or "-"
# where pytrec_eval is not installed.
reference() {
    if python3 -c 'import pytrec_eval' 2>/dev/null; then
        python3 crates/cloze/tests/pytrec_reference.py "$1" "$2" | python3 -c '
import json, sys
qrels, scores = sys.argv[1], json.load(sys.stdin)
queries = {l.split()[0] for n, l in enumerate(open(qrels)) if l.strip() and not (n == 0 and not l.split()[-1].isdigit())}
print("%.4f" % (sum(scores.get(q, {}).get("ndcg@10", 0.0) for q in queries) / len(queries)))' "$1"
    else
        echo "-"
    fi
}
