"""A minimal LDAM-DRW/RIDE-style training loop (a torch DataLoader over a long-tailed set, ResNet-32, SGD, epochs)
where jitter sampling is one line: the DataLoader's batch_sampler. The line ends in `# jitter`. It needs jitter.py
beside it and nothing else of this repo (torch, torchvision).

    python examples/lt_jitter.py             # 4 short epochs on generated long-tailed images, ~10 s on a 2-core CPU

Each epoch prints the jitter factor δt (paper §3.2.1) and how often the sampler drew each class. Method 2
(jitter2, the single-expert schedule of §4.2: α = 1, β = 1.5) draws a batch from the reversed sampler with
probability δt, which grows over training; --sampler instance gives LDAM-DRW's plain sampler.
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms as T

import jitter  # jitter


def long_tailed_set(counts, seed):
    """counts[c] images of class c: a brighter channel c on noise, as a uint8 TensorDataset."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    x = torch.randint(0, 100, (len(y), 3, 32, 32), generator=g, dtype=torch.uint8)
    x[torch.arange(len(y)), y % 3] += 100 + 25 * (y // 3).to(torch.uint8)[:, None, None]
    return TensorDataset(x, y)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--sampler', default='jitter2', choices=jitter.KINDS)
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--batch-size', type=int, default=32)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    counts = [int(120 * 0.02 ** (c / 5)) for c in range(6)]        # LDAM-DRW's exponential profile, imbalance 50
    train = long_tailed_set(counts, seed=0)
    labels, C = train.tensors[1], len(counts)
    single = {k: jitter.SETTINGS['single'][k] for k in ('alpha', 'beta', 'gamma')}   # §4.2's schedule
    sampler = jitter.make_sampler(args.sampler, labels, C, args.batch_size, args.epochs, **single,
                                  gen=torch.Generator().manual_seed(0))
    loader = DataLoader(train, batch_sampler=jitter.BatchSampler(sampler))                           # jitter
    augment = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    model = jitter.resnet32(C)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=2e-4)
    for epoch in range(args.epochs):
        loader.batch_sampler.set_epoch(epoch)      # δt of this epoch (a plain DataLoader needs no such call)
        drawn = torch.zeros(C)
        for x, y in loader:
            x = augment(x).float().div(255).sub(0.5).div(0.25)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            drawn += torch.bincount(y, minlength=C)
        freq = drawn / drawn.sum()
        print(f'epoch {epoch}: delta_t {sampler.delta:.4f}  loss {loss.item():.3f}  draws per class '
              f'{[round(v, 3) for v in freq.tolist()]} (instance: {[round(n / sum(counts), 3) for n in counts]})')
    print(f'class sizes {counts}; {len(loader)} batches of {args.batch_size} per epoch, sampler {args.sampler}')


if __name__ == '__main__':
    main()
