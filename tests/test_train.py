"""The training engine: teacher handling, learning, resume, determinism, interrupts, divergence."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from titn_edu import build_model, build_teacher, evaluate, fit, load_checkpoint, seed_everything
from titn_edu.train import History, LivePlot


def tiny_student(num_classes=4, **kw):
    cfg = dict(depth=1, outer_dim=16, inner_dim=4, patch_size=16, pixel_size=8, outer_heads=2, inner_heads=2)
    cfg.update(kw)
    return build_model("titn-tiny", num_classes=num_classes, in_chans=1, **cfg)


def tiny_teacher(num_classes=4):
    return build_teacher("cnn-small", num_classes=num_classes, in_chans=1, width=2)


def toy_data(n=16, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, num_classes, (n,), generator=g)


def without_seconds(history):
    """The records without their clock readings (``seconds``, ``train_seconds``, ``finished_at``)."""
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "finished_at")} for r in history]


FAST = dict(batch_size=4, progress=False, device="cpu", optimizer="adamw", lr=1e-3)


# ----------------------------------------------------------------------------- teacher
def test_teacher_frozen_in_eval_and_sees_the_same_mixed_batch():
    seed_everything(0)
    student, teacher = tiny_student(), tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = {"teacher": [], "student": [], "modes": []}

    def teacher_hook(module, inputs):
        seen["teacher"].append(inputs[0].clone())
        seen["modes"].append((module.training, torch.is_grad_enabled(), any(p.requires_grad for p in module.parameters())))

    teacher.register_forward_pre_hook(teacher_hook)
    student.register_forward_pre_hook(lambda m, inputs: seen["student"].append(inputs[0].clone()) if m.training else None)
    history = fit(student, toy_data(), epochs=2, teacher=teacher, mixing="cutmix", **FAST)

    assert len(seen["teacher"]) == 8 and seen["modes"] == [(False, False, False)] * 8
    for t_in, s_in in zip(seen["teacher"], seen["student"]):
        assert torch.equal(t_in, s_in)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert history.status == "completed" and history[-1]["teacher_agreement"] is not None
    assert history[-1]["train_distill_loss"] is not None


def test_cnn_teacher_runs_channels_last_and_bf16_only_when_asked(tmp_path):
    student, teacher = tiny_student(), tiny_teacher()
    dtypes = []
    teacher.features[0][0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    fit(student, toy_data(), epochs=1, teacher=teacher, output_dir=tmp_path / "f32", **FAST)
    assert teacher.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert dtypes and set(dtypes) == {torch.float32}  # CPU default: float32 teacher
    assert load_checkpoint(tmp_path / "f32" / "last.pt")["extra"]["fit_config"]["teacher_bf16"] is False
    dtypes.clear()
    history = fit(tiny_student(), toy_data(), epochs=1, teacher=teacher, teacher_bf16=True, **FAST)
    assert set(dtypes) == {torch.bfloat16} and history[-1]["teacher_agreement"] is not None
    with pytest.raises(TypeError, match="teacher_bf16 must be True, False or None"):
        fit(tiny_student(), toy_data(), epochs=1, teacher=teacher, teacher_bf16="yes", **FAST)


def test_a_cnn_is_trained_channels_last():
    model = tiny_teacher()
    seen = []
    model.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)))
    history = fit(model, toy_data(), epochs=1, mixing=None, **FAST)
    assert history.status == "completed" and seen and all(seen)
    assert model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    student = tiny_student()
    fit(student, toy_data(), epochs=1, **FAST)
    assert all(p.is_contiguous() for p in student.parameters())  # no convolution: left as it is


def test_teacher_class_count_must_match():
    with pytest.raises(ValueError, match="classes"):
        fit(tiny_student(num_classes=4), toy_data(), epochs=1, teacher=tiny_teacher(num_classes=10), **FAST)


# ----------------------------------------------------------------------------- learning
def test_a_few_steps_on_mnist_reduce_the_loss():
    from titn_edu.data import get_dataset, get_transforms

    data = get_dataset("mnist", train=True, limit=120, seed=0, transform=get_transforms("mnist", train=False))
    seed_everything(0)
    model = tiny_student(num_classes=10, outer_dim=32)
    start = evaluate(model, data, device="cpu")["loss"]
    history = fit(model, data, epochs=5, mixing=None, batch_size=20, lr=3e-3, progress=False, device="cpu")
    end = evaluate(model, data, device="cpu")["loss"]
    assert end < start - 0.3, (start, end)  # from ln(10) = 2.30 (chance)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_accepts_loaders_and_tensor_pairs_and_writes_files(tmp_path):
    x, y = toy_data()
    model = tiny_student(distill=False)
    history = fit(model, DataLoader(TensorDataset(x, y), batch_size=8), (x[:8], y[:8]), epochs=2, mixing="mixup",
                  output_dir=tmp_path, progress=False, device="cpu")
    assert [r["epoch"] for r in history] == [1, 2]
    assert {"train_loss", "train_top1", "train_top5", "val_top1", "val_top5", "val_loss", "lr", "seconds"} <= set(history[0])
    assert history[0]["train_distill_loss"] is None  # single-head model
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["status"] == "completed" and len(saved["epochs"]) == 2
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and (tmp_path / "best.pt").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


# ----------------------------------------------------------------------------- determinism and resume
def _run(tmp, *, stop_after=None, resume=None, epochs=3):
    seed_everything(1)
    student, teacher = tiny_student(), tiny_teacher()
    callbacks = [lambda record: record["epoch"] == stop_after] if stop_after else []
    history = fit(student, toy_data(), toy_data(8, seed=1), epochs=epochs, teacher=teacher, mixing="cutmix",
                  output_dir=tmp, resume=resume, callbacks=callbacks, seed=None if resume else 7, **FAST)
    return student, history


def test_seeded_runs_are_identical(tmp_path):
    a, history_a = _run(tmp_path / "a")
    b, history_b = _run(tmp_path / "b")
    assert without_seconds(history_a) == without_seconds(history_b)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_every_writes_checkpoints_at_its_cadence_and_when_a_run_stops(tmp_path):
    """save_every=2: last.pt after epochs 2, 4 and the last (5); a callback stopping after epoch 3 saves it first."""
    def last_epoch(folder):
        path = folder / "last.pt"
        return load_checkpoint(path)["epoch"] if path.is_file() else None

    seen = []  # what last.pt holds when each epoch's callbacks run (after its files are written)
    history = fit(tiny_student(), toy_data(), epochs=5, save_every=2, output_dir=tmp_path / "a", mixing=None,
                  callbacks=[lambda record: seen.append(last_epoch(tmp_path / "a"))], **FAST)
    assert history.status == "completed" and seen == [None, 2, 2, 4, 5]
    assert [r["epoch"] for r in json.loads((tmp_path / "a" / "history.json").read_text())["epochs"]] == [1, 2, 3, 4, 5]
    assert {"train_seconds", "train_images"} <= set(history[0]) and history[0]["train_images"] == 16
    assert 0 < history[0]["train_seconds"] <= history[0]["seconds"]
    stopped = fit(tiny_student(), toy_data(), epochs=5, save_every=2, output_dir=tmp_path / "b", mixing=None,
                  callbacks=[lambda record: record["epoch"] == 3], **FAST)
    assert stopped.status == "stopped" and last_epoch(tmp_path / "b") == 3
    with pytest.raises(ValueError, match="save_every must be an integer >= 1"):
        fit(tiny_student(), toy_data(), epochs=1, save_every=0, **FAST)


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    full, history_full = _run(tmp_path / "full")
    _, history_part = _run(tmp_path / "part", stop_after=1)
    assert history_part.status == "stopped" and len(history_part) == 1
    resumed, history_resumed = _run(tmp_path / "other", resume=tmp_path / "part")
    assert history_resumed.status == "completed"
    assert without_seconds(history_resumed) == without_seconds(history_full)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert load_checkpoint(tmp_path / "other" / "last.pt")["epoch"] == 3  # output_dir given: written there
    assert load_checkpoint(tmp_path / "part" / "last.pt")["epoch"] == 1


def test_resume_refuses_a_different_model(tmp_path):
    fit(tiny_student(), toy_data(), epochs=1, output_dir=tmp_path, mixing=None, **FAST)
    with pytest.raises(ValueError, match="different model"):
        fit(tiny_student(outer_dim=32), toy_data(), epochs=2, resume=tmp_path, mixing=None, **FAST)
    with pytest.raises(FileNotFoundError):
        fit(tiny_student(), toy_data(), epochs=2, resume=tmp_path / "nowhere", mixing=None, **FAST)


# ----------------------------------------------------------------------------- interrupts and divergence
class Tripwire(Dataset):
    """Toy data that does something nasty on its ``fire_at``-th item access."""

    def __init__(self, action, fire_at, n=16):
        self.x, self.y = toy_data(n)
        self.action, self.fire_at, self.calls = action, fire_at, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.calls += 1
        image = self.x[i]
        if self.calls >= self.fire_at:
            if self.action == "raise":
                raise KeyboardInterrupt
            if self.action == "sigint" and self.calls == self.fire_at:
                os.kill(os.getpid(), signal.SIGINT)
            if self.action == "nan":
                image = torch.full_like(image, float("nan"))
        return image, self.y[i]


class CountingLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from titn_edu.losses import TITNLoss

        self.inner, self.calls = TITNLoss(), 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


def test_keyboard_interrupt_keeps_last_complete_checkpoint(tmp_path):
    data = Tripwire("raise", fire_at=16 + 6)  # during the second epoch
    history = fit(tiny_student(), data, epochs=3, output_dir=tmp_path, mixing=None, **FAST)
    assert history.status == "interrupted" and len(history) == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert json.loads((tmp_path / "history.json").read_text())["status"] == "interrupted"


def test_first_ctrl_c_finishes_the_current_step_then_stops(tmp_path):
    handler = signal.getsignal(signal.SIGINT)
    loss = CountingLoss()
    data = Tripwire("sigint", fire_at=16 + 5)  # first image of the 2nd batch of epoch 2 (4 per batch)
    history = fit(tiny_student(), data, epochs=3, loss=loss, output_dir=tmp_path, mixing=None, **FAST)
    assert history.status == "interrupted" and len(history) == 1
    assert loss.calls == 4 + 2  # epoch 1, then steps 1 and 2 of epoch 2 (the one interrupted finished)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored


def test_non_finite_loss_stops_with_advice_and_keeps_best(tmp_path):
    data = Tripwire("nan", fire_at=16 + 5)
    x, y = toy_data(8, seed=3)
    model = tiny_student()
    with pytest.warns(RuntimeWarning, match="learning rate"):
        history = fit(model, data, (x, y), epochs=3, output_dir=tmp_path, mixing=None, **FAST)
    assert history.status == "diverged" and "bad data" in history.message and len(history) == 1
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad update was not applied


# ----------------------------------------------------------------------------- arguments and helpers
@pytest.mark.parametrize(
    "kwargs",
    [dict(epochs=0), dict(epochs=1, batch_size=0), dict(epochs=1, lr=-1.0), dict(epochs=1, optimizer="rmsprop"),
     dict(epochs=1, scheduler="step"), dict(epochs=1, mixing="cutout"), dict(epochs=1, device="tpu")],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        fit(tiny_student(), toy_data(), progress=False, **kwargs)


def test_bad_types():
    model = tiny_student()
    with pytest.raises(TypeError):
        fit(model, [1, 2, 3], epochs=1, progress=False)
    with pytest.raises(ValueError, match="same module"):
        fit(model, toy_data(), epochs=1, teacher=model, progress=False)


def test_history_round_trip_and_headless_live_plot(tmp_path):
    history = History([{"epoch": 1, "train_loss": 1.0, "val_top1": 50.0}, {"epoch": 2, "train_loss": 0.5, "val_top1": 70.0}],
                      status="completed", message="done")
    loaded = History.load(history.save(tmp_path / "h.json"))
    assert loaded == history and loaded.status == "completed" and loaded.best()["epoch"] == 2
    assert json.loads(json.dumps(history))[1]["val_top1"] == 70.0
    plot = LivePlot(display=False)
    plot.update(history)
    assert plot.save(tmp_path / "curves.png").stat().st_size > 1000
    assert len(plot.axes[0].lines) == 1 and len(plot.axes[1].lines) == 1


def test_test_data_is_scored_every_epoch_for_the_record_only(tmp_path):
    """``test_data`` adds test_* to each record and never decides best.pt (validation does)."""
    seed_everything(0)
    train, val, test = toy_data(), toy_data(8, seed=1), toy_data(8, seed=2)
    history = fit(tiny_student(), train, val, test_data=test, epochs=2, mixing=None, output_dir=tmp_path, **FAST)
    for record in history:
        assert {"test_loss", "test_top1", "test_top5", "finished_at"} <= set(record)
        assert 0 <= record["test_top1"] <= record["test_top5"] <= 100
    assert history[0]["finished_at"] <= history[1]["finished_at"]
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["metrics"]["val_top1"] == max(r["val_top1"] for r in history)
    student = tiny_student()
    student.load_state_dict(load_checkpoint(tmp_path / "last.pt")["state_dict"])
    assert evaluate(student, test, device="cpu")["top1"] == pytest.approx(history[-1]["test_top1"])
    with pytest.raises(TypeError, match="test_data"):
        fit(tiny_student(), train, test_data="test", epochs=1, **FAST)


def test_a_callback_stopping_after_the_last_epoch_leaves_the_run_completed():
    calls = []
    history = fit(tiny_student(), toy_data(), epochs=2, mixing=None, callbacks=[lambda r: calls.append(r["epoch"]) or True],
                  **FAST)
    assert history.status == "stopped" and calls == [1] and len(history) == 1
    calls.clear()
    history = fit(tiny_student(), toy_data(), epochs=1, mixing=None, callbacks=[lambda r: calls.append(r["epoch"]) or True],
                  **FAST)
    assert history.status == "completed" and calls == [1]
