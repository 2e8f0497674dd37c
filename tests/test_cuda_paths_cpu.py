"""The branches that run only on CUDA by default, forced on CPU where torch allows (issue 13), each against an
independent oracle; the `cuda` parameter runs the same check with the CUDA default (skipped without a GPU;
reproduce/gpu_check.sh runs this file on the GPU as its CUDA smoke).

  augmentation  "select" mode (CUDA default) == "group" mode (CPU default)      oracle: the other mode
                (the per-op select/group parity itself: tests/test_augment.py; fp64 blend: test_blend_exhaustive)
  CamMix boxes  batched device labelling (CUDA default) == cv2 CCL_WU loop       oracle: cv2
                (exhaustive on 1200 masks: tests/test_bem.py::test_largest_component_box_matches_cv2_wu)
  SGD           fused=True (CUDA default) == a hand-written Nesterov SGD         oracle: the update formula
  channels_last + bf16 autocast (CUDA defaults) ~= fp32 NCHW                     oracle: fp32 contiguous forward
  a whole LTSSL step (ACR+BEM) with every CUDA default forced ~= the CPU step    oracle: the fp32 CPU step
Not forceable on CPU (listed in README "Speed"): CUDA-event timing, torch.cuda.set_sync_debug_mode (the host-sync
test), NCCL + SyncBatchNorm under torchrun, pinned-memory JPEG loading, bf16 tensor-core kernels themselves.
"""
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import augment
import bem
import models
import flags
import train

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'))]


def _forced(device):
    """CPU: force the CUDA branch explicitly; CUDA: leave the default (which is the CUDA branch)."""
    return device == 'cpu'


@pytest.mark.parametrize('device', DEVICES)
def test_select_mode_augmentation_equals_group_mode(device):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (96, 3, 32, 32), generator=g, dtype=torch.uint8)
    params = augment.draw_randaugment(96, g, 'cpu', size=32)
    want = augment.apply_randaugment(x, params, mode='group')             # the CPU default
    dev_params = {k: v.to(device) for k, v in params.items()}
    got = augment.apply_randaugment(x.to(device), dev_params, mode='select' if _forced(device) else None)
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize('device', DEVICES)
def test_device_connected_components_equal_cv2(device):
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.random((64, 1, 8, 8)).astype(np.float32))
    masks = (F.interpolate(low, size=(32, 32), mode='bilinear', align_corners=False)[:, 0]
             >= torch.from_numpy(rng.uniform(0.4, 0.8, (64, 1, 1)).astype(np.float32))).numpy()
    masks[0], masks[1] = False, True
    got = bem.largest_component_box(torch.from_numpy(masks).to(device), mode='device' if _forced(device) else None)
    want = bem.largest_component_box(torch.from_numpy(masks), mode='cv2').numpy()   # cv2 CCL_WU per mask
    assert np.array_equal(got.cpu().numpy(), want)
    assert (want[1] == [0, 0, 32, 32]).all() and (want[0] == 0).all()


def _logits(out):
    """WRN returns (logits [heads, N, C], feature map): head 0."""
    return out[0][0]


