"""Batched, per-sample FixMatch/ACR augmentation on uint8 tensors, bit-exact with Pillow.

weak   = RandomHorizontalFlip + RandomCrop(H, padding=H/8, padding_mode='reflect')   (one gather;
         padding='zeros' for ACR's ImageNet-127 labeled view)
strong = weak + RandAugmentMC(n=2, m=10) + CutoutAbs(16)      (Gank0078/ACR dataset/randaugment.py,
         byte-identical to kekmodel/FixMatch-pytorch; spec: /work/shared/spec/anchors.md §1.3)

Every image gets its own draw; all draws come from an explicit `torch.Generator` on x's device.
Exactness with Pillow 13 (spec/perf.md §4) comes from emulating Pillow's C code: 16.16 fixed-point
NEAREST affine, C-float blend then truncation, integer grayscale/smoothing, double-precision LUTs.
Magnitudes are tabulated on the host with the exact Python float expressions of randaugment.py.

Two execution paths with identical output (tests/test_augment.py checks both against Pillow):
  "select": per RandAugment slot, three whole-batch stages (affine gather, LUT gather, blend), each
            the identity for images whose op is of another kind; torch.where picks per sample.
            No host sync, static shapes: the CUDA default. torch.compile traces apply_randaugment
            (mode="select") and flip_crop in one graph with no breaks (torch._dynamo.explain); the draws
            (draw_weak / draw_strong) stay outside: Dynamo cannot trace explicit generators, so weak() and
            strong() also take the numbers drawn beforehand.
  "group" : sort the batch by op, run each op on its contiguous slice only, unsort (host-side
            bookkeeping is free on CPU). The CPU default: ~5x faster there than "select".
No PIL, no DataLoader, no per-sample Python loop.
"""
import math

import torch

OPS = ["AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "Identity", "Posterize",
       "Rotate", "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateX", "TranslateY"]
OP_ID = {name: i for i, name in enumerate(OPS)}
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
BLEND = ("Brightness", "Color", "Contrast", "Sharpness")
PARAMETER_MAX = 10   # randaugment.py: v / PARAMETER_MAX scales every magnitude
V_MAX = 10           # tables cover v = 0..10 (m <= 10 draws v in 1..m-1)
CUTOUT = 16          # CutoutAbs(img, 16); fixed in pixels, also at 64 px (as in the reference code)
GRAY = 127           # CutoutAbs fill colour (127, 127, 127)

# "group" path: the 5 geometric ops share one gather (their maps are tabulated); Identity sorts last.
GROUPS = [n for n in OPS if n not in GEOMETRIC and n != "Identity"] + ["Geometric", "Identity"]
GROUP_OF = [GROUPS.index("Geometric" if n in GEOMETRIC else n) for n in OPS]


# ----------------------------------------------------------------------------- magnitude tables
# Built once per (image size, device) with the *same Python float expressions* as randaugment.py,
# so e.g. float(v) * 0.9 / 10 + 0.05 rounds exactly as the reference does.

def _float_parameter(v, max_v):
    return float(v) * max_v / PARAMETER_MAX


def _int_parameter(v, max_v):
    return int(v * max_v / PARAMETER_MAX)


def _fix(a):
    """Pillow Geometry.c FIX(): 16.16 fixed point, FLOOR(a * 65536 + 0.5)."""
    return math.floor(a * 65536.0 + 0.5)


def _fixed_affine(m):
    """Pillow affine_fixed(): coefficients (a0..a5) as ints; a2/a5 fold in the pixel-centre +0.5."""
    a, b, c, d, e, f = m
    return [_fix(a), _fix(b), _fix(c + a * 0.5 + b * 0.5), _fix(d), _fix(e), _fix(f + d * 0.5 + e * 0.5)]


