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
