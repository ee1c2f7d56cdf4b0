"""Throughput and peak memory of TITN against timm's TNT built with the same configuration.

Run ``python benchmarks/throughput.py`` (or call :func:`run_benchmark`). The two models are timed
**round by round in one process**: in every round each model runs ``steps`` training steps (or
inference batches), in alternating order, so load from other programs hits both alike. The figure
that counts is the ratio ``TITN / TNT`` of images per second:

* per round (paired): min / median / max over the rounds;
* of the medians: median TITN throughput over median TNT throughput.

Both are given for wall-clock time (images/s) and for the CPU time of the process (images per
CPU-second, :func:`time.process_time`). On a machine shared with other work, wall-clock time
includes the time the benchmark waits for a core; with ``threads=1`` the CPU-time figures measure
the models' own cost and are much steadier. (With several threads, CPU time also counts threads
spinning while they wait for each other.)

What is measured
    *Training step*: forward, cross-entropy loss, backward and a (fused) AdamW step; TITN's two
    heads are both trained against the labels, as in hard distillation, and the teacher's forward
    is not part of the step.
    *Inference*: ``model.eval()`` forward under :func:`torch.inference_mode`.

CPU (default there): fp32, batch 128, eager mode. GPU (default there): bf16 autocast,
``torch.compile`` for both models, batch 1024, and MFU = achieved FLOP/s / device peak, with the
FLOPs of one step counted by :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplies,
convolutions and attention; the usual convention).

Peak memory
    GPU: :func:`torch.cuda.max_memory_allocated` during one step (parameters, gradients, optimiser
    state and activations; allocator caching excluded). CPU: PyTorch's CPU allocator keeps no peak
    counter, so each model runs in a **fresh subprocess**: after one 1-image step (library set-up
    and optimiser state are then resident) the peak resident set size is reset to the current one
    (Linux ``/proc/self/clear_refs``) and we report how far the peak (``VmHWM``) rises above it
    during two full-batch steps: activations, gradients and workspaces of a step, as the operating
    system sees them. (Elsewhere ``getrusage``'s lifetime peak is used, an upper bound.) Python's
    ``tracemalloc`` does not see tensor memory, so it is not used.

timm is a benchmark-only dependency: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import MODEL_PRESETS, build_model, count_parameters
from .utils import cpu_name

__all__ = ["run_benchmark", "build_timm_tnt", "BenchmarkResult", "PEAK_TFLOPS", "main"]

#: Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), matched against the CUDA device
#: name; the first matching key wins. Override with ``peak_tflops=`` / ``--peak-tflops``.
PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
}

MODES = ("train", "infer")
_REFERENCE = "timm-tnt"


# --------------------------------------------------------------------------- models
def _import_timm_tnt():
    try:
        from timm.models.tnt import TNT
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the benchmark compares against timm's TNT, but timm is not installed. Install the "
            'benchmark extra: pip install -e ".[bench]"'
        ) from err
    return TNT


def build_timm_tnt(config: dict[str, Any]) -> nn.Module:
    """timm's TNT with the configuration of a TITN ``model.config`` (``inner=True`` presets).

    Mapping (timm 1.0): ``embed_dim=outer_dim``, ``inner_dim``, ``depth``,
    ``num_heads_outer=outer_heads``, ``num_heads_inner=inner_heads``, ``mlp_ratio`` (timm's inner
    MLP ratio is fixed at 4), ``qkv_bias=False`` and ``first_stride=pixel_size``: timm embeds the
    pixels of each ``p × p`` patch with a 7×7 convolution of stride ``first_stride``, giving
    ``(p / pixel_size)^2`` pixel tokens of ``inner_dim`` features, as many as TITN's linear pixel
    embedding. TNT has no distillation token and one head (``(p/…)^2 + 1`` outer tokens).
    """
    if not config.get("inner", True):
        raise ValueError("timm's TNT has an inner (pixel) transformer; compare it with a TNT/TITN preset (inner=True).")
    TNT = _import_timm_tnt()
    return TNT(
        img_size=config["img_size"], patch_size=config["patch_size"], in_chans=config["in_chans"],
        num_classes=config["num_classes"], embed_dim=config["outer_dim"], inner_dim=config["inner_dim"],
        depth=config["depth"], num_heads_inner=config["inner_heads"], num_heads_outer=config["outer_heads"],
        mlp_ratio=config["mlp_ratio"], qkv_bias=False, first_stride=config["pixel_size"],
    )


def _build(name: str, model: str, num_classes: int, overrides: dict[str, Any]) -> nn.Module:
    titn = build_model(model, num_classes=num_classes, **overrides)
    return titn if name == model else build_timm_tnt(titn.config)


# ---------------------------------------------------------------------- one step
def _loss(out: Tensor | tuple[Tensor, Tensor], labels: Tensor) -> Tensor:
    if isinstance(out, tuple):  # TITN in training: class and distillation heads
        return 0.5 * (F.cross_entropy(out[0], labels) + F.cross_entropy(out[1], labels))
    return F.cross_entropy(out, labels)


def _make_step(model: nn.Module, mode: str, images: Tensor, labels: Tensor, *, amp: bool,
               compile: bool) -> Callable[[], None]:
    device_type = images.device.type
    autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if amp else None
    run = torch.compile(model) if compile else model
    if mode == "train":
        model.train()
        try:  # one kernel per parameter where PyTorch has it (CPU and CUDA, torch >= 2.4)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        except (RuntimeError, TypeError):  # pragma: no cover - older PyTorch or other devices
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            if autocast is None:
                loss = _loss(run(images), labels)
            else:
                with autocast():
                    loss = _loss(run(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                if autocast is None:
                    run(images)
                else:
                    with autocast():
                        run(images)
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _count_flops(model: nn.Module, mode: str, device: torch.device, img: tuple[int, int, int], num_classes: int,
                 amp: bool) -> float:
    """FLOPs per image of one training step or one inference forward (FlopCounterMode, eager)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .metrics import written_out_attention

    n = 2
    images = torch.randn(n, *img, device=device)
    labels = torch.randint(0, num_classes, (n,), device=device)
    model.train(mode == "train")
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    with written_out_attention(model), FlopCounterMode(display=False) as counter:
        if mode == "train":
            with ctx:
                loss = _loss(model(images), labels)
            loss.backward()
        else:
            with torch.no_grad(), ctx:
                model(images)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def _device_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override * 1e12, "given"
    if device.type != "cuda":
        return None, "unknown"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return tflops * 1e12, f"{key} bf16 dense"
    return None, f"unknown ({name}); pass peak_tflops"


