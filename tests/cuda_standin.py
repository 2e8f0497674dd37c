"""A CUDA device that does not exist, for the CPU suite (issue 21): torch's fake tensors on device 'cuda'.

Inside `fake_cuda()` every tensor is a FakeTensor: it has a shape, a dtype and a device but no data, so a step of
WRN-28-2 or ResNeXt-50 costs only Python. What it checks, the way a GPU would:
  - a tensor left on the CPU meets a CUDA tensor in an op -> FakeTensorDeviceMismatchError (a 0-d CPU tensor is
    allowed, as on a real GPU);
  - a data-dependent op (.item(), .tolist(), nonzero, bool-mask indexing, bincount, torch.multinomial's 1-sample
    path, ...) -> DataDependentOutputException / DynamicOutputShapeException: these are exactly the host syncs a
    step must not have;
  - every random draw must take a generator made by the step's one seam, train.make_generator(device, seed), asked
    for the CUDA device (a CUDA generator cannot be made without a GPU, even under fake tensors, and a CPU one is
    accepted silently with fake CUDA tensors, which a real GPU refuses: so the seam hands out CPU generators and
    records what was asked, and a TorchFunctionMode records every generator a draw takes).
What it cannot check: backward (the autograd engine needs a real GPU), so `no_backward()` gives each parameter a
fake gradient instead and leaves loss.backward() to reproduce/gpu_check.sh; kernels' numerics.
"""
import contextlib
import copy
import types

import numpy as np
import torch
import torch.nn as nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.overrides import TorchFunctionMode

import augment
import bem
import data
import jitter
import train

CUDA = torch.device('cuda', 0)


class DrawRecorder(TorchFunctionMode):
    """Records the generator of every random draw, and draws made without one (the global RNG)."""

    def __init__(self):
        super().__init__()
        self.generators, self.unseeded = [], []

    RANDOM = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.bernoulli, torch.multinomial,
              torch.normal, torch.Tensor.random_, torch.Tensor.uniform_, torch.Tensor.normal_,
              torch.Tensor.bernoulli_, torch.Tensor.exponential_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_host = torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is None   # a host part's own
        if func in self.RANDOM and not on_host:       # draws (JPEG workers' per-sample seeds): not the step's
            g = kwargs.get('generator')
            (self.generators if g is not None else self.unseeded).append((getattr(func, '__name__', str(func)), g))
        return func(*args, **kwargs)


def _fake_module_to(self, *args, **kwargs):
    """Module.to for fake tensors: torch swaps each parameter in place (torch.utils.swap_tensors), which fake tensors
    refuse (their mode holds weak references to them); assign the moved parameters and buffers instead."""
    device, dtype, _, memory_format = torch._C._nn._parse_to(*args, **kwargs)

    def move(t):
        fmt = memory_format if (memory_format is not None and t.dim() == 4) else torch.preserve_format
        return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None,
                    memory_format=fmt)
    for m in self.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = nn.Parameter(move(p.detach()), requires_grad=p.requires_grad)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = move(b)
    return self


def _fake_deepcopy(obj, memo=None):
    """copy.deepcopy for a module of fake tensors (the EMA's copy): deep-copying a FakeTensor reads its data
    pointer, which can crash; each parameter and buffer is cloned into the memo first."""
    memo = {} if memo is None else memo
    if isinstance(obj, nn.Module):
        for t in list(obj.parameters()) + list(obj.buffers()):
            c = t.detach().clone()
            memo[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else c
    return copy.deepcopy(obj, memo)


@contextlib.contextmanager
def fake_cuda(monkeypatch):
    """Fake tensors on a stand-in CUDA device for everything built and run inside. Yields a dict with the devices
    the generator seam was asked for ('seam') and the DrawRecorder ('draws')."""
    asked, recorder = [], DrawRecorder()

    def make_generator(device, seed):
        asked.append(torch.device(device))
        return torch.Generator().manual_seed(seed)      # CPU: the stand-in's only kind of generator
    tables = dict(augment._TABLES)
    augment._TABLES.clear()                 # device tables built inside belong to this fake mode only
    monkeypatch.setattr(train, 'make_generator', make_generator)
    monkeypatch.setattr(train, 'use_channels_last', lambda device: device.type == 'cuda')
    monkeypatch.setattr(torch.nn.Module, 'to', _fake_module_to)
    monkeypatch.setattr(train, 'copy', types.SimpleNamespace(deepcopy=_fake_deepcopy))
    # SaliencyMix's boxes come from OpenCV on the host by design (the baseline's own code; one copy a step, named
    # in bem.saliency_box): the stand-in cannot hand fake images to cv2, so it gives boxes of their shape
    monkeypatch.setattr(bem, 'saliency_box', lambda images, lam: torch.zeros(len(images), 4, dtype=torch.long,
                                                                             device=images.device))
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), recorder:
            yield {'seam': asked, 'draws': recorder}
    finally:
        augment._TABLES.clear()
        augment._TABLES.update(tables)


