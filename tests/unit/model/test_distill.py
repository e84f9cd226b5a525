"""Distillation: the mixed loss, the teacher's cached outputs, teacher-labeled text, the command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_support import TOPICS, synthetic_rows, tagged_rows, tiny_config, write_jsonl

from model import distill
from model import train as train_lib
from model.bundle import Bundle
from model.cli import configure_logging, main
from model.config import TokenizerConfig, TrainConfig
from model.data import LabeledData
from model.encoder import EncoderClassifier
from model.errors import ModelError
from model.export import export_bundle
from model.tokenizer import train_tokenizer
from model.unlabeled import read_texts

LABELS = sorted(TOPICS)


@pytest.fixture(autouse=True)
def info_logging_after():
    """The command sets structlog to warning; later tests in the session expect info lines."""
    yield
    configure_logging("info")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A tiny teacher bundle trained for a few seconds on the synthetic topics (confident, mostly right)."""
    rows = synthetic_rows(240, seed=11)
    data = LabeledData([r["text"] for r in rows], [r["label"] for r in rows])
    tok = train_tokenizer(data.texts, TokenizerConfig(vocab_size=200, min_frequency=1))
    train_lib.seed_everything(0)
    model = EncoderClassifier(tiny_config(tok.get_vocab_size()))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, patience=0)
    result = train_lib.fit(model, tok, data, data.subset(range(48)), LABELS, cfg, device="cpu",
                           progress=False)
    out = tmp_path_factory.mktemp("teacher") / "bundle"
    export_bundle(result.model, tok, LABELS, out, parity_texts=data.texts[:16], name="tiny-teacher",
                  metrics={"accuracy": 1.0})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill-data")
    unlabeled = root / "unlabeled.txt"
    unlabeled.write_text("\n".join(r["text"] for r in synthetic_rows(30, seed=5)) + "\n\n")
    return {"train": write_jsonl(root / "train.jsonl", synthetic_rows(120, seed=1)),
            "test": write_jsonl(root / "test.jsonl", synthetic_rows(30, seed=2)),
            "unlabeled": unlabeled}


def _distill(capsys, teacher, files, out, *extra: str) -> tuple[int, str, str]:
    code = main(["--log-level", "warning", "distill", "--teacher", str(teacher),
                 "--train", str(files["train"]), "--test", str(files["test"]), "--out", str(out),
                 "--preset", "tiny", "--epochs", "2", "--no-progress", "--threads", "1", *extra])
    out_text, err = capsys.readouterr()
    return code, out_text, err


# ------------------------------------------------------------------------------------ the loss


def test_softened_probabilities_equal_softened_logits():
    """softmax(log p / T) from the bundle's probabilities equals softmax(z / T) of its logits."""
    z = torch.tensor([[3.0, -1.0, 0.5], [0.0, 8.0, -4.0]])
    for t in (1.0, 2.0, 5.0):
        assert torch.allclose(distill.soften(z.softmax(-1), t), (z / t).softmax(-1), atol=1e-6)
        sig = distill.soften(torch.sigmoid(z), t, "multi_label")
        assert torch.allclose(sig, torch.sigmoid(z / t), atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_mixes_gold_cross_entropy_and_teacher_kl(alpha):
    """(1 - alpha) * CE(gold) + alpha * T^2 * KL(teacher_T || student_T), KL written out by hand."""
    torch.manual_seed(0)
    logits, teacher_logits = torch.randn(5, 3), torch.randn(5, 3) * 3
    gold = torch.tensor([0, 2, 1, 1, 0])
    t = 3.0
    soft = distill.soften(teacher_logits.softmax(-1), t)
    student = (logits / t).softmax(-1)
    kl = (soft * (soft.log() - student.log())).sum(-1).mean()
    expected = (1 - alpha) * F.cross_entropy(logits, gold) + alpha * t * t * kl
    got = distill.distill_loss(logits, gold, soft, temperature=t, alpha=alpha)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_multi_label_loss_is_bce_plus_binary_kl():
    """Multi-label: BCE with the gold tags, plus a per-label binary KL that is 0 when the student
    matches the teacher."""
    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    gold = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    t = 2.0
    soft = distill.soften(torch.sigmoid(logits), t, "multi_label")
    hard_only = distill.distill_loss(logits, gold, soft, temperature=t, alpha=0.0, task="multi_label")
    assert hard_only.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, gold).item())
    matched = distill.distill_loss(logits, gold, soft, temperature=t, alpha=1.0, task="multi_label")
    assert matched.item() == pytest.approx(0.0, abs=1e-5)
    other = distill.soften(torch.sigmoid(-logits), t, "multi_label")
    assert distill.distill_loss(logits, gold, other, temperature=t, alpha=1.0, task="multi_label") > 0.1


