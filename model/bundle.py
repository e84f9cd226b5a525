"""The model bundle: one folder that describes itself. The only definition of its format.

    <bundle>/
      model.ts        TorchScript module: forward(input_ids, attention_mask) -> probabilities
                      input_ids, attention_mask: int64 (B, T); returns float32 (B, len(labels))
      tokenizer.json  a `tokenizers` tokenizer (truncation and padding are set at load time)
      labels.json     label names, in the order of the model's outputs
      config.json     {"format", "name", "created_at", "precision", "tokenizer": {max_length,
                      lowercase, pad_id, pad_token}, "model": <encoder config>, "training": {...},
                      "task": "single_label" | "multi_label",
                      "thresholds": [float, ...]   (multi_label: one per label, in label order),
                      "truncation": {"strategy": "head" | "head+tail" | "chunks", "stride",
                                     "max_windows", "pooling": "mean" | "max", "head_tokens"},
                      "vocab_coverage": {...}      (what the training run measured)}
      metrics.json    the evaluation summary written by training (may be {})
      manifest.json   {"format", "name", "version", "files": {file: sha256}}; written last

Tasks: a ``single_label`` model's probabilities are a softmax (one label per text, the most
probable); a ``multi_label`` model's are independent sigmoids, and a text carries every label
whose probability reaches that label's threshold (possibly none). Truncation: how a text longer
than ``max_length`` is read (``model/truncation.py``); with ``chunks`` a text becomes several
windows, ``model.ts`` scores each window, and the window probabilities are pooled per text
outside it. Bundles written before these keys existed have none of them and mean
``single_label`` and ``head``.

Format: 1 for single-label ``head`` bundles (what every tagstream reads), 2 for bundles that
need a reader of tasks and truncation (multi-label, or a strategy other than ``head``), so an
older worker refuses them instead of serving a sigmoid model as a softmax one. Loading accepts
both.

``version`` is derived from the content (a hash over every file's sha256), so the same model
always has the same version and any change gives a new one. Loading verifies every checksum
and refuses a bundle that was tampered with, is incomplete, or whose parts disagree.

This module imports only the standard library, numpy, torch and tokenizers (and
``model/truncation.py``, which imports no more): the worker uses it without any training code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from model.errors import BundleError
from model.truncation import Truncation, TruncationError, Windower, pool

FORMAT = 2  # the newest format this code writes (and reads)
READABLE_FORMATS = (1, 2)
SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
TASKS = (SINGLE_LABEL, MULTI_LABEL)
MODEL_FILE = "model.ts"
TOKENIZER_FILE = "tokenizer.json"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
CONTENT_FILES = (MODEL_FILE, TOKENIZER_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_version(files: dict[str, str]) -> str:
    """A short, stable version from the files' checksums: same content, same version."""
    joined = "\n".join(f"{name}:{files[name]}" for name in sorted(files))
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