def _rotate_matrix(deg, w, h):
    """Image.rotate(deg) with default centre: note angle % 360 first, so -3 becomes 357 (different
    cos/sin rounding than -3), then -radians and cos/sin rounded to 15 decimals."""
    angle = -math.radians(deg % 360.0)
    cx, cy = w / 2, h / 2
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    m = [cos, sin, 0.0, round(-math.sin(angle), 15), cos, 0.0]
    m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx
    m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy
    return m


def _affine_matrix(name, v, sign, w, h):
    """Inverse (output -> input) matrix that randaugment.py hands to Pillow; identity otherwise."""
    if name == "Rotate":
        return _rotate_matrix(sign * _int_parameter(v, 30), w, h)
    s = sign * _float_parameter(v, 0.3)
    if name == "ShearX":
        return [1, s, 0, 0, 1, 0]
    if name == "ShearY":
        return [1, 0, 0, s, 1, 0]
    if name == "TranslateX":  # int() truncates toward 0; Pillow's ScaleAffine path == exact shift
        return [1, 0, int(s * w), 0, 1, 0]
    if name == "TranslateY":
        return [1, 0, 0, 0, 1, int(s * h)]
    return [1, 0, 0, 0, 1, 0]


def _affine_src(A, H, W):
    """Pillow affine_fixed() (NEAREST) as source-pixel maps: coefficient rows A [N, 6] -> [N, H*W]
    indices into the image zero-padded by 1 px. Integer math, exact anywhere; >> 16 is Pillow's
    arithmetic shift (floor). Geometry does not depend on pixels, so each op is one gather."""
    ys = torch.arange(H).view(1, H, 1)
    xs = torch.arange(W).view(1, 1, W)
    a0, a1, a2, a3, a4, a5 = A.view(-1, 6, 1, 1).unbind(1)
    # out-of-range sources clamp onto the zero border: randaugment.py passes no fillcolor, so
    # Pillow leaves those pixels 0
    xin = ((a2 + ys * a1 + xs * a0) >> 16).clamp(-1, W)
    yin = ((a5 + ys * a4 + xs * a3) >> 16).clamp(-1, H)
    return ((yin + 1) * (W + 2) + xin + 1).view(-1, H * W)


def _tables(h, w, device):
    signs, vs = (-1, 1), range(V_MAX + 1)    # sign index 0 = negative, 1 = positive
    affine = torch.tensor([[[_fixed_affine(_affine_matrix(op, v, s, w, h)) for s in signs]
                            for v in vs] for op in OPS], dtype=torch.int64)      # [14, 11, 2, 6]
    return dict(
        affine=affine.to(device),
        geo_src=_affine_src(affine, h, w).view(len(OPS), V_MAX + 1, 2, h * w).to(device),
        # Pillow's ImagingBlend takes alpha as a C float: round the Python double once to fp32
        alpha=torch.tensor([_float_parameter(v, 0.9) + 0.05 for v in vs], device=device),
        post_mask=torch.tensor([~(2 ** (8 - (_int_parameter(v, 4) + 4)) - 1) & 255 for v in vs],
                               dtype=torch.uint8, device=device),
        sol_thr=torch.tensor([256 - _int_parameter(v, 256) for v in vs], dtype=torch.int16,
                             device=device),
        identity_lut=torch.arange(256, dtype=torch.uint8, device=device),
        group_of=torch.tensor(GROUP_OF, device=device))


_TABLES = {}


def _tab(x):
    """Tables for x's size and device, built on first use. A plain dict, not lru_cache: under
    torch.compile, Dynamo reads a warm dict's tensors as constants but re-traces lru_cache bodies."""
    key = (x.shape[-2], x.shape[-1], x.device)
    if key not in _TABLES:
        _TABLES[key] = _tables(*key)
    return _TABLES[key]


