"""Checks `calseg eval --pred A --labels B --json` per-class Dice against numpy on two
seeded 122-class label maps (Voronoi organs in a sphere, one class only in the prediction).

    cd /tmp/hard && python hard_dice_numpy.py path/to/calseg
"""
import json, subprocess, sys
import numpy as np, nibabel as nib
rng = np.random.default_rng(7)
shape = (96, 96, 64)
# 120 organ-like blobs: label = index of the nearest of 120 random centres (Voronoi), 0 outside a sphere
pts = rng.uniform(0, 1, (120, 3)) * np.array(shape)
g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
def vor(p):
    d = ((g[:, None, :] - p[None]) ** 2).sum(-1)
    return d.argmin(1).reshape(shape) + 1
a = vor(pts)
b = vor(pts + rng.normal(0, 1.5, pts.shape))
r = np.linalg.norm((g - np.array(shape) / 2) / (np.array(shape) / 2), axis=1).reshape(shape)
a[r > 0.9] = 0; b[r > 0.85] = 0
b[b == 57] = 121  # a class only the prediction has
a = a.astype(np.uint8); b = b.astype(np.uint8)
nib.save(nib.Nifti1Image(a, np.eye(4)), "truth.nii.gz")
nib.save(nib.Nifti1Image(b, np.eye(4)), "pred.nii.gz")
k = max(a.max(), b.max()) + 1
out = json.loads(subprocess.run([sys.argv[1], "eval", "--pred", "pred.nii.gz", "--labels", "truth.nii.gz", "--json"], capture_output=True, check=True).stdout)
worst = 0.0; n = 0
for c in range(k):
    ta, pb = a == c, b == c
    denom = ta.sum() + pb.sum()
    want = None if ta.sum() == 0 else 2 * (ta & pb).sum() / denom
    got = out["dice"][c]
    if want is None:
        assert got is None, (c, got)
    else:
        worst = max(worst, abs(got - want)); n += 1
print(f"classes {k}, compared {n}, max |calseg - numpy| = {worst:.3e}, n_classes reported {out['n_classes']}")
