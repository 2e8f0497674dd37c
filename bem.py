"""BEM: Balanced and Entropy-based Mix (Zheng et al., CVPR 2024, arXiv 2404.01179): the core module.

The file stands alone. It imports only torch, numpy, cv2 and the stdlib, so it can be copied by itself.
The hot path (cam_boxes, BEM.before_forward / after_forward) runs in batches with fixed shapes and never syncs with
the host. All randomness comes from the `gen` argument (a torch.Generator on the tensors' device), or from the
same numbers drawn beforehand (BEM.random_draws: the compiled step of train.py takes its random numbers as tensors).

Use it in your own FixMatch-style loop with two calls per step (the whole loop: the BEM class docstring; a runnable
copy: examples/fixmatch_bem.py):
    u_s, mixes = bem.before_forward(u_s, gen)           # before the forward: bank draw + CamMix
    loss_u = mixes[0].loss(logits_s, q, mask).mean()    # the loss: mixed labels + ECB weights (Mix)
    bem.after_forward(step, x_l=..., ...)               # after it, before backward: bank push, Eq. 3, entropies

Public API, in the paper's order:
  §4.1 CamMix  cam, grad_cam_weights, grad_cam_split, cam_boxes, largest_component_box, fallback_box, paste
  §4.2 CBMB    effective_number (Eq. 2); class BEM (per-class device ring buffers, Eq. 3, Eq. 4)
  §4.3 EL      entropy (E1); BEM.sampling_probs (ESS), BEM.labeled_ratio (ESM), BEM.class_weights (ECB); Mix (E5)
  in a step    BEM.before_forward (draw + mix), Mix.loss (the unlabeled loss, the ECB rule), BEM.after_forward
  baselines    mixup, cutmix_box, saliency_box, in_batch_sources, mix_batch (MixUp/CutMix/SaliencyMix/CamMix)

Reconstruction choices. The paper's text stops before §4.3; the defaults follow spec/bem.md §1.1-1.4 and §5:
| choice | default | alternatives | why |
|---|---|---|---|
| CAM weights | head row of the (pseudo-)label (plain CAM, WRN block3) | Grad-CAM `grad_cam_weights` (ResNet-50 layer3) | plain CAM needs feature dim == head dim |
| CAM post-processing | ReLU, bilinear upsample to image size, per-sample min-max | none | CAM convention (Zhou et al.) |
| tau_c | 0.5 of the min-max-normalised CAM | 0.2-0.7 | paper stresses tight boxes; classic CAM boxes use 0.2 |
| mixed-label ratio | lam = 1 - box area / image area | none | SaliencyMix authors' code recomputes lam from the pasted area |
| degenerate box (empty / whole image) | CutMix box, lam ~ Beta(1,1), random centre | none | spec §1.2 step 7; stays on the device |
| CAM box timing | cached at push time from the step's joint forward (after_forward, before the optimiser step) | `cam_refresh=True`: recomputed at draw time | no extra forward pass; one model state |
| bank | 2 FIFO queues per class (labeled GT, confident unlabeled), `bank_size` 64 | 32 for ImageNet-127 | memory-bank practice; tail classes have 5-15 labels |
| entry | uint8 weak view + label + CAM box | dataset index + replayed augmentation | simplest; it is the view whose fmap gave the box |
| lambda_d, est_start | 0.99, step 3000 (ACR code: 0-based `epoch > est_epoch = 5`, 500-step epochs) | any | ACR's ema_u / est_epoch, which Eq. 3 duplicates |
| d^u before est_start | uniform (ACR's u_py init), so E_c^u is already included | E_c^x only | avoids ~80x tail over-sampling from 5 labeled images |
| d^u counts | pseudo-labels with mask_u & u_real, normalised histogram | none | ACR excludes labeled images in U (target -2) |
| entropy | Shannon entropy of the weak-view softmax, nats | / log C (cancels) | E1 |
| e^x, e^u | EMA (lambda_e = lambda_d) of per-class mean entropy; absent classes keep value; init log C | none | E2; log C = entropy of an untrained net |
| entropy_set | 'all' truly-unlabeled samples (u_real) | 'masked' | Fig. 1 plots all unlabeled data |
| e_c | e^x_c + e^u_c, mean-normalised as e~_c | count-weighted mean | E2 |
| ESS | 'mul': s_c ∝ e~_c / E_c | 'add': alpha*norm(1/E) + (1-alpha)*norm(e~); 'off': Eq. 4 | E3, no new hyper-parameter |
| ESM | 'class': r_c = e^u_c / (e^x_c + e^u_c) | 'batch': class means; 'off': r_c = esm_ratio (0.5) | E4 |
| ECB | 'on': w_c = C (e~_c/E_c) / sum_k (e~_k/E_k) | 'cb': Cui's C (1/E_c)/sum(1/E); 'off': None | E5, sums to C like Cui et al. |
| ECB use | ecb_scope 'mixed': w on both labels of mixed samples (lam < 1) only; none on re-balanced terms (Mix.loss) | 'target' (pasted label unweighted), 'all' | E5; ESS already draws the pasted class |
| d^u under ACR | d_u_fn = ACR's u_py (train.py); entropies from its head and pseudo-labels (stat_*) | own Eq. 3 | one estimate |
| what is mixed | every strong view (mix_views 'all'; ACR: both) | 'second': only the last | spec §5 #11 |
| MixUp baseline | lam ~ Beta(1,1), uint8 output rounded | Beta(0.75) (MixMatch) | the same lam law as CutMix |
| class draw | inverse-CDF (searchsorted) on s_c | torch.multinomial | multinomial's 1-sample path calls .item() |
| empty queue / class | other queue of the class, then renormalise s_c over non-empty classes | none | spec E4; equals redrawing |
| connected components | 8-connectivity; equal areas -> smallest first-pixel raster index | none | identical to cv2 CCL_WU + argmax |
| SaliencyMix | per-sample box at the cv2 fine-grained saliency argmax (host, ablation only) | one box per batch (authors) | per-sample pipeline |
"""
import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------
# §4.1 CamMix
# ---------------------------------------------------------------------------------------------------------------
def cam(fmap, weights):
    """Plain CAM: sum_k w_k A_k. fmap [B,K,h,w], weights [B,K] (the head row of each sample's label) -> [B,h,w]."""
    return torch.einsum('bkhw,bk->bhw', fmap.float(), weights.float())


