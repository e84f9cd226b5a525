#!/usr/bin/env bash
# The prepared GPU run for issue 11: one short run (about 5 minutes on an H200) that prints
#   1. model only: MiniLM-shaped bf16 texts/s by batch size x padded-token budget, AG News texts;
#   2. the worker end to end with TAGSTREAM_PROCESSES = 1, 2, 4, 8 feeders (when Java 17+ is there).
# (bench/gpu_bench.py does the work; this script sets up whatever machine it lands on.)
#
#   bench/gpu_bench.sh --prepare   here, with the network: fills .gpu_carry/ (git-ignored) with what a
#                                  bare GPU machine lacks: Python 3.12 wheels of the worker's pure-Python
#                                  dependencies, the Kafka broker's jars (~44 MB), MiniLM's tokenizer
#                                  and the AG News test texts (~56 MB in all, under the device tool's 64)
#   bench/gpu_bench.sh             on the GPU machine, e.g. with the device tool:
#                                    run(command="bench/gpu_bench.sh 2>&1 | tee $OUT/gpu_bench.log",
#                                        carry=[".gpu_carry"], timeout_s=540)
#   bench/gpu_bench.sh --smoke     anywhere, on the CPU, about a minute: the same steps reduced (tiny
#                                  model, N = 1, 2); `make gpu-bench-smoke` and a test run it
# Extra arguments go to bench/gpu_bench.py (e.g. --bootstrap HOST:PORT, --skip-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu_carry
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python

# The worker's dependencies that the GPU image lacks, at uv.lock's versions; the image has torch,
# tokenizers, numpy, pyyaml, prometheus-client and typing-extensions of its own.
WHEELS=(kafka-python crc32c pydantic pydantic-core pydantic-settings annotated-types typing-inspection
        python-dotenv structlog orjson
        flash-tokenizer requests urllib3 certifi charset-normalizer idna  # the fast tokenizer (worker/tokenizing.py)
        confluent-kafka)  # the GPU overlay's Kafka client (TAGSTREAM_KAFKA_CLIENT=confluent; librdkafka inside, ~5 MB)

prepare() {
    mkdir -p "$CARRY/wheels"
    local specs
    mapfile -t specs < <("$PY" -c '
import sys, tomllib
locked = {p["name"]: p["version"] for p in tomllib.load(open("uv.lock", "rb"))["package"]}
print("\n".join(f"{name}=={locked[name]}" for name in sys.argv[1:]))' "${WHEELS[@]}")
    local pip_py=""  # a Python with pip (the project's uv venv has none)
    for candidate in python3 "$HOME/.cache/tagstream/tools/uv-0.13.9/bin/python"; do
        if "$candidate" -m pip --version >/dev/null 2>&1; then pip_py=$candidate; break; fi
    done
    [[ -n $pip_py ]] || { echo "error: no Python with pip found to download wheels" >&2; exit 2; }
    "$pip_py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$CARRY/wheels" "${specs[@]}"
    local jars
    jars=$("$PY" -c 'from localkafka.jars import ensure_jars; print(ensure_jars().lib_dir.parent)')
    mkdir -p "$CARRY/kafka" && rm -rf "$CARRY/kafka/$(basename "$jars")"
    mkdir -p "$CARRY/kafka/$(basename "$jars")" && cp -r "$jars/lib" "$CARRY/kafka/$(basename "$jars")/"
    "$PY" -c 'from model.pretrained import builtin_folder; print(builtin_folder("minilm") / "tokenizer.json")' \
        | xargs -I{} cp {} "$CARRY/minilm_tokenizer.json"
    if [[ -f ../shared/datasets/ag_news/test.jsonl ]]; then
        cp ../shared/datasets/ag_news/test.jsonl "$CARRY/ag_news_test.jsonl"
    else
        echo "note: ../shared/datasets/ag_news/test.jsonl not found: the GPU run will use fixture sentences"
    fi
    du -sh "$CARRY"
    echo "ready: carry $CARRY with the device tool and run bench/gpu_bench.sh there"
}

if [[ ${1:-} == --prepare ]]; then
    prepare
    exit 0
fi

# On a machine without the project's virtual environment: the carried wheels, then run from the tree.
if ! "$PY" -c 'import pydantic_settings, structlog, orjson, kafka' 2>/dev/null; then
    if [[ -d $CARRY/wheels ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/tagstream-site "$CARRY"/wheels/*.whl
        export PYTHONPATH=/tmp/tagstream-site${PYTHONPATH:+:$PYTHONPATH}
    else
        echo "error: the worker's dependencies are missing and $CARRY/wheels is not here: run" \
             "bench/gpu_bench.sh --prepare first (where pip can download) and carry $CARRY" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
[[ -d $CARRY/kafka ]] && export TAGSTREAM_KAFKA_CACHE=$PWD/$CARRY/kafka
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
fi
exec "$PY" bench/gpu_bench.py "$@"
