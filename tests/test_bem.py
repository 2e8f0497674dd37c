"""Tests for bem.py. The oracles are hand arithmetic, cv2 (CCL_WU), closed forms and Monte-Carlo counts.
CPU only; about 20 s on 2 cores."""
import math
import os
import shutil
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bem

torch.set_num_threads(1)
BEM_PATH = os.path.abspath(bem.__file__)


def fake_step(g, B=8, C=4, S=16, K=8, h=4):
    """Random inputs for BEM.after_forward (kwargs); labels and pseudo-labels cover the classes at random."""
    logits_w = torch.randn(B, C, generator=g) * 3
    return dict(x_l=torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8),
                y_l=torch.randint(0, C, (B,), generator=g), logits_l=torch.randn(B, C, generator=g),
                fmap_l=torch.rand(B, K, h, h, generator=g),
                u_w=torch.randint(0, 256, (B, 3, S, S), generator=g, dtype=torch.uint8),
                logits_w=logits_w, q_u=logits_w.argmax(1), mask_u=logits_w.softmax(1).amax(1) > 0.6,
                u_real=torch.rand(B, generator=g) > 0.2, fmap_w=torch.rand(B, K, h, h, generator=g),
                head_weight=torch.randn(C, K, generator=g))


# ---------------------------------------------------------------- Eq. 2-4, E2-E5 by hand
def test_effective_number_by_hand():
    # E = (1 - 0.999^N) / 0.001:  N=0 -> 0;  N=1 -> 0.001/0.001 = 1;  N=2 -> (1 - 0.998001)/0.001 = 1.999
    # N=1000 -> (1 - 0.999^1000)/0.001 with 0.999^1000 = exp(1000 ln 0.999) = 0.367695...
    E = bem.effective_number(torch.tensor([0., 1., 2., 1000.]), 0.999)
    want = [0.0, 1.0, 1.999, (1 - math.exp(1000 * math.log(0.999))) / 0.001]
    assert torch.allclose(E, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    assert abs(want[3] - 632.3046) < 1e-3


def test_eq4_sampling_and_flags_off():
    # labeled N = [2, 1]; M = 2 and d^u = [1/2, 1/2] -> N^u = [1, 1]
    # E^x = [1.999, 1], E^u = [1, 1], E = [2.999, 2];  s_0 = (1/2.999) / (1/2.999 + 1/2) = 2 / 4.999
    b = bem.BEM(2, (3, 8, 8), [2, 1], 2, 'cpu', ess='off', esm='off', ecb='off')
    b.e_x = torch.tensor([0.3, 2.0], dtype=torch.float64)  # entropies must not matter when EL is off
    s = b.sampling_probs()
    assert torch.allclose(s, torch.tensor([2 / 4.999, 2.999 / 4.999], dtype=torch.float64), rtol=1e-12)
    assert b.class_weights() is None
    assert torch.equal(b.labeled_ratio(), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_ess_esm_ecb_by_hand():
    b = bem.BEM(2, (3, 8, 8), [2, 1], 2, 'cpu')  # defaults: ess='mul', esm='class', ecb='on'
    b.e_x = torch.tensor([0.2, 0.5], dtype=torch.float64)
    b.e_u = torch.tensor([0.6, 1.5], dtype=torch.float64)
    # e = [0.8, 2.0], mean 1.4 -> e~ = [0.8/1.4, 2/1.4];  F = e~/E = [0.8/(1.4*2.999), 2/(1.4*2)]
    F_ = torch.tensor([0.8 / (1.4 * 2.999), 2.0 / 2.8], dtype=torch.float64)
    assert torch.allclose(b.sampling_probs(), F_ / F_.sum(), rtol=1e-12)
    assert torch.allclose(b.labeled_ratio(), torch.tensor([0.6 / 0.8, 1.5 / 2.0], dtype=torch.float64))
    w = b.class_weights()
    assert torch.allclose(w, (2 * F_ / F_.sum()).float()) and abs(w.sum().item() - 2) < 1e-5
    b.ecb = 'cb'  # Cui: C * (1/E) / sum(1/E)
    inv = torch.tensor([1 / 2.999, 1 / 2])
    assert torch.allclose(b.class_weights(), 2 * inv / inv.sum())
    b.ess = 'add'  # 0.5 * (1/E) / sum(1/E) + 0.5 * e~ / sum(e~), e~ / sum(e~) = [0.8, 2] / 2.8
    inv = [1 / 2.999, 1 / 2]
    F_add = [0.5 * v / sum(inv) + 0.5 * e / 2.8 for v, e in zip(inv, [0.8, 2.0])]
    assert torch.allclose(b.sampling_probs(), torch.tensor(F_add, dtype=torch.float64), rtol=1e-12)
    b.esm = 'batch'  # mean e^u / (mean e^x + mean e^u) = 1.05 / (0.35 + 1.05) = 0.75
    assert torch.allclose(b.labeled_ratio(), torch.tensor([0.75, 0.75], dtype=torch.float64))


def test_ecb_sums_to_C_after_updates():
    g = torch.Generator().manual_seed(0)
    b = bem.BEM(4, (3, 16, 16), [50, 20, 5, 1], 300, 'cpu', est_start=0, bank_size=8)
    for t in range(3):
        b.after_forward(t, **fake_step(g))
    assert abs(b.class_weights().sum().item() - 4) < 1e-5
    assert abs(b.sampling_probs().sum().item() - 1) < 1e-9


def test_eq3_ema_u_real_and_est_start():
    C = 3
    b = bem.BEM(C, (3, 8, 8), [1, 1, 1], 10, 'cpu', lambda_d=0.9, est_start=5, bank_size=4)
    g = torch.Generator().manual_seed(0)
    kw = fake_step(g, B=4, C=C, S=8)
    # pseudo-labels [0, 0, 1, 2]: sample 2 is a labeled image in U (u_real False), sample 3 is not confident
    kw.update(q_u=torch.tensor([0, 0, 1, 2]), mask_u=torch.tensor([1., 1., 1., 0.]),
              u_real=torch.tensor([True, True, False, True]))
    b.after_forward(4, **kw)  # step 4 < est_start: d^u stays uniform
    assert torch.equal(b.d_u, torch.full((C,), 1 / 3, dtype=torch.float64))
    b.after_forward(5, **kw)  # counted: two samples of class 0 -> d^ut = [1, 0, 0]
    # d^u = 0.9 * [1/3, 1/3, 1/3] + 0.1 * [1, 0, 0] = [0.4, 0.3, 0.3]
    assert torch.allclose(b.d_u, torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64), rtol=1e-12)


def test_entropy_ema_by_hand():
    C = 3
    b = bem.BEM(C, (3, 8, 8), [1, 1, 1], 10, 'cpu', lambda_d=0.9, bank_size=4)
    g = torch.Generator().manual_seed(0)
    kw = fake_step(g, B=2, C=C, S=8)
    # both labeled samples are class 0 with logits [2, 0, 0]: p = [e^2, 1, 1] / (e^2 + 2)
    p = [math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2), 1 / (math.exp(2) + 2)]
    H = -sum(pi * math.log(pi) for pi in p)
    kw.update(y_l=torch.tensor([0, 0]), logits_l=torch.tensor([[2., 0, 0], [2., 0, 0]]),
              logits_w=torch.tensor([[0., 0, 0], [0., 0, 5]]), q_u=torch.tensor([1, 2]),
              u_real=torch.tensor([True, False]))
    b.after_forward(0, **kw)
    ln3 = math.log(3)
    # e^x_0 = 0.9 ln3 + 0.1 H; classes 1, 2 absent -> keep ln3 (the init)
    assert torch.allclose(b.e_x, torch.tensor([0.9 * ln3 + 0.1 * H, ln3, ln3], dtype=torch.float64))
    # e^u: only sample 0 is truly unlabeled (uniform softmax, H = ln3, pseudo-label 1) -> unchanged values
    assert torch.allclose(b.e_u, torch.full((3,), ln3, dtype=torch.float64))
    st = b.stats(reset=True)
    assert st['u_count'].tolist() == [0, 1, 0] and abs(st['u_entropy'][1].item() - ln3) < 1e-6
    assert b.stats()['u_count'].sum().item() == 0


