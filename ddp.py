"""Multi-GPU (and multi-process CPU) training with torchrun + DistributedDataParallel.

Design (documented in README "Scale out"): the GLOBAL batch stays fixed, so N processes mean a shorter
step, not more data per step.
  * Every rank holds the same generator state, so all ranks draw the same global batch indices and the
    same augmentation; each rank then forwards only its shard (1/N of every view).
  * BatchNorm statistics are global: torch's SyncBatchNorm on CUDA, `GlobalBatchNorm2d` below on CPU
    (torch's SyncBatchNorm refuses CPU tensors).
  * Logits are all-gathered with autograd, so every rank evaluates the framework loss on the global batch:
    pseudo-labels, ACR's distribution estimate, ABC's Bernoulli draws and BEM's bank/statistics updates are
    identical on every rank and equal to a single-process run. DDP averages the gradients; through the
    gather's backward (a sum over ranks) this yields exactly the global-batch gradient.
  * Grad-CAM (ResNet-50 + BEM/CamMix): the gathered feature map is detached, so each rank differentiates its
    own slice's scores w.r.t. its own feature map, then the channel weights are gathered (grad_cam_local).
    The global BatchNorm's all-reduce is autograd-aware, so this is the gradient of the global score sum.
  * Only rank 0 writes files.
"""
import contextlib
import os
import warnings

import torch
import torch.distributed as dist
import torch.nn as nn


class Dist:
    def __init__(self, rank, world, local_rank, device):
        self.rank, self.world, self.local_rank, self.device = rank, world, local_rank, device

    @property
    def main(self):
        return self.rank == 0


def init():
    """Returns a Dist under torchrun (WORLD_SIZE > 1), else None."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world == 1:
        return None
    cuda = torch.cuda.is_available()
    dist.init_process_group('nccl' if cuda else 'gloo')
    local = int(os.environ.get('LOCAL_RANK', '0'))
    # more ranks than GPUs (gpu_check's two processes on one GPU) share them round-robin; NCCL may refuse that
    device = torch.device('cuda', local % torch.cuda.device_count()) if cuda else torch.device('cpu')
    if cuda:
        torch.cuda.set_device(device)
    return Dist(dist.get_rank(), world, local, device)


@contextlib.contextmanager
def autograd_collectives():
    """torch.distributed.nn.functional, the public autograd-aware collectives (deprecated in favour of a private
    API), with its FutureWarning silenced. Every use must be inside this: each catch_warnings exit resets the
    warnings registry, so one unguarded call site would print its warning again at every step, on every rank."""
    import torch.distributed.nn.functional as dnf
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)
        yield dnf


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with training statistics over all ranks. Two passes (the mean, then the squared deviations
    from it), two all_reduces: the one-pass E[x^2] - E[x]^2 cancels catastrophically in fp32 on small feature
    maps (RIDE ResNeXt-50's 1x1 maps drifted by ~1 % a step), as torch's own SyncBatchNorm avoids too."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        C = x.shape[1]
        xf = x.float()
        with autograd_collectives() as dnf:
            tot = dnf.all_reduce(torch.cat([xf.sum((0, 2, 3)), xf.new_full((1,), x.numel() / C)]))  # autograd-aware
            n = tot[-1]
            mean = tot[:C] / n
            d = xf - mean[None, :, None, None]
            var = dnf.all_reduce((d * d).sum((0, 2, 3))) / n
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
            self.num_batches_tracked += 1
        y = d * torch.rsqrt(var + self.eps)[None, :, None, None]
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


def convert_bn(model, device):
    if device.type == 'cuda':
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            g = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum).to(child.weight.device)
            g.load_state_dict(child.state_dict())
            setattr(model, name, g)
        else:
            convert_bn(child, device)
    return model


def wrap(model, d, find_unused=True):
    """DDP wrapper. find_unused: WRN's reference quirk leaves some bn1 parameters out of the graph."""
    ids = [d.device.index] if d.device.type == 'cuda' else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def shard(segments, d):
    """This rank's 1/N of each segment (labeled, weak, strong views ...), concatenated in order."""
    return torch.cat([s.chunk(d.world)[d.rank] for s in segments])


def gather(t, sizes, d, dim, autograd=True):
    """Inverse of shard: the global tensor with segments in their original order (autograd-aware)."""
    with autograd_collectives() as dnf:
        parts = dnf.all_gather(t.contiguous()) if autograd else _gather_plain(t.contiguous())
    local = [s // d.world for s in sizes]
    per_rank = [p.split(local, dim) for p in parts]
    return torch.cat([per_rank[r][i] for i in range(len(sizes)) for r in range(d.world)], dim)


def _gather_plain(t):
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def any_flag(flag, d):
    """True on every rank if any rank raised `flag` (used for SIGTERM agreement at log boundaries)."""
    t = torch.tensor([int(bool(flag))], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ------------------------------------------------------------------------------------------------
# --task lt: one global batch of rows (images), possibly uneven across ranks (an epoch's partial last batch)
# ------------------------------------------------------------------------------------------------

def row_range(n, d, rank=None):
    """[start, stop) of `rank`'s rows of a global batch of n rows: torch.tensor_split's sections (the first
    n % world ranks take one row more), so the shards stay within one row of each other for any n."""
    r = d.rank if rank is None else rank
    q, extra = divmod(n, d.world)
    start = r * q + min(r, extra)
    return start, start + q + (r < extra)


def shard_rows(x, d):
    """This rank's rows of the global batch x (dim 0)."""
    return x[slice(*row_range(len(x), d))]


def gather_rows(t, n, d, dim=0):
    """Inverse of shard_rows along `dim`, autograd-aware: every rank gets the global tensor of n rows.

    Shards are padded to the largest one for the all_gather and trimmed after. Every rank then takes the same
    loss on the global batch; the gather's backward sums over ranks and DDP averages, which gives exactly the
    global-batch gradient whatever the shard sizes (module docstring)."""
    sizes = [b - a for a, b in (row_range(n, d, r) for r in range(d.world))]
    pad = max(sizes) - t.shape[dim]
    if pad:
        shape = list(t.shape)
        shape[dim] = pad
        t = torch.cat([t, t.new_zeros(shape)], dim)
    with autograd_collectives() as dnf:
        parts = dnf.all_gather(t.contiguous())
    return torch.cat([p.narrow(dim, 0, s) for p, s in zip(parts, sizes)], dim)


def all_sum(t):
    """Sum of a tensor over ranks (no autograd): evaluation counts of a test set split across ranks."""
    t = t.clone()
    dist.all_reduce(t)
    return t


def grad_cam_local(z, fmap, y_l, q_u, d, weights_fn):
    """Grad-CAM under torchrun (ResNet-50 + CamMix). The gathered feature map is detached, so each rank
    differentiates its own rows' scores (z: this rank's head logits, rows = its labeled then weak shards, as
    shard() cut them) w.r.t. its own feature map, then the weights are gathered. Through the global BatchNorm's
    autograd all-reduce this is the gradient of the global score sum, as in one process.
    weights_fn(z_l, y_l, z_w, q_u, fmap) -> (w_l, w_u): bem.grad_cam_split."""
    Bl, Bu = len(y_l), len(q_u)
    bl, bu = Bl // d.world, Bu // d.world
    w_l, w_u = weights_fn(z[:bl], y_l.chunk(d.world)[d.rank], z[bl:bl + bu], q_u.chunk(d.world)[d.rank], fmap)
    w = gather(torch.cat([w_l, w_u]).detach(), [Bl, Bu], d, dim=0, autograd=False)
    return w[:Bl], w[Bl:]
