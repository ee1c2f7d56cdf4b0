"""Training on several processes: ``torchrun`` + DistributedDataParallel with gloo on the CPU.

Two processes with a global batch of 2b train the weights one process trains with batch 2b, write one
metrics.json that equals a one-process evaluation of the saved checkpoint, survive the death of a
process (last.pt intact, --resume finishes), stop together on a NaN, and refuse bad jobs clearly.
Every job here is a real ``torchrun --standalone --nproc_per_node=2`` with one thread per process.
"""

from __future__ import annotations

import json
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

from titn_edu import build_model, evaluate, fit, load_checkpoint, load_model, load_pretrained, seed_everything
from titn_edu.cli import main
from titn_edu.data import get_dataset, get_transforms
from titn_edu.distributed import World, loader, shard_of_epoch, split_batch, whole_batches

ROOT = Path(__file__).resolve().parents[1]
STUDENT = dict(depth=1, outer_dim=32, inner_dim=4, patch_size=16, pixel_size=8)
MODEL = ["--model", "titn-tiny", *[a for k, v in STUDENT.items() for a in ("--model-arg", f"{k}={v}")]]
PER_PROCESS = ["--no-progress", "--threads", "1", "--device", "cpu", "--no-accelerate"]
# 256 images in global batches of 32 (16 per process), 8 steps an epoch; nothing random per process
# (no augmentation, no mixing), so two processes must give the weights of one.
ALIKE = ["train", "--dataset", "mnist", *MODEL, "--teacher", "pretrained:teacher-mnist", "--epochs", "2",
         "--batch-size", "32", "--lr", "0.005", "--limit", "256", "--test-limit", "600", "--mixing", "none",
         "--augment", "none", "--device-data", "--track-test", *PER_PROCESS]