# ---------------------------------------------------------------- mixed_ce against F.cross_entropy / by hand
def test_mixed_ce():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    y, y_src, mask = torch.tensor([1, 0]), torch.tensor([2, 2]), torch.tensor([1.0, 0.5])
    ce = F.cross_entropy(logits, y, reduction='none')
    assert torch.allclose(bem.mixed_ce(logits, y, mask), mask * ce)
    one = dict(lam=torch.ones(2), y_src=y_src, w=None)
    assert torch.allclose(bem.mixed_ce(logits, y, mask, one), mask * ce)
    # two-term formula by hand: CE(z, k) = log(sum_j exp z_j) - z_k
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()]
    lam, w = [0.7, 0.25], [0.5, 1.0, 2.0]
    want = []
    for i in range(2):
        a = lse[i] - logits[i, y[i]].item()
        b_ = lse[i] - logits[i, y_src[i]].item()
        want.append(mask[i].item() * (lam[i] * w[y[i]] * a + (1 - lam[i]) * w[y_src[i]] * b_))
    got = bem.mixed_ce(logits, y, mask, dict(lam=torch.tensor(lam), y_src=y_src, w=torch.tensor(w)))
    assert torch.allclose(got, torch.tensor(want), rtol=1e-5)
    # soft target: one-hot soft target equals the hard one; w indexes by argmax
    soft = F.one_hot(y, 3).float()
    got_soft = bem.mixed_ce(logits, soft, mask, dict(lam=torch.tensor(lam), y_src=y_src, w=torch.tensor(w)))
    assert torch.allclose(got_soft, torch.tensor(want), rtol=1e-5)