class HostSampler:
    """ImageNet-LT's sampler runs on the host by design (its indices go to the JPEG workers): real tensors, outside
    the fake mode, so the indices have values; every call of it leaves the fake mode."""

    def __init__(self, sampler):
        self._s = sampler

    def __getattr__(self, name):
        v = getattr(self._s, name)
        if not callable(v):
            return v

        def call(*a, **k):
            with unset_fake_temporarily():
                return v(*a, **k)
        return call


def host_sampler(monkeypatch):
    """Build ImageNet-LT's host sampler from real labels and a real generator (train.ImageNetLTTask.sampler_source)."""
    make = jitter.make_sampler

    def sampler_source(task):
        with unset_fake_temporarily():
            return torch.as_tensor(task.ds_labels, dtype=torch.long), train.make_generator(torch.device('cpu'),
                                                                                            task.args.seed)

    def make_sampler(kind, labels, *a, **k):
        if isinstance(labels, FakeTensor):
            return make(kind, labels, *a, **k)
        with unset_fake_temporarily():
            return HostSampler(make(kind, labels, *a, **k))
    monkeypatch.setattr(train.ImageNetLTTask, 'sampler_source', sampler_source)
    monkeypatch.setattr(jitter, 'make_sampler', make_sampler)
    loader = data.jpeg_loader

    def jpeg_loader(*a, **k):            # the JPEG workers decode real images on the host; their batches then move
        def batches():
            with unset_fake_temporarily():
                it = iter(loader(*a, **k))
            while True:
                with unset_fake_temporarily():
                    b = next(it, None)
                if b is None:
                    return
                yield b
        return batches()
    monkeypatch.setattr(data, 'jpeg_loader', jpeg_loader)


def no_backward(task, monkeypatch):
    """loss.backward() needs a real GPU: the stand-in's backward gives every parameter a fake gradient of its shape, so the optimiser and the EMA still run on the stand-in device. Fused SGD (the CUDA
    default) has no fake kernel: the stand-in's SGD is the multi-tensor one (same math, same device checks)."""
    for g in task.opt.param_groups:
        g['fused'], g['foreach'] = False, True

    def grad(outputs, inputs, *k, **kw):             # Grad-CAM's gradients (ResNet-50 + BEM): fake, of their shape
        return tuple(torch.zeros_like(x) for x in (inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
    monkeypatch.setattr(torch.autograd, 'grad', grad)

    def backward(loss, *k, **kw):
        for g in task.opt.param_groups:
            for p in g['params']:
                p.grad = torch.zeros_like(p)
    monkeypatch.setattr(torch.Tensor, 'backward', backward)


PER_CLASS = {'cifar10': 5000, 'cifar100': 500, 'stl10': 500, 'svhn': 4600, 'fmnist': 6000, 'synthetic': 600}


def standin_dataset(name, per_class=None, img_size=32):
    """A data.Dataset with the shape, classes, training images per class and statistics of `name` (zeros: the values
    do not matter to fake tensors, and untouched pages cost no memory). ImageNet-LT is not here: it streams JPEGs from a tree
    (tests/test_cuda_standin.py writes a tiny one)."""
    C = {'imagenet127': 127}.get(name, data.NUM_CLASSES.get(name, 10))
    size = img_size if name == 'imagenet127' else 32
    if name == 'imagenet127':     # long-tailed as given: 10 % of each class labeled (ACR's split)
        counts = np.maximum(10, (200 * 0.05 ** (np.arange(C) / (C - 1))).astype(int))
    else:
        counts = np.full(C, per_class or PER_CLASS[name])
    y = np.repeat(np.arange(C), counts)
    ty = np.repeat(np.arange(C), 2)
    mean, std = data.STATS.get(name, data.STATS['synthetic'])
    extra = np.zeros((400, 3, size, size), np.uint8) if name == 'stl10' else None
    return data.Dataset(name, np.zeros((len(y), 3, size, size), np.uint8), y,
                        np.zeros((len(ty), 3, size, size), np.uint8), ty, C, mean, std, extra_x=extra)
