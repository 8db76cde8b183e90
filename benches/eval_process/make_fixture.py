"""Writes a BraTS-sized probability map and label map for the whole-process `calseg eval`
timing (benches/RESULTS.md): probs (4, 240, 240, 155) f32 as .npy, .safetensors, .nii and
.nii.gz (classes last), labels (240, 240, 155) u8 as .npy and .nii.gz. Seeded.

    python make_fixture.py OUT_DIR
"""
import json
import struct
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
k, shape = 4, (240, 240, 155)
logits = rng.standard_normal((k, *shape), dtype=np.float32) * 2.0
labels = rng.integers(0, k, size=shape, dtype=np.uint8)
logits[labels[None] == np.arange(k)[:, None, None, None]] += 2.0
logits -= logits.max(axis=0, keepdims=True)
np.exp(logits, out=logits)
logits /= logits.sum(axis=0, keepdims=True)
probs = logits
np.save(out / "probs.npy", probs)
np.save(out / "labels.npy", labels)
# safetensors by hand (no torch needed): 8-byte header length, JSON header, raw bytes.
header = {"probs": {"dtype": "F32", "shape": list(probs.shape), "data_offsets": [0, probs.nbytes]}}
h = json.dumps(header).encode()
h += b" " * (-(8 + len(h)) % 64)
with open(out / "probs.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    f.write(probs.tobytes())
classes_last = np.moveaxis(probs, 0, -1)
nib.save(nib.Nifti1Image(classes_last, np.eye(4)), out / "probs.nii")
nib.save(nib.Nifti1Image(classes_last, np.eye(4)), out / "probs.nii.gz")
nib.save(nib.Nifti1Image(labels, np.eye(4)), out / "labels.nii.gz")
