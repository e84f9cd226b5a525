"""Bundle verification: a tampered, incomplete or inconsistent bundle is refused clearly."""

from __future__ import annotations

import json
import shutil

import pytest

from model.bundle import (
    LABELS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    Bundle,
    content_version,
    sha256_file,
    verify_bundle,
)
from model.errors import BundleError


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "bundle")


def test_a_fresh_bundle_loads_and_predicts(bundle_dir):
    """An exported bundle verifies, loads, and gives one probability per label."""
    bundle = Bundle.load(bundle_dir)
    assert bundle.labels == ["finance", "sports", "weather"]
    assert bundle.name == "tiny-test"
    assert len(bundle.version) == 12
    probs = bundle.predict_proba(["rain and wind", "the team scored a late goal"])
    assert probs.shape == (2, 3)


def test_tampered_file_is_refused(bundle_copy):
    """Changing a byte of a listed file makes loading fail, naming the file."""
    tokenizer = bundle_copy / TOKENIZER_FILE
    tokenizer.write_text(tokenizer.read_text().replace("[UNK]", "[UNX]", 1))
    with pytest.raises(BundleError, match=rf"{TOKENIZER_FILE} does not match its sha256"):
        Bundle.load(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    """A bundle missing its model file fails verification, naming the file."""
    (bundle_copy / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match=rf"{MODEL_FILE} is missing"):
        verify_bundle(bundle_copy)


def test_missing_manifest_is_not_a_bundle(bundle_copy):
    """Without a manifest the folder is not (yet) a bundle."""
    (bundle_copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        Bundle.load(bundle_copy)


def test_labels_that_do_not_match_the_model_are_refused(bundle_copy):
    """labels.json naming more labels than the model outputs is refused, even with fresh checksums."""
    (bundle_copy / LABELS_FILE).write_text(json.dumps(["finance", "sports", "weather", "extra"]))
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["files"][LABELS_FILE] = sha256_file(bundle_copy / LABELS_FILE)
    manifest["version"] = content_version(manifest["files"])
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"returns \(3,\) scores per text but labels\.json names 4"):
        Bundle.load(bundle_copy)


def test_version_is_derived_from_content(bundle_dir, bundle_copy):
    """Same files, same version; the manifest's version must match its checksums."""
    assert verify_bundle(bundle_copy)["version"] == verify_bundle(bundle_dir)["version"]
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["version"] = "000000000000"
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="version does not match"):
        verify_bundle(bundle_copy)


def _rewrite_config(root, change) -> None:
    """Edit config.json and re-sign the manifest, as an exporter of that content would have."""
    from model.bundle import CONFIG_FILE

    config = json.loads((root / CONFIG_FILE).read_text())
    change(config)
    (root / CONFIG_FILE).write_text(json.dumps(config))
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    manifest["files"] = {name: sha256_file(root / name) for name in manifest["files"]}
    manifest["version"] = content_version(manifest["files"])
    (root / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_bundles_from_before_tasks_load_and_score_as_they_did(bundle_dir, bundle_copy):
    """A bundle without task, thresholds or truncation is single-label, head, and scores the same."""
    def drop(config):
        for key in ("task", "thresholds", "truncation", "vocab_coverage"):
            config.pop(key, None)

    _rewrite_config(bundle_copy, drop)
    old, new = Bundle.load(bundle_copy), Bundle.load(bundle_dir)
    assert old.task == "single_label" and old.thresholds == [] and old.truncation.strategy == "head"
    texts = ["rain and wind " * 40, "goal"]
    assert (old.predict_proba(texts) - new.predict_proba(texts)).abs().max() == 0.0
    ids, mask = old.encode(texts)
    assert (old.model(ids, mask) - old.predict_proba(texts)).abs().max() == 0.0


def test_multi_label_config_without_one_threshold_per_label_is_refused(bundle_copy):
    """A multi_label bundle must list one threshold in [0, 1] per label."""
    _rewrite_config(bundle_copy, lambda c: c.update(task="multi_label", thresholds=[0.5, 0.5]))
    with pytest.raises(BundleError, match="3 thresholds"):
        Bundle.load(bundle_copy)


def test_unknown_task_and_strategy_are_refused(bundle_copy, tmp_path):
    """A task or truncation this code cannot serve fails the load, naming it."""
    other = shutil.copytree(bundle_copy, tmp_path / "other")
    _rewrite_config(bundle_copy, lambda c: c.update(task="ranking"))
    with pytest.raises(BundleError, match="ranking"):
        Bundle.load(bundle_copy)
    _rewrite_config(other, lambda c: c.update(truncation={"strategy": "middle"}))
    with pytest.raises(BundleError, match="middle"):
        Bundle.load(other)


def test_formats_this_code_does_not_know_are_refused(bundle_copy):
    """Formats 1 and 2 load; a newer format is refused with the formats this code reads."""
    manifest = json.loads((bundle_copy / MANIFEST_FILE).read_text())
    manifest["format"] = 3
    (bundle_copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="reads formats 1, 2"):
        Bundle.load(bundle_copy)