# ---------------------------------------------------------------- bank
def tagged(ids, S=4):
    """Images whose pixels all equal their id, so a drawn image says which pushed entry it is."""
    return torch.as_tensor(ids, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, S, S).contiguous()


def draw_ids(b, n, g):
    src, y, box, from_l = b.draw(n, g)
    return src[:, 0, 0, 0].long(), y, box, from_l


def test_bank_fifo_capacity_isolation():
    K, g = 4, torch.Generator().manual_seed(0)
    b = bem.BEM(3, (3, 4, 4), [5, 5, 5], 30, 'cpu', bank_size=K)
    box = torch.tensor([[0, 0, 2, 2]]).repeat(K + 3, 1)
    y0 = torch.zeros(K + 3, dtype=torch.long)
    b.push(tagged(range(1, K + 4)), y0, box, torch.ones(K + 3, dtype=torch.bool), labeled=True)  # ids 1..7
    b.push(tagged([100, 101]), torch.tensor([1, 1]), box[:2], torch.tensor([True, False]), labeled=False)
    ids, y, _, from_l = draw_ids(b, 4000, g)
    assert set(ids[y == 0].tolist()) == {4, 5, 6, 7}          # K+3 pushed -> the last K are kept
    assert set(ids[y == 1].tolist()) == {100}                 # per-class isolation; invalid 101 not stored
    assert (y != 2).all()                                     # class 2 is empty -> never drawn
    assert from_l[y == 0].all() and not from_l[y == 1].any()  # fall back to the only non-empty queue
    b.push(tagged([8, 9]), y0[:2], box[:2], torch.ones(2, dtype=torch.bool), labeled=True)
    ids, y, _, _ = draw_ids(b, 4000, g)
    assert set(ids[y == 0].tolist()) == {6, 7, 8, 9}          # FIFO across pushes: 4 and 5 were the oldest
    assert b.filled.tolist() == [[K, 0, 0], [0, 1, 0]]


def test_draw_frequencies_follow_s_c_and_r_c():
    C, K, n, g = 4, 3, 40000, torch.Generator().manual_seed(1)
    b = bem.BEM(C, (3, 4, 4), [100, 30, 10, 3], 400, 'cpu', bank_size=K)
    b.e_x = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    b.e_u = torch.tensor([0.9, 0.4, 1.0, 0.2], dtype=torch.float64)
    for q in (True, False):
        labels = torch.arange(C).repeat_interleave(K)
        b.push(tagged(range(C * K)), labels, torch.zeros(C * K, 4, dtype=torch.long),
               torch.ones(C * K, dtype=torch.bool), labeled=q)
    ids, y, box, from_l = draw_ids(b, n, g)
    s, r = b.sampling_probs(), b.labeled_ratio()
    cnt = torch.bincount(y, minlength=C).double()
    assert ((cnt - n * s).abs() <= 5 * (n * s * (1 - s)).sqrt()).all(), (cnt / n, s)
    for c in range(C):
        k, m = from_l[y == c].double().sum(), cnt[c]
        assert abs(k - m * r[c]) <= 5 * math.sqrt(m * r[c] * (1 - r[c]))
        assert set(ids[y == c].tolist()) == set(range(c * K, c * K + K))  # every slot, only filled ones
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    # stored zero boxes are degenerate -> CutMix boxes (which, as in CutMix, may be empty when side // 2 == 0)
    assert (area < 16).all() and (area > 0).double().mean() > 0.3


