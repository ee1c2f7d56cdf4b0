"""Nothing a user saved is lost: atomic checkpoints (failed and killed saves), exact resume,
clean interrupts, non-finite losses, and repeatable seeded runs. All on CPU with a tiny model."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

import titn_edu as T

N, BATCH = 24, 8  # 3 steps per epoch


def tiny_model():
    return T.build_model("titn-tiny", num_classes=4, depth=1)


class Images(Dataset):
    """A fixed random 4-class data set; optional faults: an action at the ``fault_at``-th item read."""

    def __init__(self, fault_at: int | None = None, fault=None, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(N, 3, 32, 32, generator=g)
        self.y = torch.arange(N) % 4
        self.fault_at, self.fault, self.reads = fault_at, fault, 0

    def __len__(self):
        return N

    def __getitem__(self, i):
        self.reads += 1
        x = self.x[i]
        if self.fault_at is not None and self.reads >= self.fault_at:
            x = self.fault(x, self.reads)
        return x, self.y[i]


def train(model, data, **kwargs):
    args = dict(epochs=3, batch_size=BATCH, lr=1e-3, device="cpu", progress=False, seed=0, val_data=Images(seed=1))
    args.update(kwargs)
    val = args.pop("val_data")
    return T.fit(model, data, val, **args)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def records(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds", "finished_at")} for r in history]  # clock readings differ


def temp_files(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- determinism
def test_seed_everything_makes_two_runs_identical():
    """Two CPU runs with the same seed: identical histories (every float) and bitwise-equal weights."""
    T.seed_everything(0)
    a = tiny_model()
    ha = train(a, Images(), epochs=2)
    T.seed_everything(0)
    b = tiny_model()
    hb = train(b, Images(), epochs=2)
    assert records(ha) == records(hb)
    assert same_weights(weights(a), weights(b))
    T.seed_everything(1)
    c = tiny_model()
    assert not same_weights(weights(a), weights(c))  # the seed matters: the test can fail


# ----------------------------------------------------------------------------- interrupt + resume
def interrupt_from_loader(at_read: int):
    def fault(x, reads):
        raise KeyboardInterrupt
    return Images(fault_at=at_read, fault=fault)


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Bitwise: KeyboardInterrupt in the data loader during epoch 2, then ``resume`` from last.pt
    (epoch 1: model, optimizer, scheduler, RNG states) gives exactly the weights and history of a
    3-epoch run that was never interrupted."""
    T.seed_everything(0)
    ref = tiny_model()
    ref_history = train(ref, Images(), output_dir=tmp_path / "ref")

    T.seed_everything(0)
    model = tiny_model()
    run = tmp_path / "run"
    history = train(model, interrupt_from_loader(N + 10), output_dir=run)  # 10th image of epoch 2
    assert history.status == "interrupted"
    assert [r["epoch"] for r in history] == [1]
    assert "resume" in history.message and "1 complete epoch" in history.message
    assert T.load_checkpoint(run / "last.pt")["epoch"] == 1
    assert not temp_files(run)

    resumed = tiny_model()  # fresh weights: everything must come from the checkpoint
    history = train(resumed, Images(), resume=run, seed=None)
    assert history.status == "completed"
    assert records(history) == records(ref_history)
    assert same_weights(weights(resumed), weights(ref))
    assert same_weights(weights(T.load_model(run / "last.pt")), weights(ref))


def test_ctrl_c_finishes_the_current_step_and_keeps_the_last_checkpoint(tmp_path):
    """A real SIGINT (what Ctrl-C / Jupyter's "interrupt kernel" sends) during epoch 2: the step in
    progress completes, fit returns the history so far, last.pt still holds epoch 1."""
    steps = []

    def sigint(x, reads):
        if reads == N + 3:  # first image of epoch 2's second batch
            os.kill(os.getpid(), signal.SIGINT)
        steps.append(reads)
        return x

    model = tiny_model()
    history = train(model, Images(fault_at=N + 1, fault=sigint), output_dir=tmp_path)
    assert history.status == "interrupted"
    assert len(history) == 1
    assert T.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert max(steps) == N + BATCH  # that batch was completed (and trained on); no further batch was read
    assert T.train.History.load(tmp_path / "history.json").status == "interrupted"


