"""tagstream-train: help texts, predict/evaluate/explain/inspect on a bundle, exit codes."""

from __future__ import annotations

import io
import json

import pytest
from model_support import synthetic_rows, write_jsonl

from model.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "explain", "inspect"])
def test_every_command_has_help(capsys, command):
    """Each subcommand's --help exits 0 and describes its options."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: tagstream-train " + command in capsys.readouterr().out


def test_train_help_explains_init_presets_and_output(capsys):
    """train --help names the presets, the --init choices and the output folder layout."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for needle in ("tiny", "small", "base", "--init", "minilm", "DIR/bundle/", "--resume", "torchrun"):
        assert needle in out


def test_predict_texts_from_arguments(capsys, bundle_dir):
    """predict prints one JSON line per text with label, score and every label's score."""
    code, out, _ = run(capsys, "predict", str(bundle_dir), "rain and snow", "goal for the team")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["text"] for x in lines] == ["rain and snow", "goal for the team"]
    for x in lines:
        assert set(x["scores"]) == {"finance", "sports", "weather"}
        assert x["label"] == max(x["scores"], key=x["scores"].get)
        assert sum(x["scores"].values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_reads_stdin_and_keeps_top_k(capsys, bundle_dir, monkeypatch):
    """Without TEXT, predict reads one text per stdin line (blank lines skipped)."""
    monkeypatch.setattr("sys.stdin", io.StringIO("bank shares\n\nstorm warning\n"))
    code, out, _ = run(capsys, "predict", str(bundle_dir), "--top-k", "1")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [x["text"] for x in lines] == ["bank shares", "storm warning"]
    assert all(len(x["scores"]) == 1 for x in lines)


def test_inspect_shows_what_the_bundle_holds(capsys, bundle_dir):
    """inspect prints name, version, labels and files; --json gives the same as JSON."""
    code, out, _ = run(capsys, "inspect", str(bundle_dir))
    assert code == 0
    assert "tiny-test" in out and "finance, sports, weather" in out and "checksums verified" in out
    code, out, _ = run(capsys, "inspect", str(bundle_dir), "--json")
    info = json.loads(out)
    assert info["labels"] == ["finance", "sports", "weather"]
    assert set(info["files"]) >= {"model.ts", "tokenizer.json", "labels.json"}


def test_evaluate_writes_a_report_and_skips_bad_rows(capsys, bundle_dir, tmp_path):
    """evaluate scores a labeled file (bad rows skipped) and writes the report files."""
    data = write_jsonl(tmp_path / "eval.jsonl", synthetic_rows(30, seed=4))
    with data.open("a") as f:
        f.write('{"text": "unknown label", "label": "politics"}\n')
    code, out, _ = run(capsys, "evaluate", str(bundle_dir), "--data", str(data),
                       "--out", str(tmp_path / "report"))
    assert code == 0
    assert "(30 texts)" in out
    assert (tmp_path / "report" / "report.md").is_file()
    assert (tmp_path / "report" / "confusion_matrix.png").is_file()


def test_explain_prints_tokens_and_draws_a_heatmap(capsys, bundle_dir, tmp_path):
    """explain lists the prediction and tokens and writes the heatmap PNG."""
    png = tmp_path / "e.png"
    code, out, _ = run(capsys, "explain", str(bundle_dir), "storm and rain today", "--png", str(png))
    assert code == 0
    assert out.startswith("prediction: ")
    assert "storm" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_errors_exit_1_with_a_message(capsys, tmp_path):
    """A missing bundle or data file exits 1 with 'error:' and the path; bad usage exits 2."""
    code, _, err = run(capsys, "inspect", str(tmp_path / "nope"))
    assert code == 1 and "error:" in err and "nope" in err
    code, _, err = run(capsys, "train", "--train", str(tmp_path / "missing.jsonl"), "--out",
                       str(tmp_path / "o"))
    assert code == 1 and "missing.jsonl: no such file" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "huge"])
    assert exit_info.value.code == 2


def test_unknown_pretrained_source_is_a_clear_error(capsys, tmp_path):
    """--init with a folder that is not a checkpoint exits 1 with an error naming the problem."""
    data = write_jsonl(tmp_path / "t.jsonl", synthetic_rows(60))
    code, _, err = run(capsys, "train", "--train", str(data), "--out", str(tmp_path / "o"),
                       "--init", str(tmp_path / "no-such-checkpoint"), "--no-progress")
    assert code == 1 and "\nerror: " in "\n" + err