def _col(t):
    """Per-sample [B] -> [B, 1, 1, 1] for broadcasting over C, H, W."""
    return t.view(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- weak view, geometry

def _gather(x, src):
    """out[b, c, p] = x[b, c, src[b, p]] with x flattened over (H, W)."""
    B, C = x.shape[:2]
    return x.reshape(B, C, -1).gather(2, src.view(B, 1, -1).expand(B, C, -1))


def _affine(x, src):
    """Apply per-sample source maps src [B, H*W] from _affine_src (1-px zero-padded coordinates)."""
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    return _gather(padded, src).view(x.shape)


def _reflect(i, n):
    """np.pad(mode='reflect') index map (edge not repeated); valid for pad < n."""
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def flip_crop(x, flip, offset, pad, padding="reflect"):
    """Flip, then pad + crop at offset [B, 2] = (row i, col j) in padded coords: one gather.
    padding: 'reflect' (np.pad/torchvision reflect) or 'zeros' (torchvision's default constant fill 0)."""
    B, C, H, W = x.shape
    ys = torch.arange(H, device=x.device) + offset[:, :1] - pad   # [B, H] source rows, may fall in the pad
    xs = torch.arange(W, device=x.device) + offset[:, 1:] - pad   # [B, W]
    inside = None
    if padding == "zeros":
        inside = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]   # [B, H, W]
        ys, xs = ys.clamp(0, H - 1), xs.clamp(0, W - 1)
    else:
        assert padding == "reflect", padding
        ys, xs = _reflect(ys, H), _reflect(xs, W)
    xs = torch.where(flip[:, None], W - 1 - xs, xs)   # flip commutes with the symmetric padding
    out = _gather(x, ys[:, :, None] * W + xs[:, None, :]).view(x.shape)
    return out if inside is None else out * inside[:, None].to(out.dtype)


def weak_pad(size):
    """RandomCrop's padding: ACR int(32 * 0.125) = 4; 8 at 64 px (ImageNet-127: int(img_size / 8), the same)."""
    return round(0.125 * size)


def draw_weak(B, gen, device, size):
    """The random numbers of B weak views: flip w.p. 0.5, then the crop's offset (torch RandomCrop)."""
    pad = weak_pad(size)
    flip = torch.rand(B, generator=gen, device=device) < 0.5
    offset = torch.randint(0, 2 * pad + 1, (B, 2), generator=gen, device=device)
    return dict(flip=flip, offset=offset)


def weak(x, gen, padding="reflect"):
    """RandomHorizontalFlip(p=0.5) then RandomCrop(H, padding=round(H/8)), reflect-padded (ACR's weak views and
    CIFAR/SVHN/STL labeled view) or zero-padded (ACR's ImageNet-127 labeled view, `--labeled-pad zeros`).
    gen: a torch.Generator, or draw_weak(...) drawn beforehand (the compiled step takes its draws as tensors)."""
    H = x.shape[2]
    r = gen if isinstance(gen, dict) else draw_weak(x.shape[0], gen, x.device, H)
    return flip_crop(x, r["flip"], r["offset"], weak_pad(H), padding)


# ----------------------------------------------------------------------------- LUT ops

def _apply_lut(x, lut):
    """lut [B, C, 256] uint8 applied per (image, channel)."""
    return lut.gather(2, x.reshape(*x.shape[:2], -1).long()).view(x.shape)


def _histogram(x):
    """[B, C, 256] int64 histograms, static shape (scatter_add, not bincount: no host sync)."""
    idx = x.reshape(*x.shape[:2], -1).long()
    h = torch.zeros(*x.shape[:2], 256, dtype=torch.int64, device=x.device)
    return h.scatter_add_(2, idx, torch.ones((), dtype=torch.int64, device=x.device).expand_as(idx))


def _autocontrast_lut(x):
    """ImageOps.autocontrast: lut[i] = clip(int(i * scale + offset)), in double as in Python.
    Exact in eager mode (mul and add are separate kernels). A compiled kernel may contract them
    into an FMA and land 1 below/above Python where i*scale+offset is an integer up to rounding:
    wrap this function in torch.compiler.disable if the compiled path must stay bit-exact."""
    lo = x.amin((2, 3)).double()[..., None]
    hi = x.amax((2, 3)).double()[..., None]
    # tensor / tensor: torch does scalar / tensor as reciprocal-multiply, 1 ulp off Python (perf.md §3)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1)
    offset = -lo * scale
    ix = torch.arange(256, dtype=torch.float64, device=x.device)
    lut = (ix * scale + offset).clamp(0, 255).to(torch.uint8)  # the cast truncates like int()
    return torch.where(hi <= lo, _tab(x)["identity_lut"], lut)


