"""The throughput benchmark: the timm TNT mapping, a small end-to-end run, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from titn_edu import build_model, count_parameters
from titn_edu import bench

timm = pytest.importorskip("timm", reason="the benchmark extra (timm) is not installed")


def test_timm_tnt_has_the_same_configuration():
    titn = build_model("titn", num_classes=100)
    tnt = bench.build_timm_tnt(titn.config)
    assert tnt.embed_dim == 192 and len(tnt.blocks) == 12 and tnt.num_patches == titn.num_patches == 16
    # 16 pixel tokens of 12 features per patch, like TITN's pixel embedding
    pixels = tnt.pixel_embed(torch.randn(2, 3, 32, 32), tnt.pixel_pos)
    assert pixels.shape == (2 * 16, 16, 12) == (2 * titn.num_patches, titn.num_pixels, 12)
    block = tnt.blocks[0]
    assert block.attn_in.num_heads == 2 and block.attn_out.num_heads == 3
    assert block.mlp.fc1.out_features == 4 * 192 and block.mlp_in.fc1.out_features == 4 * 12
    # same size up to the distillation token/head and the small embedding differences
    assert abs(count_parameters(tnt) - count_parameters(titn)) / count_parameters(titn) < 0.01
    assert tnt(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_timm_tnt_needs_an_inner_preset():
    with pytest.raises(ValueError, match="inner"):
        bench.build_timm_tnt(build_model("deit-tiny", num_classes=10).config)


def test_small_run_reports_rounds_ratios_and_flops():
    lines = []
    result = bench.run_benchmark(device="cpu", batch_size=2, rounds=3, steps=1, warmup=0, memory=False,
                                 overrides={"depth": 1}, progress=lines.append)
    assert sum("round" in line for line in lines) == 2 * 2 * 3  # modes x models x rounds
    for mode in ("train", "infer"):
        ours, ref = result.get("titn", mode), result.get("timm-tnt", mode)
        assert len(ours.images_per_s) == len(ref.images_per_s) == 3
        assert all(v > 0 for v in ours.images_per_s + ref.images_per_s)
        assert ours.flops_per_image > 0 and ref.flops_per_image > 0
        q = result.ratios(mode)
        assert q["min"] <= q["median"] <= q["max"]
        assert q["of_medians"] == pytest.approx(ours.median / ref.median)
        assert all(v > 0 for v in ours.images_per_cpu_s)
        c = result.ratios(mode, clock="cpu")
        assert c["min"] <= c["median"] <= c["max"]
    # training counts forward and backward: about three times the inference FLOPs
    train, infer = result.get("titn", "train").flops_per_image, result.get("titn", "infer").flops_per_image
    assert 2.5 < train / infer < 3.5
    text = result.report()
    assert "ratio of medians" in text and "timm-tnt" in text and "CPU-second" in text
    with pytest.raises(ValueError, match="clock"):
        result.ratios("train", clock="gpu")
    json.dumps(result.to_dict())  # serialisable


def test_cpu_peak_memory_is_measured_in_a_subprocess():
    train = bench._cpu_peak_memory("titn", "titn", "train", 16, 10, 1, {"depth": 1})
    assert train > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model="vit"), "inner"),
        (dict(model="nope"), "unknown model"),
        (dict(batch_size=0), "batch_size"),
        (dict(rounds=0), "rounds"),
        (dict(modes=("fit",)), "modes"),
        (dict(device="tpu"), "device"),
        (dict(peak_tflops=-1.0), "peak_tflops"),
        (dict(threads=0), "threads"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench.run_benchmark(memory=False, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        bench.run_benchmark(device="cuda", memory=False)


def test_command_line_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--batch-size", "0", "--device", "cpu"])
    assert "batch_size" in capsys.readouterr().err


def test_peak_lookup_and_override():
    assert bench._device_peak(torch.device("cpu"), None) == (None, "unknown")
    assert bench._device_peak(torch.device("cpu"), 10.0) == (10.0e12, "given")
    assert bench.PEAK_TFLOPS["H100"] == pytest.approx(989.4)


def test_json_is_written_atomically(tmp_path):
    target = tmp_path / "out" / "bench.json"
    bench._write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]  # no temporary left behind