def one_hot_fmap(cells, h=4):
    """fmap [B,1,h,h] with a single 1 at each (row, col). Bilinear x4 (align_corners=False) puts the source
    coordinate of pixel X at (X + .5)/4 - .5, so the value is (1-|dx|)(1-|dy|) with offsets +-.125, +-.375:
    it is >= 0.5 exactly for X in 4c..4c+3 (at dy = .125: .875 * .625 = .547). Box = [4c, 4r, 4c+4, 4r+4]."""
    f = torch.zeros(len(cells), 1, h, h)
    for i, (r, c) in enumerate(cells):
        f[i, 0, r, c] = 1
    return f, {i: [4 * c, 4 * r, 4 * c + 4, 4 * r + 4] for i, (r, c) in enumerate(cells)}


@pytest.mark.parametrize('grad_cam', [False, True])
def test_update_stores_each_image_with_its_cam_box(grad_cam):
    g = torch.Generator().manual_seed(0)
    b = bem.BEM(2, (3, 16, 16), [4, 4], 8, 'cpu', bank_size=4, est_start=0)
    fmap_l, box_l = one_hot_fmap([(0, 1), (1, 2), (2, 3), (3, 0)])
    fmap_w, box_w = one_hot_fmap([(3, 3), (2, 0), (0, 0), (1, 1)])
    w = dict(cam_weights=(torch.ones(4, 1), torch.ones(4, 1))) if grad_cam else dict(head_weight=torch.ones(2, 1))
    logits = torch.zeros(4, 2)
    b.after_forward(0, x_l=tagged([1, 2, 3, 4], 16), y_l=torch.tensor([0, 1, 0, 1]), logits_l=logits, fmap_l=fmap_l,
             u_w=tagged([11, 12, 13, 14], 16), logits_w=logits, q_u=torch.tensor([1, 0, 1, 0]),
             mask_u=torch.tensor([True, True, False, True]), u_real=torch.ones(4, dtype=torch.bool), fmap_w=fmap_w,
             **w)
    want = {1 + i: box_l[i] for i in range(4)} | {11 + i: box_w[i] for i in (0, 1, 3)}
    label = {1: 0, 2: 1, 3: 0, 4: 1, 11: 1, 12: 0, 14: 0}
    ids, y, box, from_l = draw_ids(b, 400, g)
    assert set(ids.tolist()) == set(want)  # 13 was not confident: never stored
    for i, yi, bi, fl in zip(ids.tolist(), y.tolist(), box.tolist(), from_l.tolist()):
        assert bi == want[i] and yi == label[i] and fl == (i < 10)


def test_cam_refresh_recomputes_boxes_at_draw_time():
    g = torch.Generator().manual_seed(0)
    b = bem.BEM(2, (3, 16, 16), [4, 4], 8, 'cpu', bank_size=4, cam_refresh=True)
    b.push(tagged([1, 2], 16), torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long),
           torch.ones(2, dtype=torch.bool), labeled=True)
    cells = {1: (2, 2), 2: (0, 3)}

    def teacher(src):  # the "extra forward": fmap from the image id, one head row of ones per class
        fmap, _ = one_hot_fmap([cells[int(i)] for i in src[:, 0, 0, 0]])
        return torch.zeros(len(src), 2), fmap, torch.ones(2, 1)
    ids, y, box, _ = draw_ids_fn(b, 50, g, teacher)
    for i, bi in zip(ids.tolist(), box.tolist()):
        r, c = cells[i]
        assert bi == [4 * c, 4 * r, 4 * c + 4, 4 * r + 4]


