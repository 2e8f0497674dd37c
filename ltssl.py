"""The long-tailed SSL frameworks BEM plugs into: supervised, FixMatch, FixMatch+LA, FixMatch+ABC, FixMatch+ACR.

    fw = make_framework("acr", num_classes=10, labeled_counts=counts, total_steps=250_000)
    loss, logs, pl = fw.loss(logits_l, y_l, logits_w, logits_s, u_real, step, gen, mix)

Shapes: logits_l [H,Bl,C], logits_w [H,Bu,C], logits_s [V,H,Bu,C] (V strong views, H heads). step: the 0-based step,
an int or a 0-d device tensor (the compiled step passes a tensor: everything step-dependent is tensor arithmetic, no
host branch). gen: a torch.Generator, or fw.random_draws(Bl, Bu, gen) drawn beforehand (ABC's Bernoulli masks; the
compiled step takes its random numbers as tensors). mix: BEM's per-view records (bem.Mix), or None.
Each framework declares what it reads from the command line in `options` (name -> default, source): flags.py builds
its flags and defaults from them, train.py passes them back.
Sources (spec/baselines.md, spec/anchors.md §1.5):
  FixMatch   kekmodel/FixMatch-pytorch train.py (as forked by ACR); mask = max p >= 0.95 (`.ge`, also TF FixMatch)
  LA         DASO lib/algorithm/fixmatch.py: labeled logits + tau*log(pi), tau = 1, unlabeled loss untouched
  ABC        LeeHyuck/ABC ABCcode0920/ABCfix.py (FixMatch+ABC); DASO fm_abc.py / USB abc.py as flagged variants
  ACR        Gank0078/ACR train.py L467-L586
Every step is free of host syncs (no .item(), no bool-mask indexing): masks are float tensors, running
estimates are updated in place with torch.where (no branch on the step, no new state tensors: CUDA-graph safe).
loss() updates running estimates (ACR): call it exactly once per training step.
"""
import math

import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# shared pieces


