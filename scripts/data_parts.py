#!/usr/bin/env python3
"""Take an image dataset to a machine that accepts only small transfers: split it into compressed parts
here, send the parts one by one into the same folder there, join them there.

    python scripts/data_parts.py split --data /path/to/data --out .parts --parts 3   # here
    python scripts/data_parts.py check .parts                                          # which parts are there
    python scripts/data_parts.py travel .parts                                         # do they fit a command?
    python scripts/data_parts.py join .parts runs/gpu/data                             # there
    export TITN_EDU_DATA=runs/gpu/data

``split`` reads both splits of ``DATA/<name>-npz/<name>_{train,test}.npz`` (the offline format of
``titn_edu.data``; default name ``cifar10``) and writes ``OUT/<name>.partKKofNN.npz``: part ``k`` holds
images ``k, k + N, k + 2N, …`` of each split (every class in every part, so the parts are of one size). ``join`` checks that every part is there and that
they belong together, decodes them, checks the SHA-256 of each split against the one recorded at the
split, and writes ``DEST/<name>-npz/<name>_{train,test}.npz`` (each atomically; a second ``join`` of
the same parts finds them there and does nothing). Only NumPy and the standard library are needed.

The images are coded without loss in the way of JPEG-LS: each pixel is replaced by its difference from
the median edge detector's prediction (from its left, upper and upper-left neighbours), the red and
blue differences by their difference from the green one, and the result is compressed with LZMA. For
CIFAR-10 that is about 56 % of the raw size (zlib on the raw images: 91 %), so its 60,000 images
(176 MiB raw) travel in three parts of 32.6 MiB.

Each command to the machine carries the repository's working tree (its tracked files and the untracked
ones git does not ignore) and at most 64 MiB in all, so a part must fit beside the tree: ``travel`` adds
them up and, when one does not fit, says into how many parts to split instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
_PART = re.compile(r"^(?P<name>[A-Za-z0-9_-]+)\.part(?P<k>\d+)of(?P<n>\d+)\.npz$")
CARRY_LIMIT = 64 * 2**20  # bytes one command carries: the working tree and one part


# ----------------------------------------------------------------------------- lossless image coding
def _med_prediction(left: np.ndarray, up: np.ndarray, up_left: np.ndarray) -> np.ndarray:
    """The median edge detector (LOCO-I): min(a, b) above an edge, max(a, b) below one, else a + b - c."""
    high, low = np.maximum(left, up), np.minimum(left, up)
    return np.where(up_left >= high, low, np.where(up_left <= low, high, left + up - up_left))


def encode(images: np.ndarray) -> bytes:
    """uint8 images ``(N, H, W, C)`` -> LZMA-compressed prediction residuals (see the module docstring)."""
    x = np.pad(images.transpose(3, 0, 1, 2).astype(np.int16), ((0, 0), (0, 0), (1, 0), (1, 0)))  # (C, N, H+1, W+1)
    prediction = _med_prediction(x[..., 1:, :-1], x[..., :-1, 1:], x[..., :-1, :-1])  # zero rows/columns outside
    residual = x[..., 1:, 1:] - prediction
    if residual.shape[0] == 3:  # colour: red and blue relative to green
        residual[[0, 2]] -= residual[1]
    return lzma.compress(np.ascontiguousarray(residual % 256, dtype=np.uint8).tobytes(), preset=6)


def decode(data: bytes, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Inverse of :func:`encode`: ``shape`` ``(N, H, W, C)`` -> the uint8 images, bit for bit."""
    n, h, w, c = shape
    residual = np.frombuffer(lzma.decompress(data), dtype=np.uint8).reshape(c, n, h, w).astype(np.int16)
    if c == 3:
        residual[[0, 2]] += residual[1]
    residual = np.ascontiguousarray(residual.transpose(2, 3, 0, 1))  # (H, W, C, N): one pixel of every image at once
    x = np.zeros((h + 1, w + 1, c, n), dtype=np.int16)
    for i in range(h):  # each pixel needs its left and upper neighbours: row by row, pixel by pixel
        for j in range(w):
            guess = _med_prediction(x[i + 1, j], x[i, j + 1], x[i, j])
            x[i + 1, j + 1] = (guess + residual[i, j]) % 256
    return np.ascontiguousarray(x[1:, 1:].transpose(3, 0, 1, 2), dtype=np.uint8)