# ------------------------------------------------------------------------ memory
def _reset_peak_rss() -> bool:
    """Linux: reset the process's peak RSS (``VmHWM``) to its current size; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_bytes() -> int:
    import resource  # Unix only; imported here so that the module imports everywhere

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def _memory_probe(name: str, model: str, mode: str, batch_size: int, num_classes: int, threads: int,
                  overrides: dict[str, Any], accelerate: bool = False) -> None:
    """Child process of :func:`_cpu_peak_memory`: prints the peak RSS growth of two steps as JSON."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = _build(name, model, num_classes, overrides)
    if accelerate and name == model:
        from .accel import accelerate as accelerate_model

        accelerate_model(net)
    c = build_model(model, num_classes=num_classes, **overrides).config
    images = torch.randn(batch_size, c["in_chans"], c["img_size"], c["img_size"])
    labels = torch.randint(0, num_classes, (batch_size,))
    # One 1-image step first: library initialisation (thread pools, kernels) and the optimiser's
    # state are then already resident, and the growth below is what the batch itself needs.
    _make_step(net, mode, images[:1], labels[:1], amp=False, compile=False)()
    step = _make_step(net, mode, images, labels, amp=False, compile=False)
    if _reset_peak_rss():  # Linux: peak RSS (VmHWM) restarts from the current RSS
        before = _rss_kib("VmRSS") * 1024
        for _ in range(2):
            step()
        peak, how = _rss_kib("VmHWM") * 1024, "VmHWM"
    else:  # elsewhere the lifetime peak: an upper bound if set-up peaked higher than the steps
        before = _maxrss_bytes()
        for _ in range(2):
            step()
        peak, how = _maxrss_bytes(), "ru_maxrss"
    print(json.dumps({"peak_bytes": peak - before, "how": how}))