def test_fit_trains_on_the_loss_hook_with_each_batchs_rows():
    """fit hands the hook every training row's index once per epoch and trains on what it returns."""
    rows = synthetic_rows(96, seed=3)
    data = LabeledData([r["text"] for r in rows], [r["label"] for r in rows])
    tok = train_tokenizer(data.texts, TokenizerConfig(vocab_size=200, min_frequency=1))
    seen: list[int] = []

    def hook(logits, counts, batch, target, objective):
        assert counts == [1] * len(batch)
        seen.extend(batch)
        return F.cross_entropy(logits, target)

    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, patience=0)
    train_lib.seed_everything(0)
    model = EncoderClassifier(tiny_config(tok.get_vocab_size()))
    train_lib.fit(model, tok, data, data.subset(range(12)), LABELS, cfg, device="cpu",
                  progress=False, loss_fn=hook)
    assert sorted(seen) == sorted(list(range(96)) * 2)


def test_settings_refuse_out_of_range_values():
    """Temperature <= 0, alpha outside 0..1 and unknown augmentations are refused by name."""
    for bad, flag in (({"temperature": 0}, "--temperature"), ({"alpha": 1.5}, "--alpha"),
                      ({"augment": "shuffle"}, "--augment")):
        with pytest.raises(ModelError, match=flag):
            distill.DistillSettings(**bad)


# --------------------------------------------------------------------------- teacher outputs


def test_teacher_outputs_are_cached_by_version_and_texts(teacher, tmp_path, monkeypatch):
    """The teacher runs once per set of texts; the same texts read the cache, other texts do not."""
    bundle = Bundle.load(teacher)
    texts = [r["text"] for r in synthetic_rows(20, seed=7)]
    first = distill.teacher_probs(bundle, texts, what="t", cache_dir=tmp_path, progress=False)
    assert not first.cached and first.path is not None and first.path.name.startswith(bundle.version)
    np.testing.assert_allclose(first.probs, bundle.predict_proba(texts).numpy(), atol=1e-5)

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its outputs were cached")

    monkeypatch.setattr(distill, "_run_teacher", no_teacher)
    again = distill.teacher_probs(bundle, texts, what="t", cache_dir=tmp_path, progress=False)
    assert again.cached
    np.testing.assert_array_equal(again.probs, first.probs)
    with pytest.raises(AssertionError, match="the teacher ran"):
        distill.teacher_probs(bundle, [*texts, "one more text"], what="t", cache_dir=tmp_path,
                              progress=False)


def test_a_damaged_cache_file_is_recomputed(teacher, tmp_path):
    """A cache file of the wrong shape is not trusted: the teacher runs again and replaces it."""
    bundle = Bundle.load(teacher)
    texts = ["rain and snow today", "goal for the team"]
    path = distill.cache_path(tmp_path, bundle, "fp32", texts)
    np.save(path, np.zeros((5, 2), dtype=np.float32))
    out = distill.teacher_probs(bundle, texts, what="t", cache_dir=tmp_path, progress=False)
    assert not out.cached and np.load(path).shape == (2, 3)


def test_pseudo_labels_are_the_teachers_answers():
    """Single-label: the most probable label; multi-label: every label at or over its threshold."""
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert distill.pseudo_labels(probs, ["a", "b", "c"]) == ["b", "a"]
    assert distill.pseudo_labels(probs, ["a", "b", "c"], "multi_label", [0.5, 0.8, 0.2]) == [["c"], ["a", "c"]]