def draw_ids_fn(b, n, g, teacher):
    src, y, box, from_l = b.draw(n, g, teacher=teacher)
    return src[:, 0, 0, 0].long(), y, box, from_l


def test_empty_bank_draw_is_a_no_op():
    g = torch.Generator().manual_seed(0)
    for method in ('cammix', 'cutmix', 'mixup'):
        b = bem.BEM(3, (3, 8, 8), [5, 5, 5], 30, 'cpu', mix=method)
        src, y, box, _ = b.draw(5, g)
        assert (box == 0).all()
        tgt = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
        mixed, (mix,) = b.before_forward(tgt, g)
        assert torch.equal(mixed, tgt) and torch.equal(mix.lam, torch.ones(5))


def test_state_dict_resume_is_bit_identical():
    def run(b, g, steps):
        out = []
        for t in steps:
            b.after_forward(t, **fake_step(torch.Generator().manual_seed(100 + t)))
            src, y, box, fl = b.draw(6, g)
            mixed, (mix,) = b.before_forward(src.flip(0), g)
            out.append((src, y, box, fl, mixed, mix.lam, mix.y_src))
        return out
    kw = dict(num_classes=4, image_shape=(3, 16, 16), labeled_counts=[9, 5, 3, 1], unlabeled_size=50,
              device='cpu', bank_size=4, est_start=1)
    a, g = bem.BEM(**kw), torch.Generator().manual_seed(0)
    run(a, g, [0, 1])
    sd, gs = a.state_dict(), g.get_state()
    ref = run(a, g, [2, 3])
    b, g2 = bem.BEM(**kw), torch.Generator()
    b.load_state_dict(sd)
    g2.set_state(gs)
    got = run(b, g2, [2, 3])
    for x, y in zip(ref, got):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- connected components vs cv2
def cv2_box(m):
    n, _, st, _ = cv2.connectedComponentsWithStatsWithAlgorithm(m.astype(np.uint8), 8, cv2.CV_32S, cv2.CCL_WU)
    if n == 1:
        return [0, 0, 0, 0], False
    areas = st[1:, cv2.CC_STAT_AREA]
    i = 1 + int(np.argmax(areas))  # argmax takes the first label; WU numbers labels in raster order
    x, y, w, h = st[i, :4]
    return [x, y, x + w, y + h], (areas == areas.max()).sum() > 1


