"""Multi-label and long-text bundles through tagstream-train: train, predict, evaluate, explain, inspect."""

from __future__ import annotations

import json

import pytest
from model_support import synthetic_rows, tagged_rows, write_jsonl

from model.bundle import Bundle, read_manifest
from model.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory):
    """A tiny multi-label run on tag sets (auto-detected from "labels": [...])."""
    root = tmp_path_factory.mktemp("tagged")
    train = write_jsonl(root / "train.jsonl", tagged_rows(300))
    test = write_jsonl(root / "test.jsonl", tagged_rows(60, seed=7))
    code = main(["--log-level", "warning", "train", "--train", str(train), "--test", str(test),
                 "--out", str(root / "run"), "--preset", "tiny", "--epochs", "4", "--pos-weight",
                 "--no-progress", "--threads", "1"])
    assert code == 0
    return root


def test_multi_label_training_records_task_thresholds_and_metrics(tagged_run):
    """The bundle is multi_label with one tuned threshold per label; the report has micro/macro-F1 and a chart."""
    bundle = Bundle.load(tagged_run / "run" / "bundle")
    assert bundle.task == "multi_label" and bundle.multi_label
    assert len(bundle.thresholds) == 3 and all(0.05 <= t <= 0.95 for t in bundle.thresholds)
    assert bundle.truncation.strategy == "head"
    assert read_manifest(bundle.path)["format"] == 2
    report = json.loads((tagged_run / "run" / "report" / "report.json").read_text())
    metrics = report["metrics"]
    assert metrics["task"] == "multi_label" and metrics["micro_f1"] > 0.6
    assert set(metrics["per_class"]["sports"]) >= {"precision", "recall", "f1", "support", "threshold"}
    assert (tagged_run / "run" / "report" / "per_label_f1.png").is_file()
    md = (tagged_run / "run" / "report" / "report.md").read_text()
    assert "micro-F1" in md and "exact match" in md and "confusion matrix" not in md.lower()


def test_predict_lists_every_tag_over_its_threshold(capsys, tagged_run):
    """predict prints "labels": the tags at or over their thresholds, with every score."""
    bundle = Bundle.load(tagged_run / "run" / "bundle")
    code, out, _ = run(capsys, "predict", str(bundle.path), "goal for the team and bank shares up", "the a")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    for line in lines:
        assert "label" not in line and set(line["scores"]) == set(bundle.labels)
        expected = [x for x in bundle.labels if line["scores"][x] >= round(bundle.thresholds[bundle.labels.index(x)], 6)]
        assert sorted(line["labels"]) == sorted(expected)


def test_evaluate_and_inspect_a_multi_label_bundle(capsys, tagged_run, tmp_path):
    """evaluate scores at the bundle's thresholds; inspect shows task, thresholds and coverage."""
    bundle_dir = tagged_run / "run" / "bundle"
    code, out, _ = run(capsys, "evaluate", str(bundle_dir), "--data", str(tagged_run / "test.jsonl"),
                       "--out", str(tmp_path / "eval"))
    assert code == 0 and "micro-F1" in out and "(60 texts)" in out
    assert (tmp_path / "eval" / "per_label_f1.png").is_file()
    code, out, _ = run(capsys, "inspect", str(bundle_dir))
    assert code == 0 and "multi_label" in out and "(>= " in out and "coverage" in out
    info = json.loads(run(capsys, "inspect", str(bundle_dir), "--json")[1])
    assert info["task"] == "multi_label" and len(info["thresholds"]) == 3
    assert info["vocab_coverage"]["tokenizer"] == "scratch" and info["vocab_coverage"]["unk_share"] < 0.02


def test_explain_a_multi_label_bundle(capsys, tagged_run, tmp_path):
    """explain lists the tags over threshold and explains the label asked for."""
    png = tmp_path / "e.png"
    code, out, _ = run(capsys, "explain", str(tagged_run / "run" / "bundle"), "rain and storm, stocks fall",
                       "--label", "weather", "--png", str(png))
    assert code == 0 and out.startswith("tags: ") and "for 'weather'" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_chunks_bundle_reads_long_texts_as_windows(capsys, tmp_path):
    """--truncation chunks trains and exports a bundle that reads long texts as several windows."""
    rows = synthetic_rows(150)
    for r in rows:
        r["text"] = " ".join([r["text"]] * 6)  # ~60-120 words: several 32-token windows
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code = main(["--log-level", "warning", "train", "--train", str(train), "--out", str(tmp_path / "run"),
                 "--preset", "tiny", "--epochs", "2", "--max-length", "32", "--truncation", "chunks",
                 "--max-windows", "4", "--window-pooling", "max", "--no-progress", "--threads", "1"])
    assert code == 0
    bundle = Bundle.load(tmp_path / "run" / "bundle")
    assert bundle.truncation.strategy == "chunks" and bundle.truncation.max_windows == 4
    assert bundle.truncation.pooling == "max" and bundle.task == "single_label"
    capsys.readouterr()
    code, out, _ = run(capsys, "predict", str(bundle.path), rows[0]["text"], "rain")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["windows"] for x in lines] == [4, 1]
    assert all(sum(x["scores"].values()) == pytest.approx(1.0, abs=1e-4) for x in lines)
    code, out, _ = run(capsys, "explain", str(bundle.path), rows[0]["text"], "--png", str(tmp_path / "e.png"))
    assert code == 0 and "window" in out and "of 4" in out


def test_truncation_auto_reads_windows_only_when_texts_are_long(capsys, tmp_path):
    """--truncation auto reads data whose texts mostly exceed one window in chunks, and the log says why."""
    rows = synthetic_rows(120)
    for r in rows:
        r["text"] = " ".join([r["text"]] * 6)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code = main(["train", "--train", str(train), "--out", str(tmp_path / "run"), "--preset", "tiny",
                 "--epochs", "1", "--max-length", "32", "--truncation", "auto", "--no-progress", "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 0
    line = next(x for x in (captured.out + captured.err).splitlines() if "longer than one window" in x)
    assert "chunks" in line and "%" in line
    assert Bundle.load(tmp_path / "run" / "bundle").truncation.strategy == "chunks"


def test_single_label_head_bundles_stay_format_1(bundle_dir):
    """A plain single-label head bundle is format 1: readable by workers that predate tasks."""
    assert read_manifest(bundle_dir)["format"] == 1
    bundle = Bundle.load(bundle_dir)
    assert bundle.task == "single_label" and bundle.thresholds == [] and bundle.truncation.strategy == "head"
