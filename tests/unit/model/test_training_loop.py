"""The training loop: it learns, is deterministic, stops early, resumes, and runs under DDP."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from model_support import TOPICS, synthetic_rows, tiny_config

from model import train as train_lib
from model.config import TokenizerConfig, TrainConfig
from model.data import LabeledData
from model.encoder import EncoderClassifier
from model.errors import CheckpointError
from model.tokenizer import train_tokenizer

LABELS = sorted(TOPICS)
FAST = TrainConfig(epochs=3, batch_size=16, lr=3e-3, patience=0, seed=1)


def _data(n: int, seed: int) -> LabeledData:
    rows = synthetic_rows(n, seed=seed)
    return LabeledData([r["text"] for r in rows], [r["label"] for r in rows], source=f"synthetic-{seed}")


@pytest.fixture(scope="module")
def splits():
    return _data(240, seed=0), _data(60, seed=1)


@pytest.fixture(scope="module")
def tok(splits):
    return train_tokenizer(splits[0].texts, TokenizerConfig(vocab_size=200, min_frequency=1))


def _model(tok, seed: int = 1) -> EncoderClassifier:
    train_lib.seed_everything(seed)
    return EncoderClassifier(tiny_config(tok.get_vocab_size()))


def _fit(tok, splits, cfg=FAST, **kwargs):
    return train_lib.fit(_model(tok, cfg.seed), tok, splits[0], splits[1], LABELS, cfg,
                         device="cpu", progress=False, **kwargs)


def _same_weights(a: EncoderClassifier, b: EncoderClassifier) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_training_learns_the_fixture(tok, splits):
    """Three tiny epochs separate the synthetic topics well, and the loss falls."""
    result = _fit(tok, splits)
    assert result.best_val_macro_f1 > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert not result.model.training


def test_same_seed_same_weights(tok, splits):
    """Two runs with the same seed end with identical weights; another seed does not."""
    a, b = _fit(tok, splits), _fit(tok, splits)
    assert _same_weights(a.model, b.model)
    c = _fit(tok, splits, dataclasses.replace(FAST, seed=2))
    assert not _same_weights(a.model, c.model)


def test_early_stopping_keeps_the_best_epoch(tok, splits):
    """With patience 1 and no improvement after the first epoch, training stops at epoch 2."""
    cfg = dataclasses.replace(FAST, epochs=6, patience=1, lr=1e-9, warmup_ratio=0.0)
    result = _fit(tok, splits, cfg)
    assert result.stopped_early
    assert len(result.history) == 2
    assert result.best_epoch == 1


def test_a_macro_f1_tie_goes_to_a_clearly_lower_validation_loss():
    """Equal validation macro-F1 (a saturated validation set) is broken by validation loss,
    but only by a drop of at least 1%; higher macro-F1 always wins, lower always loses."""
    assert train_lib.improves(0.99, 0.0057, best_macro_f1=0.99, best_loss=0.0100)
    assert not train_lib.improves(0.99, 0.0117, best_macro_f1=0.99, best_loss=0.0057)
    assert not train_lib.improves(0.99, 0.00999, best_macro_f1=0.99, best_loss=0.0100)
    assert train_lib.improves(0.995, 0.5, best_macro_f1=0.99, best_loss=0.01)
    assert not train_lib.improves(0.98, 0.001, best_macro_f1=0.99, best_loss=0.01)
    assert train_lib.improves(0.0, 1.0, best_macro_f1=-1.0, best_loss=float("inf"))  # the first epoch


def test_resume_continues_where_a_killed_run_stopped(tok, splits, tmp_path, monkeypatch):
    """A run killed after epoch 1 and resumed ends with the same weights as an unbroken run."""
    unbroken = _fit(tok, splits, checkpoint_path=tmp_path / "a.pt")
    real_save = train_lib._save_checkpoint

    def save_then_die(path, model, optimizer, scheduler, state, *args):
        real_save(path, model, optimizer, scheduler, state, *args)
        if state.epoch == 1:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(train_lib, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit(tok, splits, checkpoint_path=tmp_path / "b.pt")
    monkeypatch.setattr(train_lib, "_save_checkpoint", real_save)
    resumed = _fit(tok, splits, checkpoint_path=tmp_path / "b.pt", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert _same_weights(unbroken.model, resumed.model)


def test_resume_refuses_a_checkpoint_for_other_labels(tok, splits, tmp_path):
    """Resuming with labels in another order, or without a checkpoint, is a CheckpointError."""
    _fit(tok, splits, dataclasses.replace(FAST, epochs=1), checkpoint_path=tmp_path / "c.pt")
    model = _model(tok)
    with pytest.raises(CheckpointError, match="trained for labels"):
        train_lib.fit(model, tok, splits[0], splits[1], ["sports", "finance", "weather"], FAST,
                      checkpoint_path=tmp_path / "c.pt", resume=True, progress=False, device="cpu")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _fit(tok, splits, checkpoint_path=tmp_path / "missing.pt", resume=True)


def test_class_weights_are_inverse_frequency():
    """Weights are N / (K * n_c): rare classes weigh more, the average over examples is 1."""
    w = train_lib.class_weights([0] * 90 + [1] * 10, 2)
    assert torch.allclose(w, torch.tensor([100 / 180, 100 / 20]))
    assert torch.isclose((w[0] * 90 + w[1] * 10) / 100, torch.tensor(1.0))


def test_schedule_warms_up_then_decays():
    """The LR factor rises linearly to 1 over the warmup, then falls to 0 (linear or cosine)."""
    f = train_lib.lr_lambda(100, 0.1, "linear")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5) and f(100) == pytest.approx(0.0)
    g = train_lib.lr_lambda(100, 0.1, "cosine")
    assert g(10) == pytest.approx(1.0) and g(55) == pytest.approx(0.5) and g(100) == pytest.approx(0.0)


def test_layer_wise_lr_decay_and_no_decay_on_vectors(tok):
    """Lower layers get smaller LRs; biases and norms get no weight decay."""
    model = EncoderClassifier(tiny_config(tok.get_vocab_size(), n_layers=2))
    cfg = TrainConfig(lr=1.0, layer_lr_decay=0.5, weight_decay=0.1)
    groups = train_lib.parameter_groups(model, cfg)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == 1.0
    assert lr_of[id(model.blocks[1].attn.qkv.weight)] == 0.5
    assert lr_of[id(model.blocks[0].attn.qkv.weight)] == 0.25
    assert lr_of[id(model.embeddings.tokens.weight)] == 0.125
    assert wd_of[id(model.head.bias)] == 0.0 and wd_of[id(model.head.weight)] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_token_dropout_spares_specials_and_padding(tok):
    """Word dropout only ever replaces real, non-special tokens, and only by [UNK]."""
    ids = torch.tensor([[2, 10, 11, 12, 3, 0, 0]] * 64)
    mask = (ids != 0).long()
    torch.manual_seed(0)
    dropped = train_lib._drop_tokens(ids, mask, 0.5, tok)
    unk = tok.token_to_id("[UNK]")
    changed = dropped != ids
    assert changed.any()
    assert torch.all(dropped[changed] == unk)
    assert not changed[:, [0, 4, 5, 6]].any()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str, splits, tok) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = _fit(tok, splits, dataclasses.replace(FAST, epochs=2))
    torch.save({"state": result.model.state_dict(), "world": result.world_size,
                "history": result.history}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two fresh processes importing torch: ~10 s on a quiet 2-core machine
def test_ddp_on_cpu_with_gloo_keeps_ranks_in_step(tok, splits, tmp_path):
    """Two gloo processes train in lock-step: identical weights and metrics on both ranks."""
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path), splits, tok), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert all(torch.equal(a, b) for a, b in zip(r0["state"].values(), r1["state"].values(), strict=True))
    assert [h["val_macro_f1"] for h in r0["history"]] == [h["val_macro_f1"] for h in r1["history"]]
    assert r0["history"][-1]["val_macro_f1"] > 0.5


def test_finishing_every_epoch_is_not_stopping_early(tok, splits):
    """Reaching patience on the last epoch is not early stopping: every epoch ran."""
    cfg = dataclasses.replace(FAST, epochs=2, patience=1, lr=1e-9, warmup_ratio=0.0)
    result = _fit(tok, splits, cfg)
    assert len(result.history) == 2 and not result.stopped_early


def test_progress_lines_come_at_the_interval_with_rate_loss_and_eta():
    """A progress line is logged once the interval has passed, with steps, examples/s, loss and ETA."""
    from model.progress import ProgressLog

    now = [0.0]
    events = []

    class Log:
        def info(self, event, **fields):
            events.append((event, fields))

    ticker = ProgressLog(Log(), interval_s=30.0, steps_per_epoch=100, epochs=2, clock=lambda: now[0])
    ticker.start_epoch(1)
    now[0] = 10.0
    assert not ticker.step(10, 320, 0.9)
    now[0] = 31.0
    assert ticker.step(31, 992, 0.7)
    [(event, fields)] = events
    assert event == "progress" and fields["step"] == "31/100" and fields["epoch"] == "1/2"
    assert fields["examples_per_s"] == 32.0 and fields["loss"] == 0.7
    assert fields["eta_epoch"] == "1m09s" and fields["eta_run"] == "2m49s"


def test_multi_label_training_tunes_thresholds(tok, splits):
    """Tag sets train a sigmoid head; the result carries one validation-tuned threshold per label."""
    def tagged(data):
        return LabeledData(data.texts, [], source=data.source, tag_sets=[[x] for x in data.labels])

    result = train_lib.fit(_model(tok), tok, tagged(splits[0]), tagged(splits[1]), LABELS, FAST,
                           device="cpu", progress=False, pos_weight=True)
    assert result.thresholds is not None and len(result.thresholds) == 3
    assert result.best_val_metrics["task"] == "multi_label" and result.best_val_metrics["micro_f1"] > 0.8
    assert "val_micro_f1" in result.history[-1] and "val_accuracy" not in result.history[-1]