def _cpu_peak_memory(name: str, model: str, mode: str, batch_size: int, num_classes: int, threads: int,
                     overrides: dict[str, Any], accelerate: bool = False) -> int:
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [package_root, env.get("PYTHONPATH", "")] if p)
    code = (
        "import json, sys; from titn_edu.bench import _memory_probe; "
        "_memory_probe(*json.loads(sys.argv[1]))"
    )
    args = json.dumps([name, model, mode, batch_size, num_classes, threads, overrides, accelerate])
    proc = subprocess.run([sys.executable, "-c", code, args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {name} ({mode}) failed:\n{proc.stderr[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"])


# ----------------------------------------------------------------------- results
@dataclass
class ModelResult:
    """One model in one mode: images/s of every round, FLOPs per image, peak memory."""

    name: str
    mode: str
    params: int
    images_per_s: list[float]
    images_per_cpu_s: list[float]
    flops_per_image: float
    peak_memory_bytes: int | None = None
    peak_memory_method: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)


@dataclass
class BenchmarkResult:
    """Everything one :func:`run_benchmark` call measured, plus how and where."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    results: list[ModelResult] = field(default_factory=list)

    def get(self, name: str, mode: str) -> ModelResult:
        for r in self.results:
            if r.name == name and r.mode == mode:
                return r
        raise KeyError(f"no result for model {name!r} in mode {mode!r}")

    def ratios(self, mode: str, *, clock: str = "wall") -> dict[str, float]:
        """TITN / TNT throughput: per round (min, median, max) and of the medians.

        ``clock="wall"``: images per second; ``clock="cpu"``: images per CPU-second of this process.
        """
        if clock not in ("wall", "cpu"):
            raise ValueError(f"clock must be 'wall' or 'cpu'; got {clock!r}.")
        key = "images_per_s" if clock == "wall" else "images_per_cpu_s"
        ours, ref = getattr(self.get(self.settings["model"], mode), key), getattr(self.get(_REFERENCE, mode), key)
        paired = [a / b for a, b in zip(ours, ref)]
        return {"min": min(paired), "median": statistics.median(paired), "max": max(paired),
                "of_medians": statistics.median(ours) / statistics.median(ref)}

    def to_dict(self) -> dict[str, Any]:
        out = {"settings": self.settings, "machine": self.machine, "results": [asdict(r) for r in self.results]}
        out["ratios"] = {mode: self.ratios(mode) for mode in self.settings["modes"]}
        out["ratios_cpu_time"] = {mode: self.ratios(mode, clock="cpu") for mode in self.settings["modes"]}
        return out

    def report(self) -> str:
        """The human-readable table printed by :func:`main`."""
        s, m = self.settings, self.machine
        peak = s.get("peak_flops")
        lines = [
            f"{m['date']}  {m['device_name']}  torch {m['torch']}  timm {m['timm']}  threads {s['threads']}"
            f"  load avg {m['load_before']} -> {m['load_after']}",
            f"device {s['device']}  batch {s['batch_size']}  rounds {s['rounds']} x {s['steps']} step(s)"
            f"  amp {'bf16' if s['amp'] else 'off (fp32)'}  compile {s['compile']}"
            f"  accelerated {s.get('accelerate', False)}",
            "",
            f"{'mode':<6} {'model':<9} {'params':>10} {'img/s min':>10} {'median':>9} {'max':>9}"
            f" {'GFLOP/img':>10} {'TFLOP/s':>8} {'MFU':>6} {'peak mem':>10}",
        ]
        for r in self.results:
            achieved = r.flops_per_image * r.median
            mfu = f"{achieved / peak:6.1%}" if peak else "     -"
            mem = f"{r.peak_memory_bytes / 2**20:7.0f} MiB" if r.peak_memory_bytes is not None else "         -"
            lines.append(
                f"{r.mode:<6} {r.name:<9} {r.params:>10,} {min(r.images_per_s):>10.1f} {r.median:>9.1f}"
                f" {max(r.images_per_s):>9.1f} {r.flops_per_image / 1e9:>10.3f} {achieved / 1e12:>8.3f} {mfu} {mem}"
            )
        lines.append("")
        for clock, unit in [("wall", "images/s"), ("cpu", "images per CPU-second")]:
            for mode in s["modes"]:
                q = self.ratios(mode, clock=clock)
                lines.append(
                    f"{mode:<6} {s['model']} / {_REFERENCE} {unit}: per round min {q['min']:.2f}x  median "
                    f"{q['median']:.2f}x  max {q['max']:.2f}x;  ratio of medians {q['of_medians']:.2f}x"
                )
        if self.results and self.results[0].peak_memory_method:
            lines.append(f"peak memory: {self.results[0].peak_memory_method}")
        return "\n".join(lines)


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "n/a"


# ------------------------------------------------------------------------- entry
def run_benchmark(
    *,
    model: str = "titn",
    num_classes: int = 100,
    device: str = "auto",
    batch_size: int | None = None,
    rounds: int | None = None,
    steps: int | None = None,
    warmup: int | None = None,
    modes: Sequence[str] = MODES,
    threads: int | None = None,
    amp: bool | None = None,
    compile: bool | None = None,
    memory: bool = True,
    peak_tflops: float | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    accelerate: bool | None = None,
) -> BenchmarkResult:
    """Time ``build_model(model)`` against timm's TNT of the same configuration (see module docstring).

    Args:
        model: a TITN preset with an inner transformer (``"titn"``, ``"tnt"``, ``"titn-large-patch"``, …).
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        batch_size, rounds, steps, warmup: ``None`` picks the device's default
            (CPU: 128, 5, 2, 1; CUDA: 1024, 5, 10, 3). ``steps`` are timed per model per round.
        modes: any of ``"train"``, ``"infer"``.
        threads: CPU threads (:func:`torch.set_num_threads`); ``None`` keeps PyTorch's default.
        amp, compile: bf16 autocast and ``torch.compile`` for both models; ``None`` = on for CUDA only.
        memory: also measure peak memory (CPU: one subprocess per model and mode).
        peak_tflops: device peak for MFU; ``None`` looks the CUDA device up in :data:`PEAK_TFLOPS`.
        overrides: constructor arguments applied to both models (e.g. ``{"depth": 2}`` for a smoke test).
        progress: called with a line of text after each measurement (``print`` for live output).
        accelerate: TITN's inner blocks on :mod:`titn_edu.accel`'s kernel; ``None`` = on CPU only.
    """
    dev, settings = _checked_settings(model=model, num_classes=num_classes, device=device, batch_size=batch_size,
                                      rounds=rounds, steps=steps, warmup=warmup, modes=modes, threads=threads,
                                      amp=amp, compile=compile, peak_tflops=peak_tflops, overrides=overrides)
    say, names = progress or (lambda line: None), [model, _REFERENCE]
    settings["accelerate"] = dev.type == "cpu" if accelerate is None else bool(accelerate)
    nets = _build_pair(model, num_classes, settings, dev)
    c = nets[model].config
    img = (c["in_chans"], c["img_size"], c["img_size"])
    images = torch.randn(settings["batch_size"], *img, device=dev)
    labels = torch.randint(0, num_classes, (settings["batch_size"],), device=dev)
    settings["peak_flops"], settings["peak_source"] = _device_peak(dev, peak_tflops)
    result = BenchmarkResult(settings=settings, machine=_machine(dev))

    for mode in settings["modes"]:
        fns = {n: _make_step(nets[n], mode, images, labels, amp=settings["amp"], compile=settings["compile"])
               for n in names}
        times, cpu_times = _time_rounds(fns, mode, settings, dev, say)
        for n in names:
            nets[n].zero_grad(set_to_none=True)
            flops = _count_flops(nets[n], mode, dev, img, num_classes, settings["amp"])
            mem, how = _peak_memory(n, fns[n], mode, settings, dev, memory)
            result.results.append(ModelResult(n, mode, count_parameters(nets[n]), times[n], cpu_times[n], flops, mem, how))
            say(f"{mode} {n}: flops and memory measured")
    result.machine["load_after"] = _load()
    return result


def _build_pair(model: str, num_classes: int, settings: dict[str, Any], dev: torch.device) -> dict[str, nn.Module]:
    """TITN (its inner blocks accelerated when ``settings["accelerate"]``) and timm's TNT, seeded alike."""
    torch.manual_seed(0)
    nets = {n: _build(n, model, num_classes, settings["overrides"]).to(dev) for n in (model, _REFERENCE)}
    if settings["accelerate"]:
        from .accel import accelerate

        accelerate(nets[model])
    return nets


def _checked_settings(*, model: str, num_classes: int, device: str, batch_size: int | None, rounds: int | None,
                      steps: int | None, warmup: int | None, modes: Sequence[str], threads: int | None,
                      amp: bool | None, compile: bool | None, peak_tflops: float | None,
                      overrides: dict[str, Any] | None) -> tuple[torch.device, dict[str, Any]]:
    """The device and the settings of a run (``None`` filled in with the device's default); a ``ValueError``
    names the first bad argument. Sets the number of CPU threads when ``threads`` is given."""
    if model not in MODEL_PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(MODEL_PRESETS)}.")
    if not MODEL_PRESETS[model].get("inner", False) or (overrides or {}).get("inner") is False:
        raise ValueError(f"model {model!r} has no inner transformer; timm's TNT can only be compared with "
                         f"an inner=True preset such as 'titn' or 'tnt'.")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but no CUDA device is available; use device='cpu'.")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    on_gpu = dev.type == "cuda"
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty selection of {MODES}; got {modes!r}.")
    counts = _step_counts(on_gpu, batch_size=batch_size, rounds=rounds, steps=steps, warmup=warmup)
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer; got {threads!r}.")
        torch.set_num_threads(threads)
    if peak_tflops is not None and not peak_tflops > 0:
        raise ValueError(f"peak_tflops must be > 0; got {peak_tflops!r}.")
    settings = dict(model=model, num_classes=num_classes, device=dev.type, **counts, modes=list(modes),
                    threads=torch.get_num_threads(), amp=on_gpu if amp is None else bool(amp),
                    compile=on_gpu if compile is None else bool(compile), overrides=dict(overrides or {}))
    return dev, settings


def _step_counts(on_gpu: bool, **given: int | None) -> dict[str, int]:
    """``batch_size``, ``rounds``, ``steps``, ``warmup``: the given ones checked, the others the device's default."""
    defaults = dict(batch_size=1024, rounds=5, steps=10, warmup=3) if on_gpu else dict(batch_size=128, rounds=5, steps=2, warmup=1)
    counts = {name: defaults[name] if given[name] is None else given[name] for name in defaults}
    for name, low in [("batch_size", 1), ("rounds", 1), ("steps", 1), ("warmup", 0)]:
        value = counts[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    return counts


def _machine(dev: torch.device) -> dict[str, Any]:
    """Where and when the run happens: date, device, library versions, load average before it."""
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:  # pragma: no cover
        timm_version = "n/a"
    on_gpu = dev.type == "cuda"
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device_name": torch.cuda.get_device_name(dev) if on_gpu else f"{cpu_name()} ({os.cpu_count()} cores)",
        "torch": torch.__version__, "timm": timm_version, "python": platform.python_version(),
        "load_before": _load(),
    }


def _time_rounds(fns: dict[str, Callable[[], None]], mode: str, settings: dict[str, Any], dev: torch.device,
                 say: Callable[[str], None]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Warm-up steps, then the timed rounds, the models alternating who goes first.

    Returns images per second and images per CPU-second of every round, per model.
    """
    names = list(fns)
    batch_size, rounds, steps = settings["batch_size"], settings["rounds"], settings["steps"]
    for n in names:
        for _ in range(settings["warmup"]):
            fns[n]()
        _sync(dev)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu_times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):  # alternate who goes first
            _sync(dev)
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                fns[n]()
            _sync(dev)
            times[n].append(batch_size * steps / (time.perf_counter() - start))
            cpu_times[n].append(batch_size * steps / max(time.process_time() - cpu_start, 1e-9))
            say(f"{mode} round {r + 1}/{rounds} {n}: {times[n][-1]:.1f} img/s, "
                f"{cpu_times[n][-1]:.1f} img per CPU-s")
    return times, cpu_times


def _peak_memory(name: str, step: Callable[[], None], mode: str, settings: dict[str, Any], dev: torch.device,
                 memory: bool) -> tuple[int | None, str]:
    """Peak memory of one model's step and how it was measured; ``(None, "")`` when ``memory`` is off."""
    if not memory:
        return None, ""
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        _sync(dev)
        return torch.cuda.max_memory_allocated(dev), "torch.cuda.max_memory_allocated during one step"
    mem = _cpu_peak_memory(name, settings["model"], mode, settings["batch_size"], settings["num_classes"],
                           torch.get_num_threads(), settings["overrides"], settings["accelerate"])
    return mem, "rise of the peak RSS (VmHWM) over the RSS before two full-batch steps, fresh subprocess per model"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, then rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python benchmarks/throughput.py [options]`` (``--help`` lists them)."""
    p = argparse.ArgumentParser(
        prog="titn-edu bench",
        description="Training and inference throughput (images/s) and peak memory of TITN against timm's TNT "
                    "at the same configuration, alternating the two models round by round.",
    )
    p.add_argument("--model", default="titn", help="TITN preset with an inner transformer (default: titn)")
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, help="default: 128 on CPU, 1024 on CUDA")
    p.add_argument("--rounds", type=int, help="alternating rounds (default 5)")
    p.add_argument("--steps", type=int, help="timed steps per model per round (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps per model first (default: 1 on CPU, 3 on CUDA)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--threads", type=int, help="CPU threads (default: PyTorch's)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast (default: on CUDA only)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile both models (default: on CUDA only)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    p.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for MFU (default: looked up for known GPUs)")
    p.add_argument("--json", type=Path, help="also write all raw numbers to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    p.add_argument("--accelerate", action=argparse.BooleanOptionalAction, default=None,
                   help="TITN's inner blocks on titn_edu.accel's compiled kernel (default: on CPU only)")
    args = p.parse_args(argv)
    try:
        result = run_benchmark(
            model=args.model, num_classes=args.num_classes, device=args.device, batch_size=args.batch_size,
            rounds=args.rounds, steps=args.steps, warmup=args.warmup, modes=args.modes, threads=args.threads,
            amp=args.amp, compile=args.compile, memory=args.memory, peak_tflops=args.peak_tflops,
            progress=None if args.quiet else lambda line: print(line, flush=True), accelerate=args.accelerate,
        )
    except (ValueError, ImportError) as err:
        p.error(str(err))
    print(result.report())
    if args.json is not None:
        _write_json(args.json, result.to_dict())
        print(f"raw numbers written to {args.json}")
    return 0