def test_augmented_copies_are_seeded_and_keep_their_source():
    """Each copy names its source text, loses (or masks) words, never all of them; same seed, same copies."""
    texts = ["one two three four five six seven eight nine ten", "alone", "a b"]
    for kind in distill.AUGMENT_KINDS:
        copies, source = distill.augment_texts(texts, 3, kind, 0.3, seed=4)
        assert source == [0, 1, 2] * 3
        assert (copies, source) == distill.augment_texts(texts, 3, kind, 0.3, seed=4)
        assert all(c.strip() for c in copies)
        assert copies[1] == "alone"
    masked, _ = distill.augment_texts(texts[:1] * 20, 1, "mask", 0.3, seed=1)
    assert any(distill.MASK_TOKEN in c for c in masked)
    spans, _ = distill.augment_texts(texts[:1], 1, "span", 0.3, seed=1)
    assert len(spans[0].split()) == 7


def test_unlabeled_files_read_jsonl_csv_and_plain_text(tmp_path):
    """Texts come from a JSONL field, a CSV column or the lines of a .txt; bad rows are counted."""
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"body": "x"}\n{"text": "two", "label": "z"}\n')
    (tmp_path / "b.csv").write_text("id,text\n1,three\n2,four\n")
    (tmp_path / "c.txt").write_text("five\n\nsix\n")
    a = read_texts(tmp_path / "a.jsonl")
    assert a.texts == ["one", "two"] and [b.line for b in a.bad_rows] == [2]
    assert read_texts(tmp_path / "b.csv").texts == ["three", "four"]
    assert read_texts(tmp_path / "c.txt").texts == ["five", "six"]


def test_teacher_embeddings_keep_the_largest_variance_directions(teacher):
    """The reduced table is the centred teacher table on its top principal directions: columns in
    decreasing variance, and with all directions kept it is the centred table, rotated."""
    bundle = Bundle.load(teacher)
    full = dict(bundle.model.named_parameters())["classifier.embeddings.tokens.weight"].detach()
    reduced = distill.teacher_token_embeddings(bundle, 16)
    assert reduced.shape == (full.shape[0], 16)
    variances = reduced.var(dim=0)
    assert torch.all(variances[:-1] >= variances[1:] - 1e-6)
    everything = distill.teacher_token_embeddings(bundle, full.shape[1])
    centred = full - full.mean(dim=0, keepdim=True)
    assert torch.allclose(everything @ everything.T, centred @ centred.T, atol=1e-4)
    with pytest.raises(ModelError, match="fewer than"):
        distill.teacher_token_embeddings(bundle, full.shape[1] + 1)


# ----------------------------------------------------------------------------------- the command


def test_distill_writes_a_worker_ready_student_that_records_its_teacher(capsys, teacher, files, tmp_path):
    """The student bundle loads in the worker's runner, records teacher and settings, and inspect
    shows them; the report compares student, teacher and the scratch student."""
    from worker.runner import ModelRunner

    out = tmp_path / "student"
    code, stdout, err = _distill(capsys, teacher, files, out, "--temperature", "3", "--alpha", "0.7")
    assert code == 0, err
    for needle in ("student (distilled)", "teacher (tiny-teacher)", "scratch student (no teacher)"):
        assert needle in stdout
    runner = ModelRunner.load(out / "bundle", device=torch.device("cpu"), autocast_dtype=None,
                              max_batch_size=8, max_batch_tokens=512, top_k=1)
    result = runner.classify(runner.tokenize(["rain and snow", "goal for the team"]))
    assert len(result.top_indices) == 2
    info = Bundle.load(out / "bundle").config["training"]["distillation"]
    teacher_bundle = Bundle.load(teacher)
    assert info["teacher"]["name"] == "tiny-teacher"
    assert info["teacher"]["version"] == teacher_bundle.version
    assert info["settings"]["temperature"] == 3.0 and info["settings"]["alpha"] == 0.7
    report = json.loads((out / "report" / "report.json").read_text())
    assert [r["model"] for r in report["comparison"]["rows"]] == [
        "student (distilled)", "teacher (tiny-teacher)", "scratch student (no teacher)"]
    assert "## Student, teacher and scratch student" in (out / "report" / "report.md").read_text()
    assert main(["inspect", str(out / "bundle")]) == 0
    shown = capsys.readouterr().out
    assert f"teacher  tiny-teacher version {teacher_bundle.version}" in shown and "T 3.0" in shown