@pytest.mark.parametrize('device', DEVICES)
def test_fused_sgd_equals_the_update_formula(device):
    dev = torch.device(device)
    torch.manual_seed(0)
    net = models.wrn28(10, width=1).to(dev)
    groups = models.no_decay_groups(net, 5e-4)
    kw = train._foreach(dev, fused=True) if _forced(device) else train._foreach(dev)
    assert kw == {'fused': True}
    opt = torch.optim.SGD(groups, lr=0.03, momentum=0.9, nesterov=True, **kw)
    lr, mom = 0.03, 0.9
    p0 = [p.detach().clone() for g in groups for p in g['params']]
    wds = [g['weight_decay'] for g in groups for _ in g['params']]
    buf = [None] * len(p0)
    for step in range(3):
        x = torch.randn(4, 3, 32, 32, device=dev)
        opt.zero_grad()
        F.cross_entropy(_logits(net(x)), torch.arange(4, device=dev)).backward()
        grads = [None if p.grad is None else p.grad.detach().clone() for g in groups for p in g['params']]
        opt.step()
        for i, (g_, wd) in enumerate(zip(grads, wds)):      # torch SGD: d = g + wd p; b = m b + d; p -= lr (d + m b)
            if g_ is None:                                  # unused parameter (WRN's first bn1): not updated
                continue
            d = g_ + wd * p0[i]
            buf[i] = d if buf[i] is None else mom * buf[i] + d
            p0[i] = p0[i] - lr * (d + mom * buf[i])
    got = [p.detach() for g in groups for p in g['params']]
    for a, b in zip(got, p0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('device', DEVICES)
def test_channels_last_bf16_forward_close_to_fp32(device, monkeypatch):
    dev = torch.device(device)
    torch.manual_seed(0)
    ref = models.wrn28(10, width=1).eval()
    x = torch.randn(8, 3, 32, 32)
    want = _logits(ref(x)).detach()
    net = models.wrn28(10, width=1).eval().to(dev)
    net.load_state_dict(ref.state_dict())
    net = net.to(memory_format=torch.channels_last)
    xin = train.prep_input(x.to(dev), channels_last=True)
    assert xin.is_contiguous(memory_format=torch.channels_last)
    with (train.autocast(dev, bf16=True) if _forced(device) else train.autocast(dev)):
        out = _logits(net(xin))
    assert out.dtype == torch.bfloat16                       # autocast really ran the convs in bf16
    # bf16 keeps 8 mantissa bits (~0.4% per rounding) through 28 layers: a few % of the logit scale
    err = (out.float().cpu() - want).abs().max() / want.abs().max()
    assert err < 0.08, float(err)


def _task(device):
    import data
    ds = data.make_synthetic(n_per_class=100, n_test=4, seed=0)
    argv = ['--dataset', 'synthetic', '--alg', 'acr', '--bem', '--width', '1', '--batch-size', '8', '--n1', '40',
            '--m1', '50', '--imb-l', '10', '--iters', '10', '--device', device, '--seed', '0']
    args = flags.resolve(flags.build_parser().parse_args(argv))
    torch.manual_seed(0)
    return train.LTSSLTask(args, ds, torch.device(device), lambda *a, **k: None)


def _first_losses(t, state, n=2):
    """The framework loss of n train_steps from the given weights (captured at fw.loss, before the update)."""
    t.model.load_state_dict(state)
    losses, orig = [], t.fw.loss

    def spy(*a, **k):
        out = orig(*a, **k)
        losses.append(float(out[0].detach()))
        return out
    t.fw.loss = spy
    for _ in range(n):
        t.train_step()
    return losses


def _paths(monkeypatch, on):
    """Switch the three CUDA defaults (channels_last, bf16 autocast, fused SGD) on or off for tasks built next."""
    monkeypatch.setattr(train, 'use_channels_last', lambda device: on)
    monkeypatch.setattr(train, 'autocast', functools.partial(AUTOCAST, bf16=on))
    monkeypatch.setattr(train, '_foreach', functools.partial(FOREACH, fused=on))


AUTOCAST, FOREACH = train.autocast, train._foreach


@pytest.mark.parametrize('device', DEVICES)
def test_ltssl_step_with_cuda_paths_close_to_fp32_step(device, monkeypatch):
    """Two ACR+BEM train_steps from the same weights, batches and views on one device: fp32 NCHW foreach-SGD
    (the oracle) against bf16 autocast + channels_last + fused SGD (forced on CPU; the CUDA defaults)."""
    monkeypatch.setattr(augment, 'weak', lambda x, gen, mode=None: x.flip(-1))      # same views in both runs
    monkeypatch.setattr(augment, 'strong', lambda x, gen, mode=None: x.flip(-2))
    _paths(monkeypatch, False)
    ref = _task(device)
    state = {k: v.clone() for k, v in ref.model.state_dict().items()}
    want = _first_losses(ref, state)
    _paths(monkeypatch, True)
    t = _task(device)
    assert t.opt.defaults.get('fused') and t.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    got = _first_losses(t, state)
    assert all(np.isfinite(got))
    assert got == pytest.approx(want, rel=0.05), (got, want)
