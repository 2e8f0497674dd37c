"""Backbones for the LTSSL task: WRN-28-k (CIFAR/STL) and a CIFAR-style ResNet-50 (ImageNet-127).

Both return (logits [H,B,C], fmap) where H is the number of linear heads (1, or 2 for ACR's
balanced head / ABC's auxiliary head) and fmap is the feature map CamMix takes its CAM from.
ResNet-32 and RIDE for the jitter paper live in jitter.py / ride.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _heads(dim, num_classes, n):
    return nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(n))


# ------------------------------------------------------------------------------------------------
# WRN-28-k as in ACR models/wideresnet.py (itself kekmodel's FixMatch WRN)
# ------------------------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Pre-activation block, BN momentum 0.001, LeakyReLU(0.1), as in ACR/kekmodel."""

    def __init__(self, c_in, c_out, stride, activate_before_residual=False, bn_momentum=0.001):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.equal = c_in == c_out
        self.shortcut = None if self.equal else nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)
        self.abr = activate_before_residual

    def forward(self, x):
        act = F.leaky_relu(self.bn1(x), 0.1)
        if self.equal:
            out, skip = act, x
        elif self.abr:
            out = skip = act               # block1: the shortcut also sees the activated input
        else:
            # reference quirk kept for fidelity: the first block of stages 2-3 feeds the *raw* x to
            # conv1 and the shortcut, so its bn1 is computed but unused (it still holds parameters).
            out = skip = x
        out = self.conv2(F.leaky_relu(self.bn2(self.conv1(out)), 0.1))
        return out + (skip if self.equal else self.shortcut(skip))


class WideResNet(nn.Module):
    cam_layer_matches_head = True  # plain CAM works: the heads read the pooled block-3 map

    def __init__(self, num_classes, depth=28, width=2, num_heads=1, bn_momentum=0.001):
        super().__init__()
        n = (depth - 4) // 6
        ch = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        blocks = []
        for i, stride in enumerate((1, 2, 2)):
            for j in range(n):
                blocks.append(BasicBlock(ch[i] if j == 0 else ch[i + 1], ch[i + 1], stride if j == 0 else 1,
                                         activate_before_residual=(i == 0 and j == 0), bn_momentum=bn_momentum))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(ch[3], momentum=bn_momentum)
        self.heads = _heads(ch[3], num_classes, num_heads)
        self.feature_dim = ch[3]
        self._init()

    def _init(self):
        for m in self.modules():  # ACR/kekmodel init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='leaky_relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight); nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight); nn.init.zeros_(m.bias)

    def forward(self, x):
        fmap = F.leaky_relu(self.bn(self.blocks(self.conv1(x))), 0.1)  # 8x8 at 32 px: CamMix's map
        feat = fmap.mean((2, 3))
        return torch.stack([h(feat) for h in self.heads]), fmap


def wrn28(num_classes, width=2, two_heads=False, bn_momentum=0.001):
    """WRN-28-`width`: 1,467,610 parameters for C=10, width 2, one head (anchors.md §1.4)."""
    return WideResNet(num_classes, 28, width, 2 if two_heads else 1, bn_momentum)


# ------------------------------------------------------------------------------------------------
# CIFAR-style ResNet-50 (ACR models/resnet.py): 3x3 stem, no max-pool, strides 1,2,2,2
# ------------------------------------------------------------------------------------------------

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride):
        super().__init__()
        c_out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNet50(nn.Module):
    # BEM §4.1 takes the CAM at "the last layer of ResNet50's third block" (layer3, 1024 ch), but the
    # heads sit after layer4 (2048-d): dimensions differ, so bem.py uses Grad-CAM weights there.
    cam_layer_matches_head = False

    def __init__(self, num_classes, num_heads=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        c, layers = 64, []
        for planes, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(Bottleneck(c, planes, s)); c = planes * 4
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.heads = _heads(2048, num_classes, num_heads)
        self.feature_dim = 2048

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        fmap = self.layer3(self.layer2(self.layer1(x)))
        feat = self.layer4(fmap).mean((2, 3))
        return torch.stack([h(feat) for h in self.heads]), fmap


def resnet50(num_classes, two_heads=False):
    return ResNet50(num_classes, 2 if two_heads else 1)


def no_decay_groups(model, wd):
    """ACR/FixMatch: weight decay on every parameter except those named 'bias' or 'bn'."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if ('bias' in name or 'bn' in name) else decay).append(p)
    return [{'params': decay, 'weight_decay': wd}, {'params': no_decay, 'weight_decay': 0.0}]
