"""Checkpoints: round trip, atomic writes, safe loading (pickle payloads refused, never run)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from titn_edu import build_model, load_checkpoint, load_model, save_checkpoint
from titn_edu.checkpoint import CheckpointError, UnsafeCheckpointError


def tiny(**kw):
    return build_model("titn-tiny", num_classes=4, in_chans=1, depth=1, outer_dim=16, inner_dim=4, **kw)


def test_round_trip_restores_model_and_training_state(tmp_path):
    torch.manual_seed(0)
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    model(torch.randn(2, 1, 32, 32))[0].sum().backward()
    opt.step()
    sched.step()
    path = save_checkpoint(tmp_path / "run" / "c.pt", model, optimizer=opt, scheduler=sched, epoch=3,
                           metrics={"top1": 12.5, "cm": [[1, 2], [3, 4]]}, note="hello", arr=torch.arange(3))
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["metrics"]["top1"] == 12.5 and ckpt["extra"]["note"] == "hello"
    assert ckpt["model"] == {"builder": "titn", "kwargs": model.config}
    assert set(ckpt["versions"]) >= {"titn_edu", "torch", "python"} and "torch" in ckpt["rng"]
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 1

    loaded = load_model(path)
    assert not loaded.training and loaded.config == model.config
    x = torch.randn(3, 1, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    # A folder resolves to best.pt, then last.pt.
    os.replace(path, tmp_path / "run" / "last.pt")
    assert load_checkpoint(tmp_path / "run")["epoch"] == 3


def test_missing_truncated_and_foreign_files(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(missing)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(missing)
    path = save_checkpoint(tmp_path / "ok.pt", tiny())
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(text)
    foreign = tmp_path / "state_dict.pt"
    torch.save(tiny().state_dict(), foreign)  # a bare state_dict: valid torch file, not ours
    with pytest.raises(CheckpointError, match="not a titn_edu checkpoint"):
        load_model(foreign)


class _Payload:
    """Unpickling this object would create a file (stands in for arbitrary code)."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    payload = {"format": "titn_edu.checkpoint", "format_version": 1, "x": _Payload(str(marker))}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match="evil.pt"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):
        load_model(path)
    assert not marker.exists()


def test_failed_save_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", tiny(), epoch=1)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, tiny(), epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_save_rejects_non_plain_values(tmp_path):
    with pytest.raises(TypeError, match="metrics"):
        save_checkpoint(tmp_path / "c.pt", tiny(), metrics={"f": lambda: 1})
    assert not list(tmp_path.iterdir())


def test_model_without_config_saves_but_cannot_be_rebuilt(tmp_path):
    net = torch.nn.Linear(3, 2)
    with pytest.warns(UserWarning, match="config"):
        path = save_checkpoint(tmp_path / "lin.pt", net)
    assert torch.equal(load_checkpoint(path)["state_dict"]["weight"], net.weight.detach())
    with pytest.raises(CheckpointError, match="rebuild"):
        load_model(path)


def test_a_checkpoint_saved_before_the_model_path_was_rewritten_still_loads_and_predicts_the_same():
    """``tests/data/titn_tiny_before_redesign.pt`` was written by commit 5fbd57d (fast paths woven into the
    model); today's plain model loads it with the same ``state_dict`` keys and gives the logits recorded then."""
    path = Path(__file__).parent / "data" / "titn_tiny_before_redesign.pt"
    model = load_model(path)
    ckpt = load_checkpoint(path)
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(logits, torch.tensor(ckpt["extra"]["logits"]), atol=1e-5, rtol=1e-4)