def write_bundle(
    out_dir: str | Path,
    *,
    scripted_model: torch.jit.ScriptModule,
    tokenizer: Tokenizer,
    labels: list[str],
    name: str,
    max_length: int,
    lowercase: bool,
    model_config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    precision: str = "fp32",
    task: str = SINGLE_LABEL,
    thresholds: list[float] | None = None,
    truncation: Truncation | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write a complete bundle to ``out_dir`` atomically and return its path.

    Files are written into a temporary sibling folder which is renamed into place only once
    the manifest is written, so a watcher never sees half a bundle. An existing ``out_dir``
    is replaced. ``task``, ``thresholds`` and ``truncation`` are recorded in config.json (see the
    module docstring); ``extra_config`` adds further top-level keys (e.g. ``vocab_coverage``).
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(set(labels)) != len(labels) or not labels:
        raise BundleError(f"labels must be a non-empty list of distinct names, got {labels}")
    pad_id = tokenizer.token_to_id("[PAD]")
    pad_token = "[PAD]"
    if pad_id is None:
        pad_token = "<pad>"
        pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise BundleError("the tokenizer has no [PAD] or <pad> token; add one before export")
    truncation = truncation or Truncation()
    _check_task(out, task, thresholds, labels)
    fmt = 1 if task == SINGLE_LABEL and truncation.strategy == "head" else 2
    task_keys: dict[str, Any] = {"task": task, "truncation": truncation.to_dict()}
    if task == MULTI_LABEL:
        task_keys["thresholds"] = [float(t) for t in thresholds or []]

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        scripted_model.save(str(tmp / MODEL_FILE))
        # Truncation/padding are runtime choices; store the bare tokenizer.
        bare = Tokenizer.from_str(tokenizer.to_str())
        bare.no_truncation()
        bare.no_padding()
        bare.save(str(tmp / TOKENIZER_FILE))
        _write_json(tmp / LABELS_FILE, list(labels))
        _write_json(
            tmp / CONFIG_FILE,
            {
                "format": fmt,
                "name": name,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "precision": precision,
                "tokenizer": {
                    "max_length": max_length,
                    "lowercase": lowercase,
                    "pad_id": pad_id,
                    "pad_token": pad_token,
                },
                "model": model_config,
                "training": training or {},
                **task_keys,
                **(extra_config or {}),
            },
        )
        _write_json(tmp / METRICS_FILE, metrics or {})
        files = {f: sha256_file(tmp / f) for f in CONTENT_FILES}
        manifest = {"format": fmt, "name": name, "version": content_version(files), "files": files}
        _write_json(tmp / MANIFEST_FILE, manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def replace_dir(staging: Path, final: Path) -> Path:
    """Rename the finished folder ``staging`` to ``final``, replacing any folder there.

    Readers see the old folder or the new one: the old one is renamed aside first and
    removed only after the new one is in place.
    """
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(final)
    return final


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The bundle's manifest, or a BundleError that says what is wrong with the folder."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"bundle {root} does not exist or is not a folder")
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"bundle {root} has no {MANIFEST_FILE}: not a bundle, or still being written")
    manifest = _read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        raise BundleError(
            f"bundle {root}: manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
            f" is not supported (this tagstream reads formats {', '.join(map(str, READABLE_FORMATS))})"
        )
    return manifest


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check every file against the manifest; return the manifest or raise BundleError."""
    root = Path(path)
    manifest = read_manifest(root)
    files: dict[str, str] = manifest.get("files", {})
    problems = []
    for required in CONTENT_FILES:
        if required not in files:
            problems.append(f"{required} is not listed in the manifest")
    for name, expected in sorted(files.items()):
        file = root / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif sha256_file(file) != expected:
            problems.append(f"{name} does not match its sha256 (modified after export?)")
    if not problems and content_version(files) != manifest.get("version"):
        problems.append("the manifest version does not match the file checksums")
    if problems:
        raise BundleError(f"bundle {root} failed verification: " + "; ".join(problems))
    return manifest


@dataclass
class Bundle:
    """A loaded, verified bundle: the compiled model, its tokenizer and what they mean."""

    path: Path
    name: str
    version: str
    labels: list[str]
    max_length: int
    lowercase: bool
    pad_id: int
    precision: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    tokenizer: Tokenizer
    model: torch.jit.ScriptModule
    device: torch.device

    @property
    def task(self) -> str:
        """``single_label`` (softmax, one label a text) or ``multi_label`` (sigmoids, thresholds)."""
        return str(self.config.get("task", SINGLE_LABEL))

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def thresholds(self) -> list[float]:
        """Per label, in label order: the probability at which a multi-label text carries it.
        Empty for single-label bundles."""
        return [float(t) for t in self.config.get("thresholds", [])] if self.multi_label else []

    @property
    def truncation(self) -> Truncation:
        """How texts longer than ``max_length`` are read (``head`` for bundles without the key)."""
        return Truncation.from_dict(self.config.get("truncation"))

    @property
    def windower(self) -> Windower:
        """Texts -> windows of token ids, by this bundle's truncation (built once)."""
        cached: Windower | None = self.__dict__.get("_windower")
        if cached is None:
            cached = Windower(self.tokenizer, self.max_length, self.truncation)
            self.__dict__["_windower"] = cached
        return cached

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> Bundle:
        """Load a bundle onto ``device``; with ``verify`` (the default) check every checksum first."""
        root = Path(path).resolve()
        manifest = verify_bundle(root) if verify else read_manifest(root)
        labels = _read_json(root / LABELS_FILE)
        config = _read_json(root / CONFIG_FILE)
        metrics = _read_json(root / METRICS_FILE)
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise BundleError(f"bundle {root}: {LABELS_FILE} must be a non-empty list of names")
        if not isinstance(config, dict):
            raise BundleError(f"bundle {root}: {CONFIG_FILE} must be an object")
        try:
            tok_cfg = config["tokenizer"]
            max_length = int(tok_cfg["max_length"])
            pad_id = int(tok_cfg["pad_id"])
            pad_token = str(tok_cfg["pad_token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle {root}: {CONFIG_FILE} lacks tokenizer settings ({exc})") from exc
        _check_task(root, str(config.get("task", SINGLE_LABEL)), config.get("thresholds"), labels)
        try:
            tokenizer = Tokenizer.from_file(str(root / TOKENIZER_FILE))
        except Exception as exc:  # the Rust side raises plain Exception
            raise BundleError(f"bundle {root}: {TOKENIZER_FILE} cannot be read: {exc}") from exc
        tokenizer.enable_truncation(max_length=max_length)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # pads to the batch's longest
        device = torch.device(device)
        precision = str(config.get("precision", "fp32"))
        if precision == "int8" and device.type != "cpu":
            # Dynamically quantized Linear layers only have CPU kernels.
            raise BundleError(
                f"bundle {root} is int8 (dynamic quantization), which runs on CPU only; "
                f"load it with device='cpu', or export an fp32 bundle for {device}"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript deprecation notice
                model = torch.jit.load(str(root / MODEL_FILE), map_location=device)
        except Exception as exc:
            raise BundleError(f"bundle {root}: {MODEL_FILE} is not a loadable TorchScript model: {exc}") from exc
        model.eval()
        bundle = cls(
            path=root,
            name=str(manifest.get("name", config.get("name", root.name))),
            version=str(manifest.get("version", "unverified")),
            labels=labels,
            max_length=max_length,
            lowercase=bool(tok_cfg.get("lowercase", False)),
            pad_id=pad_id,
            precision=precision,
            config=config,
            metrics=metrics if isinstance(metrics, dict) else {},
            tokenizer=tokenizer,
            model=model,
            device=device,
        )
        try:
            bundle.windower  # noqa: B018  # a strategy that cannot read texts fails the load
        except TruncationError as exc:
            raise BundleError(f"bundle {root}: {CONFIG_FILE} truncation: {exc}") from exc
        bundle._check_outputs()
        return bundle

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, int64 (B, T), padded to the longest text in the batch.

        The first ``max_length`` tokens of each text (``head``), whatever the bundle's strategy:
        :meth:`encode_windows` reads texts the way the bundle says.
        """
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def encode_windows(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Every window of every text as one padded batch: ids and mask int64 (W, T), and the
        number of windows of each text (in order; they sum to W)."""
        windows = self.windower.windows(texts)
        rows = [w for per_text in windows for w in per_text]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask, [len(w) for w in windows]

    @torch.inference_mode()
    def predict_proba(self, texts: list[str]) -> torch.Tensor:
        """Probabilities (B, len(labels)) on the CPU, float32, read and pooled as the bundle says."""
        ids, mask, counts = self.encode_windows(texts)
        probs = self.model(ids.to(self.device), mask.to(self.device)).float().cpu()
        if len(counts) == probs.shape[0]:
            return probs
        t = self.truncation
        return torch.from_numpy(pool(probs.numpy(), counts, t.pooling, self.multi_label))

    def tags(self, probs: Any) -> list[list[int]]:
        """Multi-label: per row of ``probs`` (N, L), the indices of labels at or over threshold."""
        scores = np.asarray(probs, dtype=np.float32)
        over = scores >= np.asarray(self.thresholds, dtype=np.float32)[None, :]
        return [np.flatnonzero(row).tolist() for row in over]

    def _check_outputs(self) -> None:
        """Refuse a bundle whose model does not produce one probability per label."""
        try:
            probs = self.predict_proba(["tagstream bundle self-check"])
        except Exception as exc:
            raise BundleError(f"bundle {self.path}: the model failed on a test input: {exc}") from exc
        if probs.shape != (1, len(self.labels)):
            raise BundleError(
                f"bundle {self.path}: the model returns {tuple(probs.shape[1:])} scores per text"
                f" but {LABELS_FILE} names {len(self.labels)} labels"
            )


def _check_task(root: Path, task: str, thresholds: Any, labels: list[str]) -> None:
    """A known task; a multi-label one with one threshold in [0, 1] per label."""
    if task not in TASKS:
        raise BundleError(f"bundle {root}: task {task!r} is not one of {TASKS}")
    if task != MULTI_LABEL:
        return
    if (
        not isinstance(thresholds, list)
        or len(thresholds) != len(labels)
        or not all(isinstance(t, int | float) and 0.0 <= t <= 1.0 for t in thresholds)
    ):
        raise BundleError(
            f"bundle {root}: a multi_label bundle needs {len(labels)} thresholds in [0, 1] (one per"
            f" label), got {thresholds!r}"
        )


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle file {path} is not valid JSON: {exc}") from exc