def grad_cam_weights(score, fmap):
    """Grad-CAM channel weights mean_{h,w} d score_b / d fmap_b -> [B,K].

    Use this when the head sits after a later block (ResNet-50: CAM layer = layer3, head after layer4).
    score [B] is the logit of each sample's class. fmap must be in its graph; the graph is retained for the
    training backward. In train-mode BN, samples interact only through batch statistics (a small cross term)."""
    g, = torch.autograd.grad(score.sum(), fmap, retain_graph=True)
    return g.mean((2, 3))


def grad_cam_split(z_l, y_l, z_w, q_u, fmap):
    """Grad-CAM weights of a joint forward's labeled and weak views: each view's score for its (pseudo-)label,
    differentiated w.r.t. the CAM layer's feature map, whose rows start with the labeled then the weak views.
    -> (w_l [Bl,K], w_u [Bu,K]) float."""
    Bl, Bu = len(y_l), len(q_u)
    score = torch.cat([z_l.gather(1, y_l[:, None]), z_w.gather(1, q_u[:, None])])[:, 0]
    w = grad_cam_weights(score, fmap)[:Bl + Bu].float()
    return w[:Bl], w[Bl:]


def _box_of(mask, W):
    """Bounding box (x1, y1, x2, y2), x2/y2 exclusive, of a flat mask [B,HW]; all zeros if the mask is empty."""
    idx = torch.arange(mask.shape[1], device=mask.device)
    xs, ys, big = idx % W, idx // W, mask.shape[1]
    box = torch.stack([torch.where(mask, xs, big).amin(1), torch.where(mask, ys, big).amin(1),
                       torch.where(mask, xs, -1).amax(1) + 1, torch.where(mask, ys, -1).amax(1) + 1], 1)
    return torch.where(mask.any(1, keepdim=True), box, 0)


def _nbr_min_max(f, fg):
    """Min and max of f over each pixel's 3x3 foreground neighbourhood, itself included (f < 2^24, exact in fp32)."""
    big = f.shape[1] * f.shape[2]
    lo = torch.where(fg, f, big).float().unsqueeze(1)
    hi = torch.where(fg, f, -1).float().unsqueeze(1)
    mn = -F.max_pool2d(-lo, 3, 1, 1)  # max_pool pads with -inf, i.e. outside the image never wins
    return mn.squeeze(1).long(), F.max_pool2d(hi, 3, 1, 1).squeeze(1).long()


def _label_components(fg):
    """Root id (a pixel index) of each foreground pixel's 8-connected component. fg bool [B,H,W] -> f long [B,HW].

    Star hooking with full pointer jumping. At the start of each round every tree is a star (all pixels point
    to their root). (1) Each root r hooks onto m_r, the smallest adjacent root, if m_r < r. (2) A 'stagnant'
    root hooks onto its largest adjacent root t. Stagnant means it did not hook and nothing hooked onto it.
    t did hook in (1), because s < t is adjacent to it. (3) Each pixel jumps to its root.
    Why no cycles: (1) strictly decreases the label; (2) starts at roots with no incoming pointer.
    Why a fixed count suffices: in a component of k >= 2 stars, every star either hooks or receives a hook.
    So every surviving root heads >= 2 old stars, and k at least halves per round. Then L = ceil(log2 HW)
    rounds leave one star. In round t the pointer chains are at most k_t <= 2^(L-t) long, so L-t jumps reach
    the root."""
    B, H, W = fg.shape
    HW, L = H * W, max(1, math.ceil(math.log2(H * W)))
    ids = torch.arange(HW, device=fg.device).expand(B, HW)
    f, fgf = ids.clone(), fg.reshape(B, HW)
    for t in range(L):
        mn, mx = (v.reshape(B, HW) for v in _nbr_min_max(f.view(B, H, W), fg))
        m_root = torch.full_like(f, HW).scatter_reduce(1, f, torch.where(fgf, mn, HW), 'amin')
        M_root = torch.full_like(f, -1).scatter_reduce(1, f, torch.where(fgf, mx, -1), 'amax')
        is_root = fgf & (f == ids)
        hook = is_root & (m_root < ids)                                                   # (1)
        recv = torch.zeros_like(f).scatter_reduce(1, torch.where(hook, m_root, ids), hook.long(), 'amax')
        stagnant = is_root & ~hook & (recv == 0) & (M_root > ids)                         # (2)
        f = torch.where(hook, m_root, torch.where(stagnant, M_root, f))
        for _ in range(L - t):                                                            # (3)
            f = f.gather(1, f)
    return f


def largest_component_box(mask, mode=None):
    """Box of the largest 8-connected component. mask bool [B,H,W] -> int64 [B,4] (x1, y1, x2, y2).

    x2 and y2 are exclusive; the box is all zeros for an empty mask. Equal areas: the component whose first
    pixel has the smallest raster index y*W+x wins. This equals cv2.connectedComponentsWithStatsWithAlgorithm(
    m, 8, cv2.CV_32S, cv2.CCL_WU) + argmax of area, because WU numbers labels in raster order.
    mode: 'device' (batched labelling, no host sync: the CUDA default) or 'cv2' (a per-mask cv2 loop: the CPU
    default, where a host loop costs no sync and runs ~100x faster than the batched labelling)."""
    if (mode or ('cv2' if mask.device.type == 'cpu' else 'device')) == 'cv2':
        return _cv2_boxes(mask)
    B, H, W = mask.shape
    HW, fg = H * W, mask.reshape(B, H * W)
    f = _label_components(mask)
    ids = torch.arange(HW, device=mask.device).expand(B, HW)
    area = torch.zeros_like(f).scatter_add(1, f, fg.long())
    first = torch.full_like(f, HW).scatter_reduce(1, f, torch.where(fg, ids, HW), 'amin')
    key = torch.where(area > 0, area * (HW + 1) + (HW - first), -1)  # area first, then the earliest pixel
    best = key.argmax(1, keepdim=True)
    return _box_of(fg & (f == best), W)


def _cv2_boxes(mask):
    """cv2 CCL_WU (raster-order labels) + argmax of area (first label on ties) per mask, on the host."""
    out = np.zeros((mask.shape[0], 4), np.int64)
    for i, m in enumerate(mask.cpu().numpy().astype(np.uint8)):
        n, _, st, _ = cv2.connectedComponentsWithStatsWithAlgorithm(m, 8, cv2.CV_32S, cv2.CCL_WU)
        if n > 1:
            x, y, w, h, _ = st[1 + st[1:, cv2.CC_STAT_AREA].argmax()]
            out[i] = (x, y, x + w, y + h)
    return torch.from_numpy(out).to(mask.device)