def random_masks(rng, n, S):
    """Mixed densities, CAM-like blobs, empty/full masks and copies of one shape (equal-area components)."""
    dens = rng.random((n // 3, 1, 1))
    iid = rng.random((n // 3, S, S)) < dens
    low = torch.from_numpy(rng.random((n // 3, 1, max(2, S // 4), max(2, S // 4))).astype(np.float32))
    blob = F.interpolate(low, size=(S, S), mode='bilinear', align_corners=False)[:, 0].numpy()
    blob = blob >= rng.uniform(0.3, 0.8, (n // 3, 1, 1))
    twins = np.zeros((n - 2 * (n // 3), S, S), bool)
    for m in twins:
        shape = rng.random((rng.integers(1, 4), rng.integers(1, 4))) < 0.7
        for _ in range(rng.integers(2, 5)):
            y, x = rng.integers(0, S - shape.shape[0] + 1), rng.integers(0, S - shape.shape[1] + 1)
            m[y:y + shape.shape[0], x:x + shape.shape[1]] |= shape
    out = np.concatenate([iid, blob, twins])
    out[0], out[1] = False, True
    return out


@pytest.mark.parametrize('S', [8, 32])
def test_largest_component_box_matches_cv2_wu(S):
    # mode='device': the batched, sync-free labelling that runs on CUDA (CPU tensors default to the cv2 loop)
    masks = random_masks(np.random.default_rng(S), 1200, S)
    got = bem.largest_component_box(torch.from_numpy(masks), mode='device').numpy()
    ref = [cv2_box(m) for m in masks]
    want, ties = np.array([r[0] for r in ref]), sum(r[1] for r in ref)
    assert ties >= 100, ties  # the tie-break rule is exercised
    bad = np.flatnonzero((got != want).any(1))
    assert bad.size == 0, (bad[:5], got[bad[:5]], want[bad[:5]])
    assert (got[0] == 0).all() and (got[1] == [0, 0, S, S]).all()


def spiral(S):
    m, lo, hi = np.zeros((S, S), bool), 0, S - 1
    while lo <= hi:
        m[lo, lo:hi + 1] = m[lo:hi + 1, hi] = m[hi, lo:hi + 1] = True
        m[lo + 2:hi + 1, lo] = True
        m[min(lo + 2, hi), lo:lo + 3] = True
        lo, hi = lo + 2, hi - 2
    return m


def serpentine(S):
    m = np.zeros((S, S), bool)
    m[::2] = True
    for i, r in enumerate(range(1, S, 2)):
        m[r, S - 1 if i % 2 == 0 else 0] = True
    return m


def canonical(labels):
    """Relabel by order of first appearance so that two partitions compare equal."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inv]


def test_partition_on_long_paths_matches_cv2():
    """Spirals and serpentines have geodesic diameters of about HW/2; the fixed round count must suffice."""
    masks = [np.ascontiguousarray(np.rot90(base, k)[:, ::f])
             for S in (8, 32) for base in (spiral(S), serpentine(S)) for k in range(4) for f in (1, -1)]
    masks += list(random_masks(np.random.default_rng(7), 60, 32))
    for m in masks:
        f = bem._label_components(torch.from_numpy(m[None]))[0].numpy()
        lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[1].ravel()
        fg = m.ravel()
        assert (canonical(np.where(fg, f, -1)) == canonical(np.where(fg, lab, -1))).all()


# ---------------------------------------------------------------- CamMix
def test_paste_and_lam():
    g = torch.Generator().manual_seed(0)
    tgt = torch.randint(0, 128, (3, 3, 10, 12), generator=g, dtype=torch.uint8)
    src = torch.randint(128, 256, (3, 3, 10, 12), generator=g, dtype=torch.uint8)
    box = torch.tensor([[2, 3, 7, 5], [0, 0, 12, 10], [4, 4, 4, 9]])  # (x1, y1, x2, y2), exclusive
    mixed, lam = bem.paste(tgt, src, box)
    for i, (x1, y1, x2, y2) in enumerate(box.tolist()):
        inside = torch.zeros(10, 12, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        assert torch.equal(mixed[i][:, inside], src[i][:, inside])
        assert torch.equal(mixed[i][:, ~inside], tgt[i][:, ~inside])
        assert abs(lam[i].item() - (1 - (x2 - x1) * (y2 - y1) / 120)) < 1e-6
    assert lam.tolist()[1:] == [0.0, 1.0]


def test_cam_box_around_gaussian_bump():
    # 8x8 CAM: a large bump centred at fmap (row 2, col 5), sigma 1, plus a weaker small bump at (6, 1)
    v, u = torch.meshgrid(torch.arange(8.), torch.arange(8.), indexing='ij')
    fmap = torch.stack([torch.exp(-((u - 5) ** 2 + (v - 2) ** 2) / 2),
                        torch.exp(-((u - 1) ** 2 + (v - 6) ** 2) / (2 * 0.4 ** 2))])[None]
    box = bem.cam_boxes(bem.cam(fmap, torch.tensor([[1.0, 0.7]])), (32, 32), tau_c=0.5)[0].tolist()
    # oracle: the continuous Gaussian >= 0.5 is a disc of radius sqrt(2 ln 2) = 1.177 fmap cells = 4.7 px
    # around image point ((5 + .5) * 4 - .5, (2 + .5) * 4 - .5) = (21.5, 9.5) (align_corners=False)
    r = math.sqrt(2 * math.log(2)) * 4
    want = [21.5 - r, 9.5 - r, 21.5 + r + 1, 9.5 + r + 1]
    assert all(abs(a - b) <= 1.5 for a, b in zip(box, want)), (box, want)


def test_grad_cam_weights_equal_cam_for_pooled_linear_head():
    # with logits = W mean_hw(A), d logit_c / d A_k = W_ck / (h w): Grad-CAM = CAM / (h w)
    g = torch.Generator().manual_seed(0)
    fmap = torch.rand(3, 5, 4, 4, generator=g, requires_grad=True)
    W, y = torch.randn(6, 5, generator=g), torch.tensor([0, 4, 2])
    score = (fmap.mean((2, 3)) @ W.t()).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(bem.grad_cam_weights(score, fmap), W[y] / 16, atol=1e-6)


SALIENCY = pytest.mark.skipif(not bem.has_saliency(), reason='cv2.saliency missing: this OpenCV is not the contrib build')


@SALIENCY
def test_mixing_baselines():
    g = torch.Generator().manual_seed(0)
    tgt = torch.randint(0, 256, (4, 3, 16, 16), generator=g, dtype=torch.uint8)
    src, y, _ = bem.in_batch_sources(tgt, torch.arange(4), g)
    assert sorted(y.tolist()) == [0, 1, 2, 3] and torch.equal(src, tgt[y])
    lam = torch.tensor([0.0, 0.25, 0.5, 1.0])
    m = bem.mixup(tgt, src, lam)
    assert torch.equal(m, (lam.view(-1, 1, 1, 1) * tgt + (1 - lam.view(-1, 1, 1, 1)) * src).round().byte())
    for method in ('mixup', 'cutmix', 'saliencymix'):
        mixed, lam = bem.mix_batch(method, tgt, src, g)
        assert mixed.shape == tgt.shape and mixed.dtype == torch.uint8 and ((lam >= 0) & (lam <= 1)).all()
    # SaliencyMix: a bright square on a flat image -> the box is centred on the square
    img = torch.full((1, 3, 32, 32), 60, dtype=torch.uint8)
    img[:, :, 20:24, 4:8] = 250
    x1, y1, x2, y2 = bem.saliency_box(img, torch.tensor([0.75]))[0].tolist()  # side int(32 * 0.5) = 16
    cx, cy = x2 - 8, y1 + 8  # centre (x1 is clipped at 0 here)
    assert 4 <= cx < 8 and 20 <= cy < 24 and x1 == max(0, cx - 8) and y2 == min(32, cy + 8)


# ---------------------------------------------------------------- bem.py works copied alone
def test_bem_works_copied_alone(tmp_path):
    shutil.copy(BEM_PATH, tmp_path / 'bem.py')
    repo = os.path.dirname(BEM_PATH)
    script = textwrap.dedent(f'''
        import os, sys, torch, bem
        g = torch.Generator().manual_seed(0)
        b = bem.BEM(4, (3, 16, 16), [9, 5, 3, 1], 50, 'cpu', bank_size=4, est_start=0)
        B, C = 6, 4
        for t in range(2):
            lw = torch.randn(B, C, generator=g) * 3
            b.after_forward(t, x_l=torch.randint(0, 256, (B, 3, 16, 16), dtype=torch.uint8, generator=g),
                     y_l=torch.randint(0, C, (B,), generator=g), logits_l=torch.randn(B, C, generator=g),
                     fmap_l=torch.rand(B, 8, 4, 4, generator=g),
                     u_w=torch.randint(0, 256, (B, 3, 16, 16), dtype=torch.uint8, generator=g),
                     logits_w=lw, q_u=lw.argmax(1), mask_u=torch.ones(B), u_real=torch.ones(B, dtype=torch.bool),
                     fmap_w=torch.rand(B, 8, 4, 4, generator=g), head_weight=torch.randn(C, 8, generator=g))
        u_s = torch.randint(0, 256, (2 * B, 3, 16, 16), dtype=torch.uint8, generator=g)
        mixed, (mix,) = b.before_forward(u_s, g)
        loss = mix.loss(torch.randn(2 * B, C), torch.randint(0, C, (2 * B,), generator=g), torch.ones(2 * B))
        assert torch.isfinite(loss).all() and mixed.shape == u_s.shape and (mix.lam < 1).any()
        repo, here = {repo!r}, os.path.abspath(bem.__file__)
        venv = os.path.abspath(sys.prefix)
        bad = sorted(n for n, m in list(sys.modules.items())
                     if (getattr(m, '__file__', None) or '').startswith(repo + os.sep)
                     and not os.path.abspath(m.__file__).startswith(venv + os.sep))
        bad += [n for n in ('data', 'models', 'ltssl', 'train', 'augment') if n in sys.modules]
        assert here.startswith({str(tmp_path)!r}), here
        assert not bad, bad
        print('OK')
    ''')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith('OK'), r.stderr[-3000:]
