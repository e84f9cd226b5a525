"""Per-replica capacity of the model stage, to size KEDA's lagThreshold in deploy/k8s.

    python bench/deploy_capacity.py --device cuda            # GPU overlay's batch limits
    python bench/deploy_capacity.py --device cpu --threads 4 # CPU overlay's

Exports a bundle with the shape of all-MiniLM-L6-v2 (6 layers, 384 wide, 12 heads) or of the
`small` preset (random weights: speed does not depend on them), then pushes real texts through ``Bundle.encode`` and the
compiled model in batches cut like the worker's (at most max_batch_size texts and
max_batch_tokens padded tokens), timing tokenization + transfer + forward + copy back. Kafka I/O
and JSON are not included, so the figure is an upper bound on a worker's throughput.

Prints texts/s per setting and the lagThreshold that a target delay implies
(lagThreshold ~= texts/s x delay: KEDA adds a replica when each one holds more lag than that).
Texts: the first --limit lines of ../shared/datasets/ag_news/test.jsonl (or --texts FILE).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from model.bundle import Bundle, write_bundle  # noqa: E402
from model.config import EncoderConfig  # noqa: E402
from model.encoder import EncoderClassifier, ProbabilityModel  # noqa: E402

DEFAULT_TEXTS = REPO_ROOT.parent / "shared" / "datasets" / "ag_news" / "test.jsonl"
# The overlays' settings (deploy/k8s/overlays/*/kustomization.yaml).
OVERLAY_LIMITS = {"cuda": (256, 65536), "cpu": (32, 4096)}
# Baseline for comparison: the lagThreshold the base ScaledObject ships with.
SHIPPED_LAG_THRESHOLD = 1000


def read_texts(path: Path, limit: int) -> list[str]:
    texts = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) >= limit:
                break
    return texts


# Encoder shapes: `minilm` is all-MiniLM-L6-v2's (what `--init minilm` trains), `small` the
# from-scratch default preset's (model/config.py).
SHAPES = {
    "minilm": dict(vocab_size=30522, d_model=384, n_heads=12, n_layers=6, d_ff=1536, norm="post",
                   embedding_norm=True, final_norm=False, type_vocab_size=2, layer_norm_eps=1e-12),
    "small": dict(vocab_size=8000, d_model=128, n_heads=4, n_layers=2, d_ff=512),
}


def shaped_bundle(texts: list[str], out: Path, max_length: int, shape: str) -> Path:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=8000, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
    )
    cfg = EncoderConfig(max_length=max_length, n_classes=4, pad_id=tokenizer.token_to_id("[PAD]"), **SHAPES[shape])
    model = ProbabilityModel(EncoderClassifier(cfg)).eval()
    return write_bundle(
        out, scripted_model=torch.jit.script(model), tokenizer=tokenizer,
        labels=["World", "Sports", "Business", "Sci/Tech"], name=f"{shape}-shaped", max_length=max_length,
        lowercase=True, model_config=cfg.to_dict(),
    )


def batches(bundle: Bundle, texts: list[str], max_size: int, max_tokens: int) -> list[list[str]]:
    """Arrival-order batches within both limits (padded cost = longest x count), as the worker cuts them."""
    lengths = [min(len(e.ids), bundle.max_length) for e in bundle.tokenizer.encode_batch(texts)]
    out, current, longest = [], [], 0
    for text, n in zip(texts, lengths, strict=True):
        if current and (len(current) == max_size or max(longest, n) * (len(current) + 1) > max_tokens):
            out.append(current)
            current, longest = [], 0
        current.append(text)
        longest = max(longest, n)
    if current:
        out.append(current)
    return out


def measure(bundle: Bundle, work: list[list[str]], dtype: torch.dtype | None, seconds: float) -> tuple[float, float]:
    """(texts per second, median batch latency in ms) over repeated passes for ``seconds``."""
    autocast = (
        torch.autocast(device_type=bundle.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    )
    sync = torch.cuda.synchronize if bundle.device.type == "cuda" else (lambda: None)
    with torch.inference_mode(), autocast:
        for batch in work[:3]:  # warm-up (kernel selection, allocator)
            ids, mask = bundle.encode(batch)
            bundle.model(ids.to(bundle.device), mask.to(bundle.device)).float().cpu()
        sync()
        done, latencies, start = 0, [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            for batch in work:
                t0 = time.perf_counter()
                ids, mask = bundle.encode(batch)
                bundle.model(ids.to(bundle.device, non_blocking=True), mask.to(bundle.device, non_blocking=True)).float().cpu()
                latencies.append((time.perf_counter() - t0) * 1000)
                done += len(batch)
        elapsed = time.perf_counter() - start
    return done / elapsed, statistics.median(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS)
    parser.add_argument("--limit", type=int, default=4096, help="texts to use")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="minilm", help="encoder shape")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per setting")
    parser.add_argument("--delay-s", type=float, default=1.0, help="target lag delay for lagThreshold")
    args = parser.parse_args()
    if not args.texts.is_file():
        print(f"skipped: {args.texts} not found (pass --texts FILE.jsonl)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = read_texts(args.texts, args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Bundle.load(shaped_bundle(texts, Path(tmp) / "b", args.max_length, args.shape), device=args.device)
        kind = bundle.device.type
        max_size, max_tokens = OVERLAY_LIMITS[kind]
        work = batches(bundle, texts, max_size, max_tokens)
        dtypes = {"float32": None, "bfloat16": torch.bfloat16} if kind == "cuda" else {"float32": None}
        name = torch.cuda.get_device_name() if kind == "cuda" else f"cpu x{torch.get_num_threads()} threads"
        print(f"# {args.shape}-shaped encoder on {name}; torch {torch.__version__}; {len(texts)} texts from {args.texts.name}, "
              f"max_length {args.max_length}; {len(work)} batches (<= {max_size} texts, <= {max_tokens} padded tokens)")
        print(f"{'dtype':<9} {'texts/s':>9} {'batch p50 ms':>13} {'lagThreshold @ ' + str(args.delay_s) + ' s':>20}  shipped")
        for label, dtype in dtypes.items():
            rate, p50 = measure(bundle, work, dtype, args.seconds)
            threshold = max(1, int(float(f"{rate * args.delay_s:.2g}")))  # two significant digits
            print(f"{label:<9} {rate:>9.0f} {p50:>13.1f} {threshold:>20}  {SHIPPED_LAG_THRESHOLD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