def _equalize_lut(x):
    """ImageOps.equalize: step = (n - h[last]) // 255; lut[i] = (step // 2 + cum_excl[i]) // step."""
    h = _histogram(x)
    nonzero = h > 0
    last = (nonzero * torch.arange(256, device=x.device)).amax(2, keepdim=True)  # top occupied bin
    step = (h.sum(2, keepdim=True) - h.gather(2, last)) // 255
    cum = h.cumsum(2) - h                                     # exclusive cumulative histogram
    # Pillow's point() CLIP8s the table: the last bin can map to 256
    lut = ((step // 2 + cum) // step.clamp(min=1)).clamp(max=255).to(torch.uint8)
    degenerate = (nonzero.sum(2, keepdim=True) <= 1) | (step == 0)
    return torch.where(degenerate, _tab(x)["identity_lut"], lut)


def _posterize_lut(x, v):
    return _tab(x)["identity_lut"] & _tab(x)["post_mask"][v].view(-1, 1, 1)


def _solarize_lut(x, v):
    i = _tab(x)["identity_lut"]
    return torch.where(i < _tab(x)["sol_thr"][v].view(-1, 1, 1), i, 255 - i)


# ----------------------------------------------------------------------------- blend ops

def _to_u8(t):
    """float -> uint8 with C-cast truncation. Via int16: same result, but torch's direct f32 -> u8
    CPU cast is not vectorised (~5x slower)."""
    return t.to(torch.int16).to(torch.uint8)


def _blend(deg, img, alpha, wide=None):
    """Image.blend(deg, img, alpha) = (UINT8)(in1 + alpha * (in2 - in1)) in C float (in1 = deg).
    fp32 mul then fp32 add, each rounded once, then truncation (values lie in [0, 255]). Eager CPU
    kernels never fuse the two; elsewhere (CUDA, maybe compiled) the product is formed in fp64
    (exact: 24-bit * 9-bit) and rounded once to fp32, which equals the fp32 product yet cannot be
    contracted with the add into an FMA (one rounding fewer: off by one at integer boundaries)."""
    deg = deg.float()
    d = img.float() - deg                       # exact small integers
    wide = img.device.type != "cpu" if wide is None else wide
    p = (_col(alpha).double() * d.double()).float() if wide else _col(alpha) * d
    return _to_u8(deg + p)


def _grayscale(x):
    """Pillow RGB -> L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, as [B, 1, H, W] uint8."""
    r, g, b = x.to(torch.int32).unbind(1)
    return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16)[:, None].to(torch.uint8)


def _mean_gray(x):
    """ImageEnhance.Contrast: int(mean(L) + 0.5) == (2 s + n) // (2 n) exactly (s / n is never
    within double error of a .5 boundary without being on it)."""
    n = x.shape[-1] * x.shape[-2]
    s = _grayscale(x).sum((2, 3), keepdim=True, dtype=torch.int64)
    return ((2 * s + n) // (2 * n)).to(torch.uint8)


def _smooth(x):
    """ImageFilter.SMOOTH (1 1 1 / 1 5 1 / 1 1 1) / 13 with Pillow's +0.5 rounding: round(S / 13) for
    an integer sum S <= 13 * 255 (int16). (S + 6.5) / 13 is never within 1/26 of an integer, far
    above fp32 (or reciprocal-multiply) error, so truncating it is exact. No conv: a TF32 kernel
    with 1/13 weights could cross that margin. Border pixels are copied, as Pillow's 3x3 filter does."""
    xi = x.to(torch.int16)
    r = xi[..., :-2, :] + xi[..., 1:-1, :] + xi[..., 2:, :]
    S = r[..., :-2] + r[..., 1:-1] + r[..., 2:] + 4 * xi[..., 1:-1, 1:-1]
    xi[..., 1:-1, 1:-1] = ((S.float() + 6.5) / 13).to(torch.int16)
    return xi


def _degenerate(x, name):
    """ImageEnhance degenerate image of a blend op (integer tensor broadcastable to x)."""
    if name == "Brightness":
        return torch.zeros((), dtype=torch.uint8, device=x.device)
    if name == "Color":
        return _grayscale(x)
    if name == "Contrast":
        return _mean_gray(x)
    return _smooth(x)  # Sharpness


# ----------------------------------------------------------------------------- one slot, per sample

def _op_kernel(name, x, op, v, sign):
    """OPS[name] (or "Geometric": any of the 5, from op) on every image of x, per-sample v / sign.
    uint8 selections are bitwise: torch.where / masked_fill on uint8 are ~40x slower on CPU."""
    tab = _tab(x)
    if name in GEOMETRIC or name == "Geometric":
        return _affine(x, tab["geo_src"][op, v, (sign > 0).long()])
    if name == "AutoContrast":
        return _apply_lut(x, _autocontrast_lut(x))
    if name == "Equalize":
        return _apply_lut(x, _equalize_lut(x))
    if name == "Posterize":
        return x & _col(tab["post_mask"][v])
    if name == "Solarize":   # 255 - x == x ^ 0xFF; neg() turns the bool byte 1 into 0xFF
        return x ^ (x >= _col(tab["sol_thr"][v])).view(torch.uint8).neg()
    if name == "Identity":
        return x
    return _blend(_degenerate(x, name), x, tab["alpha"][v])


def _slot_group(x, op, v, sign):
    """CPU path: sort images by op group, run each op on its contiguous slice only, unsort.
    index_select, not x[idx] / out[idx] = ...: those take a per-byte path on uint8 (~15x slower)."""
    key = _tab(x)["group_of"][op]
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key, minlength=len(GROUPS)).tolist()   # host sync: CPU only
    parts = [t.split(counts) for t in (x.index_select(0, order), op[order], v[order], sign[order])]
    pieces = [_op_kernel(name, *args) if len(args[0]) else args[0]
              for name, *args in zip(GROUPS, *parts)]
    return torch.cat(pieces).index_select(0, torch.argsort(order))


def _slot_select(x, op, v, sign):
    """Sync-free path: affine gather -> LUT gather -> blend, each the identity where not selected
    (identity maps for non-geometric ops, identity LUTs, alpha = 1 reproduces the image exactly)."""
    tab = _tab(x)
    is_op = lambda name: (op == OP_ID[name]).view(-1, 1, 1)  # noqa: E731
    x = _affine(x, tab["geo_src"][op, v, (sign > 0).long()])
    lut = tab["identity_lut"].expand(len(op), x.shape[1], 256)
    lut = torch.where(is_op("AutoContrast"), _autocontrast_lut(x), lut)
    lut = torch.where(is_op("Equalize"), _equalize_lut(x), lut)
    lut = torch.where(is_op("Posterize"), _posterize_lut(x, v), lut)
    lut = torch.where(is_op("Solarize"), _solarize_lut(x, v), lut)
    x = _apply_lut(x, lut)
    deg = _degenerate(x, "Brightness")
    for name in ("Color", "Contrast", "Sharpness"):
        deg = torch.where(is_op(name)[..., None], _degenerate(x, name), deg)
    blend = sum(is_op(n).view(-1) for n in BLEND) > 0
    return _blend(deg, x, torch.where(blend, tab["alpha"][v], 1.0))


def _slot(x, op, v, sign, mode):
    mode = mode or ("group" if x.device.type == "cpu" else "select")
    return {"group": _slot_group, "select": _slot_select}[mode](x, op, v, sign)


def apply_op(x, name, v, sign, mode=None):
    """Apply op `name` to every image, per-sample v [B] (1..9) and sign [B] (+-1)."""
    return _slot(x, torch.full_like(v, OP_ID[name]), v, sign, mode)


# ----------------------------------------------------------------------------- RandAugmentMC

def draw_randaugment(B, gen, device, n=2, m=10, size=32):
    """All random draws of RandAugmentMC(n, m) + CutoutAbs(16) for B images."""
    kw = dict(generator=gen, device=device)
    op = torch.randint(0, len(OPS), (n, B), **kw)       # random.choices: with replacement
    v = torch.randint(1, m, (n, B), **kw)               # np.random.randint(1, m): 1..m-1
    apply = torch.rand(n, B, **kw) < 0.5                # if random.random() < 0.5: op(...)
    sign = torch.where(torch.rand(n, B, **kw) < 0.5, -1, 1)      # geometric ops: v = -v w.p. 0.5
    centre = torch.rand(B, 2, dtype=torch.float64, **kw) * size  # (x0, y0) ~ np.random.uniform(0, w)
    lo = (centre - CUTOUT / 2.0).clamp(min=0).floor().long()    # int(max(0, x0 - v / 2.))
    hi = (lo + CUTOUT).clamp(max=size)                           # int(min(w, x0 + v))
    box = torch.cat([lo, hi], 1)                                  # PIL xy = (x0, y0, x1, y1)
    return dict(op=op, v=v, apply=apply, sign=sign, cutout_centre=centre, cutout_box=box)


def cutout(x, box):
    """ImageDraw.rectangle(box, (127,)*3): inclusive of x1/y1, so up to 17x17, clipped at borders."""
    H, W = x.shape[-2:]
    ys = torch.arange(H, device=x.device).view(1, 1, H, 1)
    xs = torch.arange(W, device=x.device).view(1, 1, 1, W)
    b = box.view(-1, 4, 1, 1, 1)
    rows = (ys >= b[:, 1]) & (ys <= b[:, 3])
    cols = (xs >= b[:, 0]) & (xs <= b[:, 2])
    inside = (rows & cols).view(torch.uint8).neg()        # 0xFF in the box: a bitwise select
    return x ^ ((x ^ GRAY) & inside)


def apply_randaugment(x, params, mode=None):
    """RandAugmentMC with pre-drawn params (see draw_randaugment), then CutoutAbs."""
    identity = torch.full_like(params["op"][0], OP_ID["Identity"])
    for k in range(params["op"].shape[0]):
        op = torch.where(params["apply"][k], params["op"][k], identity)
        x = _slot(x, op, params["v"][k], params["sign"][k], mode)
    return cutout(x, params["cutout_box"])


def draw_strong(B, gen, device, size):
    """The random numbers of B strong views: their own weak draw (flip + crop), then RandAugmentMC's."""
    return dict(weak=draw_weak(B, gen, device, size), **draw_randaugment(B, gen, device, size=size))


def strong(x, gen, mode=None):
    """Its own weak draw (flip + crop), then RandAugmentMC(2, 10) + CutoutAbs(16). gen: a torch.Generator, or
    draw_strong(...) drawn beforehand."""
    r = gen if isinstance(gen, dict) else draw_strong(x.shape[0], gen, x.device, x.shape[-1])
    return apply_randaugment(weak(x, r["weak"]), r, mode)


# ----------------------------------------------------------------------------- normalisation

def normalize(x, mean, std):
    """ToTensor + Normalize: (x / 255 - mean) / std in fp32, bit-equal to torchvision on CPU.
    Divisions are tensor/tensor: CUDA turns division by a Python scalar into reciprocal-multiply."""
    key = (tuple(mean), tuple(std), x.device)
    if key not in _TABLES:   # device constants made once: no host -> device copy per call
        as_t = lambda t: torch.tensor(t, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)  # noqa: E731
        _TABLES[key] = (torch.tensor(255.0, device=x.device), as_t(mean), as_t(std))
    c255, m, s = _TABLES[key]
    return (x.float() / c255 - m) / s