def test_the_teacher_runs_once_per_text_set_across_epochs_and_runs(capsys, teacher, files, tmp_path, monkeypatch):
    """Three epochs use one teacher pass per set of texts; a second run reads them all from the cache."""
    calls: list[int] = []
    real = distill._run_teacher

    def counting(bundle, texts, **kwargs):
        calls.append(len(texts))
        return real(bundle, texts, **kwargs)

    monkeypatch.setattr(distill, "_run_teacher", counting)
    out = tmp_path / "run"
    args = ("--epochs", "3", "--augment-copies", "1", "--no-scratch-baseline")
    assert _distill(capsys, teacher, files, out, *args)[0] == 0
    n_train = 120 - round(120 * 0.1)
    assert calls == [n_train, n_train, 30]  # training split, its copies, the test set
    assert len(list((out / "teacher-cache").glob("*.npy"))) == 3
    calls.clear()
    assert _distill(capsys, teacher, files, out, *args)[0] == 0
    assert calls == []


def test_unlabeled_texts_are_trained_on_with_the_teachers_labels(capsys, teacher, files, tmp_path, monkeypatch):
    """Each --unlabeled text joins the training rows with the teacher's label and soft targets."""
    trained: list[LabeledData] = []
    real_fit = train_lib.fit

    def recording_fit(model, tokenizer, train, *args, **kwargs):
        trained.append(train)
        return real_fit(model, tokenizer, train, *args, **kwargs)

    monkeypatch.setattr(train_lib, "fit", recording_fit)
    out = tmp_path / "run"
    code, _, err = _distill(capsys, teacher, files, out, "--unlabeled", str(files["unlabeled"]),
                            "--no-scratch-baseline")
    assert code == 0, err
    texts = read_texts(files["unlabeled"]).texts
    student_rows = trained[0]
    assert student_rows.texts[-len(texts):] == texts
    teacher_labels = [LABELS[i] for i in Bundle.load(teacher).predict_proba(texts).argmax(1)]
    assert student_rows.labels[-len(texts):] == teacher_labels
    rows = Bundle.load(out / "bundle").config["training"]["distillation"]["rows"]
    assert rows["unlabeled"] == len(texts) == 30


def test_resume_keeps_the_runs_settings_and_its_teacher(capsys, teacher, files, tmp_path):
    """--resume continues with the checkpoint's settings (not the flags given), and refuses a
    different teacher by version."""
    out = tmp_path / "run"
    assert _distill(capsys, teacher, files, out, "--temperature", "3", "--no-scratch-baseline")[0] == 0
    code, _, err = _distill(capsys, teacher, files, out, "--resume", "--temperature", "9",
                            "--no-scratch-baseline")
    assert code == 0, err
    info = Bundle.load(out / "bundle").config["training"]["distillation"]
    assert info["settings"]["temperature"] == 3.0
    other = tmp_path / "other-teacher"
    shutil.copytree(teacher, other)
    config = json.loads((other / "config.json").read_text())
    config["name"] = "another-teacher"
    (other / "config.json").write_text(json.dumps(config))
    _reseal(other)
    code, _, err = _distill(capsys, other, files, out, "--resume")
    assert code == 1 and "resume with that teacher" in err


def _reseal(bundle: Path) -> None:
    """Recompute a bundle's manifest after a deliberate edit (a new, valid version)."""
    from model.bundle import CONTENT_FILES, MANIFEST_FILE, content_version, sha256_file

    files = {f: sha256_file(bundle / f) for f in CONTENT_FILES}
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest.update(files=files, version=content_version(files))
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_a_student_can_share_the_teachers_tokenizer_and_embeddings(capsys, teacher, files, tmp_path):
    """--tokenizer teacher gives the student the teacher's vocabulary; --init-embeddings teacher
    starts its token table from the teacher's and is refused without the teacher's tokenizer."""
    out = tmp_path / "run"
    code, _, err = _distill(capsys, teacher, files, out, "--tokenizer", "teacher",
                            "--init-embeddings", "teacher", "--no-scratch-baseline")
    assert code == 0, err
    student, parent = Bundle.load(out / "bundle"), Bundle.load(teacher)
    assert student.tokenizer.get_vocab() == parent.tokenizer.get_vocab()
    assert student.config["training"]["init_embeddings"] == "teacher"
    code, _, err = _distill(capsys, teacher, files, tmp_path / "o", "--init-embeddings", "teacher")
    assert code == 1 and "needs the teacher's tokenizer" in err


