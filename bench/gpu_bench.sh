#!/usr/bin/env bash
# The prepared GPU run for issue 11: one short run (about 5 minutes on an H200) that prints
#   1. model only: MiniLM-shaped bf16 texts/s by batch size x padded-token budget, AG News texts;
#   2. the worker end to end with TAGSTREAM_PROCESSES = 1, 2, 4, 8 feeders (when Java 17+ is there).
# (bench/gpu_bench.py does the work; this script sets up whatever machine it lands on.)
#
#   bench/gpu_bench.sh --prepare   here, with the network: fills .gpu_carry/ (git-ignored) with what a
#                                  bare GPU machine lacks: Python 3.12 wheels of the worker's pure-Python
#                                  dependencies, the Kafka broker's jars (~15 MB as .tar.xz), a Java 17
#                                  runtime for the broker (jlink'd, ~17 MB as .tar.xz: the GPU image has
#                                  no Java), MiniLM's tokenizer and the AG News test texts (~43 MB in
#                                  all; the device tool takes 64 MiB with the tree)
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
        python-dotenv structlog orjson typing-extensions  # pydantic 2.14 needs typing-extensions >= 4.16
        flash-tokenizer  # the fast tokenizer (worker/tokenizing.py); its requests & co. are in the image
        confluent-kafka)  # the GPU overlay's Kafka client (TAGSTREAM_KAFKA_CLIENT=confluent; librdkafka inside, ~5 MB)

# What Kafka 4's broker loads of the JDK (jdk.unsupported: sun.misc.Signal; java.desktop: java.beans, for log4j).
JRE_MODULES=java.base,java.logging,java.management,java.naming,java.rmi,java.scripting,java.security.jgss,\
java.security.sasl,java.sql,java.xml,jdk.crypto.ec,jdk.management,jdk.unsupported,jdk.zipfs,java.instrument,\
jdk.naming.dns,java.desktop

prepare() {
    rm -rf "$CARRY/wheels"
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
    # The broker's jars, xz'd (~15 MB, from 44): compression libraries' native code for other platforms
    # dropped (the GPU machine needs Linux x86-64's), every jar stored uncompressed so that xz does better.
    rm -rf "$CARRY/kafka" "$CARRY/kafka.tar.xz" /tmp/tagstream-kafka-build
    "$PY" - "$jars/lib" "/tmp/tagstream-kafka-build/$(basename "$jars")/lib" <<'PYEOF'
import re, sys, zipfile
from pathlib import Path
native = re.compile(r"\.(so|dll|dylib|jnilib)$")
source, target = Path(sys.argv[1]), Path(sys.argv[2])
target.mkdir(parents=True)
for jar in source.glob("*.jar"):
    with zipfile.ZipFile(jar) as src, zipfile.ZipFile(target / jar.name, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            name = item.filename.lower()
            if native.search(name) and not re.search(r"linux/(amd64|x86_64)/", name):
                continue
            dst.writestr(item, src.read(item), compress_type=zipfile.ZIP_STORED)
PYEOF
    tar -C /tmp/tagstream-kafka-build -cf - . | xz -T0 -6 > "$CARRY/kafka.tar.xz" && rm -rf /tmp/tagstream-kafka-build
    # The GPU image has no Java: a jlink'd runtime of the modules the broker uses, xz'd (~17 MB).
    rm -rf "$CARRY/jre.tar.xz" /tmp/tagstream-jre-build
    jlink --add-modules "$JRE_MODULES" --strip-debug --no-header-files --no-man-pages --compress=0 \
        --output /tmp/tagstream-jre-build/jre
    strip --strip-unneeded /tmp/tagstream-jre-build/jre/lib/server/libjvm.so 2>/dev/null || true
    tar -C /tmp/tagstream-jre-build -cf - jre | xz -T0 -6 > "$CARRY/jre.tar.xz" && rm -rf /tmp/tagstream-jre-build
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
if [[ -f $CARRY/kafka.tar.xz ]]; then
    mkdir -p /tmp/tagstream-kafka && tar -C /tmp/tagstream-kafka -xJf "$CARRY/kafka.tar.xz"
    export TAGSTREAM_KAFKA_CACHE=/tmp/tagstream-kafka
fi
if [[ -z ${JAVA_HOME:-} ]] && ! command -v java >/dev/null && [[ -f $CARRY/jre.tar.xz ]]; then
    mkdir -p /tmp/tagstream-jre && tar -C /tmp/tagstream-jre -xJf "$CARRY/jre.tar.xz"
    export JAVA_HOME=/tmp/tagstream-jre/jre
fi
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader || true
fi
exec "$PY" bench/gpu_bench.py "$@"
