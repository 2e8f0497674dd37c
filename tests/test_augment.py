"""augment.py against independent oracles: Pillow (reference.py), numpy np.pad, torchvision.

CPU only, small batches. Both CPU execution paths ("group" and the sync-free "select") are checked.
"""
import ast
import pathlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import augment as A  # noqa: E402
import reference as R  # noqa: E402

MODES = ("group", "select")
SIGNED_V = [(v, s) for v in range(1, 10) for s in (-1, 1)]   # every magnitude, both signs


# ----------------------------------------------------------------------------- helpers

def to_pil(x, b):
    return Image.fromarray(x[b].permute(1, 2, 0).numpy())


def from_pil(im):
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def structured_images(size, seed=0):
    """Random images plus the degenerate cases of AutoContrast / Equalize / Contrast."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (8, 3, size, size), generator=g, dtype=torch.uint8)
    flat = x.view(8, 3, -1)
    x[0] = 77                                                             # constant image
    x[1] = torch.where(torch.rand(1, size, size, generator=g) < 0.5, 10, 200).to(torch.uint8)
    flat[2] = 0                                                           # 2-valued, counts 511/513 at 32 px:
    flat[2, :, : flat.shape[-1] // 2 + 1] = 255                          #   equalize lut hits 256 -> CLIP8
    x[3] = (torch.arange(size) * 7 % 256).to(torch.uint8)                 # gradient
    x[4] = torch.randint(100, 120, (3, size, size), generator=g).to(torch.uint8)  # low contrast
    x[5, 0], x[5, 1] = 0, 255                                             # per-channel constants
    x[6] = x[6] // 64 * 85                                                # 4 levels
    return x


# ----------------------------------------------------------------------------- per-op parity

@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", A.OPS)
def test_op_matches_pillow(name, size):
    """Every image x every (v, sign): apply_op == Pillow op, bit-exact, in both CPU paths."""
    imgs = structured_images(size)
    imgs = imgs if size == 32 else imgs[[0, 2, 6, 7]]   # 64 px: constant, CLIP8 case, 4-level, random
    n = len(imgs)
    x = imgs.repeat_interleave(len(SIGNED_V), 0)                    # [n * 18, 3, size, size]
    v = torch.tensor([v for v, _ in SIGNED_V] * n)
    sign = torch.tensor([s for _, s in SIGNED_V] * n)
    ref = torch.stack([from_pil(R.OPS[name](to_pil(x, b), int(v[b]), int(sign[b])))
                       for b in range(len(x))])
    for mode in MODES:
        out = A.apply_op(x, name, v, sign, mode=mode)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        bad = (out != ref).flatten(1).any(1).nonzero().flatten().tolist()
        assert not bad, f"{name} {mode}: (v, sign) of mismatches {[SIGNED_V[b % 18] for b in bad[:5]]}"


@pytest.mark.parametrize("wide", [False, True])
def test_blend_exhaustive(wide):
    """Image.blend over all 65536 (in1, in2) pairs for every factor used (both product precisions)."""
    a = torch.arange(256, dtype=torch.uint8)
    in1 = a.view(256, 1).expand(256, 256).contiguous()
    in2 = a.view(1, 256).expand(256, 256).contiguous()
    for v in range(1, 10):
        f = R._float_parameter(v, 0.9) + 0.05
        ref = np.array(Image.blend(Image.fromarray(in1.numpy()), Image.fromarray(in2.numpy()), f))
        alpha = A._tab(in1)["alpha"][v].view(1)
        out = A._blend(in1.view(1, 1, 256, 256), in2.view(1, 1, 256, 256), alpha, wide=wide)
        assert np.array_equal(out.view(256, 256).numpy(), ref), v


def test_magnitude_ranges():
    """anchors.md §1.3 table: the ranges that v in 1..9 produces."""
    tab = A._tab(torch.zeros(1, 3, 32, 32))
    alpha = tab["alpha"][1:10]
    assert abs(alpha[0].item() - 0.14) < 1e-6 and abs(alpha[-1].item() - 0.86) < 1e-6
    bits = [0xF0, 0xF0, 0xF8, 0xF8, 0xFC, 0xFC, 0xFC, 0xFE, 0xFE]        # keep 4..7 bits
    assert tab["post_mask"][1:10].tolist() == bits
    assert tab["sol_thr"][1].item() == 231 and tab["sol_thr"][9].item() == 26
    shifts = tab["affine"][A.OP_ID["TranslateX"], 1:10, 1, 2] >> 16       # a2 = (t + 1/2) * 65536
    assert shifts.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("size,B", [(32, 256), (64, 48)])
def test_randaugment_end_to_end(size, B):
    """Same drawn params -> augment.apply_randaugment == reference per-sample PIL pipeline."""
    g = torch.Generator().manual_seed(size)
    x = torch.randint(0, 256, (B, 3, size, size), generator=g, dtype=torch.uint8)
    x[::5] = x[::5] // 64 * 80                                          # few-valued images
    p = A.draw_randaugment(B, g, "cpu", size=size)
    ref = torch.stack([from_pil(R.pil_randaugment_mc(to_pil(x, b), R.sample_params(p, b)))
                       for b in range(B)])
    for mode in MODES:
        out = A.apply_randaugment(x, p, mode=mode)
        assert (out == ref).flatten(1).all(1).sum().item() == B, mode


def test_cutout_borders():
    """CutoutAbs at the borders (centre 0, just below/above v/2, last pixel) vs ImageDraw."""
    size, B = 32, 25
    x = torch.randint(0, 256, (B, 3, size, size), generator=torch.Generator().manual_seed(1),
                      dtype=torch.uint8)
    grid = torch.tensor([0.0, 7.999, 8.0, 20.5, 31.999], dtype=torch.float64)
    centre = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).view(B, 2)
    lo = (centre - 8).clamp(min=0).floor().long()
    p = dict(op=torch.zeros(1, B, dtype=torch.long), v=torch.ones(1, B, dtype=torch.long),
             apply=torch.zeros(1, B, dtype=torch.bool), sign=torch.ones(1, B, dtype=torch.long),
             cutout_centre=centre, cutout_box=torch.cat([lo, (lo + 16).clamp(max=size)], 1))
    ref = torch.stack([from_pil(R.pil_randaugment_mc(to_pil(x, b), R.sample_params(p, b)))
                       for b in range(B)])
    assert torch.equal(A.apply_randaugment(x, p), ref)
    area = (A.apply_randaugment(torch.zeros_like(x), p)[:, 0] == 127).sum((1, 2))
    assert area.max().item() == 17 * 17 and area.min().item() == 9 * 9   # inclusive box, clipped


def test_draw_ranges():
    B = 4096
    p = A.draw_randaugment(B, torch.Generator().manual_seed(0), "cpu")
    assert p["op"].shape == (2, B) and p["op"].min() == 0 and p["op"].max() == len(A.OPS) - 1
    assert p["v"].min() == 1 and p["v"].max() == 9                     # np.random.randint(1, 10)
    assert 0.45 < p["apply"].float().mean() < 0.55
    assert set(p["sign"].unique().tolist()) == {-1, 1}
    box = p["cutout_box"]
    assert box[:, :2].min() == 0 and box[:, :2].max() == 23 and box[:, 2:].max() == 32
    assert 0.25 < (box[:, 0] == 0).float().mean() < 0.31                 # P(x0 = 0) = 9/32


# ----------------------------------------------------------------------------- weak view

def numpy_flip_crop(img_hwc, flip, i, j, pad):
    """torchvision order: RandomHorizontalFlip, then np.pad reflect + crop."""
    h, w = img_hwc.shape[:2]
    if flip:
        img_hwc = img_hwc[:, ::-1]
    padded = np.pad(img_hwc, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return padded[i: i + h, j: j + w]


@pytest.mark.parametrize("size", [32, 64])
def test_flip_crop_matches_numpy(size):
    pad = size // 8
    combos = [(f, i, j) for f in (0, 1) for i in range(2 * pad + 1) for j in range(0, 2 * pad + 1, 3)]
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (1, 3, size, size), generator=g, dtype=torch.uint8)
    x = x.expand(len(combos), -1, -1, -1)
    flip = torch.tensor([c[0] for c in combos], dtype=torch.bool)
    offset = torch.tensor([c[1:] for c in combos])
    out = A.flip_crop(x, flip, offset, pad)
    img = x[0].permute(1, 2, 0).numpy()
    for b, (f, i, j) in enumerate(combos):
        assert np.array_equal(out[b].permute(1, 2, 0).numpy(), numpy_flip_crop(img, f, i, j, pad))
    # and torchvision's own PIL path for one combination
    tv = transforms.functional.crop(transforms.functional.pad(
        transforms.functional.hflip(to_pil(x, 0)), pad, padding_mode="reflect"), 3, 1, size, size)
    assert torch.equal(A.flip_crop(x[:1], torch.tensor([True]), torch.tensor([[3, 1]]), pad)[0], from_pil(tv))


def test_weak_is_uniform_flip_crop():
    """Each weak output equals one of the 2 x 9 x 9 numpy candidates; their counts look uniform."""
    B, size, pad = 4096, 32, 4
    coord = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    coord[0, 0] = torch.arange(size).view(size, 1)                      # row index
    coord[0, 1] = torch.arange(size).view(1, size)                      # column index
    img = coord[0].permute(1, 2, 0).numpy()
    out = A.weak(coord.expand(B, -1, -1, -1), torch.Generator().manual_seed(0))
    # recover (flip, i, j): rows are untouched by the flip, so out row `pad` is source row i
    i = out[:, 0, pad, 0].long()
    col = out[:, 1, 0, pad].long()
    flip = out[:, 1, 0, pad + 1].long() < col                          # columns decrease when flipped
    j = torch.where(flip, size - 1 - col, col)
    for b in range(0, B, 37):                                           # full check on a subsample
        cand = numpy_flip_crop(img, bool(flip[b]), int(i[b]), int(j[b]), pad)
        assert np.array_equal(out[b].permute(1, 2, 0).numpy(), cand)
    assert i.min() == 0 and i.max() == 2 * pad and j.min() == 0 and j.max() == 2 * pad
    assert 0.46 < flip.float().mean() < 0.54
    for k in (i, j):
        counts = torch.bincount(k, minlength=2 * pad + 1).float() / (B / (2 * pad + 1))
        assert counts.min() > 0.8 and counts.max() < 1.2


# ----------------------------------------------------------------------------- randomness

def test_seeded_and_per_sample():
    x = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(5),
                      dtype=torch.uint8).expand(64, -1, -1, -1).contiguous()
    gen = lambda seed=7: torch.Generator().manual_seed(seed)  # noqa: E731
    assert torch.equal(A.weak(x, gen()), A.weak(x, gen()))
    s = [A.strong(x, gen(), mode=m) for m in MODES]
    assert torch.equal(s[0], s[1]) and torch.equal(s[0], A.strong(x, gen()))
    assert not torch.equal(s[0], A.strong(x, gen(8)))
    # identical input images must get different draws
    assert len({t.numpy().tobytes() for t in A.weak(x, gen())}) > 40
    assert len({t.numpy().tobytes() for t in s[0]}) == 64


# ----------------------------------------------------------------------------- normalise, imports

def test_normalize_matches_torchvision():
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    x = structured_images(32)
    tv = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    ref = torch.stack([tv(to_pil(x, b)) for b in range(len(x))])
    out = A.normalize(x, mean, std)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def _imports(path):
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module)
    return mods


def test_no_pil_or_dataloader_in_augment():
    tree = ast.parse((ROOT / "augment.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert _imports(ROOT / "augment.py") <= {"functools", "math", "torch"}   # no PIL, numpy, cv2
    assert not names & {"DataLoader", "data", "PIL", "Image", "np"}
    assert "augment" not in _imports(ROOT / "reference.py")           # the oracle stays independent


def test_reference_dataset_views():
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    ds = R.FixMatchUnlabeled(imgs, [0, 1, 2, 3], (0.5,) * 3, (0.25,) * 3)
    (w, s, s1), y = ds[2]
    assert len(ds) == 4 and y == 2
    assert all(t.shape == (3, 32, 32) and t.dtype == torch.float32 for t in (w, s, s1))
    assert not torch.equal(s, s1)                                       # two independent strong draws
