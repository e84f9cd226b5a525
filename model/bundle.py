"""The model bundle: one folder that describes itself. The only definition of its format.

    <bundle>/
      model.ts        TorchScript module: forward(input_ids, attention_mask) -> probabilities
                      input_ids, attention_mask: int64 (B, T); returns float32 (B, len(labels))
      tokenizer.json  a `tokenizers` tokenizer (truncation and padding are set at load time)
      labels.json     label names, in the order of the model's outputs
      config.json     {"format", "name", "created_at", "precision", "tokenizer": {max_length,
                      lowercase, pad_id, pad_token}, "model": <encoder config>, "training": {...}}
      metrics.json    the evaluation summary written by training (may be {})
      manifest.json   {"format", "name", "version", "files": {file: sha256}}; written last

``version`` is derived from the content (a hash over every file's sha256), so the same model
always has the same version and any change gives a new one. Loading verifies every checksum
and refuses a bundle that was tampered with, is incomplete, or whose parts disagree.

This module imports only the standard library, torch and tokenizers: the worker uses it
without pulling in any training code.
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

import torch
from tokenizers import Tokenizer

from model.errors import BundleError

FORMAT = 1
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
) -> Path:
    """Write a complete bundle to ``out_dir`` atomically and return its path.

    Files are written into a temporary sibling folder which is renamed into place only once
    the manifest is written, so a watcher never sees half a bundle. An existing ``out_dir``
    is replaced.
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
                "format": FORMAT,
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
            },
        )
        _write_json(tmp / METRICS_FILE, metrics or {})
        files = {f: sha256_file(tmp / f) for f in CONTENT_FILES}
        manifest = {"format": FORMAT, "name": name, "version": content_version(files), "files": files}
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
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(
            f"bundle {root}: manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
            f" is not supported (this tagstream reads format {FORMAT})"
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
        try:
            tok_cfg = config["tokenizer"]
            max_length = int(tok_cfg["max_length"])
            pad_id = int(tok_cfg["pad_id"])
            pad_token = str(tok_cfg["pad_token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle {root}: {CONFIG_FILE} lacks tokenizer settings ({exc})") from exc
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
        bundle._check_outputs()
        return bundle

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, int64 (B, T), padded to the longest text in the batch."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    @torch.inference_mode()
    def predict_proba(self, texts: list[str]) -> torch.Tensor:
        """Probabilities (B, len(labels)) on the CPU, float32."""
        ids, mask = self.encode(texts)
        return self.model(ids.to(self.device), mask.to(self.device)).float().cpu()

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


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle file {path} is not valid JSON: {exc}") from exc
