"""scripts/data_parts.py: a dataset split into compressed parts and joined again, bit for bit, or a clear error."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("data_parts", ROOT / "scripts" / "data_parts.py")
data_parts = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(data_parts)


def _dataset(root: Path, n_train: int = 30, n_test: int = 12, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """A small dataset in the offline format under ``root`` (smooth images, like photographs, plus noise)."""
    rng = np.random.default_rng(seed)
    classes = np.array([f"class{i}" for i in range(10)])
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ramp = np.linspace(0, 200, 32)[None, :, None, None] + np.linspace(0, 50, 32)[None, None, :, None]
        images = np.clip(ramp + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        images[0] = 255 - images[0]  # extremes and edges
        images[0, :, :16] = 0
        labels = rng.integers(0, 10, n).astype(np.int64)
        (root / "cifar10-npz").mkdir(parents=True, exist_ok=True)
        np.savez(root / "cifar10-npz" / f"cifar10_{split}.npz", images=images, labels=labels, classes=classes)
        splits[split] = {"images": images, "labels": labels, "classes": classes}
    return splits


@pytest.mark.parametrize("channels", [3, 1])
def test_coding_is_lossless(channels):
    rng = np.random.default_rng(channels)
    images = rng.integers(0, 256, (7, 5, 6, channels), dtype=np.uint8)  # noise, not square: every index exercised
    images[0] = 0
    images[1] = 255
    assert np.array_equal(data_parts.decode(data_parts.encode(images), images.shape), images)


def test_cifar10_images_shrink_to_about_56_percent():
    path = Path(__import__("os").environ.get("TITN_EDU_DATA", "/nonexistent")) / "cifar10-npz" / "cifar10_test.npz"
    if not path.is_file():
        pytest.skip("CIFAR-10 is not available offline (set TITN_EDU_DATA)")
    images = np.load(path)["images"][::20]  # 500 images of every class
    coded = data_parts.encode(images)
    assert np.array_equal(data_parts.decode(coded, images.shape), images)
    assert len(coded) / images.nbytes < 0.6  # the module docstring's figure: about 56 %


def test_split_then_join_gives_the_dataset_back(tmp_path, capsys):
    original = _dataset(tmp_path / "data")
    written = data_parts.split(tmp_path / "data", tmp_path / "parts", 3)
    assert [p.name for p in written] == [f"cifar10.part{k:02d}of03.npz" for k in range(3)]
    joined = data_parts.join(tmp_path / "parts", tmp_path / "there")
    assert [p.relative_to(tmp_path / "there").as_posix() for p in joined] == [
        "cifar10-npz/cifar10_train.npz", "cifar10-npz/cifar10_test.npz"]
    for split, arrays in original.items():
        with np.load(tmp_path / "there" / "cifar10-npz" / f"cifar10_{split}.npz", allow_pickle=False) as f:
            for key, value in arrays.items():
                assert np.array_equal(f[key], value), (split, key)
    capsys.readouterr()
    data_parts.join(tmp_path / "parts", tmp_path / "there")  # the second time: nothing to do
    assert "already joined" in capsys.readouterr().out
    from titn_edu.data import get_dataset

    test = get_dataset("cifar10", train=False, root=tmp_path / "there", transform="raw")
    assert len(test) == 12 and test.images.shape[1:] == (3, 32, 32)
    # splitting again into fewer parts replaces the old parts, so the two splits never mix
    assert len(data_parts.split(tmp_path / "data", tmp_path / "parts", 2)) == 2
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["cifar10.part00of02.npz", "cifar10.part01of02.npz"]


def test_a_missing_part_is_named(tmp_path, capsys):
    _dataset(tmp_path / "data")
    data_parts.split(tmp_path / "data", tmp_path / "parts", 3)
    (tmp_path / "parts" / "cifar10.part01of03.npz").unlink()
    with pytest.raises(FileNotFoundError, match="lacks cifar10.part01of03.npz: send the missing part"):
        data_parts.join(tmp_path / "parts", tmp_path / "there")
    assert data_parts.main(["check", str(tmp_path / "parts")]) == 1
    assert "missing: cifar10.part01of03.npz" in capsys.readouterr().out
    assert data_parts.main(["join", str(tmp_path / "parts"), str(tmp_path / "there")]) == 1
    assert "data_parts: error:" in capsys.readouterr().err and not (tmp_path / "there").exists()
    assert data_parts.main(["join", str(tmp_path / "nothing"), str(tmp_path / "there")]) == 1
    assert "no part of cifar10" in capsys.readouterr().err


def test_parts_that_do_not_belong_together_are_refused(tmp_path):
    _dataset(tmp_path / "a", seed=0)
    _dataset(tmp_path / "b", seed=1)
    data_parts.split(tmp_path / "a", tmp_path / "pa", 2)
    data_parts.split(tmp_path / "b", tmp_path / "pb", 2)
    shutil.copy(tmp_path / "pb" / "cifar10.part01of02.npz", tmp_path / "pa" / "cifar10.part01of02.npz")
    with pytest.raises(ValueError, match="different datasets"):
        data_parts.join(tmp_path / "pa", tmp_path / "there")
    data_parts.split(tmp_path / "b", tmp_path / "pc", 3)
    shutil.copy(tmp_path / "pc" / "cifar10.part02of03.npz", tmp_path / "pa" / "cifar10.part02of03.npz")
    with pytest.raises(ValueError, match=r"splits into \[2, 3\] parts"):
        data_parts.join(tmp_path / "pa", tmp_path / "there")


def test_a_damaged_part_is_caught(tmp_path):
    _dataset(tmp_path / "data")
    data_parts.split(tmp_path / "data", tmp_path / "parts", 2)
    part = tmp_path / "parts" / "cifar10.part00of02.npz"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # a transfer cut short
    with pytest.raises(ValueError, match="not a readable part"):
        data_parts.join(tmp_path / "parts", tmp_path / "there")
    assert not (tmp_path / "there" / "cifar10-npz" / "cifar10_train.npz").exists()


def test_a_changed_byte_is_caught(tmp_path):
    _dataset(tmp_path / "data")
    data_parts.split(tmp_path / "data", tmp_path / "parts", 2)
    path = tmp_path / "parts" / "cifar10.part01of02.npz"
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["test_labels"] = (arrays["test_labels"] + 1) % 10  # a part that reads well but holds other data
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="does not match its checksum"):
        data_parts.join(tmp_path / "parts", tmp_path / "there")
    coded = arrays["train_images_xz"].copy()
    coded[len(coded) // 2] ^= 0xFF  # a flipped byte inside the compressed images
    arrays["train_images_xz"] = coded
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match="damaged|checksum"):
        data_parts.join(tmp_path / "parts", tmp_path / "there")


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@needs_git
def test_travel_adds_the_working_tree_and_the_largest_part(tmp_path, capsys):
    _dataset(tmp_path / "data")
    parts = data_parts.split(tmp_path / "data", tmp_path / "repo" / ".parts", 2)
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text(".parts/\n")  # the parts travel as carried files, not with the tree
    (repo / "tracked.bin").write_bytes(bytes(10_000))
    subprocess.run(["git", "-C", str(repo), "add", "tracked.bin"], check=True)
    (repo / "untracked.bin").write_bytes(bytes(5_000))  # untracked and not ignored: it travels too
    tree = 10_000 + 5_000 + len(".parts/\n")
    assert data_parts.tree_bytes(repo) == tree
    part = max(p.stat().st_size for p in parts)

    fits, line = data_parts.travel(repo / ".parts", repo, limit=tree + part)
    assert fits and f"of 2 parts {part / 2**20:.1f} MiB" in line
    fits, line = data_parts.travel(repo / ".parts", repo, limit=tree + part - 1)
    assert not fits and line.endswith("too large; split again with --parts 3")  # two parts' bytes in three
    fits, line = data_parts.travel(repo / ".parts", repo, limit=tree)
    assert not fits and "the tree alone is too large" in line
    capsys.readouterr()
    assert data_parts.main(["travel", str(repo / ".parts"), "--root", str(repo)]) == 0
    assert capsys.readouterr().out.startswith("fits: the working tree 0.0 MiB + the largest of 2 parts")
    with pytest.raises(ValueError, match="not a git checkout"):
        data_parts.tree_bytes(tmp_path / "data")


# The largest part of CIFAR-10 split into three, as docs/gpu.md's plan sends it:
#   python scripts/data_parts.py split --data "$TITN_EDU_DATA" --out .parts --parts 3   (34,179,210 bytes)
CIFAR10_PART_OF_THREE = 34_179_210


@needs_git
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_repository_leaves_room_for_a_part_in_each_gpu_command():
    tree = data_parts.tree_bytes(ROOT)
    assert tree + CIFAR10_PART_OF_THREE <= data_parts.CARRY_LIMIT, (
        f"the working tree ({tree / 2**20:.1f} MiB) no longer leaves room for a third of CIFAR-10 in a GPU command: "
        f"split into more parts (python scripts/data_parts.py travel .parts says how many) and update docs/gpu.md")
