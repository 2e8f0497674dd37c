"""A minimal FixMatch loop, in the shape of kekmodel/FixMatch-pytorch's train.py, with BEM added: the lines that
BEM adds end in `# BEM`. It needs bem.py beside it and nothing else of this repo (torch, torchvision, opencv).

    python examples/fixmatch_bem.py            # 40 steps on generated long-tailed images, ~10 s on a 2-core CPU

The data are generated (a coloured shape per class on noise, 5 classes, 64 -> 4 labeled images per class), so the
loop runs anywhere; put your own labeled and unlabeled datasets in their place. Your model must return the feature
map CamMix takes its CAM from (the last conv block, before pooling) beside the logits, and expose its head weight.
"""
import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

import bem  # BEM

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class Shapes(Dataset):
    """n[c] images of class c: a square of colour c at a random place on noise (PIL images, as torchvision's sets)."""
    COLOURS = np.array([[230, 40, 40], [40, 200, 40], [40, 80, 230], [230, 200, 30], [200, 40, 200]], np.uint8)

    def __init__(self, counts, transform, seed):
        rng = np.random.default_rng(seed)
        self.labels = np.repeat(np.arange(len(counts)), counts)
        self.images = rng.integers(0, 90, (len(self.labels), 32, 32, 3), dtype=np.uint8)
        for img, c in zip(self.images, self.labels):
            x, y = rng.integers(2, 18, 2)
            img[y:y + 12, x:x + 12] = self.COLOURS[c]
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class TransformFixMatch:
    """kekmodel's TransformFixMatch: a weak view (flip + crop) and a strong one (+ RandAugment), normalised."""

    def __init__(self):
        weak = [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4, padding_mode='reflect')]
        self.weak, self.strong = T.Compose(weak), T.Compose(weak + [T.RandAugment(num_ops=2, magnitude=10)])
        self.normalize = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])

    def __call__(self, x):
        return self.normalize(self.weak(x)), self.normalize(self.strong(x))


class SmallCNN(nn.Module):
    """Returns (logits, feature map); fc reads the pooled map, so the map's CAM uses fc's weights (plain CAM)."""

    def __init__(self, num_classes, width=32):
        super().__init__()
        conv = lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())  # noqa: E731
        self.features = nn.Sequential(conv(3, width, 1), conv(width, 2 * width, 2), conv(2 * width, 2 * width, 2))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        fmap = self.features(x)                     # [B, K, 8, 8]
        return self.fc(fmap.mean((2, 3))), fmap


def forever(loader):
    while True:
        yield from loader


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--mu', type=int, default=2)
    p.add_argument('--threshold', type=float, default=0.95)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    C, dev, gen = 5, torch.device('cpu'), torch.Generator().manual_seed(0)
    counts = [64, 32, 16, 8, 4]                                      # labeled, gamma = 16
    labeled = Shapes(counts, T.Compose([T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4, padding_mode='reflect'),
                                        T.ToTensor(), T.Normalize(MEAN, STD)]), seed=1)
    unlabeled = Shapes([128, 64, 32, 16, 8], TransformFixMatch(), seed=2)
    test = Shapes([20] * C, T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]), seed=3)
    lab_iter = forever(DataLoader(labeled, args.batch_size, shuffle=True, drop_last=True))
    unl_iter = forever(DataLoader(unlabeled, args.mu * args.batch_size, shuffle=True, drop_last=True))
    model = SmallCNN(C).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True, weight_decay=5e-4)
    bank = bem.BEM(num_classes=C, image_shape=(3, 32, 32), labeled_counts=counts, unlabeled_size=len(unlabeled),  # BEM
                   device=dev, image_dtype=torch.float32, bank_size=16)                                         # BEM
    for step in range(args.steps):
        x_l, y_l = next(lab_iter)
        (u_w, u_s), _ = next(unl_iter)
        u_s, mixes = bank.before_forward(u_s, gen)                       # BEM: bank partners CamMixed into u_s
        logits, fmap = model(torch.cat([x_l, u_w, u_s]))
        z_l, z_w, z_s = logits.split([len(x_l), len(u_w), len(u_s)])
        conf, q = torch.softmax(z_w.detach(), dim=1).max(1)
        mask = conf.ge(args.threshold).float()
        L_x = F.cross_entropy(z_l, y_l)
        L_u = mixes[0].loss(z_s, q, mask).mean()      # BEM: was (F.cross_entropy(z_s, q, reduction='none') * mask)
        f_l, f_w, _ = fmap.split([len(x_l), len(u_w), len(u_s)])                                     # BEM
        bank.after_forward(step, x_l=x_l, y_l=y_l, u_w=u_w, logits_l=z_l, logits_w=z_w, q_u=q, mask_u=mask,  # BEM
                           fmap_l=f_l, fmap_w=f_w, head_weight=model.fc.weight)                      # BEM
        opt.zero_grad()
        (L_x + L_u).backward()
        opt.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f'step {step:3d}  L_x {L_x.item():.3f}  L_u {L_u.item():.3f}  mask {mask.mean().item():.2f}  '
                  f'mixed {float((mixes[0].lam < 1).float().mean()):.2f}  bank fill {bank.filled.sum().item()}')
    model.eval()
    with torch.no_grad():
        x, y = next(iter(DataLoader(test, len(test))))
        acc = (model(x)[0].argmax(1) == y).float().mean().item()
    s = bank.stats()
    print(f'test top-1 {100 * acc:.1f} % (chance 20 %) after {args.steps} steps; BEM s_c (ESS) '
          f'{[round(v, 3) for v in s["s_c"].tolist()]}, ECB w_c {[round(v, 2) for v in s["w_c"].tolist()]}')


if __name__ == '__main__':
    main()