def checksum(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of a split's images (uint8, as stored) and labels (int64)."""
    digest = hashlib.sha256(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- split
def _load_split(data: Path, name: str, split: str) -> dict[str, np.ndarray]:
    path = data / f"{name}-npz" / f"{name}_{split}.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: point --data at a folder holding {name}-npz/{name}_{{train,test}}.npz "
                                f"(the offline format; titn-edu data export {name} --out DIR writes it)")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in ("images", "labels", "classes")}
    if arrays["images"].dtype != np.uint8 or arrays["images"].ndim != 4:
        raise ValueError(f"{path}: 'images' must be uint8 (N, H, W, C); got {arrays['images'].dtype} "
                         f"{arrays['images'].shape}")
    return arrays


def split(data: Path, out: Path, parts: int, name: str = "cifar10") -> list[Path]:
    """Write ``out/<name>.partKKofNN.npz`` for k = 0 … parts-1 (module docstring); return their paths."""
    if parts < 1 or parts > 99:
        raise ValueError(f"--parts must be between 1 and 99; got {parts}")
    splits = {s: _load_split(data, name, s) for s in SPLITS}
    sums = {s: checksum(a["images"], a["labels"]) for s, a in splits.items()}
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{name}.part*of*.npz"):  # a split into another number of parts must not mix with this one
        old.unlink()
    written = []
    for k in range(parts):
        arrays: dict[str, np.ndarray] = {"classes": splits["train"]["classes"], "part": np.array(k),
                                         "parts": np.array(parts)}
        for s, a in splits.items():
            images = a["images"][k::parts]
            arrays[f"{s}_images_xz"] = np.frombuffer(encode(images), dtype=np.uint8)
            arrays[f"{s}_shape"] = np.array(images.shape)
            arrays[f"{s}_labels"] = a["labels"][k::parts].astype(np.int64)
            arrays[f"{s}_sha256"] = np.array(sums[s])
        path = out / f"{name}.part{k:02d}of{parts:02d}.npz"
        _save_atomic(path, arrays)
        written.append(path)
        print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB", flush=True)
    return written


# ----------------------------------------------------------------------------- check and join
def find_parts(folder: Path, name: str = "cifar10") -> tuple[dict[int, Path], int]:
    """``({k: path}, N)`` of the parts of ``name`` in ``folder``; a ``ValueError`` if they come from splits into
    different numbers of parts, a ``FileNotFoundError`` if there are none."""
    found: dict[int, Path] = {}
    totals = set()
    for path in sorted(folder.glob(f"{name}.part*of*.npz")) if folder.is_dir() else []:
        match = _PART.match(path.name)
        if match and match["name"] == name:
            found[int(match["k"])] = path
            totals.add(int(match["n"]))
    if not found:
        raise FileNotFoundError(f"no part of {name} in {folder} (expected {name}.partKKofNN.npz files); "
                                f"make them with: python scripts/data_parts.py split --out {folder}")
    if len(totals) != 1:
        raise ValueError(f"{folder} holds parts of splits into {sorted(totals)} parts: keep those of one split only")
    return found, totals.pop()


def missing_parts(folder: Path, name: str = "cifar10") -> list[str]:
    """File names of the parts not (yet) in ``folder``."""
    found, total = find_parts(folder, name)
    return [f"{name}.part{k:02d}of{total:02d}.npz" for k in range(total) if k not in found]


