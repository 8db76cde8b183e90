"""The numpy baseline of the whole-process timing: load a (K, *spatial) probability map
and a label map from .npy, top-label ECE with 15 equal-width bins [lo, hi).

    python numpy_ece.py probs.npy labels.npy
"""
import sys

import numpy as np

p = np.load(sys.argv[1])
y = np.load(sys.argv[2])
conf = p.max(axis=0).ravel()
pred = p.argmax(axis=0).ravel()
acc = (pred == y.ravel()).astype(np.float64)
bins = np.minimum((conf * 15).astype(np.int64), 14)
n = np.bincount(bins, minlength=15)
sc = np.bincount(bins, weights=conf.astype(np.float64), minlength=15)
sa = np.bincount(bins, weights=acc, minlength=15)
print(f"ECE {np.abs(sa - sc).sum() / conf.size:.6f}")