def cam_boxes(cam_map, size, tau_c=0.5, mode=None):
    """cam_map [B,h,w] -> boxes int64 [B,4] at image size (H, W): ReLU -> bilinear -> min-max -> >= tau_c -> LCC box.
    mode: largest_component_box's ('device' | 'cv2'; None: cv2 on CPU tensors, device on CUDA)."""
    m = F.interpolate(F.relu(cam_map.float()).unsqueeze(1), size=size, mode='bilinear', align_corners=False)
    m = m.squeeze(1)
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    m = (m - lo) / (hi - lo).clamp_min(1e-12)  # a flat CAM gives an empty mask -> degenerate -> fallback
    return largest_component_box(m >= tau_c, mode)  # reconstructed: tau_c = 0.5, see README


def cutmix_draws(B, H, W, gen, device=None):
    """CutMix's random numbers for B boxes on device (default: gen's): lam ~ U(0,1) (Beta(1,1)), a uniform centre."""
    dev = gen.device if device is None else device
    return dict(u=torch.rand(B, generator=gen, device=dev), cx=torch.randint(0, W, (B,), generator=gen, device=dev),
                cy=torch.randint(0, H, (B,), generator=gen, device=dev))


def cutmix_box(B, H, W, gen):
    """CutMix's rand_bbox per sample: side = int(S*sqrt(1-lam)), lam ~ U(0,1), uniform centre.
    gen: a torch.Generator, or cutmix_draws(...) drawn beforehand (the compiled step takes its draws as tensors)."""
    r = gen if isinstance(gen, dict) else cutmix_draws(B, H, W, gen)
    cut, cx, cy = torch.sqrt(1 - r['u']), r['cx'], r['cy']
    cw, ch = (W * cut).long(), (H * cut).long()
    return torch.stack([(cx - cw // 2).clamp(0, W), (cy - ch // 2).clamp(0, H),
                        (cx + cw // 2).clamp(0, W), (cy + ch // 2).clamp(0, H)], 1)


def _degenerate(box, H, W):
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    return (area == 0) | (area == H * W)


def fallback_box(box, H, W, gen, valid=None):
    """Replace degenerate boxes (empty or the whole image) with CutMix boxes (spec §1.2 step 7).
    Always draws B boxes, so the generator advances the same way whatever the data. gen: as cutmix_box's."""
    bad = _degenerate(box, H, W)
    if valid is not None:
        bad = bad & valid
    return torch.where(bad[:, None], cutmix_box(box.shape[0], H, W, gen), box)


def paste(target, source, box):
    """CamMix / CutMix paste at the same coordinates. Returns (mixed, lam [B] = 1 - box area / image area)."""
    B, _, H, W = target.shape
    ys = torch.arange(H, device=box.device).view(1, H, 1)
    xs = torch.arange(W, device=box.device).view(1, 1, W)
    x1, y1, x2, y2 = (box[:, i].view(B, 1, 1) for i in range(4))
    inside = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
    lam = 1 - inside.flatten(1).sum(1).float() / (H * W)  # spec §1.2 step 6: area ratio
    return torch.where(inside.unsqueeze(1), source, target), lam


def _ce(logits, target):
    if target.dtype.is_floating_point:  # soft distribution [B,C] (ABC)
        return -(target * F.log_softmax(logits, 1)).sum(1)
    return F.cross_entropy(logits, target, reduction='none')


ECB_SCOPES = ('mixed', 'target', 'all')


class Mix:
    """What BEM did to one strong view, and what that view's unlabeled loss takes (E5): lam [B] (the target label's
    share; 1 = unmixed), y_src [B] (the pasted label), w [C] (the ECB weights; None = ECB off) and ecb_scope (where
    they act). BEM.before_forward makes one per strong view; `mix.loss(logits, q, mask)` is that view's loss.

    The ECB rule (reconstructed, see README), applied here and nowhere else:
      - the weights act on mixed samples (lam < 1) only; an unmixed sample keeps the framework's own loss, bit for
        bit (ecb_scope 'mixed'; 'target' also leaves the pasted label unweighted: ESS already drew its class
        ∝ e~_c/E_c; 'all' weights every sample, unmixed ones too);
      - a term that already re-balances (ACR's L_u^b, whose targets are logit-adjusted; ABC's L_con, whose Bernoulli
        mask balances) passes rebalanced=True and gets the mixed labels without the weights, so one imbalance is not
        corrected twice ('all' keeps them there too);
      - the loss mass of every term that is not re-balanced is added to the BEM's dynamics records (stats())."""

    def __init__(self, lam, y_src, w=None, ecb_scope='mixed', bem=None):
        if ecb_scope not in ECB_SCOPES:
            raise ValueError(f'unknown ecb_scope {ecb_scope!r}; choose one of {ECB_SCOPES}')
        self.lam, self.y_src, self.w, self.ecb_scope, self.bem = lam, y_src, w, ecb_scope, bem

    def loss(self, logits, target, mask, rebalanced=False):
        """Per-sample loss [B] of this view (E5); target long [B] or soft [B,C]; mask [B] (the confidence mask)."""
        w = self.w if not rebalanced or self.ecb_scope == 'all' else None
        t, s = _mixed_terms(logits, target, mask, self.lam, self.y_src, w, self.ecb_scope)
        if self.bem is not None and not rebalanced:
            self.bem.acc_mass += _mass(t.detach(), s.detach(), target, self.lam, self.y_src, logits.shape[-1])
        return t + s


def _as_mix(mix):
    """A Mix, or the same fields as a dict (lam, y_src, w, ecb_scope); None stays None."""
    if mix is None or isinstance(mix, Mix):
        return mix
    return Mix(mix['lam'], mix['y_src'], mix.get('w'), mix.get('ecb_scope', 'mixed'))


def _mixed_terms(logits, target, mask, lam, y_src, w, scope):
    logits = logits.float()
    loss = _ce(logits, target)
    hard = target.argmax(1) if target.dtype.is_floating_point else target
    w_t = 1.0 if w is None else w[hard]
    w_s = 1.0 if w is None or scope == 'target' else w[y_src]
    t = lam * w_t * loss                               # spec E5: Cui's class-balanced weight on each label
    s = (1 - lam) * w_s * _ce(logits, y_src)
    if scope != 'all':                                 # unmixed: the framework's loss, untouched
        mixed = lam < 1
        t, s = torch.where(mixed, t, loss), torch.where(mixed, s, torch.zeros_like(s))
    return mask * t, mask * s


def mixed_ce_terms(logits, target, mask, mix=None):
    """The per-sample loss [B] split into its target-label and source-label parts (t, s); mixed_ce = t + s.

    mix=None: (mask * CE(logits, target), 0).
    mix = a Mix (or a dict of its fields: lam [B], y_src [B] long, w [C] or None, ecb_scope):
      a mixed sample (lam < 1):  t = mask * lam * w[target] * CE(target),  s = mask * (1 - lam) * w[y_src] * CE(y_src)
      ecb_scope  'mixed'  (default) the ECB weights act on mixed samples only; an unmixed sample (lam = 1) gets
                          exactly mask * CE(target), s = 0 (bit for bit the framework's own loss)
                 'target' as 'mixed', but the pasted label is not weighted (w[y_src] -> 1)
                 'all'    every sample, unmixed ones included: lam * w[target] * CE + (1 - lam) * w[y_src] * CE
    target is long [B] or a soft float [B,C]; a soft target indexes w by its argmax."""
    mix = _as_mix(mix)
    if mix is None:
        loss = _ce(logits.float(), target)
        return mask * loss, torch.zeros_like(loss)
    return _mixed_terms(logits, target, mask, mix.lam, mix.y_src, mix.w, mix.ecb_scope)


def mixed_ce(logits, target, mask, mix=None):
    """Per-sample (mixed) CE [B] (spec E5): the sum of mixed_ce_terms (see there for mix and ecb_scope)."""
    t, s = mixed_ce_terms(logits, target, mask, mix)
    return t + s


def _mass(t, s, target, lam, y_src, C):
    hard = target.argmax(1) if target.dtype.is_floating_point else target
    t, s = t.double(), s.double()
    mixed = lam < 1
    out = torch.zeros(3, C, dtype=torch.float64, device=t.device)
    out[0].index_add_(0, hard, torch.where(mixed, 0.0, t))
    out[1].index_add_(0, hard, torch.where(mixed, t, 0.0))
    out[2].index_add_(0, y_src, s)
    return out


@torch.no_grad()
def loss_mass(logits, target, mask, mix=None):
    """Where the unlabeled loss goes: float64 [3,C], per class the summed per-sample terms of mixed_ce.
    Row 0: unmixed samples (at their target class); row 1: target-label part of mixed samples (at the target
    class); row 2: source-label part of mixed samples (at the pasted class). Sum over rows and classes = sum of
    mixed_ce. Scatter-adds on the device, no host sync."""
    t, s = mixed_ce_terms(logits, target, mask, mix)
    mix = _as_mix(mix)
    hard = target.argmax(1) if target.dtype.is_floating_point else target
    lam = torch.ones_like(t) if mix is None else mix.lam
    return _mass(t, s, target, lam, hard if mix is None else mix.y_src, logits.shape[-1])


# ---------------------------------------------------------------------------------------------------------------
# §4.2 Class balanced mix bank (CBMB) and §4.3 entropy-based learning (EL)
# ---------------------------------------------------------------------------------------------------------------
def effective_number(counts, beta=0.999):
    """Eq. 2: E_c = (1 - beta^N_c) / (1 - beta), elementwise on a tensor of (possibly fractional) counts."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    return (1 - beta ** counts) / (1 - beta)


def entropy(logits):
    """E1: Shannon entropy (nats) of softmax(logits) -> [B]."""
    logp = F.log_softmax(logits.float(), 1)
    return -(logp.exp() * logp).sum(1)


def _class_mean(values, labels, sel, C):
    """Per-class sum and count of values over the selected samples (histogram on the device, no sync)."""
    sel = sel.to(values.dtype)
    s = torch.zeros(C, dtype=values.dtype, device=values.device).index_add_(0, labels, values * sel)
    n = torch.zeros(C, dtype=values.dtype, device=values.device).index_add_(0, labels, sel)
    return s, n


class BEM:
    """BEM as a plug-in: the class-balanced mix bank (CBMB), the Eq. 3 estimate and the entropy statistics (ESS, ESM,
    ECB), called twice per step of any FixMatch-style loop (examples/fixmatch_bem.py; train.py's LTSSLTask does the same):

        bem = BEM(num_classes=C, image_shape=(3, 32, 32), labeled_counts=counts, unlabeled_size=len(unlabeled_set),
                  device=dev)
        for step, ((x_l, y_l), (u_w, u_s)) in enumerate(zip(labeled_loader, unlabeled_loader)):
            u_s, mixes = bem.before_forward(u_s, gen)                  # 1. a bank partner CamMixed into each strong view
            logits, fmap = model(torch.cat([x_l, u_w, u_s]))           # one forward; fmap: the CAM layer's map
            z_l, z_w, z_s = logits.split([len(x_l), len(u_w), len(u_s)])
            conf, q = z_w.detach().softmax(1).max(1)
            mask = (conf >= 0.95).float()
            loss = F.cross_entropy(z_l, y_l) + mixes[0].loss(z_s, q, mask).mean()   # 2. mixed labels, ECB weights
            f_l, f_w, _ = fmap.split([len(x_l), len(u_w), len(u_s)])
            bem.after_forward(step, x_l=x_l, y_l=y_l, u_w=u_w, logits_l=z_l, logits_w=z_w, q_u=q, mask_u=mask,
                              fmap_l=f_l, fmap_w=f_w, head_weight=model.fc.weight)   # 3. bank push, Eq. 3, entropies
            opt.zero_grad(); loss.backward(); opt.step()

    x_l, u_w, u_s are the augmented images in any dtype (uint8 or normalised float: `image_dtype`), u_s the V strong
    views stacked view-major ([V*B, 3, H, W]; `views=2` for ACR/ABC, mixes[v] is view v's record). At step 0 the
    bank is empty and nothing is mixed (lam = 1). after_forward goes before backward: the boxes come from this
    forward's feature map and head, one model state. Nothing here calls .item(), .cpu() or nonzero.

    Lower-level parts, in the paper's order: effective_numbers (Eq. 2), unlabeled_dist (Eq. 3), sampling_probs (Eq. 4,
    ESS), labeled_ratio (ESM), class_weights (ECB), push / draw (the bank), Mix (the loss, E5), stats (logs, Fig. 1).
    Random numbers come from `gen` (a torch.Generator on `device`), or from random_draws(n, gen) drawn beforehand and
    passed as before_forward(..., rand=...): torch.compile cannot trace explicit generators, so train.py's compiled
    step draws every random number first and passes tensors (eager and compiled then take the same numbers).
    """

    def __init__(self, num_classes, image_shape, labeled_counts, unlabeled_size, device, *,
                 bank_size=64,          # reconstructed: 64 CIFAR/STL, 32 ImageNet-127 (spec §5 #10)
                 beta=0.999,            # Eq. 2, stated in the paper
                 lambda_d=0.99,         # reconstructed: ACR's ema_u (spec §5 #12)
                 est_start=3000,        # reconstructed: ACR's `epoch > est_epoch` (5): from step 6 x 500 (spec §5 #12)
                 lambda_e=None,         # reconstructed: entropy EMA = lambda_d (E2)
                 entropy_set='all',     # reconstructed: 'all' | 'masked' unlabeled samples (E2, Fig. 1)
                 ess='mul', alpha=0.5,  # reconstructed: 'mul' | 'add' | 'off' (E3)
                 esm='class', esm_ratio=0.5,  # reconstructed: 'class' | 'batch' | 'off' (fixed ratio) (E4)
                 ecb='on',              # reconstructed: 'on' | 'cb' | 'off' (E5)
                 ecb_scope='mixed',     # reconstructed: where the ECB weights act, see Mix
                 tau_c=0.5,             # reconstructed: CAM threshold (spec §5 #9)
                 mix='cammix',          # cammix | cutmix | saliencymix | mixup | none (the ablations)
                 bank=True,             # False: in-batch partners (the ablation); needs before_forward's teacher
                 views=1,               # strong views per sample (ACR, ABC: 2)
                 mix_views='all',       # reconstructed: 'all' strong views mixed, or only the 'second' (spec §5 #11)
                 cam_refresh=False,     # reconstructed: cache boxes at push time; True = recompute at draw (teacher)
                 image_dtype=torch.uint8,   # what the bank stores: the dtype of x_l / u_w
                 box_mode=None,         # connected components: 'device' | 'cv2' | None (cv2 on CPU, device on CUDA)
                 d_u_fn=None):          # callable -> [C]: an external Eq. 3 estimate (ACR's u_py); None = own
        C, K = num_classes, bank_size
        self.C, self.K, self.shape, self.device = C, K, tuple(image_shape), torch.device(device)
        self.M, self.beta, self.lambda_d, self.est_start = unlabeled_size, beta, lambda_d, est_start
        self.lambda_e = lambda_d if lambda_e is None else lambda_e
        self.entropy_set, self.ess, self.alpha, self.esm, self.esm_ratio = entropy_set, ess, alpha, esm, esm_ratio
        self.ecb, self.ecb_scope, self.tau_c, self.mix_method, self.cam_refresh = ecb, ecb_scope, tau_c, mix, cam_refresh
        if ecb_scope not in ECB_SCOPES:
            raise ValueError(f'unknown ecb_scope {ecb_scope!r}; choose one of {ECB_SCOPES}')
        if mix_views not in ('all', 'second') or (mix_views == 'second' and views < 2):
            raise ValueError(f"mix_views={mix_views!r} with views={views}: 'second' needs 2 strong views")
        self.bank, self.views, self.mix_views, self.box_mode = bank, views, mix_views, box_mode
        self.d_u_fn = d_u_fn   # when set, BEM keeps no d^u of its own: one estimate, one EMA, one checkpoint entry
        kw = dict(device=self.device)
        self.N_x = torch.as_tensor(labeled_counts, dtype=torch.float64, **kw)
        # bank: queue q (0 = labeled, 1 = unlabeled), class c, slot k -> row q*C*K + c*K + k; the last row is a
        # trash row that absorbs writes of unselected samples, so pushes keep a fixed shape
        self.bank_img = torch.zeros(2 * C * K + 1, *self.shape, dtype=image_dtype, **kw)
        self.bank_box = torch.zeros(2 * C * K + 1, 4, dtype=torch.long, **kw)
        self.ptr = torch.zeros(2, C, dtype=torch.long, **kw)     # next slot to overwrite (the oldest when full)
        self.filled = torch.zeros(2, C, dtype=torch.long, **kw)
        self.d_u = torch.full((C,), 1.0 / C, dtype=torch.float64, **kw)  # ACR's u_py init: uniform
        self.e_x = torch.full((C,), math.log(C), dtype=torch.float64, **kw)  # reconstructed: init = log C
        self.e_u = self.e_x.clone()
        self.acc = {k: torch.zeros(C, dtype=torch.float64, **kw) for k in ('u_count', 'u_count_masked', 'u_H')}
        self.acc_box = torch.zeros(3, dtype=torch.float64, **kw)  # drawn boxes: n, sum of area fraction, n fallback
        self.acc_mass = torch.zeros(3, C, dtype=torch.float64, **kw)  # unlabeled loss mass (loss_mass rows)

    # ---- §4.2 Eq. 2-4 and §4.3 E3-E5 ----
    def unlabeled_dist(self):
        """d^u (Eq. 3): BEM's own estimate, or the external one (d_u_fn, e.g. ACR's u_py), as float64 [C]."""
        return self.d_u if self.d_u_fn is None else self.d_u_fn().to(self.d_u)

    def effective_numbers(self):
        """E_c = E_c^x + E_c^u with N_c^u = M * d_c^u (Eq. 2); a class below 1 effective sample counts as 1."""
        E = effective_number(self.N_x, self.beta) + effective_number(self.M * self.unlabeled_dist(), self.beta)
        return E.clamp_min(1.0)

    def _entropy_over_E(self):
        e = self.e_x + self.e_u                      # reconstructed: e_c = e^x_c + e^u_c (E2)
        e_tilde = e / e.mean()                       # mean-normalised class entropy
        return e_tilde, e_tilde / self.effective_numbers()

    def sampling_probs(self):
        """s_c: Eq. 4 (ess='off'), or ESS (E3)."""
        inv_E = 1 / self.effective_numbers()
        e_tilde, ratio = self._entropy_over_E()
        F_c = {'off': inv_E,                                                   # Eq. 4: F_c = 1/E_c
               'mul': ratio,                                                   # reconstructed: E3
               'add': self.alpha * inv_E / inv_E.sum() + (1 - self.alpha) * e_tilde / e_tilde.sum()}[self.ess]
        return F_c / F_c.sum()

    def labeled_ratio(self):
        """r_c: probability of drawing the mixing partner from the labeled queue (ESM, E4)."""
        if self.esm == 'class':
            return self.e_u / (self.e_x + self.e_u)
        if self.esm == 'batch':
            return (self.e_u.mean() / (self.e_x.mean() + self.e_u.mean())).expand(self.C)
        return torch.full((self.C,), float(self.esm_ratio), dtype=torch.float64, device=self.device)

    def class_weights(self):
        """ECB weights w_c (E5), sum to C; 'cb' = Cui et al. without entropy; None when ecb='off'."""
        if self.ecb == 'off':
            return None
        F_c = self._entropy_over_E()[1] if self.ecb == 'on' else 1 / self.effective_numbers()
        return (self.C * F_c / F_c.sum()).float()

    # ---- bank ----
    def push(self, images, labels, boxes, valid, labeled):
        """FIFO-push the samples with valid=True into queue labeled/unlabeled of their class. Fixed shapes."""
        C, K, q = self.C, self.K, 0 if labeled else 1
        oh = ((labels[:, None] == torch.arange(C, device=labels.device)) & valid[:, None]).long()  # [B,C]
        count = oh.sum(0)
        rank = (oh.cumsum(0) - oh).gather(1, labels[:, None]).squeeze(1)      # order within its class
        keep = valid & (rank >= (count[labels] - K))                          # only the newest K per class
        slot = (self.ptr[q, labels] + rank) % K
        row = torch.where(keep, q * C * K + labels * K + slot, 2 * C * K)     # rejects go to the trash row
        self.bank_img.index_copy_(0, row, images)
        self.bank_box.index_copy_(0, row, boxes)
        self.ptr[q] = (self.ptr[q] + count) % K
        self.filled[q] = (self.filled[q] + count).clamp(max=K)

    def _sample_classes(self, p, u):
        """Inverse-CDF sampling of len(u) classes from p, u ~ U(0,1) (sync-free; torch.multinomial's 1-sample
        path syncs)."""
        cdf = p.cumsum(0)
        last = torch.where(p > 0, torch.arange(self.C, device=self.device), 0).amax()
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=last)

    # ---- the step's random numbers: one seam (a generator now, or tensors drawn beforehand) ----
    def mixed_rows(self, n):
        """How many of n strong-view rows (V views x B) get a partner: all, or the last view's ('second')."""
        return n if self.mix_method == 'none' or self.mix_views == 'all' else n // self.views

    def random_draws(self, n, gen):
        """Every random number before_forward takes for n = len(u_s) strong-view rows, in a dict of tensors on gen's
        device (draw it beforehand for a compiled step; the same numbers give the same result)."""
        return self._draws(self.mixed_rows(n), gen)

    def _draws(self, n, gen):
        """The numbers of n partners. The bank always draws its fallback boxes, so its stream does not depend on data."""
        dev, (H, W) = self.device, self.shape[1:]
        u = lambda dt=torch.float32: torch.rand(n, generator=gen, device=dev, dtype=dt)  # noqa: E731
        if self.mix_method == 'none':
            return {}
        if self.bank:
            r = dict(u_class=u(torch.float64), u_queue=u(torch.float64), u_slot=u(), fallback=cutmix_draws(n, H, W, gen, dev))
        else:
            r = dict(perm=torch.randperm(n, generator=gen, device=dev))
            if self.mix_method == 'cammix':
                r['fallback'] = cutmix_draws(n, H, W, gen, dev)
        if self.mix_method == 'cutmix':
            r['box'] = cutmix_draws(n, H, W, gen, dev)
        elif self.mix_method in ('mixup', 'saliencymix'):
            r['lam'] = u()
        return r

    # ---- the bank: draw partners ----
    def _bank_draw(self, r, teacher=None):
        """Partners from the bank for the draws r: (src, class, cached box, from_l, valid). See draw."""
        nx, nu = self.filled[0] > 0, self.filled[1] > 0
        avail = nx | nu
        p = self.sampling_probs() * avail                    # renormalised over non-empty classes
        p = torch.where(avail.any(), p, torch.ones_like(p))  # empty bank: anything; flagged invalid below
        c = self._sample_classes(p, r['u_class'])
        from_l = r['u_queue'] < self.labeled_ratio()[c]                                        # ESM (E4)
        from_l = torch.where(nx[c] & ~nu[c], True, torch.where(nu[c] & ~nx[c], False, from_l))  # E4 fallback
        q = (~from_l).long()
        filled = self.filled[q, c]
        slot = torch.minimum((r['u_slot'] * filled).long(), (filled - 1).clamp_min(0))
        row = q * self.C * self.K + c * self.K + slot
        src, box = self.bank_img[row], self.bank_box[row]
        if self.cam_refresh:            # reconstructed option: the box of the partner's CAM now, not at push time
            box = self._teacher_boxes(teacher, src, c)
        return src, c, box, from_l, avail[c]

    def draw(self, n, gen, teacher=None):
        """Draw n mixing partners: class c ~ s_c (Eq. 4 / ESS), queue labeled w.p. r_c (ESM), a uniform filled slot.
        -> src [n,3,H,W], y_src [n], box [n,4] (degenerate CAM boxes replaced by CutMix boxes; all zeros where the
        class has no entry, i.e. an empty bank), from_l [n]. gen: a torch.Generator or random_draws(n, gen)."""
        r = gen if isinstance(gen, dict) else self._draws(n, gen)
        src, c, box, from_l, valid = self._bank_draw(r, teacher)
        H, W = self.shape[1:]
        return src, c, torch.where(valid[:, None], fallback_box(box, H, W, r['fallback'], valid), 0), from_l

    def _teacher_boxes(self, teacher, images, labels):
        """CamMix boxes of images from a teacher(images) -> (logits [n,C], fmap [n,K,h,w], head_weight [C,K])."""
        _, fmap, head_w = teacher(images)
        return cam_boxes(cam(fmap.float(), head_w[labels]), self.shape[1:], self.tau_c, self.box_mode)

    def _in_batch(self, u_w, r, reps, teacher):
        """--no-bank partners: a permutation of this batch's weak views (repeated for each mixed view),
        pseudo-labelled (and CAM-boxed) by the teacher, e.g. a no-grad pass of the EMA model: the batch's own
        labels exist only after the forward. -> (src, y_src, box, valid)."""
        logits, fmap, head_w = teacher(u_w)
        q = logits.float().argmax(-1)
        box = (cam_boxes(cam(fmap.float(), head_w[q]), self.shape[1:], self.tau_c, self.box_mode)
               if self.mix_method == 'cammix' else None)
        rep = lambda z: None if z is None else z.repeat(reps, *[1] * (z.dim() - 1))  # noqa: E731
        src, y_src, box = in_batch_sources(rep(u_w), rep(q), r, rep(box))
        return src, y_src, box, torch.ones_like(y_src, dtype=torch.bool)

    # ---- the plug-in, call 1 of 2: before the forward ----
    def before_forward(self, u_s, gen=None, *, rand=None, u_w=None, teacher=None):
        """Steps 1-2: a mixing partner per strong view (the bank: class ~ s_c, queue ~ r_c; or in-batch), mixed in
        (CamMix paste, or the ablation's method). -> (mixed u_s, mixes): mixes[v] is the Mix record of strong view
        v, whose .loss(logits, q, mask) is that view's unlabeled loss term (E5).

        u_s [V*B,3,H,W]: the V = `views` strong views, view-major. gen: a torch.Generator on u_s's device, or
        rand = random_draws(n, gen) drawn beforehand (n = B x the mixed views). u_w, teacher: the weak views and
        teacher(images) -> (logits [n,C], fmap [n,K,h,w], head_weight [C,K]) for in-batch partners (bank=False)
        and for cam_refresh. An invalid draw (an empty bank) leaves its sample unmixed (lam = 1)."""
        V, n = self.views, len(u_s)
        B, k = n // V, self.mixed_rows(n) // (n // V)     # k mixed views: all, or the last one ('second')
        r = self.random_draws(n, gen) if rand is None else rand
        target, lam, y_src = u_s[n - k * B:], torch.ones(k * B, device=u_s.device), torch.zeros(
            k * B, dtype=torch.long, device=u_s.device)
        if self.mix_method != 'none':
            target, lam, y_src = self._mix_in(target, r, u_w, teacher, k)
        out = target if k == V else torch.cat([u_s[:n - k * B], target])
        w, one = self.class_weights(), torch.ones(B, device=u_s.device)
        mixes = [Mix(one, torch.zeros_like(y_src[:B]), w, self.ecb_scope, self) for _ in range(V - k)]
        mixes += [Mix(lam[v * B:(v + 1) * B], y_src[v * B:(v + 1) * B], w, self.ecb_scope, self) for v in range(k)]
        return out, mixes

    def _mix_in(self, target, r, u_w, teacher, reps):
        H, W = self.shape[1:]
        if self.bank:
            src, y_src, box, _, valid = self._bank_draw(r, teacher)
        else:
            src, y_src, box, valid = self._in_batch(u_w, r, reps, teacher)
        if self.mix_method == 'cammix':
            n_fallback = (_degenerate(box, H, W) & valid).sum()
            box = torch.where(valid[:, None], fallback_box(box, H, W, r['fallback'], valid), 0)
        mixed, lam, box = _mix_batch(self.mix_method, target, src, r, box)
        if box is not None:                          # box stats: the boxes actually pasted
            area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]) * valid
            fb = n_fallback.double() if self.mix_method == 'cammix' else torch.zeros((), dtype=torch.float64,
                                                                                        device=area.device)
            self.acc_box += torch.stack([valid.sum().double(), area.sum().double() / (H * W), fb])
        return (torch.where(valid[:, None, None, None], mixed, target), torch.where(valid, lam, 1.0), y_src)

    # ---- the plug-in, call 2 of 2: after the forward (before backward) ----
    @torch.no_grad()
    def after_forward(self, step, *, x_l, y_l, logits_l, fmap_l, u_w, logits_w, q_u, mask_u, fmap_w,
                      u_real=None, head_weight=None, cam_weights=None, stat_logits_l=None, stat_logits_w=None,
                      stat_q=None, stat_mask=None):
        """Steps 3-4, once per step after the forward and before backward (so the CAM boxes come from this forward's
        feature map and head, one model state): Eq. 3 (d^u), the E2 entropies, and the bank push of this step's
        labeled and confident unlabeled weak views with their CAM boxes.

        step: the 0-based step (int or 0-d tensor). x_l, u_w [B,3,H,W]: the weak views that produced fmap_l /
        fmap_w [B,K,h,w]; y_l, q_u long [B]; logits_* [B,C]; mask_u bool or 0/1 float [B] (the confidence mask);
        u_real bool [B] (False: a labeled image inside the unlabeled set, ACR's split; default all True).
        head_weight [C,K]: the head that made q_u (plain CAM); or cam_weights = (w_l [B,K], w_u [B,K]) from
        grad_cam_split (Grad-CAM: ResNet-50, whose CAM layer does not feed the head).
        stat_*: the head the statistics (Eq. 3, E2 entropies, Fig. 1 counts) come from when it is not the one that
        labels the bank (ACR: the balanced head's raw softmax, argmax and confidence mask, the inputs of its
        u_py). Default: logits_l, logits_w, q_u, mask_u."""
        C, lam_e = self.C, self.lambda_e
        u_real = torch.ones_like(q_u, dtype=torch.bool) if u_real is None else u_real
        logits_l = logits_l if stat_logits_l is None else stat_logits_l
        logits_e = logits_w if stat_logits_w is None else stat_logits_w
        q_e = q_u if stat_q is None else stat_q
        m_e = mask_u if stat_mask is None else stat_mask
        mask = mask_u > 0.5 if mask_u.dtype.is_floating_point else mask_u.bool()
        mask_e = m_e > 0.5 if m_e.dtype.is_floating_point else m_e.bool()
        real = u_real.bool()
        if self.d_u_fn is None:   # Eq. 3, "once the training status stabilizes" (step >= est_start; no host branch)
            _, hist = _class_mean(torch.ones_like(q_e, dtype=torch.float64), q_e, mask_e & real, C)
            d_t = hist / hist.sum().clamp_min(1)
            on = (torch.as_tensor(step, device=self.device) >= self.est_start) & (hist.sum() > 0)
            self.d_u.copy_(torch.where(on, self.lambda_d * self.d_u + (1 - self.lambda_d) * d_t, self.d_u))
        H_l, H_u = entropy(logits_l).double(), entropy(logits_e).double()
        sel_u = real & mask_e if self.entropy_set == 'masked' else real
        all_l = torch.ones_like(y_l, dtype=torch.bool)
        for e, (s, n) in ((self.e_x, _class_mean(H_l, y_l, all_l, C)),
                          (self.e_u, _class_mean(H_u, q_e, sel_u, C))):  # E2; absent classes keep their value
            e.copy_(torch.where(n > 0, lam_e * e + (1 - lam_e) * s / n.clamp_min(1), e))
        s, n = _class_mean(H_u, q_e, real, C)                           # Fig. 1 accumulators
        self.acc['u_H'] += s
        self.acc['u_count'] += n
        self.acc['u_count_masked'] += _class_mean(H_u, q_e, real & mask_e, C)[1]
        box = self._boxes(fmap_l, fmap_w, torch.cat([y_l, q_u]), head_weight, cam_weights)
        self.push(x_l, y_l, box[:len(y_l)], all_l, labeled=True)
        self.push(u_w, q_u, box[len(y_l):], mask, labeled=False)

    def _boxes(self, fmap_l, fmap_w, labels, head_weight, cam_weights):
        """CAM boxes of the labeled and unlabeled weak views in one call (one CCL launch sequence); zeros when the
        bank does not need them (cam_refresh recomputes at draw time; other mixing methods paste other boxes)."""
        if self.cam_refresh or self.mix_method != 'cammix':
            return torch.zeros(labels.shape[0], 4, dtype=torch.long, device=self.device)
        w = head_weight[labels] if cam_weights is None else torch.cat(cam_weights)
        fmap = torch.cat([fmap_l, fmap_w]).detach()
        return cam_boxes(cam(fmap, w.detach()), self.shape[1:], self.tau_c, self.box_mode)

    # ---- logging and checkpoints ----
    def stats(self, reset=False):
        """Tensors for logs and Fig. 1. u_* are accumulated over truly-unlabeled samples since the last reset."""
        a, (n, area, fb) = self.acc, self.acc_box
        w = self.class_weights()
        mass = self.acc_mass / self.acc_mass.sum().clamp_min(1e-300)   # shares of the L_u mass (all 0: no mass)
        out = dict(s_c=self.sampling_probs(), r_c=self.labeled_ratio(),
                   w_c=w if w is not None else torch.ones(self.C, device=self.device),
                   d_u=self.unlabeled_dist().clone(), e_x=self.e_x.clone(), e_u=self.e_u.clone(), E_c=self.effective_numbers(),
                   u_count=a['u_count'].clone(), u_count_masked=a['u_count_masked'].clone(),
                   u_entropy=a['u_H'] / a['u_count'].clamp_min(1),
                   box_area=area / n.clamp_min(1), fallback_frac=fb / n.clamp_min(1),
                   fill_x=self.filled[0].clone(), fill_u=self.filled[1].clone(),
                   mass_unmixed=mass[0], mass_target=mass[1], mass_source=mass[2])
        if reset:
            for v in (*a.values(), self.acc_box, self.acc_mass):
                v.zero_()
        return out

    _STATE = ('ptr', 'filled', 'd_u', 'e_x', 'e_u', 'acc_box', 'acc_mass')

    def _state_keys(self):
        return [k for k in self._STATE if not (k == 'd_u' and self.d_u_fn is not None)]  # external d^u: its owner saves it

    def state_dict(self):
        sd = {k: getattr(self, k).clone() for k in self._state_keys()}
        sd.update(bank_img=self.bank_img[:-1].clone(), bank_box=self.bank_box[:-1].clone())
        sd.update({'acc_' + k: v.clone() for k, v in self.acc.items()})
        return sd

    def load_state_dict(self, sd):
        for k in self._state_keys():
            getattr(self, k).copy_(sd[k])
        self.bank_img[:-1].copy_(sd['bank_img'])
        self.bank_box[:-1].copy_(sd['bank_box'])
        for k, v in self.acc.items():
            v.copy_(sd['acc_' + k])


# ---------------------------------------------------------------------------------------------------------------
# Mixing baselines for the ablation (MixUp, CutMix, SaliencyMix, CamMix; in-batch or with the bank)
# ---------------------------------------------------------------------------------------------------------------
def mixup(target, source, lam):
    """lam * target + (1 - lam) * source per sample; uint8 inputs are rounded back to uint8."""
    lam_ = lam.float().view(-1, 1, 1, 1)
    out = lam_ * target.float() + (1 - lam_) * source.float()
    return out.round().clamp(0, 255).to(torch.uint8) if target.dtype == torch.uint8 else out.to(target.dtype)


def has_saliency():
    """Whether this OpenCV has the contrib module SaliencyMix needs (opencv-contrib-python; the plain and headless
    builds lack cv2.saliency)."""
    return hasattr(cv2, 'saliency')


def saliency_box(images, lam):
    """SaliencyMix authors' saliency_bbox per sample: a box of side int(S*sqrt(1-lam)) centred on the argmax
    of cv2's StaticSaliencyFineGrained map. Runs per image on the host (it syncs), so use it for the
    ablation baseline only."""
    B, _, H, W = images.shape
    imgs, lams = images.permute(0, 2, 3, 1).contiguous().cpu().numpy(), lam.detach().cpu().numpy()
    det, out = cv2.saliency.StaticSaliencyFineGrained_create(), np.zeros((B, 4), np.int64)
    for i in range(B):
        _, sal = det.computeSaliency(imgs[i])
        y, x = np.unravel_index(np.argmax((sal * 255).astype('uint8')), sal.shape)
        cut = np.sqrt(1.0 - lams[i])
        cw, ch = int(W * cut), int(H * cut)
        out[i] = [np.clip(x - cw // 2, 0, W), np.clip(y - ch // 2, 0, H),
                  np.clip(x + cw // 2, 0, W), np.clip(y + ch // 2, 0, H)]
    return torch.from_numpy(out).to(images.device)


def in_batch_sources(images, labels, gen, boxes=None):
    """In-batch mixing partners: a random permutation of the batch's own weak views and pseudo-labels (and their
    CAM boxes for in-batch CamMix: they must come from a forward run before the mixed batch is built, e.g. a no-grad
    pass of the EMA model; pass degenerate ones through fallback_box). gen: a torch.Generator, or {'perm': ...}."""
    perm = gen['perm'] if isinstance(gen, dict) else torch.randperm(len(images), generator=gen, device=images.device)
    return images[perm], labels[perm], None if boxes is None else boxes[perm]


def _mix_batch(method, target, source, r, box=None):
    """Mix with pre-drawn numbers r (BEM.random_draws' 'box' / 'lam') -> (mixed, lam [B], pasted box or None)."""
    B, _, H, W = target.shape
    if method == 'mixup':  # lam ~ Beta(1,1) = U(0,1), CutMix's default alpha
        return mixup(target, source, r['lam']), r['lam'], None
    if method == 'cutmix':
        box = cutmix_box(B, H, W, r['box'])
    elif method == 'saliencymix':
        box = saliency_box(source, r['lam'])
    elif method != 'cammix':
        raise ValueError(f'unknown mixing method {method!r}')
    return (*paste(target, source, box), box)


def mix_batch(method, target, source, gen, box=None):
    """Dispatch one mixing method -> (mixed, lam [B]); lam weights target's label, 1-lam the source's.
    method: none | mixup | cutmix | saliencymix | cammix (cammix needs `box`, fallback already applied)."""
    B, _, H, W = target.shape
    if method == 'none':
        return target, torch.ones(B, device=target.device)
    r = {}
    if method == 'cutmix':
        r['box'] = cutmix_draws(B, H, W, gen, target.device)
    elif method in ('mixup', 'saliencymix'):
        r['lam'] = torch.rand(B, generator=gen, device=target.device)
    return _mix_batch(method, target, source, r, box)[:2]