def tree_bytes(root: Path) -> int:
    """Bytes of the working tree a command carries: the tracked files and the untracked ones git does not ignore."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise ValueError(f"{root} is not a git checkout ({err}): run travel from the repository") from None
    files = {root / name for name in listed.decode().split("\0") if name}
    return sum(f.stat().st_size for f in files if f.is_file())  # a deleted, not yet committed file travels not


def travel(folder: Path, root: Path, name: str = "cifar10", limit: int = CARRY_LIMIT) -> tuple[bool, str]:
    """Does the working tree at ``root`` plus the largest part in ``folder`` fit one command's ``limit``? The
    verdict and a line of figures, with the number of parts to split into when they do not fit."""
    found, total = find_parts(folder, name)
    tree, part = tree_bytes(root), max(p.stat().st_size for p in found.values())
    figures = (f"the working tree {tree / 2**20:.1f} MiB + the largest of {total} parts {part / 2**20:.1f} MiB = "
               f"{(tree + part) / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB")
    if tree + part <= limit:
        return True, figures
    if tree >= limit:
        return False, f"{figures}: the tree alone is too large; keep large files out of it"
    needed = -(-part * total // (limit - tree))  # the parts together are about part * total bytes
    return False, f"{figures}: too large; split again with --parts {needed}"


def _read_part(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable part ({err}); send it again") from None


def join(folder: Path, dest: Path, name: str = "cifar10") -> list[Path]:
    """Decode every part in ``folder`` into ``dest/<name>-npz/<name>_{train,test}.npz`` (module docstring)."""
    missing = missing_parts(folder, name)
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: send the missing part(s) first")
    found, total = find_parts(folder, name)
    target = dest / f"{name}-npz"
    stamp = target / "SHA256.json"
    parts = [_read_part(found[k]) for k in range(total)]
    sums = {s: str(parts[0][f"{s}_sha256"]) for s in SPLITS}
    if any(str(p[f"{s}_sha256"]) != sums[s] for p in parts for s in SPLITS):
        raise ValueError(f"the parts in {folder} come from different datasets (their checksums differ): split again")
    if stamp.is_file() and json.loads(stamp.read_text()) == sums and all(
            (target / f"{name}_{s}.npz").is_file() for s in SPLITS):
        print(f"{target}: already joined, checksums match")
        return [target / f"{name}_{s}.npz" for s in SPLITS]
    written = []
    for s in SPLITS:
        images, labels = _interleave(parts, s, folder)
        if checksum(images, labels) != sums[s]:
            raise ValueError(f"the joined {s} split does not match its checksum: a part is damaged; send them again")
        path = target / f"{name}_{s}.npz"
        _save_atomic(path, {"images": images, "labels": labels, "classes": parts[0]["classes"]})
        written.append(path)
        print(f"{path}  {images.shape[0]} images", flush=True)
    stamp.write_text(json.dumps(sums, indent=2) + "\n")
    return written


def _interleave(parts: list[dict[str, np.ndarray]], split: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """The split's images and labels in their order again: part ``k`` holds items ``k, k + N, …``."""
    n, total = sum(int(p[f"{split}_shape"][0]) for p in parts), len(parts)
    images = np.empty((n, *(int(d) for d in parts[0][f"{split}_shape"][1:])), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for k, p in enumerate(parts):
        try:
            images[k::total] = decode(p[f"{split}_images_xz"].tobytes(), tuple(p[f"{split}_shape"]))
            labels[k::total] = p[f"{split}_labels"]
        except (lzma.LZMAError, ValueError) as err:
            raise ValueError(f"part {k} in {folder} is damaged ({err}); send it again") from None
    return images, labels


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # as a plain write would leave it (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="write the parts")
    s.add_argument("--data", default=os.environ.get("TITN_EDU_DATA"), help="data root (default: $TITN_EDU_DATA)")
    s.add_argument("--out", default=".parts", help="folder for the parts (default .parts)")
    s.add_argument("--parts", type=int, default=3, help="number of parts (default 3)")
    s.add_argument("--name", default="cifar10")
    c = sub.add_parser("check", help="list the parts present and missing")
    c.add_argument("folder")
    c.add_argument("--name", default="cifar10")
    t = sub.add_parser("travel", help="check that the working tree and one part fit one command (64 MiB)")
    t.add_argument("folder")
    t.add_argument("--root", default=".", help="the repository (default: the current folder)")
    t.add_argument("--name", default="cifar10")
    j = sub.add_parser("join", help="decode the parts into the offline format")
    j.add_argument("folder")
    j.add_argument("dest", help="data root to write (then TITN_EDU_DATA=DEST)")
    j.add_argument("--name", default="cifar10")
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            if not args.data:
                parser.error("split needs --data (or TITN_EDU_DATA)")
            split(Path(args.data), Path(args.out), args.parts, args.name)
        elif args.command == "check":
            missing = missing_parts(Path(args.folder), args.name)
            print("missing: " + ", ".join(missing) if missing else "all parts present")
            return 1 if missing else 0
        elif args.command == "travel":
            fits, line = travel(Path(args.folder), Path(args.root), args.name)
            print(("fits: " if fits else "does not fit: ") + line)
            return 0 if fits else 1
        else:
            join(Path(args.folder), Path(args.dest), args.name)
    except (FileNotFoundError, ValueError) as err:
        print(f"data_parts: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