def test_labels_the_teacher_does_not_know_are_a_clear_error(capsys, teacher, tmp_path):
    """Training data with a label outside the teacher's exits 1 naming the label and the teacher's."""
    rows = [*synthetic_rows(60), {"text": "an election result", "label": "politics"}]
    data = write_jsonl(tmp_path / "t.jsonl", rows)
    code = main(["distill", "--teacher", str(teacher), "--train", str(data), "--out",
                 str(tmp_path / "o"), "--preset", "tiny", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "['politics'] are not among the teacher's labels ['finance', 'sports', 'weather']" in err


def test_a_missing_teacher_is_a_clear_error(capsys, files, tmp_path):
    """A teacher path that is not a bundle exits 1 with the path in the message."""
    code, _, err = _distill(capsys, tmp_path / "no-teacher", files, tmp_path / "o")
    assert code == 1 and "no-teacher" in err and "error:" in err


def test_distill_help_documents_the_loss_and_the_options(capsys):
    """distill --help states the loss and names the temperature, mix, unlabeled and cache options."""
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for needle in ("--temperature", "--alpha", "--unlabeled", "--teacher-cache", "KL", "small",
                   "teacher-cache/"):
        assert needle in out


# ------------------------------------------------------------------------ tokenizer choice


@pytest.fixture(scope="module")
def pretrained_teacher(tmp_path_factory, teacher) -> Path:
    """The tiny teacher re-exported as if fine-tuned from a pretrained encoder (config init = a folder)."""
    bundle = Bundle.load(teacher)
    rows = synthetic_rows(240, seed=11)
    model = EncoderClassifier(tiny_config(bundle.tokenizer.get_vocab_size()))
    model.load_state_dict(_state_of(bundle))
    out = tmp_path_factory.mktemp("pretrained-teacher") / "bundle"
    export_bundle(model, bundle.tokenizer, LABELS, out, parity_texts=[r["text"] for r in rows[:16]],
                  name="tiny-finetuned", metrics={"accuracy": 1.0}, training={"init": "/models/tiny-pretrained"})
    return out


def _state_of(bundle: Bundle) -> dict[str, torch.Tensor]:
    """An EncoderClassifier state dict from a bundle's compiled probability model."""
    prefix = "classifier."
    return {k[len(prefix):]: v for k, v in bundle.model.state_dict().items() if k.startswith(prefix)}


def test_auto_shares_a_fine_tuned_teachers_tokenizer_and_token_table(capsys, pretrained_teacher, files, tmp_path):
    """--tokenizer auto (the default) takes a fine-tuned teacher's tokenizer and PCA-reduced token table."""
    out = tmp_path / "student"
    code, _, err = _distill(capsys, pretrained_teacher, files, out, "--no-scratch-baseline")
    assert code == 0, err
    teacher_bundle = Bundle.load(pretrained_teacher)
    training = Bundle.load(out / "bundle").config["training"]
    assert training["tokenizer"] == f"teacher tiny-finetuned {teacher_bundle.version}"
    assert training["init_embeddings"] == "teacher" and "fine-tuned pretrained" in training["tokenizer_choice"]
    assert Bundle.load(out / "bundle").tokenizer.get_vocab() == teacher_bundle.tokenizer.get_vocab()


def test_trained_tokenizer_keeps_the_old_behaviour(capsys, pretrained_teacher, files, tmp_path):
    """--tokenizer trained trains a tokenizer on the data and starts from random embeddings."""
    out = tmp_path / "student"
    code, _, err = _distill(capsys, pretrained_teacher, files, out, "--tokenizer", "trained",
                            "--no-scratch-baseline")
    assert code == 0, err
    training = Bundle.load(out / "bundle").config["training"]
    assert training["tokenizer"] == "trained" and training["init_embeddings"] == "none"
    assert training["tokenizer_config"] is not None


def test_auto_trains_a_tokenizer_for_a_scratch_teacher(capsys, teacher, files, tmp_path):
    """A teacher trained from scratch brings no pretrained vocabulary: auto trains one, and says why."""
    out = tmp_path / "student"
    code, _, err = _distill(capsys, teacher, files, out, "--no-scratch-baseline")
    assert code == 0, err
    training = Bundle.load(out / "bundle").config["training"]
    assert training["tokenizer"] == "trained" and "from scratch" in training["tokenizer_choice"]


# ------------------------------------------------------------------------------ multi-label


def test_the_loss_hook_uses_the_objective_and_gives_every_window_the_teachers_targets():
    """The hook's gold term is the objective's (windows pooled); its teacher term matches each
    window to its text's softened teacher probabilities."""
    from model.objectives import Objective, document_loss

    torch.manual_seed(2)
    probs = np.array([[0.9, 0.2, 0.6], [0.1, 0.7, 0.3]], dtype=np.float32)
    settings = distill.DistillSettings(temperature=2.0, alpha=0.4)
    hook = distill.DistillLoss(probs, settings, task="multi_label")
    objective = Objective(multi_label=True)
    gold = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    one = torch.randn(2, 3)
    expected = distill.distill_loss(one, gold, distill.soften(probs, 2.0, "multi_label"),
                                    temperature=2.0, alpha=0.4, task="multi_label")
    assert hook(one, [1, 1], [0, 1], gold, objective).item() == pytest.approx(expected.item(), rel=1e-5)
    windows = torch.randn(3, 3)  # text 0 has two windows, text 1 one
    soft = distill.soften(probs, 2.0, "multi_label")[[0, 0, 1]]
    expected = (0.6 * document_loss(windows, [2, 1], gold, objective)
                + 0.4 * distill.teacher_term(windows, soft, 2.0, "multi_label"))
    assert hook(windows, [2, 1], [0, 1], gold, objective).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> dict[str, Path]:
    """A tiny multi-label teacher (tag sets of the synthetic topics) and its data files."""
    root = tmp_path_factory.mktemp("tagger")
    train = write_jsonl(root / "train.jsonl", tagged_rows(300))
    test = write_jsonl(root / "test.jsonl", tagged_rows(60, seed=7))
    unlabeled = root / "unlabeled.txt"
    unlabeled.write_text("\n".join(r["text"] for r in tagged_rows(20, seed=9)) + "\n")
    code = main(["--log-level", "warning", "train", "--train", str(train), "--test", str(test),
                 "--out", str(root / "teacher"), "--preset", "tiny", "--epochs", "4", "--pos-weight",
                 "--name", "tiny-tagger", "--no-progress", "--threads", "1"])
    assert code == 0
    return {"bundle": root / "teacher" / "bundle", "train": train, "test": test, "unlabeled": unlabeled}


def test_a_multi_label_teacher_distils_into_a_multi_label_student(capsys, tagger, tmp_path, monkeypatch):
    """A tagger teacher gives a tagger student: sigmoid soft targets, thresholds tuned on validation,
    micro-F1 in the report beside teacher and scratch student, and unlabeled texts tagged by the
    teacher at its thresholds."""
    trained: list[LabeledData] = []
    real_fit = train_lib.fit

    def recording_fit(model, tokenizer, train, *args, **kwargs):
        trained.append(train)
        return real_fit(model, tokenizer, train, *args, **kwargs)

    monkeypatch.setattr(train_lib, "fit", recording_fit)
    out = tmp_path / "student"
    code, stdout, err = _distill(capsys, tagger["bundle"], tagger, out, "--unlabeled", str(tagger["unlabeled"]),
                                 "--pos-weight", "--epochs", "3", "--teacher-dtype", "fp32")
    assert code == 0, err
    assert "micro-f1" in stdout and "scratch student (no teacher)" in stdout
    student = Bundle.load(out / "bundle")
    teacher_bundle = Bundle.load(tagger["bundle"])
    assert student.multi_label and len(student.thresholds) == len(teacher_bundle.labels)
    assert student.config["training"]["distillation"]["teacher"]["version"] == teacher_bundle.version
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["metrics"]["task"] == "multi_label"
    assert report["comparison"]["headline"] == "micro_f1"
    assert [r["model"] for r in report["comparison"]["rows"]][:2] == ["student (distilled)", "teacher (tiny-tagger)"]
    texts = read_texts(tagger["unlabeled"]).texts
    probs = teacher_bundle.predict_proba(texts).numpy()
    expected = distill.pseudo_labels(probs, teacher_bundle.labels, "multi_label", teacher_bundle.thresholds)
    assert trained[0].multi_label and trained[0].tag_sets[-len(texts):] == expected


def test_class_weights_are_refused_for_a_multi_label_teacher(capsys, tagger, tmp_path):
    """--class-weights is single-label; a tagger teacher asks for --pos-weight instead, by name."""
    code, _, err = _distill(capsys, tagger["bundle"], tagger, tmp_path / "o", "--class-weights")
    assert code == 1 and "--pos-weight" in err