# ----------------------------------------------------------------------------- helpers
def torchrun(args: list[str], logs: Path, *, wait: bool = True, timeout: float = 240) -> subprocess.Popen | tuple:
    """``torchrun --standalone --nproc_per_node=2 ARGS`` (each process's output in its own file under ``logs``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--log-dir", str(logs), "--redirects", "3", *args]
    job = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return job
    out, _ = job.communicate(timeout=timeout)
    return job.returncode, out, process_logs(logs)


def process_logs(logs: Path) -> dict[int, str]:
    """What each process printed: ``{rank: stdout + stderr}`` (torchrun's --redirects files)."""
    found: dict[int, str] = {}
    for stream in sorted(logs.glob("*/attempt_*/*/std*.log")):
        found[int(stream.parent.name)] = found.get(int(stream.parent.name), "") + stream.read_text()
    return found


def child_of(parent: int, rank: int) -> int:
    """The PID of the process of ``rank`` that torchrun (``parent``) started."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0") if ppid == parent else []
        except (OSError, IndexError, ValueError):
            continue
        if f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"torchrun (pid {parent}) has no process of rank {rank}")


def mnist_test(n: int):
    return get_dataset("mnist", train=False, limit=n, seed=0, transform=get_transforms("mnist", train=False))


# ----------------------------------------------------------------------------- sharing out the data
# (images, global batch, processes) -> images used in an epoch: full batches, then the last one's
# m // processes per process (the m mod processes left over sit out), unless m is 1.
@pytest.mark.parametrize("n, batch, size, used", [(256, 32, 2, 256), (100, 12, 3, 99), (53, 8, 2, 52), (9, 4, 2, 8),
                                                  (5, 4, 4, 4), (3, 4, 2, 2)])
def test_the_processes_share_out_the_batches_one_process_would_see(n, batch, size, used):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = [shard_of_epoch(order, batch, r, size) for r in range(size)]
    assert len({len(s) for s in shares}) == 1  # the same number of images (and steps) on every process
    share = batch // size
    for j in range(math.ceil(len(shares[0]) / share)):
        together = sorted(torch.cat([s[j * share: (j + 1) * share] for s in shares]).tolist())
        batch_j = sorted(order[j * batch: (j + 1) * batch].tolist())  # batch j of one process
        assert together == batch_j if (j + 1) * batch <= n else set(together) < set(batch_j)
    everything = torch.cat(shares).tolist()
    assert len(everything) == len(set(everything)) == used  # no image twice


@pytest.mark.parametrize("n, batch, size", [(600, 256, 2), (10, 3, 4), (2, 256, 3)])
def test_evaluation_scores_every_image_once_in_the_batches_of_one_process(n, batch, size):
    parts = [whole_batches(n, batch, World(rank=r, size=size)) for r in range(size)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    for p in parts:  # whole batches of one process: each starts at a multiple of the batch size
        starts = [i for i in p if i % batch == 0]
        assert len(p) == sum(min(batch, n - s) for s in starts)


def test_batches_that_cannot_be_shared_are_refused_with_the_fix():
    assert split_batch(32, 2) == 16
    with pytest.raises(ValueError, match=r"2 processes cannot share a batch of 1 image.*use 2"):
        split_batch(1, 2)
    with pytest.raises(ValueError, match=r"cannot be shared evenly by 4 processes: use a multiple of 4, e.g. 8 or 12"):
        split_batch(10, 4)
    images = torch.utils.data.TensorDataset(torch.zeros(1, 1, 32, 32), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="the 1 training images give no batch to share among 2 processes"):
        loader(images, batch_size=2, train=True, world=World(rank=0, size=2, backend="gloo"))
    with pytest.raises(ValueError, match="not a DataLoader"):
        loader(torch.utils.data.DataLoader(images), batch_size=2, train=True, world=World(rank=0, size=2))


# ----------------------------------------------------------------------------- CI test 1 and 2: one job, two checks
@pytest.fixture(scope="module")
def two_and_one(tmp_path_factory):
    """The same command on two processes (torchrun) and in one process: their run folders."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    code, out, logs = torchrun(["-m", "titn_edu", *ALIKE, "--output", str(two / "run")], two / "logs")
    assert code == 0, (out, logs)
    assert main([*ALIKE, "--output", str(one / "run")]) == 0
    return two / "run", one / "run"


def test_two_processes_train_the_weights_one_process_trains_with_their_whole_batch(two_and_one):
    two, one = two_and_one
    a, b = load_checkpoint(two / "student" / "last.pt"), load_checkpoint(one / "student" / "last.pt")
    assert a["extra"]["fit_config"]["world_size"] == 2 and b["extra"]["fit_config"]["world_size"] == 1
    assert a["extra"]["fit_config"]["batch_size"] == b["extra"]["fit_config"]["batch_size"] == 32
    assert list(a["state_dict"]) == list(b["state_dict"]) and not any(k.startswith("module.") for k in a["state_dict"])
    seed_everything(0)  # the command's seed, then the student is built first: its initial weights
    start = build_model("titn-tiny", num_classes=10, in_chans=1, **STUDENT).state_dict()
    moved = max((b["state_dict"][k] - start[k]).abs().max().item() for k in start)
    apart = max((a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in start)
    assert moved > 0.02 and apart < 1e-5, (moved, apart)  # 16 steps of real training, the same to float rounding
    for x, y in zip(a["extra"]["history"], b["extra"]["history"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
        assert (x["train_top1"], x["teacher_agreement"], x["lr"]) == (y["train_top1"], y["teacher_agreement"], y["lr"])


def test_two_processes_write_one_metrics_json_equal_to_one_process_scoring_the_checkpoint(two_and_one):
    two, _ = two_and_one
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["config"]["world_size"] == 2
    assert not [p for p in two.rglob(".*")]  # no temporary file left by two writers
    test = mnist_test(600)
    alone = evaluate(load_model(two / "student" / "last.pt"), test, device="cpu")  # one process, all 600 images
    assert metrics["test_samples"] == alone["num_samples"] == 600  # each image once: none twice, none dropped
    for key, theirs in (("test_top1", "top1"), ("test_top5", "top5"), ("precision", "precision"),
                        ("recall", "recall"), ("f1", "f1")):
        assert metrics[key] == alone[theirs], key
    assert metrics["test_loss"] == pytest.approx(alone["loss"], rel=1e-6)
    assert 15 < metrics["test_top1"] < 100  # it learned: a count of real predictions, not of one class
    assert metrics["history"]["epochs"][-1]["test_top1"] == alone["top1"]  # fit's own scores, shared out too
    teacher = evaluate(load_pretrained("teacher-mnist"), test, device="cpu")
    assert metrics["teacher"]["test_top1"] == teacher["top1"] and metrics["teacher"]["f1"] == teacher["f1"]


# ----------------------------------------------------------------------------- fit in the user's own process group
FIT_JOB = """
import json, os, sys
import torch, torch.distributed as dist
from titn_edu import TITNLoss, build_model, fit, seed_everything

class NaNOnProcess1(TITNLoss):
    calls = 0
    def terms(self, *args):
        self.calls += 1
        terms = super().terms(*args)
        poisoned = os.environ["RANK"] == "1" and self.calls == 3
        return terms._replace(total=terms.total * float("nan")) if poisoned else terms

dist.init_process_group("gloo")
out = sys.argv[1]
seed_everything(0)
model = build_model("titn-tiny", num_classes=4, in_chans=1, **STUDENT)
g = torch.Generator().manual_seed(0)
data = torch.randn(48, 1, 32, 32, generator=g), torch.randint(0, 4, (48,), generator=g)
fit(model, data, epochs=2, batch_size=12, lr=3e-3, mixing=None, device="cpu", progress=False, output_dir=out + "/fit")
history = fit(build_model("titn-tiny", num_classes=4, in_chans=1, **STUDENT), data, epochs=2, batch_size=12,
              loss=NaNOnProcess1(), device="cpu", progress=False, output_dir=out + "/nan")
said = {"status": history.status, "message": history.message, "epochs": len(history), "draws": torch.rand(3).tolist()}
fewer = 48 - 8 * dist.get_rank()  # process 1 was given other data
try:
    fit(build_model("titn-tiny", num_classes=4, in_chans=1, **STUDENT), (data[0][:fewer], data[1][:fewer]),
        epochs=1, batch_size=12, device="cpu", progress=False)
except ValueError as err:
    said["refused"] = str(err)
with open(f"{out}/nan/rank{dist.get_rank()}.json", "w") as f:
    json.dump(said, f)
dist.destroy_process_group()
"""


def test_fit_in_a_process_group_of_the_user_trains_like_one_process_and_stops_together_on_a_nan(tmp_path):
    """``fit`` in a group the script initialised: one process's weights; a NaN on one process, or other
    data on one process, stops every process with the same message."""
    script = tmp_path / "job.py"
    script.write_text(f"STUDENT = {STUDENT!r}\n" + textwrap.dedent(FIT_JOB))
    code, out, logs = torchrun([str(script), str(tmp_path)], tmp_path / "logs")
    assert code == 0, (out, logs)
    seed_everything(0)  # the same run in this one process
    model = build_model("titn-tiny", num_classes=4, in_chans=1, **STUDENT)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = torch.randn(48, 1, 32, 32, generator=g), torch.randint(0, 4, (48,), generator=g)
    fit(model, data, epochs=2, batch_size=12, lr=3e-3, mixing=None, device="cpu", progress=False)
    saved = load_checkpoint(tmp_path / "fit" / "last.pt")["state_dict"]
    apart = max((saved[k] - v).abs().max().item() for k, v in model.state_dict().items())
    moved = max((start[k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert apart < 1e-5 and moved > 0.01, (apart, moved)
    said = [json.loads((tmp_path / "nan" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key in ("status", "message", "epochs", "refused"):
        assert said[0][key] == said[1][key], key
    assert said[0]["status"] == "diverged" and said[0]["epochs"] == 0
    assert "the loss became nan at epoch 1, step 3" in said[0]["message"]  # found on process 1 only
    assert "RuntimeWarning" in logs[0] and "RuntimeWarning" not in logs[1]  # said once, by rank 0
    assert said[0]["draws"] != said[1]["draws"]  # each process draws its own CutMix boxes (seeded apart)
    assert "disagree on the run's settings, models or data: process 1 has training_images=40 (process 0: 48)" \
        in said[0]["refused"]


# ----------------------------------------------------------------------------- CI test 3: a process dies
# These find the process of rank 1 (to kill or freeze it) in /proc: Linux, as in CI.
needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds torchrun's processes in /proc")


def job_past_its_first_epoch(tmp_path: Path, timeout: float) -> tuple[subprocess.Popen, Path]:
    """A 4-epoch job (with CutMix) that has just written its first epoch, and its run folder."""
    run = tmp_path / "run"
    args = ["-m", "titn_edu", "train", "--dataset", "mnist", *MODEL, "--teacher", "none", "--epochs", "4",
            "--batch-size", "16", "--limit", "480", "--test-limit", "50", "--augment", "none", *PER_PROCESS,
            "--dist-timeout", str(timeout), "--output", str(run)]
    job = torchrun(args, tmp_path / "logs", wait=False)
    history = run / "student" / "history.json"
    while not (history.is_file() and json.loads(history.read_text())["epochs"]):
        if job.poll() is not None:
            pytest.fail(f"the job ended before its first epoch: {job.communicate()[0]}")
        time.sleep(0.02)
    time.sleep(0.3 * json.loads(history.read_text())["epochs"][0]["seconds"])  # into the next epoch
    return job, run


@needs_proc
def test_a_killed_process_stops_the_job_in_time_and_resume_finishes_the_run(tmp_path):
    timeout = 30
    job, run = job_past_its_first_epoch(tmp_path, timeout)
    try:
        os.kill(child_of(job.pid, rank=1), signal.SIGKILL)
        killed = time.monotonic()
        out, _ = job.communicate(timeout=timeout + 30)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and time.monotonic() - killed < timeout, out
    last = load_checkpoint(run / "student" / "last.pt")  # intact, and short of the end: killed mid-run
    done = last["epoch"]
    assert 1 <= done < 4 and len(last["extra"]["history"]) == done
    code, out, logs = torchrun(["-m", "titn_edu", "train", "--resume", str(run), *PER_PROCESS], tmp_path / "again")
    assert code == 0, (out, logs)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and [r["epoch"] for r in metrics["history"]["epochs"]] == [1, 2, 3, 4]
    assert metrics["history"]["epochs"][:done] == last["extra"]["history"]  # the epochs before the kill, kept
    assert load_checkpoint(run / "student" / "last.pt")["epoch"] == 4


@needs_proc
def test_a_process_that_stops_answering_stops_the_others_after_the_timeout(tmp_path):
    timeout = 5
    job, run = job_past_its_first_epoch(tmp_path, timeout)
    silent = child_of(job.pid, rank=1)
    try:
        os.kill(silent, signal.SIGSTOP)  # alive but silent: torchrun sees nothing wrong, only the timeout can
        frozen = time.monotonic()
        said = next((tmp_path / "logs").glob("*/attempt_*/0/stderr.log"))
        while "error" not in said.read_text() and time.monotonic() - frozen < timeout + 60:
            time.sleep(0.05)
        waited = time.monotonic() - frozen
    finally:
        os.kill(silent, signal.SIGCONT)  # let torchrun end it
        out, _ = job.communicate(timeout=60)
    assert timeout - 1 < waited < timeout + 20 and job.returncode != 0, (waited, out)
    assert "another process of this job stopped, or stopped answering" in said.read_text()
    assert "Traceback" not in said.read_text() and load_checkpoint(run / "student" / "last.pt")["epoch"] >= 1
    assert main(["train", "--resume", str(run), *PER_PROCESS]) == 0  # one process may finish a run of two
    last = load_checkpoint(run / "student" / "last.pt")
    assert last["epoch"] == 4 and last["extra"]["fit_config"]["world_size"] == 1
    assert json.loads((run / "metrics.json").read_text())["config"]["world_size"] == 1


# ----------------------------------------------------------------------------- bad jobs
# Process 1 starts 3 s late (slow imports on a busy machine): a process that stopped alone at once would
# have torchrun end process 1 before it could say anything. With "mismatch", process 1 has other settings.
LATE = """
import os, sys, time
from titn_edu.cli import main
if os.environ["RANK"] == "1":
    time.sleep(3)
sys.exit(main(sys.argv[1:] + (["--epochs", "2"] if os.environ["RANK"] == "1" and "MISMATCH" in os.environ else [])))
"""
BAD = ["train", "--dataset", "mnist", *MODEL, "--teacher", "none", "--epochs", "1", "--limit", "64",
       "--test-limit", "50", *PER_PROCESS]


@pytest.mark.parametrize("extra, says", [
    (["--batch-size", "1"], "2 processes cannot share a batch of 1 image(s)"),
    (["--dist-backend", "nccl"], "the NCCL backend runs on CUDA GPUs only, but this process trains on cpu"),
    ("mismatch", "the processes of this job disagree on the command's settings: "
                 "process 1 has epochs=2 (process 0: 1)"),
], ids=["more-processes-than-images-per-batch", "nccl-on-cpu", "different-settings"])
def test_a_bad_job_stops_with_one_clear_line_per_process(extra, says, tmp_path, monkeypatch):
    (tmp_path / "launch.py").write_text(textwrap.dedent(LATE))
    if extra == "mismatch":
        monkeypatch.setenv("MISMATCH", "1")
    args = [str(tmp_path / "launch.py"), *BAD, *([] if extra == "mismatch" else extra), "--output", str(tmp_path / "run")]
    started = time.monotonic()
    code, out, logs = torchrun(args, tmp_path / "logs", timeout=120)
    assert code != 0 and time.monotonic() - started < 120
    for rank in (0, 1):
        assert f"titn-edu (process {rank} of 2): error: {says}" in logs[rank], (out, logs)
        assert "Traceback" not in logs[rank], logs[rank]
    assert not (tmp_path / "run").exists()  # nothing written


def test_nccl_asked_for_by_name_must_fit_a_process_alone_too(monkeypatch):
    from titn_edu import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="the NCCL backend runs on CUDA GPUs only, but this process trains on cpu"):
        distributed.start(torch.device("cpu"), backend="nccl")
    assert distributed.start(torch.device("cpu"), backend="gloo")[0].size == 1  # gloo, or auto, for a process alone
