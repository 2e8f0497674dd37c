"""RIDE (Wang et al., ICLR 2021) and LDAM-DRW (Cao et al., NeurIPS 2019) for the jitter-sampling runs.

Follows frank-xwang/RIDE-LongTailRecognition (model/ldam_drw_resnets/ride_resnet_cifar.py, model/loss.py;
model/fb_resnets/RIDEResNeXt.py for the ImageNet-LT ResNeXt-50) and kaidic/LDAM-DRW (losses.py, cifar_train.py);
spec/jitter.md §4.5, §6.1-§6.2. Imports jitter.py only.
The LDAM-DRW baseline = jitter.resnet32(C, norm_linear=True) + LDAMLoss(counts, drw_epoch=160).
"""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from jitter import NormedLinear, kaiming_init, make_stage, resnet32


# ================================================================================================
# Model: shared stem + layer1, per-expert layer2/layer3 + cosine classifier (RIDE ResNet-32)
# ================================================================================================
class Experts(nn.Module):
    """RIDE's output: a shared trunk once, then every expert's s-scaled cosine logits, and their mean."""

    def expert(self, h, e):
        return self.s * self.linears[e](self.features(h, e))

    def forward(self, x):
        """Returns (mean logits [B, C], expert logits [E, B, C])."""
        h = self.shared(x)
        z = torch.stack([self.expert(h, e) for e in range(len(self.linears))])
        return z.mean(0), z


class RIDEResNet32(Experts):
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

    def shared(self, x):
        return self.layer1(F.relu(self.bn1(self.conv1(x))))

    def features(self, h, e):
        return self.layer3s[e](self.layer2s[e](h)).mean((2, 3))


def ride_resnet32(num_classes, experts=4, reduce=True):
    """C=100: 2/3/4 experts = 530,512 / 783,856 / 1,037,200 (reduce), 915,984 / 1,362,064 / 1,808,144 (full)."""
    return RIDEResNet32(num_classes, experts=experts, reduce=reduce)


# ================================================================================================
# Model: RIDE ResNeXt-50 (32x4d) for ImageNet-LT: shared stem + layer1-2, per-expert layer3/layer4
# ================================================================================================
class ResNeXtBottleneck(nn.Module):
    """1x1 -> grouped 3x3 (carries the stride, as in torchvision) -> 1x1 (planes*4), projection shortcut."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, groups=32, width_per_group=4):
        super().__init__()
        width = int(planes * width_per_group / 64) * groups  # 32x4d: planes 64 -> 128 inner channels
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


def resnext_stage(inplanes, planes, blocks, stride=1):
    """`blocks` bottlenecks; only the first one strides and changes the channel count."""
    out = planes * ResNeXtBottleneck.expansion
    return nn.Sequential(ResNeXtBottleneck(inplanes, planes, stride),
                         *[ResNeXtBottleneck(out, planes) for _ in range(blocks - 1)])


def resnext_init(m):
    """RIDE/torchvision ImageNet init: conv ~ N(0, 2/(k*k*out)) (Kaiming fan_out), BN = (1, 0).

    Not jitter.kaiming_init: that is the CIFAR fan_in rule. NormedLinear keeps its own init, as in RIDE.
    """
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class RIDEResNeXt50(Experts):
    def __init__(self, num_classes, experts=4, reduce=True, s=30.0):
        super().__init__()
        p3, p4 = (192, 384) if reduce else (256, 512)  # "reduce_dimension" shrinks the expert branches
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = resnext_stage(64, 64, 3)
        self.layer2 = resnext_stage(256, 128, 4, stride=2)
        # every expert reads the same 512-channel layer2 output
        self.layer3s = nn.ModuleList([resnext_stage(512, p3, 6, stride=2) for _ in range(experts)])
        self.layer4s = nn.ModuleList([resnext_stage(4 * p3, p4, 3, stride=2) for _ in range(experts)])
        self.linears = nn.ModuleList([NormedLinear(4 * p4, num_classes) for _ in range(experts)])
        self.s = s  # RIDE multiplies the cosine logits by s inside the model
        self.apply(resnext_init)

    def shared(self, x):
        """Stem + layer1 + layer2, computed once for all experts: [B, 512, H/8, W/8]."""
        return self.layer2(self.layer1(self.maxpool(F.relu(self.bn1(self.conv1(x))))))

    def features(self, h, e):
        # mean over H, W instead of RIDE's AvgPool2d(7): identical at 224 px (7x7 map), works at any size
        return self.layer4s[e](self.layer3s[e](h)).mean((2, 3))


def ride_resnext50(num_classes, experts=4, reduce=True):
    """C=1000: 3/4 experts = 42,889,024 / 56,714,560 (reduce), 72,258,880 / 95,874,368 (full); 1 expert full =
    25,027,904 = torchvision resnext50_32x4d (25,028,904) minus the fc bias. spec/jitter.md §4.5, §6.1."""
    return RIDEResNeXt50(num_classes, experts=experts, reduce=reduce)


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
        # a host constant, from the counts (no .item() in the step, none of a device tensor at construction)
        self.T_mean = base_temperature * float(_temperatures(counts, reweight_factor).astype(np.float32).mean())
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


def make_model(name, num_classes, imagenet_lt=False, experts=4, reduce=True, group_l2norm='off', loss='ce'):
    """The LT network by name: 'ride' (RIDE ResNet-32, or ResNeXt-50 on ImageNet-LT: jitter.md §4.5, §7 #14) or
    'resnet32' (LDAM-DRW's, with the jitter paper's group L2norm; NormedLinear head for the LDAM loss)."""
    if name == 'ride':
        return (ride_resnext50 if imagenet_lt else ride_resnet32)(num_classes, experts=experts, reduce=reduce)
    return resnet32(num_classes, group_l2norm=False if group_l2norm == 'off' else group_l2norm,
                    norm_linear=loss == 'ldam')


def make_loss(name, counts, drw_epoch, stage1='ce', imagenet_lt=False):
    """The LT criterion by name: 'ride' (RIDELoss; RIDE's ImageNet-LT config sets reweight_factor 0.02 and
    diversity lambda -0.2), 'ldam' (LDAM-DRW), 'ce' -> None (plain cross-entropy, the caller's)."""
    if name == 'ride':
        kw = dict(diversity=-0.2, reweight_factor=0.02) if imagenet_lt else {}
        return RIDELoss(counts, stage1=stage1, drw_epoch=drw_epoch, **kw)
    return LDAMLoss(counts, drw_epoch=drw_epoch) if name == 'ldam' else None


def class_temperature(counts, reweight_factor=0.05):
    """RIDE's class-wise diversity temperature T_k = (C π_k η + 1 - η) / max_k(...), π_k = n_k / N -> [1, C]."""
    return torch.tensor(_temperatures(counts, reweight_factor)[None, :], dtype=torch.float32)


def _temperatures(counts, reweight_factor):
    pi = np.asarray(counts, np.float64) / np.sum(counts)
    t = len(pi) * pi * reweight_factor + 1 - reweight_factor
    return t / t.max()


# ================================================================================================
# Schedule: RIDE/LDAM CustomLR (linear warm-up, two steps)
# ================================================================================================
def lr_lambda(epoch, warmup=5, steps=(160, 180), gamma=0.01):
    """LambdaLR factor for 0-based epoch: ×(e+1)/warmup during warm-up, ×γ after steps[0], ×γ² after steps[1]."""
    f = gamma ** sum(epoch >= s for s in steps)
    return f * (epoch + 1) / warmup if epoch < warmup else f
