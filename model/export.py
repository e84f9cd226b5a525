"""Export: compile the trained classifier to TorchScript, prove it agrees, write the bundle.

    export_bundle(model, tokenizer, labels, out_dir, parity_texts=..., precision=...) -> ExportResult

Steps:
  1. wrap the classifier in ``ProbabilityModel`` (ids, mask -> probabilities), on the CPU;
     for ``precision="int8"`` quantize its Linear layers dynamically (int8 weights, activations
     quantized per batch at run time: 2-3x faster on CPUs with VNNI, a small accuracy cost);
  2. script it (``torch.jit.script``: both branches of every ``if`` are kept, unlike tracing);
  3. parity: compiled vs eager *of the same precision* on a padded batch of validation texts,
     max abs difference of probabilities <= 1e-5, else ``ParityError``;
  4. write the bundle (``model.bundle.write_bundle``), load it back verified, and check its
     predictions - through the bundle's own tokenizer settings - against eager again.

For int8, the fp32 -> int8 difference is measured and recorded, never enforced: that is the
price of quantization, reported beside the accuracy change.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
import torch
from tokenizers import Tokenizer
from torch import nn

from model import tokenizer as tok_lib
from model.bundle import MULTI_LABEL, SINGLE_LABEL, Bundle, replace_dir, write_bundle
from model.encoder import EncoderClassifier, ProbabilityModel
from model.errors import BundleError, ParityError
from model.truncation import Truncation, pool

log = structlog.get_logger(__name__)

Precision = Literal["fp32", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
# Compiled and eager run the same kernels in the same order, so on one machine they agree to
# float rounding (~1e-7); 1e-5 leaves room for that and flags anything structural.
PARITY_TOLERANCE = 1e-5
# Enough texts to cover short and long ones (so padding is exercised) in one batch.
PARITY_BATCH = 64


@dataclass
class ExportResult:
    path: Path
    precision: str
    parity_max_abs_diff: float  # compiled vs eager, same precision
    bundle_max_abs_diff: float  # reloaded bundle (its own tokenizer) vs eager
    int8_vs_fp32_max_abs_diff: float | None  # only for int8: the quantization error


def eager_probability_model(
    model: EncoderClassifier, precision: str = "fp32", multi_label: bool = False
) -> nn.Module:
    """A CPU copy of ``model`` wrapped to return probabilities (softmax, or sigmoids for
    ``multi_label``), quantized for ``int8``."""
    if precision not in PRECISIONS:
        raise BundleError(f"precision {precision!r}: expected one of {PRECISIONS}")
    wrapped = ProbabilityModel(copy.deepcopy(model).cpu().float(), multi_label=multi_label).eval()
    if precision == "int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices
            wrapped = torch.ao.quantization.quantize_dynamic(
                wrapped, {nn.Linear}, dtype=torch.qint8
            )
    return wrapped


def script(module: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript-compile ``module``; a failure is a BundleError naming the cause."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript deprecation notice
            return torch.jit.script(module)
    except Exception as exc:
        raise BundleError(f"the model cannot be compiled with TorchScript: {exc}") from exc


@torch.inference_mode()
def max_abs_diff(
    a: nn.Module | torch.jit.ScriptModule,
    b: nn.Module | torch.jit.ScriptModule,
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> float:
    """Largest absolute difference between two models' outputs on one batch."""
    return float((a(ids, mask).float() - b(ids, mask).float()).abs().max())


def check_parity(
    eager: nn.Module,
    compiled: torch.jit.ScriptModule,
    ids: torch.Tensor,
    mask: torch.Tensor,
    *,
    tolerance: float = PARITY_TOLERANCE,
    what: str = "compiled",
) -> float:
    """The max abs difference of probabilities; ParityError when it exceeds ``tolerance``."""
    diff = max_abs_diff(eager, compiled, ids, mask)
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(
            f"the {what} model disagrees with the eager model: max abs difference of"
            f" probabilities {diff:.3g} > {tolerance:g} on a batch of {ids.shape[0]} texts;"
            " the bundle was not written"
        )
    return diff


def parity_batch(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to PARITY_BATCH texts as one padded batch (ids, mask), int64 (B, T)."""
    chosen = list(texts[:PARITY_BATCH])
    if not chosen:
        raise BundleError("parity check needs at least one validation text")
    return tok_lib.encode(tok_lib.prepare(tokenizer, max_length), chosen)


def export_bundle(
    model: EncoderClassifier,
    tokenizer: Tokenizer,
    labels: Sequence[str],
    out_dir: str | Path,
    *,
    parity_texts: Sequence[str],
    name: str,
    precision: str = "fp32",
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    thresholds: Sequence[float] | None = None,
    truncation: Truncation | None = None,
    extra_config: dict[str, Any] | None = None,
) -> ExportResult:
    """Compile, check and write a bundle; see the module docstring for the steps.

    ``thresholds`` (one per label) makes a multi-label bundle: sigmoid outputs, and the
    thresholds recorded in config.json. ``truncation`` is how texts are read (default head).
    """
    multi_label = thresholds is not None
    max_length = model.config.max_length
    ids, mask = parity_batch(tokenizer, parity_texts, max_length)
    eager = eager_probability_model(model, precision, multi_label)
    compiled = script(eager)
    diff = check_parity(eager, compiled, ids, mask)
    int8_diff = None
    if precision == "int8":
        int8_diff = max_abs_diff(eager_probability_model(model, "fp32", multi_label), eager, ids, mask)

    # Written to a staging folder first and moved into place only once it has passed every
    # check: a failed export never replaces a good bundle at ``out_dir``.
    final = Path(out_dir).resolve()
    staging = final.with_name(f".{final.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    path = write_bundle(
        staging,
        scripted_model=compiled,
        tokenizer=tokenizer,
        labels=list(labels),
        name=name,
        max_length=max_length,
        lowercase=tok_lib.lowercases(tokenizer),
        model_config=model.config.to_dict(),
        metrics=metrics,
        training=training,
        precision=precision,
        task=MULTI_LABEL if multi_label else SINGLE_LABEL,
        thresholds=[float(t) for t in thresholds] if thresholds is not None else None,
        truncation=truncation,
        extra_config=extra_config,
    )
    # What the worker will run: the saved file, through the bundle's own tokenizer settings
    # and truncation (every window of every text, pooled as the bundle says).
    bundle = Bundle.load(path)
    chosen = list(parity_texts[:PARITY_BATCH])
    with torch.inference_mode():
        reloaded = bundle.predict_proba(chosen)
        w_ids, w_mask, counts = bundle.encode_windows(chosen)
        t = bundle.truncation
        expected = torch.from_numpy(pool(eager(w_ids, w_mask).float().numpy(), counts, t.pooling, multi_label))
    bundle_diff = float((reloaded - expected).abs().max())
    if not bundle_diff <= PARITY_TOLERANCE:
        shutil.rmtree(staging, ignore_errors=True)
        raise ParityError(
            f"the saved bundle disagrees with the eager model: max abs difference"
            f" {bundle_diff:.3g} > {PARITY_TOLERANCE:g}; the bundle was not written"
        )
    path = replace_dir(staging, final)
    log.info(
        "exported", bundle=str(path), version=bundle.version, precision=precision,
        parity_max_abs_diff=diff, bundle_max_abs_diff=bundle_diff,
        int8_vs_fp32_max_abs_diff=int8_diff,
    )
    return ExportResult(path, precision, diff, bundle_diff, int8_diff)
