"""Schemathesis hooks for Cloze's API: how to send a bulk body (NDJSON), which it cannot
serialise by itself. A generated string is sent as it is; anything else as one JSON line."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return (json.dumps(value) + "\n").encode("utf-8")
