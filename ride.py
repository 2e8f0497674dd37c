"""RIDE (Wang et al., ICLR 2021) and LDAM-DRW (Cao et al., NeurIPS 2019) for the jitter-sampling runs.

Follows frank-xwang/RIDE-LongTailRecognition (model/ldam_drw_resnets/ride_resnet_cifar.py, model/loss.py)
and kaidic/LDAM-DRW (losses.py, cifar_train.py); spec/jitter.md §6.1-§6.2. Imports jitter.py only.
The LDAM-DRW baseline = jitter.resnet32(C, norm_linear=True) + LDAMLoss(counts, drw_epoch=160).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from jitter import NormedLinear, kaiming_init, make_stage


# ================================================================================================
# Model: shared stem + layer1, per-expert layer2/layer3 + cosine classifier (RIDE ResNet-32)
# ================================================================================================
class RIDEResNet32(nn.Module):
    def __init__(self, num_classes, experts=4, reduce=True, s=30.0):
        super().__init__()
        w2, w3 = (24, 48) if reduce else (32, 64)  # "reduce_dimension" shrinks the expert branches
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = make_stage(16, 16)
        self.layer2s = nn.ModuleList([make_stage(16, w2, stride=2) for _ in range(experts)])
        self.layer3s = nn.ModuleList([make_stage(w2, w3, stride=2) for _ in range(experts)])
        self.linears = nn.ModuleList([NormedLinear(w3, num_classes) for _ in range(experts)])
        self.s = s  # RIDE multiplies the cosine logits by s inside the model
        self.apply(kaiming_init)

    def expert(self, h, e):
        f = self.layer3s[e](self.layer2s[e](h)).mean((2, 3))
        return self.s * self.linears[e](f)

    def forward(self, x):
        """Returns (mean logits [B, C], expert logits [E, B, C])."""
        h = self.layer1(F.relu(self.bn1(self.conv1(x))))
        z = torch.stack([self.expert(h, e) for e in range(len(self.linears))])
        return z.mean(0), z


def ride_resnet32(num_classes, experts=4, reduce=True):
    """C=100: 2/3/4 experts = 530,512 / 783,856 / 1,037,200 (reduce), 915,984 / 1,362,064 / 1,808,144 (full)."""
    return RIDEResNet32(num_classes, experts=experts, reduce=reduce)


# ================================================================================================
# Losses: LDAM margins, DRW weights, RIDE's individual + diversity loss
# ================================================================================================
def ldam_margins(counts, max_m=0.5):
    """m_j ∝ n_j^{-1/4}, scaled so that max_j m_j = max_m (LDAM Eq. 13)."""
    m = np.asarray(counts, np.float64) ** -0.25
    return torch.tensor(m * (max_m / m.max()), dtype=torch.float32)


def drw_weights(counts, beta=0.9999):
    """Class-balanced weights (1-β)/(1-β^{n_k}) (Cui et al.), normalised to sum to C."""
    n = np.asarray(counts, np.float64)
    w = (1 - beta) / (1 - beta ** n)
    return torch.tensor(w / w.sum() * len(n), dtype=torch.float32)


def subtract_margin(z, y, margin):
    """z - margin_y on the target logit only (bool mask; LDAM's uint8 torch.where is deprecated)."""
    target = F.one_hot(y, z.shape[1]).bool()
    return torch.where(target, z - margin[y][:, None], z)


class LDAMLoss(nn.Module):
    """L = CE(s (z - m_y 1_y), y; w) on cosine logits z. DRW: w = drw_weights from epoch drw_epoch (0-based)."""

    def __init__(self, counts, max_m=0.5, s=30.0, weight=None, drw_epoch=None, beta=0.9999):
        super().__init__()
        self.s, self.drw_epoch, self.drw_on = s, drw_epoch, False
        self.register_buffer("m", ldam_margins(counts, max_m))
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("w_drw", drw_weights(counts, beta))

    def set_epoch(self, e):
        # LDAM-DRW: idx = epoch // 160 picks β = 0.9999, i.e. re-weighting from 0-based epoch 160
        self.drw_on = self.drw_epoch is not None and e >= self.drw_epoch

    def forward(self, logits, y):
        return F.cross_entropy(self.s * subtract_margin(logits, y, self.m), y,
                               weight=self.w_drw if self.drw_on else self.weight)


class RIDELoss(nn.Module):
    """Sum over experts e of [base CE/LDAM term on z_e] + λ T̄² KL(softmax(z̄/T) || softmax(z_e/T)).

    Expert logits already carry the ×s, so the margin enters as z_e - s m_y. Before drw_epoch: w = None,
    T = base_temperature; from drw_epoch (0-based; RIDE's hook `epoch > 160` with 1-based epochs):
    DRW weights and the class-wise temperature T_k. stage1: 'ce' = plain CE before drw_epoch (the paper's
    "cross entropy in stage 1, LDAM in stage 2"), 'ldam' = RIDE code (margins from epoch 0).
    """

    def __init__(self, counts, max_m=0.5, s=30.0, diversity=-0.45, drw_epoch=160, beta=0.9999,
                 reweight_factor=0.05, base_temperature=1.0, stage1="ce", collaborative_if_zero=True):
        super().__init__()
        assert stage1 in ("ce", "ldam"), stage1
        # reconstructed: stage1='ce' is the literal paper reading (spec §4.3, §7 #8); 'ldam' is RIDE's code
        self.s, self.diversity, self.drw_epoch, self.stage1 = s, diversity, drw_epoch, stage1
        self.base_temperature, self.collaborative_if_zero = base_temperature, collaborative_if_zero
        self.register_buffer("m", ldam_margins(counts, max_m))
        self.register_buffer("w_drw", drw_weights(counts, beta))
        self.register_buffer("T_k", base_temperature * class_temperature(counts, reweight_factor))
        self.T_mean = float(self.T_k.mean())  # host constant: no .item() in the step
        self.drw_on = False

    def set_epoch(self, e):
        self.drw_on = self.drw_epoch is not None and e >= self.drw_epoch

    def forward(self, output, y):
        mean_logits, expert_logits = output
        margins = self.drw_on or self.stage1 == "ldam"
        weight = self.w_drw if self.drw_on else None
        T, T_mean = (self.T_k, self.T_mean) if self.drw_on else (self.base_temperature, self.base_temperature)
        p_mean = F.softmax(mean_logits.detach() / T, dim=1)  # z̄ detached: experts diverge from the ensemble
        # RIDE code quirk (issue #7): with λ = 0 every expert's base term is taken on the mean logits
        collaborative = self.diversity == 0 and self.collaborative_if_zero
        loss = 0.0
        for z in expert_logits:
            zb = mean_logits if collaborative else z
            loss = loss + F.cross_entropy(subtract_margin(zb, y, self.s * self.m) if margins else zb, y, weight=weight)
            kl = F.kl_div(F.log_softmax(z / T, dim=1), p_mean, reduction="batchmean")
            loss = loss + self.diversity * T_mean ** 2 * kl
        return loss


def class_temperature(counts, reweight_factor=0.05):
    """RIDE's class-wise diversity temperature T_k = (C π_k η + 1 - η) / max_k(...), π_k = n_k / N."""
    pi = np.asarray(counts, np.float64) / np.sum(counts)
    t = len(pi) * pi * reweight_factor + 1 - reweight_factor
    return torch.tensor((t / t.max())[None, :], dtype=torch.float32)


# ================================================================================================
# Schedule: RIDE/LDAM CustomLR (linear warm-up, two steps)
# ================================================================================================
def lr_lambda(epoch, warmup=5, steps=(160, 180), gamma=0.01):
    """LambdaLR factor for 0-based epoch: ×(e+1)/warmup during warm-up, ×γ after steps[0], ×γ² after steps[1]."""
    f = gamma ** sum(epoch >= s for s in steps)
    return f * (epoch + 1) / warmup if epoch < warmup else f
