"""Make ``mnist-subset.npz.xz``: a seeded, stratified subset of MNIST shipped with the package.

    python eidetic_func/data/embedded/make_embedded.py --source DATA_ROOT           # (re)write it
    python eidetic_func/data/embedded/make_embedded.py --source DATA_ROOT --check   # verify it

``DATA_ROOT/MNIST/raw/`` holds the four original ``.gz`` files (torchvision layout). They
are md5-checked, copied to a temporary directory and read with ``torchvision.datasets.MNIST``
(nothing is downloaded or written under ``DATA_ROOT``). For each digit, the first
``TRAIN_PER_CLASS`` (train) / ``TEST_PER_CLASS`` (test) positions of a
``numpy.random.default_rng(SEED)`` permutation of that digit's images are kept; see
``README.md`` for the format. The output is byte-for-byte deterministic for a given
liblzma (the zip members carry a fixed timestamp); ``--check`` compares array contents,
which do not depend on the compressor.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

TRAIN_PER_CLASS = 1500
TEST_PER_CLASS = 400
SEED = 0
OUT = Path(__file__).with_name("mnist-subset.npz.xz")


def read_mnist(source: Path) -> dict[str, np.ndarray]:
    """Full MNIST: ``{train,test}_{images,labels}`` uint8 arrays, in file order."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.utils import check_integrity

    raw = source / "MNIST" / "raw"
    for name, md5 in MNIST.resources:
        if not check_integrity(raw / name, md5):
            sys.exit(f"{raw / name} is missing or its md5 is not {md5}")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(raw, Path(tmp) / "MNIST" / "raw")
        out = {}
        for split in ("train", "test"):
            # The archives are present and verified: download=True only extracts them.
            ds = MNIST(tmp, train=split == "train", download=True)
            out[f"{split}_images"] = ds.data.numpy()
            out[f"{split}_labels"] = ds.targets.numpy().astype(np.uint8)
    return out


def subset(mnist: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The embedded arrays: images, labels and original indices, grouped by digit."""
    rng = np.random.default_rng(SEED)
    out = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = mnist[f"{split}_labels"]
        # Grouped by digit, ascending original index within a digit (compresses better).
        index = np.concatenate(
            [np.sort(rng.permutation(np.flatnonzero(labels == c))[:per_class]) for c in range(10)]
        )
        out[f"{split}_images"] = mnist[f"{split}_images"][index]
        out[f"{split}_labels"] = labels[index]
        out[f"{split}_index"] = index.astype(np.uint16)
    return out


def encode(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (uncompressed, fixed timestamps) compressed as a whole with xz."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)
    return lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME)


def decode(blob: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(lzma.decompress(blob)), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="root holding MNIST/raw/*.gz")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="verify --out instead of writing")
    args = parser.parse_args(argv)
    arrays = subset(read_mnist(args.source))
    if args.check:
        stored = decode(args.out.read_bytes())
        same = stored.keys() == arrays.keys() and all(
            stored[k].dtype == arrays[k].dtype and np.array_equal(stored[k], arrays[k])
            for k in arrays
        )
        if not same:
            sys.exit(f"{args.out} differs from a fresh subset of {args.source}")
        blob = args.out.read_bytes()
    else:
        blob = encode(arrays)
        args.out.write_bytes(blob)
    for k, v in arrays.items():
        print(f"{k}: {v.dtype} {v.shape}")
    print(f"{args.out}: {len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")


if __name__ == "__main__":
    main()