def prior(counts):
    """Labeled class prior pi from the split's counts (never from a shuffled drop_last loader, cf. ACR compute_py)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    return (n / n.sum()).float()


def adj(pi, tau):
    """ACR train.py compute_adjustment_by_py: log(pi^tau + 1e-12). `tau` may be a float or a 0-d tensor."""
    return torch.log(pi ** tau + 1e-12)


def ce(logits, target, mask, mix=None, rebalanced=False):
    """Per-sample mask * CE. Hard (long [B]) or soft (float [B,C]) targets; BEM's mixed form when mix (a bem.Mix)
    is given, without its ECB weights on a term that is already re-balanced (the rule lives in bem.Mix.loss)."""
    if mix is not None:
        return mix.loss(logits, target, mask, rebalanced)
    if target.dtype.is_floating_point:
        loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
    else:
        loss = F.cross_entropy(logits.float(), target, reduction="none")
    return mask * loss


def views_ce(logits_v, target, mask, mix, rebalanced=False):
    """Unlabeled CE over V strong views [V,B,C]: mean over the V*B terms (ACR/ABC `cat` of the views, then `.mean()`).
    mix[v] (BEM) mixes strong view v."""
    terms = [ce(logits_v[v], target, mask, None if mix is None else mix[v], rebalanced).mean()
             for v in range(len(logits_v))]
    return torch.stack(terms).mean()


def confident(probs, threshold):
    """(max prob, argmax, float mask max >= threshold). `.ge` as in FixMatch-pytorch/ACR (BEM Eq. 1 writes '>')."""
    maxp, q = probs.max(dim=1)
    return maxp, q, (maxp >= threshold).float()


def _detached(d):
    return {k: v.detach() for k, v in d.items()}


# -----------------------------------------------------------------------------
# base class: heads, evaluation, running state


class Framework:
    num_heads = 1
    strong_views = 1
    eval_heads = {"standard": 0}
    eval_head = 0
    options = {}     # the flags this framework reads: name -> (default, source); flags.py builds them from this
    _state = ()      # names of running estimates that state_dict() saves (bit-exact resume)
    _buffers = ("pi",)

    def __init__(self, *, num_classes, labeled_counts, total_steps, steps_per_epoch=500, threshold=0.95):
        assert len(labeled_counts) == num_classes
        self.C, self.threshold = num_classes, threshold
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.total_epochs = math.ceil(total_steps / steps_per_epoch)  # ACR: args.epochs = ceil(total_steps / eval_step)
        self.counts = torch.as_tensor(labeled_counts, dtype=torch.float32)
        self.pi = prior(labeled_counts)

    def to(self, device):
        for name in self._buffers + self._state:
            setattr(self, name, getattr(self, name).to(device))
        return self

    def _follow(self, t):
        """Move the buffers to the training device on first use (make_framework takes no device)."""
        if self.pi.device != t.device:
            self.to(t.device)

    def random_draws(self, Bl, Bu, gen, device=None):
        """Every random number loss() takes (none here; ABC's Bernoulli masks), as a dict of tensors on device
        (default: gen's)."""
        return {}

    def _draws(self, gen, Bl, Bu, device):
        return gen if isinstance(gen, dict) else self.random_draws(Bl, Bu, gen, device)

    def test_logits(self, logits):
        """What each head predicts at test. All frameworks here use raw logits (DASO reports LA train-time only)."""
        return logits

    def state_dict(self):
        return {name: getattr(self, name).detach().clone() for name in self._state}

    def load_state_dict(self, d):
        for name in self._state:
            getattr(self, name).copy_(d[name])


# -----------------------------------------------------------------------------
# supervised, FixMatch, FixMatch+LA


class FixMatch(Framework):
    """L = CE(x) + mean_b mask_b CE(s_b, argmax p_w); p_w = softmax(weak) detached; lambda_u = 1, T = 1.
    la_tau > 0: Menon et al.'s logit-adjusted labeled loss as DASO uses it (labeled CE only, raw logits at test).
    unlabeled=False: the supervised baseline (strong_views = 0)."""
    _buffers = ("pi", "la_offset")

    def __init__(self, *, la_tau=0.0, unlabeled=True, **kw):
        super().__init__(**kw)
        self.la_tau, self.unlabeled = la_tau, unlabeled
        self.strong_views = 1 if unlabeled else 0
        # DASO fixmatch.py: logits += tau * log p_data (no epsilon: every labeled class has >= 1 sample)
        self.la_offset = la_tau * torch.log(self.pi)

    def loss(self, logits_l, y_l, logits_w, logits_s, u_real, step, gen, mix=None):
        self._follow(logits_l)
        Lx = F.cross_entropy(logits_l[0].float() + self.la_offset, y_l)
        if not self.unlabeled:
            return Lx, {"Lx": Lx.detach()}, {}
        probs = torch.softmax(logits_w[0].detach().float(), dim=1)
        _, q, mask = confident(probs, self.threshold)
        Lu = views_ce(logits_s[:, 0], q, mask, mix)
        logs = {"Lx": Lx, "Lu": Lu, "mask": mask.mean()}
        return Lx + Lu, _detached(logs), {"q": q, "mask": mask, "probs": probs}


# -----------------------------------------------------------------------------
# FixMatch+ABC (Lee et al., NeurIPS 2021), official FixMatch+ABC code by default


class ABC(FixMatch):
    """Backbone FixMatch (head 0) + auxiliary balanced classifier (head 1) on the same features; test = ABC head.
    abc_views=2: two strong views (ABCfix.py; DASO uses 1). abc_soft=True: soft targets (ABCfix.py; USB uses hard)."""
    num_heads = 2
    eval_heads = {"standard": 0, "abc": 1}
    eval_head = 1
    options = {"abc_views": (2, "ABC code (DASO: 1)"), "abc_hard": (False, "ABC code: soft pseudo-labels (USB: hard)")}
    _buffers = ("pi", "la_offset", "p_l")

    def __init__(self, *, abc_views=2, abc_hard=False, **kw):
        super().__init__(**kw)
        self.strong_views, self.abc_soft = abc_views, not abc_hard
        # ABCfix.py L92-L94: ir2 = N_last / N_c; the last class is the smallest here, min() says what is meant
        self.p_l = self.counts.min() / self.counts

    def p_u(self, step):
        """ABCfix.py L256: Bernoulli parameter of unlabeled samples, linear in the epoch from 1 (epoch 0) to
        N_min/N_c (epoch = total_epochs; ABC hard-codes 500 = its total epochs). [C] tensor; step int or tensor."""
        epoch = torch.as_tensor(step, device=self.p_l.device) // self.steps_per_epoch
        frac = (epoch / self.total_epochs).clamp(max=1.0)
        return 1 - frac * (1 - self.p_l)

    def random_draws(self, Bl, Bu, gen, device=None):
        """U(0,1) per labeled and unlabeled sample: Bernoulli(p) = (u < p), p known only in loss()."""
        kw = dict(generator=gen, device=gen.device if device is None else device)
        return {"u_l": torch.rand(Bl, **kw), "u_u": torch.rand(Bu, **kw)}

    def abc_losses(self, logits_l, y_l, logits_w, logits_s, step, gen, mix):
        """L_cls (labeled, Eq. 1-2) and L_con (unlabeled, Eq. 3-4) on the ABC head."""
        r = self._draws(gen, len(y_l), logits_w.shape[1], logits_w.device)
        # ABCfix.py L244, L261: one Bernoulli(N_min/N_y) draw per labeled sample, mean over the full batch
        m_l = (r["u_l"] < self.p_l[y_l]).float()
        L_cls = ce(logits_l[1], y_l, m_l).mean()
        # ABCfix.py L220-L257: soft pseudo-label from the ABC head's weak view, its own confidence, decaying Bernoulli
        q_abc = torch.softmax(logits_w[1].detach().float(), dim=1)
        _, q_hat, conf = confident(q_abc, self.threshold)
        m_u = conf * (r["u_u"] < self.p_u(step)[q_hat]).float()
        target = q_abc if self.abc_soft else q_hat
        # ABCfix.py L262-L266: one term per strong view, each a batch mean, SUMMED (not averaged) over views;
        # ABC's Bernoulli mask already balances L_con: BEM's mixed labels, no ECB weights on top (rebalanced)
        L_con = sum(ce(logits_s[v, 1], target, m_u, None if mix is None else mix[v], rebalanced=True).mean()
                    for v in range(self.strong_views))
        return L_cls, L_con, m_u

    def loss(self, logits_l, y_l, logits_w, logits_s, u_real, step, gen, mix=None):
        assert logits_s.shape[0] == self.strong_views, "ABC needs abc_views strong views"
        # L_back: the unchanged backbone FixMatch, hard labels from head 0, Lu averaged over V*B (ABCfix.py L410-L415)
        L_back, logs, pl = super().loss(logits_l, y_l, logits_w, logits_s, u_real, step, gen, mix)
        L_cls, L_con, m_u = self.abc_losses(logits_l, y_l, logits_w, logits_s, step, gen, mix)
        logs.update(_detached({"L_cls": L_cls, "L_con": L_con, "mask_abc": m_u.mean()}))
        # paper silent on BEM+ABC: BEM's q/mask/probs come from the backbone FixMatch branch (BEM Fig. 2 is FixMatch)
        return L_back + L_cls + L_con, logs, pl  # ABCfix.py L268-L270: all weights 1


# -----------------------------------------------------------------------------
# FixMatch+ACR (Wei & Gan, CVPR 2023), Gank0078/ACR train.py


def class_histogram(q, w, num_classes, mode="counts"):
    """Per-class mass of weights w [B] at labels q [B].
    counts:   sum of w per class: a histogram (what ACR's text means by the distribution of pseudo-labels).
    presence: ACR's statement `now_mask[q] += w` (train.py L560) reproduced exactly. It is an index_put without
              accumulate on a zero vector: every occurrence writes 0 + its own weight and one write survives, so a
              class gets the weight of ONE of its occurrences, never their sum. On CPU the last occurrence in index
              order wins (one thread; ACR's 64-sample batches always), which is what this mode computes on any
              device; on CUDA, or on CPU threads splitting thousands of indices, ACR's winner is unspecified.
              q = [0,0,0,1,2,2,3,3], w = [1,1,0,1,0,1,1,0] -> [0,1,1,0,0] (counts: [2,1,1,1,0])."""
    out = torch.zeros(num_classes, device=q.device, dtype=torch.float32)
    if mode == "counts" or len(q) == 0:
        return out.scatter_add(0, q, w.float())
    assert mode == "presence", mode
    # the last position of each class (-1: absent), then that occurrence's weight; no host sync
    pos = torch.arange(len(q), device=q.device)
    last = torch.full((num_classes,), -1, device=q.device, dtype=pos.dtype).scatter_reduce(0, q, pos, reduce="amax")
    return torch.where(last >= 0, w.float()[last.clamp_min(0)], out)


def sym_kl(p, q):
    """0.5 KL(p||q) + 0.5 KL(q||p), as ACR's two nn.KLDivLoss(reduction='sum') calls."""
    def kl(a, b):  # xlogy: 0 log 0 = 0, as KLDivLoss
        return (torch.xlogy(a, a) - a * torch.log(b)).sum()
    return 0.5 * kl(p, q) + 0.5 * kl(q, p)


def acr_pseudo_labels(z, z_b, adj1, adj12, threshold):
    """ACR train.py L522-L535 from the weak logits of fc (z) and fc1 (z_b), detached, T = 1."""
    p = torch.softmax(z - adj1, dim=1)       # standard head, adaptive tau1
    p_h2 = torch.softmax(z - adj12, dim=1)   # standard head, fixed tau12: the balanced head's targets
    p_t = torch.softmax(z, dim=1)            # standard head, raw
    p_b = torch.softmax(z_b, dim=1)          # balanced head, raw: distribution estimate
    _, q, m = confident(p, threshold)
    _, q_h2, m_h2 = confident(p_h2, threshold)
    _, _, m_t = confident(p_t, threshold)
    _, q_b, m_b = confident(p_b, threshold)
    return dict(p=p, q=q, q_h2=q_h2, q_b=q_b, m=m, m_t=m_t, m_b=m_b, m_h2=m_h2,
                mask_ss_t=torch.maximum(m, m_t),       # ACR: mask + mask_t (bool OR)
                mask_b_h2=torch.maximum(m_b, m_h2))    # ACR: mask_b + mask_h2


class ACR(Framework):
    """Two heads: fc (0, standard) and fc1 (1, balanced; reported). L = L_x + L_u + L_x^b + L_u^b, all weights 1.
    tau1 adapts each epoch to the estimated unlabeled distribution u_py (consistent -> 0, reversed -> tau_max)."""
    num_heads = 2
    strong_views = 2  # TransformFixMatch: weak + 2 strong
    eval_heads = {"standard": 0, "balanced": 1}
    eval_head = 1
    options = {"acr_count": ("counts", "reconstructed (README): confident pseudo-labels per class"),
               "ema_u": (0.99, "ACR's README commands (its argparse: 0.9)"), "tau1": (2.0, "ACR train.py argparse"),
               "tau12": (2.0, "ACR train.py argparse"), "tau2": (2.0, "ACR train.py argparse"),
               "est_epoch": (5, "ACR train.py argparse")}
    _state = ("u_py", "count_KL", "tau1")
    _buffers = ("pi", "pi_uni", "pi_rev", "adj2", "adj12")

    def __init__(self, *, tau1=2.0, tau12=2.0, tau2=2.0, ema_u=0.99, est_epoch=5, acr_count="counts", **kw):
        super().__init__(**kw)
        self.tau_min, self.tau_max = 0.0, tau1       # ACR: taumin = 0, taumax = tau1
        self.ema_u, self.est_epoch, self.acr_count = ema_u, est_epoch, acr_count  # ema_u: README 0.99 (argparse 0.9)
        self.pi_uni = torch.full((self.C,), 1.0 / self.C)
        self.pi_rev = torch.flip(self.pi, dims=[0])   # py_rev = flip(py_con): classes are sorted by count
        self.adj2, self.adj12 = adj(self.pi, tau2), adj(self.pi, tau12)
        self.u_py = torch.full((self.C,), 1.0 / self.C)   # ACR: u_py initialised uniform
        self.count_KL = torch.zeros(3)                    # epoch sums of [KL_con, KL_uni, KL_rev]
        self.tau1 = torch.tensor(float(tau1))           # tau1 as a device tensor: no host sync when it changes

    def update_tau1(self, when=True):
        """ACR train.py L467-L474, at the start of every epoch > est_epoch: tau1 = tau_min + (tau_max - tau_min) *
        softmax(mean KL)[consistent]. The mean divides by steps_per_epoch even for steps that added nothing, and
        the first update sees the all-zero sums of epoch est_epoch: tau1 = 2/3. exp/sum (not a stable softmax):
        an overflow gives NaN, which ACR's isnan check skips; we skip any non-finite value the same way.
        when: a bool tensor (the loss's epoch-start test); the update is a torch.where, in place."""
        k = torch.exp(self.count_KL / self.steps_per_epoch)
        tau = self.tau_min + (self.tau_max - self.tau_min) * k[0] / k.sum()
        self.tau1.copy_(torch.where(torch.isfinite(tau) & when, tau, self.tau1))

    @torch.no_grad()
    def estimate(self, q_b, w, when=True):
        """ACR train.py L559-L571 (BEM Eq. 3): EMA of the per-step distribution of the balanced head's confident
        pseudo-labels of truly unlabeled samples (w = mask_b * u_real), then accumulate the symmetric KL to the anchors.
        Skipped (torch.where, no sync) when no sample counts, like ACR's `if now_mask.sum() > 0`, and when `when`
        (epoch > est_epoch) is false."""
        now = class_histogram(q_b, w, self.C, self.acr_count)
        total = now.sum()
        has = (total > 0) & when
        u_new = self.ema_u * self.u_py + (1 - self.ema_u) * now / total.clamp_min(1e-12)
        self.u_py.copy_(torch.where(has, u_new, self.u_py))
        kl = torch.stack([sym_kl(self.u_py, a) for a in (self.pi, self.pi_uni, self.pi_rev)])
        self.count_KL.add_(torch.where(has, kl, torch.zeros_like(kl)))

    def loss(self, logits_l, y_l, logits_w, logits_s, u_real, step, gen, mix=None):
        self._follow(logits_l)
        assert logits_s.shape[0] == 2 and logits_l.shape[0] == 2, "ACR needs 2 heads and 2 strong views"
        step = torch.as_tensor(step, device=self.u_py.device)
        estimating = step // self.steps_per_epoch > self.est_epoch      # ACR: `epoch > est_epoch`, 0-based epochs
        start = step % self.steps_per_epoch == 0   # epoch start, before this step's pseudo-labels (ACR L467)
        self.update_tau1(start & estimating)
        self.count_KL.copy_(torch.where(start, 0.0, self.count_KL))
        Lx = F.cross_entropy(logits_l[0].float(), y_l)                 # ACR L512: L_x
        Lx_b = F.cross_entropy(logits_l[1].float() + self.adj2, y_l)   # ACR L520: L_x^b, logit-adjusted, tau2
        z, z_b = logits_w[0].detach().float(), logits_w[1].detach().float()
        r = acr_pseudo_labels(z, z_b, adj(self.pi, self.tau1), self.adj12, self.threshold)
        Lu = views_ce(logits_s[:, 0], r["q"], r["mask_ss_t"], mix)     # ACR L537-L574: L_u over 2B terms
        # ACR L575-L576: L_u^b; its targets are already logit-adjusted (tau12): no ECB weights on top (rebalanced)
        Lu_b = views_ce(logits_s[:, 1], r["q_h2"], r["mask_b_h2"], mix, rebalanced=True)
        real = torch.ones_like(r["m_b"]) if u_real is None else u_real.float()
        self.estimate(r["q_b"], r["m_b"] * real, estimating)   # u_real False: a labeled image in the unlabeled set
        logs = {"Lx": Lx, "Lu": Lu, "Lx_b": Lx_b, "Lu_b": Lu_b, "mask": r["mask_ss_t"].mean(),
                "mask_b": r["mask_b_h2"].mean(), "tau1": self.tau1.clone()}
        # BEM: the bank takes L_u's pseudo-labels (q, mask); its statistics (entropies beside the d^u estimate)
        # take the estimate's own inputs: the balanced head's raw argmax q_b and confidence m_b (u_py below)
        pl = {"q": r["q"], "mask": r["mask_ss_t"], "probs": r["p"], "q_bal": r["q_h2"], "mask_bal": r["mask_b_h2"],
              "q_est": r["q_b"], "mask_est": r["m_b"]}
        return Lx + Lu + Lx_b + Lu_b, _detached(logs), pl


# -----------------------------------------------------------------------------


ALGS = {"supervised": (lambda **kw: FixMatch(unlabeled=False, **kw)), "fixmatch": FixMatch,
        "la": (lambda **kw: FixMatch(**{"la_tau": 1.0, **kw})),   # DASO App. C.3: tau = 1
        "abc": ABC, "acr": ACR}
FRAMEWORK = {"supervised": FixMatch, "fixmatch": FixMatch, "la": FixMatch, "abc": ABC, "acr": ACR}  # alg -> class


def make_framework(alg, *, num_classes, labeled_counts, total_steps, steps_per_epoch=500, threshold=0.95, **opts):
    """alg in {supervised, fixmatch, la, abc, acr}. opts: the framework's `options` (abc_views/abc_hard for abc;
    acr_count/ema_u/tau1/tau12/tau2/est_epoch for acr), la_tau (la: 1.0; supervised: 0.0, 1.0 = 'Supervised w/ LA'),
    device (all). Options of the other frameworks are ignored; unknown names raise."""
    if alg not in ALGS:
        raise ValueError(f"unknown alg {alg!r}")
    known = {k for c in FRAMEWORK.values() for k in c.options} | {"la_tau", "device"}
    unknown = set(opts) - known
    if unknown:
        raise TypeError(f"unknown framework options {sorted(unknown)}")
    own = set(FRAMEWORK[alg].options) | ({"la_tau"} if FRAMEWORK[alg] is FixMatch else set())
    fw = ALGS[alg](num_classes=num_classes, labeled_counts=labeled_counts, total_steps=total_steps,
                   steps_per_epoch=steps_per_epoch, threshold=threshold, **{k: v for k, v in opts.items() if k in own})
    # move after construction: subclasses create their buffers after Framework.__init__
    return fw.to(opts["device"]) if opts.get("device") is not None else fw


def shape_of(alg, opts):
    """(strong views, heads) of alg's framework under the options in the dict opts (a run's flags: the framework's
    own are read, None = its default; ABC's views follow abc_views; the supervised baseline has none), read from the
    framework itself, built with placeholder counts: for code that plans runs (flags.py's scope rules, gpu_check's
    GPU-hours) without the data."""
    own = {k: v for k, v in opts.items() if k in FRAMEWORK[alg].options and v is not None}
    fw = make_framework(alg, num_classes=2, labeled_counts=[1, 1], total_steps=1, **own)
    return fw.strong_views, fw.num_heads


def acr_cosine(total_steps):
    """LambdaLR multiplier of the learning rate at step k: max(0, cos(pi * 7/16 * k / K)), K = total_steps.
    ACR train.py get_cosine_schedule_with_warmup (= kekmodel FixMatch) with num_warmup_steps = 0 and
    num_cycles = 7/16; its max(1, K) guard is dropped (K >= 1 here)."""
    return lambda k: max(0.0, math.cos(math.pi * 7 / 16 * k / total_steps))