def test_keyboard_interrupt_from_a_callback_returns_the_history(tmp_path):
    def stop(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    history = train(tiny_model(), Images(), output_dir=tmp_path, callbacks=[stop])
    assert history.status == "interrupted"
    assert [r["epoch"] for r in history] == [1, 2]
    assert T.load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


# ----------------------------------------------------------------------------- non-finite loss
def test_nan_batch_stops_training_and_leaves_best_untouched(tmp_path):
    def poison(x, reads):
        return torch.full_like(x, float("nan"))

    with pytest.warns(RuntimeWarning, match=r"loss became nan at epoch 2, step 1"):
        history = train(tiny_model(), Images(fault_at=N + 1, fault=poison), output_dir=tmp_path)  # epoch 2 is bad
    best = (tmp_path / "best.pt").read_bytes()
    assert history.status == "diverged"
    assert [r["epoch"] for r in history] == [1]
    assert "learning rate too high" in history.message and "bad data" in history.message
    assert "best.pt is untouched" in history.message
    assert (tmp_path / "best.pt").read_bytes() == best
    assert T.load_checkpoint(tmp_path / "best.pt")["epoch"] == 1
    assert T.load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    weights_ok = T.load_model(tmp_path / "last.pt").state_dict()
    assert all(torch.isfinite(v).all() for v in weights_ok.values() if v.is_floating_point())


def test_huge_learning_rate_is_explained():
    with pytest.warns(RuntimeWarning, match=r"loss became (nan|inf).*learning rate too high.*lr="):
        history = train(tiny_model(), Images(), lr=1e6, optimizer="paper", mixing=None, epochs=2, warmup_epochs=0)
    assert history.status == "diverged"


# ----------------------------------------------------------------------------- atomic checkpoints
def test_save_failing_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = T.save_checkpoint(tmp_path / "last.pt", tiny_model(), epoch=1)
    before = path.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # the bytes reach the temporary file...
        f.truncate(f.tell() // 2)
        raise OSError("No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="No space left"):
        T.save_checkpoint(path, tiny_model(), epoch=2)
    assert path.read_bytes() == before
    assert T.load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


KILLED_WRITER = textwrap.dedent(
    """
    import sys, torch, titn_edu as T
    model = T.build_model("titn-tiny", num_classes=4, depth=1)
    big = torch.randn(4_000_000)  # 16 MB, so that a save takes a while
    epoch = 0
    while True:
        epoch += 1
        T.save_checkpoint(sys.argv[1], model, epoch=epoch, big=big)
        print(epoch, flush=True)
    """
)


def test_kill_during_save_keeps_a_loadable_checkpoint(tmp_path):
    """SIGKILL a process while it writes a checkpoint: the file is the last complete one; the
    killed writer's temporary file is removed by the next save of that path."""
    path = tmp_path / "last.pt"
    env = dict(os.environ, PYTHONPATH=str(Path(T.__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one complete checkpoint exists
        deadline = time.monotonic() + 30
        while not temp_files(tmp_path):  # wait until the next save is under way
            assert time.monotonic() < deadline, "the writer never started a second save"
            time.sleep(0.001)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = T.load_checkpoint(path)
    assert ckpt["epoch"] >= 1 and ckpt["extra"]["big"].numel() == 4_000_000
    model = T.load_model(path)
    assert model.config["depth"] == 1
    T.save_checkpoint(path, model, epoch=ckpt["epoch"] + 1)  # the next save cleans up after the dead writer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert T.load_checkpoint(path)["epoch"] == ckpt["epoch"] + 1


def test_a_running_writers_temp_file_is_left_alone(tmp_path):
    live = tmp_path / f".last.pt.{os.getppid()}.0123abcd.tmp"
    live.write_bytes(b"partial")
    T.save_checkpoint(tmp_path / "last.pt", tiny_model(), epoch=1)
    assert live.exists()  # its writer (our parent process) is alive: maybe mid-save


def test_checkpoint_records_what_is_needed_to_rebuild_and_resume(tmp_path):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    T.save_checkpoint(tmp_path / "c.pt", model, optimizer=opt, scheduler=sched, epoch=3, metrics={"val_top1": 50.0}, note="x")
    ckpt = T.load_checkpoint(tmp_path / "c.pt")
    assert ckpt["model"] == {"builder": "titn", "kwargs": dict(model.config)}
    assert ckpt["epoch"] == 3 and ckpt["metrics"] == {"val_top1": 50.0} and ckpt["extra"] == {"note": "x"}
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 1e-3 and ckpt["scheduler"]["step_size"] == 1
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["versions"]["torch"] == str(torch.__version__) and ckpt["versions"]["titn_edu"] == T.__version__
    assert math.isclose(ckpt["metrics"]["val_top1"], 50.0)


# ----------------------------------------------------------------------------- command line
def test_cli_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path):
    """``titn-edu train`` stopped by a real SIGINT during training, then ``titn-edu train --resume``:
    the student's final weights are bitwise those of a run that was never interrupted."""
    pytest.importorskip("titn_edu.cli", reason="the titn-edu command line is not part of this build")
    try:
        T.get_dataset("mnist", train=False, limit=10, download=False)
    except FileNotFoundError:
        pytest.skip("MNIST is not available offline here (set TITN_EDU_DATA)")
    env = dict(os.environ, PYTHONPATH=str(Path(T.__file__).parents[1]))
    args = ["--dataset", "mnist", "--model", "titn-tiny", "--model-arg", "depth=1", "--teacher", "none",
            "--epochs", "3", "--limit", "240", "--test-limit", "20", "--batch-size", "40", "--optimizer", "adamw",
            "--mixing", "cutmix", "--seed", "0", "--device", "cpu", "--threads", "1", "--no-progress"]

    def cli(*extra, **kwargs):
        return subprocess.Popen([sys.executable, "-m", "titn_edu", "train", *extra], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    ref = cli(*args, "--output", str(tmp_path / "ref"))
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err

    run = tmp_path / "run"
    proc = cli(*args, "--output", str(run))
    try:
        deadline = time.monotonic() + 300
        while not (run / "student" / "last.pt").is_file():  # epoch 1 is saved: interrupt epoch 2
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    done = T.load_checkpoint(run / "student" / "last.pt")["epoch"]
    assert 1 <= done < 3

    resumed = cli("--resume", str(run), "--device", "cpu", "--threads", "1", "--no-progress")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    a = T.load_checkpoint(tmp_path / "ref" / "student" / "last.pt")
    b = T.load_checkpoint(run / "student" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert same_weights(a["state_dict"], b["state_dict"])
