#!/usr/bin/env bash
# The wheels a GPU session carries (bench/device/session.sh): every package that Prefect, MLflow,
# Optuna, pydantic and arch need and the device's image lacks, pinned in
# bench/device/requirements.txt, for the image's Python 3.12 on x86-64. Run here, in the repo root:
#
#   bash bench/device/wheels.sh                         # .whl/ for the device (cp312)
#   WHEEL_PYTHON=3.11 WHEEL_DIR=/tmp/whl311 bash bench/device/wheels.sh   # a rehearsal here
#
# How the list was made (2026-11-29): pip resolved the project's dependencies for cp312, the
# packages the device's image already holds (the device tool's KINDS.md) were taken out, then each
# large one was left out in turn and a smoke study rehearsed on a CPU environment holding only
# the image's packages: psycopg2-binary (4 MB) is not needed there (SQLite stores); asyncpg,
# cryptography, databricks-sdk and burner-redis are imported when Prefect's temporary server or
# MLflow start, so they stay. typing-extensions is on the image, but carried at the version
# pydantic 2.14 was resolved with. torch, numpy and the rest of the image are never carried: the
# image's CUDA torch must stay. The device tool carries at most 64 MiB with the working tree.
set -euo pipefail

PYTHON_VERSION=${WHEEL_PYTHON:-3.12}
DIR=${WHEEL_DIR:-.whl}
LIMIT=$((64 * 1024 * 1024))

if [ "$DIR" = .whl ]; then  # never committed, never sent unless a run carries it
  mkdir -p .git/info
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
fi
mkdir -p "$DIR"
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_5 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  "${platforms[@]}" -d "$DIR" -r bench/device/requirements.txt 2>&1 | grep -v "is ignored" || true

expected=$(grep -c "==" bench/device/requirements.txt)
found=$(find "$DIR" -type f -name "*.whl" | wc -l)
[ "$found" -eq "$expected" ] || { echo "expected $expected wheels in $DIR, found $found: remove stale ones and run again" >&2; exit 1; }
wheels=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -1 | cut -f1)
awk -v n="$found" -v w="$wheels" -v t="$tree" \
  'BEGIN { printf "%d wheels: %.1f MiB; working tree: %.1f MiB; together %.1f of the 64 MiB a run carries\n", n, w / 2^20, t / 2^20, (w + t) / 2^20 }'
if [ "$DIR" = .whl ] && [ $((wheels + tree)) -gt $LIMIT ]; then
  echo "over the device tool's 64 MiB: leave a package out (and rehearse) or carry less" >&2
  exit 1
fi
