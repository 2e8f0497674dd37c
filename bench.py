"""Side-by-side benchmark: this repo's pipeline (a) against a reference-style pipeline (b).

Same process, same device, same batch, same model architecture, same framework losses (spec perf.md).
  (a) the real train.LTSSLTask / train.LTTask, built from train.py's own CLI, timing task.train_step():
      device-resident uint8 data, batched per-sample augmentation, bf16 autocast + channels_last on CUDA,
      device-side BEM, no host sync inside the step.
  (b) the reference recipe (Gank0078/ACR train.py, kekmodel FixMatch): reference.py's PIL TransformFixMatch
      in a torch DataLoader (--workers, ACR's default 4), fp32 NCHW (cuDNN may use TF32 for convs, torch's
      default), interleave, one joint forward, the same ltssl.py framework loss, SGD + kekmodel's per-tensor
      ModelEMA, `.item()` of the loss terms every step (ACR's AverageMeters), and BEM with host-side cv2
      CamMix boxes (a .cpu() of the CAM, then cv2.connectedComponentsWithStatsWithAlgorithm(CCL_WU) per
      sample). LT: torchvision PIL
      RandomCrop/Flip/Rotation + WeightedRandomSampler (the jitter sampler's class probabilities).
      (b) reuses bem.py's device bank draw/mix/statistics (only the boxes go through the host), so its BEM
      cost is a lower bound of a Python reference; tests/test_bench.py checks (a) and (b) give equal losses.
Also: a breakdown of (a) (augmentation, BEM draw/mix, forward+backward, optimiser+EMA, BEM update,
evaluation), the CPU augmentation micro-benchmark (batched augment.py vs per-image PIL), BEM's added
ms/step, FLOPs (FlopCounterMode on a meta-device copy, i.e. the literal joint batch at zero cost) and
% of peak. `python bench.py --quick` takes < 1 min on 2 CPU cores; `--json PATH` keeps every number (rewritten
after each configuration, so a run stopped by --budget-s or a timeout keeps what it measured).
`--modes eager,compile` times (a) eager and with torch.compile side by side in one process ((b) is timed once;
the compiled row's ratio is against the same (b)); `--compile-configs` limits the compiled rows.
"""
import argparse
import copy
import math
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import augment
import bem as bem_mod
import data
import models
import reference
import ride
import train

CONFIGS = {'fixmatch': ('FixMatch', 'fixmatch', False), 'acr': ('FixMatch+ACR', 'acr', False),
           'acr_bem': ('FixMatch+ACR+BEM', 'acr', True), 'lt': ('LT ResNet-32 jitter1', None, False)}
FULL = dict(batch_size=64, lt_batch_size=128, width=2, warmup=5, steps=20, workers=4, aug_batch=256, aug_reps=3)
QUICK = dict(batch_size=8, lt_batch_size=16, width=1, warmup=2, steps=3, workers=0, aug_batch=64, aug_reps=2)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    a = p.add_argument
    a('--quick', action='store_true', help='< 60 s on 2 CPU cores: ' + ', '.join(f'{k} {v}' for k, v in QUICK.items()))
    a('--dataset', default='synthetic', help='any train.py --dataset (synthetic needs no files)')
    a('--data-dir', default='./datasets')
    a('--device', default='auto', choices=['auto', 'cpu', 'cuda'])
    a('--configs', default='fixmatch,acr,acr_bem,lt', help='comma list of ' + ','.join(CONFIGS))
    a('--mu', default='1,2', help='comma list of unlabeled ratios for the LTSSL configs')
    a('--batch-size', type=int, help=f'labeled batch (full {FULL["batch_size"]}, quick {QUICK["batch_size"]})')
    a('--lt-batch-size', type=int, help=f'LT batch (full {FULL["lt_batch_size"]}, quick {QUICK["lt_batch_size"]})')
    a('--width', type=int, help='WRN width (full 2; quick 1, stated in the header)')
    a('--n1', type=int, help='labeled head-class count (synthetic: 200, quick 100; else train.py default)')
    a('--m1', type=int, help='unlabeled head-class count (synthetic: 400, quick 50; else train.py default)')
    a('--warmup', type=int, help='untimed steps first (full 5, quick 2)')
    a('--steps', type=int, help='timed steps (full 20, quick 3)')
    a('--workers', type=int, help='DataLoader workers of (b) (full 4 = ACR default, quick 0)')
    a('--start-step', type=int, default=3001, help='step counter at start: past ACR est_epoch and BEM est_start, '
      'so every per-step statistic update runs')
    a('--eval-images', type=int, help='test images for the timed evaluation (default: all on CUDA; CPU 1024, quick 64)')
    a('--compile', action='store_true', help='train.py --compile (torch.compile) for pipeline (a); = --modes compile')
    a('--modes', default=None, help='comma list of eager,compile: the (a) rows per configuration (default eager, '
      'or compile with --compile)')
    a('--compile-configs', default=None, help='comma list of KEY or KEY:MU that get a compiled row (default all)')
    a('--budget-s', type=float, default=None, help='start no new configuration after this many seconds; the '
      'skipped ones are listed')
    a('--peak-tflops', type=float, default=None, help='CUDA peak for %% of peak (default from the device name: '
      'H100/H200 SXM bf16 dense 989, H100 PCIe 756, A100 312, L40S 362; otherwise 989)')
    a('--aug-batch', type=int, help='batch of the augmentation micro-benchmark (full 256, quick 64)')
    a('--no-aug', action='store_true', help='skip the augmentation micro-benchmark')
    a('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s; 1 is steadier on a shared box)')
    a('--seed', type=int, default=0)
    a('--json', default=None, help='write every number to this JSON file')
    return p


def fill_defaults(args):
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.dataset == 'synthetic':
        args.n1 = args.n1 or (100 if args.quick else 200)   # synthetic holds 150 (quick) / 600 images per class
        args.m1 = args.m1 or (50 if args.quick else 400)
    args.configs = [c.strip() for c in args.configs.split(',') if c.strip()]
    bad = [c for c in args.configs if c not in CONFIGS]
    if bad:
        print(f'error: unknown --configs {bad}; choose from {",".join(CONFIGS)}', file=sys.stderr)
        sys.exit(2)
    args.mu = [int(m) for m in str(args.mu).split(',')]
    args.modes = [m.strip() for m in (args.modes or ('compile' if args.compile else 'eager')).split(',') if m.strip()]
    if not args.modes or set(args.modes) - {'eager', 'compile'}:
        print(f'error: --modes {",".join(args.modes)}: choose from eager,compile', file=sys.stderr)
        sys.exit(2)
    args.compile_configs = (None if args.compile_configs is None else
                            [c.strip() for c in args.compile_configs.split(',') if c.strip()])
    return args


# bf16 dense tensor-core peaks (vendor datasheets), for % of peak; the first name that matches wins.
BF16_PEAK_TFLOPS = (('H200', 989.0), ('H100 PCIe', 756.0), ('H100', 989.0), ('GH200', 989.0), ('A100', 312.0),
                    ('L40S', 362.0), ('A10G', 70.0), ('L4', 121.0))


def bf16_peak(name):
    """(peak TFLOP/s, source) of a CUDA device name; 989 (H100 SXM) when unknown."""
    for key, tf in BF16_PEAK_TFLOPS:
        if key in name:
            return tf, f'{key} bf16 dense datasheet'
    return 989.0, 'unknown GPU: H100 SXM bf16 dense assumed'


# ================================================================================================
# Device helpers: sync, step timing, memory, FLOPs, peak
# ================================================================================================

def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_steps(step, warmup, steps, device):
    """Per-step wall ms after `warmup` untimed steps. CUDA: events at step boundaries (no sync inside the
    loop, so host/device overlap is kept, as in training); CPU: perf_counter."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    if device.type == 'cuda':
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        ev[0].record()
        for i in range(steps):
            step()
            ev[i + 1].record()
        sync(device)
        per = [ev[i].elapsed_time(ev[i + 1]) for i in range(steps)]
    else:
        per, last = [], t0
        for _ in range(steps):
            step()
            now = time.perf_counter()
            per.append(1e3 * (now - last))
            last = now
    total = 1e3 * (time.perf_counter() - t0)
    return dict(median_ms=statistics.median(per), mean_ms=total / steps, min_ms=min(per), per_step_ms=per)


class Memory:
    """Peak memory of one pipeline run. CUDA: torch.cuda.max_memory_allocated (every live tensor of the
    process: (a)'s run also holds (b)'s small snapshot; (b) runs after (a)'s task is freed). CPU: host peak RSS via /proc VmHWM after a reset
    (clear_refs 5), else the getrusage ru_maxrss delta; DataLoader worker processes are not included."""

    def __init__(self, device):
        self.device = device
        if device.type == 'cuda':
            self.label = 'CUDA max_memory_allocated'
        else:
            self.label = 'host peak RSS (VmHWM, reset per run)' if self._reset_hwm() else 'host ru_maxrss delta'

    @staticmethod
    def _reset_hwm():
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return True
        except OSError:
            return False

    @staticmethod
    def _hwm_mib():
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
        return float('nan')

    def start(self):
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.label.startswith('host peak'):
            self._reset_hwm()
        self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak_mib(self):
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        if self.label.startswith('host peak'):
            return self._hwm_mib()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.rss0


def step_flops(model, n_images, image_shape):
    """FLOPs of one fwd+bwd of the joint batch, counted on a meta-device copy (no compute; conv/linear/mm)."""
    from torch.utils.flop_counter import FlopCounterMode
    m = copy.deepcopy(model).to('meta').train()
    x = torch.empty(n_images, *image_shape, device='meta')
    with FlopCounterMode(display=False) as fc:
        out = m(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()
    return fc.get_total_flops()


def matmul_tflops(device, dtype, n, reps=5):
    """Best-of-reps TFLOP/s of an n x n matmul: the measured peak on CPU (rough: BLAS, this thread count)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    best = float('inf')
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def device_name(device):
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        return f'CPU {names[0]} x{os.cpu_count()}' if names else f'CPU {platform.processor()}'
    except OSError:
        return f'CPU {platform.processor()}'


# ================================================================================================
# Pipeline (a): the real training task
# ================================================================================================

def task_argv(cfg, mu, args, compile=None):
    """train.py argv of one benchmark configuration (compile: override args.compile)."""
    _, alg, bem_on = CONFIGS[cfg]
    compile = args.compile if compile is None else compile
    argv = ['--dataset', args.dataset, '--data-dir', args.data_dir, '--device', args.device, '--seed', str(args.seed)]
    if cfg == 'lt':
        return argv + ['--task', 'lt', '--model', 'resnet32', '--sampler', 'jitter1',
                       '--batch-size', str(args.lt_batch_size)] + (['--compile'] if compile else [])
    argv += ['--task', 'ltssl', '--alg', alg, '--batch-size', str(args.batch_size), '--mu', str(mu),
             '--width', str(args.width), '--iters', '250000']
    argv += ['--n1', str(args.n1)] if args.n1 else []
    argv += ['--m1', str(args.m1)] if args.m1 else []
    return argv + (['--bem'] if bem_on else []) + (['--compile'] if compile else [])


def build_task(argv, ds):
    """train.LTSSLTask / LTTask exactly as train.train() builds them, on an already-loaded dataset."""
    args = train.resolve(train.build_parser().parse_args(argv))
    device = train.pick_device(args.device)
    train._CHANNELS_LAST = device.type == 'cuda'
    torch.manual_seed(args.seed)
    cls = train.LTSSLTask if args.task == 'ltssl' else train.LTTask
    return cls(args, copy.copy(ds), device, lambda *a, **k: None)   # copy: ImageNet-127 remaps ds.test_y


class Clock:
    """Per-step sums of named pieces, synchronised around each piece on CUDA; median over steps."""

    def __init__(self, device):
        self.device, self.steps = device, []

    def new_step(self):
        self.steps.append({})

    @contextmanager
    def __call__(self, key):
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.steps[-1][key] = self.steps[-1].get(key, 0.0) + 1e3 * (time.perf_counter() - t0)

    def medians(self):
        keys = dict.fromkeys(k for s in self.steps for k in s)
        return {k: statistics.median(s.get(k, 0.0) for s in self.steps) for k in keys}


def ltssl_breakdown(t, n):
    """The pieces of LTSSLTask.train_step, in its order, calling the same functions (NaN guard untimed)."""
    from augment import normalize, strong, weak
    clock = Clock(t.device)
    for _ in range(n):
        clock.new_step()
        with clock('augmentation'):
            il = t.lab_sampler.next()
            xl, yl = weak(t.lab_x[il], t.gen), t.lab_y[il]
            iu = t.unl_sampler.next()
            u, u_real = t.unl_x[iu], t.u_real[iu]
            uw, us = weak(u, t.gen), strong(u.repeat(t.V, 1, 1, 1), t.gen)
        mix = None
        if t.mixer is not None:
            with clock('bem_draw_mix'):
                us, mix = t.mixer.mix(us, uw, t.V)
        with clock('augmentation'):
            x = normalize(torch.cat([xl, uw, us]), t.mean, t.std)
        with clock('fwd_bwd'):
            with train.autocast(t.device):
                logits, fmap = t.fwd(train.prep_input(x))
            logits, Bl, Bu = logits.float(), len(il), len(uw)
            ls = logits[:, Bl + Bu:].reshape(len(logits), t.V, Bu, -1).transpose(0, 1)
            loss, _, pl = t.fw.loss(logits[:, :Bl], yl, logits[:, Bl:Bl + Bu], ls, u_real, t.step, t.gen, mix)
            t.opt.zero_grad(set_to_none=True)
            loss.backward()
        with clock('opt_ema'):
            t.opt.step()
            t.sched.step()
            t.ema.update()
        if t.mixer is not None:
            with clock('bem_update'):
                t.mixer.update(t, xl, yl, uw, u_real, logits, fmap.detach().float(), Bl, Bu, pl)
        t.step += 1
    return clock.medians()


def lt_breakdown(t, n):
    """The pieces of LTTask.train_step (sampler + lt_view + normalize | fwd+bwd | SGD)."""
    from augment import normalize
    clock = Clock(t.device)
    for _ in range(n):
        clock.new_step()
        if t.step % t.ipe == 0:
            t._epoch_start(t.step // t.ipe)
        with clock('augmentation'):
            idx = t.sampler.next_batch()
            x = normalize(data.lt_view(t.train_x[idx], t.gen, degrees=t.degrees), t.mean, t.std)
        with clock('fwd_bwd'):
            with train.autocast(t.device):
                out = t.fwd(train.prep_input(x))
            out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
            loss = t._loss(out, t.train_y[idx])
            t.opt.zero_grad(set_to_none=True)
            loss.backward()
        with clock('opt_ema'):
            t.opt.step()
        t.step += 1
    return clock.medians()


def eval_ms_per_10k(task, n_images):
    """One task.evaluate() (after an untimed one), scaled to 10k test images."""
    if n_images is not None and n_images < len(task.test_y):
        task.test_x, task.test_y = task.test_x[:n_images], task.test_y[:n_images]
    task.evaluate()
    sync(task.device)
    t0 = time.perf_counter()
    task.evaluate()
    sync(task.device)
    return 1e3 * (time.perf_counter() - t0) * 1e4 / len(task.test_y)


# ================================================================================================
# Pipeline (b): reference-style (ACR / kekmodel FixMatch / LDAM-DRW-RIDE loaders)
# ================================================================================================

def interleave(x, size):
    """kekmodel/ACR interleave: a pure permutation of the joint batch (BN statistics unchanged)."""
    s = list(x.shape)
    return x.reshape([-1, size] + s[1:]).transpose(0, 1).reshape([-1] + s[1:])


def de_interleave(x, size):
    s = list(x.shape)
    return x.reshape([size, -1] + s[1:]).transpose(0, 1).reshape([-1] + s[1:])


class RefEMA:
    """kekmodel models/ema.py ModelEMA: a Python loop over the state_dict, one tensor at a time."""

    def __init__(self, model, decay):
        self.ema, self.decay = copy.deepcopy(model).eval(), decay
        self.param_keys = [k for k, _ in self.ema.named_parameters()]
        self.buffer_keys = [k for k, _ in self.ema.named_buffers()]
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model):
        msd, esd = model.state_dict(), self.ema.state_dict()
        for k in self.param_keys:
            esd[k].copy_(esd[k] * self.decay + (1. - self.decay) * msd[k].detach())
        for k in self.buffer_keys:
            esd[k].copy_(msd[k])


def host_cam_boxes(cam_map, size, tau_c):
    """CamMix boxes on the host: the CAM post-processing of bem.cam_boxes, then cv2 per sample.
    cv2 CCL_WU numbers labels in raster order, so argmax of the area breaks ties like bem.py."""
    m = F.interpolate(F.relu(cam_map.float()).unsqueeze(1), size=tuple(size), mode='bilinear', align_corners=False)
    m = m[:, 0]
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    masks = ((m - lo) / (hi - lo).clamp_min(1e-12) >= tau_c).numpy().astype(np.uint8)
    boxes = np.zeros((len(masks), 4), np.int64)
    for i, mask in enumerate(masks):
        n, _, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask, 8, cv2.CV_32S, cv2.CCL_WU)
        if n > 1:
            k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            x, y, w, h = (int(v) for v in stats[k, :4])
            boxes[i] = (x, y, x + w, y + h)
    return torch.from_numpy(boxes)


class HostBoxBEM(bem_mod.BEM):
    """bem.BEM with the reference's host CamMix: .cpu() of the CAM (a sync) + a per-sample cv2 loop.
    The bank holds the normalised float views the reference DataLoader yields."""

    def _boxes(self, fmap_l, fmap_w, labels, head_weights, cam_w_l, cam_w_u):
        cam_map = bem_mod.cam(torch.cat([fmap_l, fmap_w]).detach(), head_weights[labels].detach())
        return host_cam_boxes(cam_map.cpu(), self.shape[1:], self.tau_c).to(self.device)


def host_bem(fresh):
    """A HostBoxBEM with the same flags and state as the task's (fresh) bem.BEM."""
    b = copy.deepcopy(fresh, {id(fresh.d_u_fn): fresh.d_u_fn})   # an external d^u (ACR's u_py) stays shared
    b.__class__ = HostBoxBEM
    b.bank_img = torch.zeros(b.bank_img.shape, dtype=torch.float32, device=b.device)
    return b


def _nhwc(x):
    return np.ascontiguousarray(x.cpu().numpy().transpose(0, 2, 3, 1))


class RefLabeled(torch.utils.data.Dataset):
    """ACR transform_labeled: flip + reflect-pad crop (PIL), ToTensor, Normalize."""

    def __init__(self, x, y, mean, std):
        self.x, self.y = _nhwc(x), y.cpu().numpy()
        self.t = reference.TransformFixMatch(mean, std, size=self.x.shape[1])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.t.normalize(self.t.weak(Image.fromarray(self.x[i]))), int(self.y[i])


class RefUnlabeled(reference.FixMatchUnlabeled):
    """reference.FixMatchUnlabeled, target = u_real (ACR's -2 marks labeled images inside U). V = 2 strong
    views is exactly TransformFixMatch(x); V = 1 (FixMatch) computes weak + one strong view only."""

    def __init__(self, x, u_real, mean, std, views):
        super().__init__(_nhwc(x), u_real.cpu().numpy(), mean, std)
        self.views = views

    def __getitem__(self, i):
        img, t = Image.fromarray(self.images[i]), self.transform
        views = t(img) if self.views == 2 else (t.normalize(t.weak(img)), t.normalize(t.strong(img)))
        return views, bool(self.labels[i])


def _forever(loader):
    while True:
        yield from loader


def _loader(ds, batch_size, workers, sampler=None):
    sampler = sampler or torch.utils.data.RandomSampler(ds)
    return _forever(torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                                drop_last=True, persistent_workers=workers > 0))


class RefLTSSL:
    """Pipeline (b) for LTSSL. Build it from a FRESH task (before any step): it copies the initial weights,
    the framework (ltssl.py, the same loss) and BEM's flags; the data path is its own."""

    def __init__(self, task, workers=0):
        a, dev = task.args, task.device
        self.args, self.device, self.V, self.step = a, dev, task.V, task.step
        self.model = copy.deepcopy(task.model).to(memory_format=torch.contiguous_format)   # fp32 NCHW
        self.ema = RefEMA(self.model, a.ema)
        self.opt = torch.optim.SGD(models.no_decay_groups(self.model, a.wd), lr=a.lr, momentum=a.momentum,
                                   nesterov=a.nesterov)
        total = a.iters
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: max(0.0, math.cos(math.pi * 7 / 16 * k / total)))
        self.fw = copy.deepcopy(task.fw)
        if task.mixer is not None and not (a.bank and a.mix == 'cammix' and task.mixer.plain_cam):
            raise ValueError('reference pipeline (b) reproduces BEM with the bank and plain-CAM CamMix only (the '
                             'configurations bench.py runs); other mixing setups have no reference-style counterpart')
        self.bem = host_bem(task.mixer.bem) if task.mixer is not None else None
        self.gen = torch.Generator(dev).manual_seed(a.seed)
        # host copies of the task's split (the reference keeps numpy arrays and a PIL transform per item)
        self.sets = (RefLabeled(task.lab_x, task.lab_y, task.mean, task.std),
                     RefUnlabeled(task.unl_x, task.u_real, task.mean, task.std, self.V))
        self.workers, self._lab, self._unl = workers, None, None

    def next_batch(self):
        """ACR: next(labeled_iter), next(unlabeled_iter), then .to(device)."""
        if self._lab is None:   # workers start on first use (after (a) has finished)
            B = self.args.batch_size
            self._lab = _loader(self.sets[0], B, self.workers)
            self._unl = _loader(self.sets[1], self.args.mu * B, self.workers)
        xl, yl = next(self._lab)
        views, real = next(self._unl)
        to = lambda t: t.to(self.device)  # noqa: E731
        return to(xl), to(yl), to(views[0]), torch.cat([to(v) for v in views[1:]]), to(real)

    def train_step(self):
        return self.step_on(*self.next_batch())

    def step_on(self, xl, yl, uw, us, u_real):
        """One reference step on given normalised views (us = the V strong views, view-major). -> (loss, logs)."""
        Bl, Bu, V = len(xl), len(uw), self.V
        mix = None
        if self.bem is not None:
            src, y_src, box, _ = self.bem.draw(len(us), self.gen)
            us, lam = self.bem.mix(us, src, box, self.gen)
            w = self.bem.class_weights()
            mix = [dict(lam=lam[v * Bu:(v + 1) * Bu], y_src=y_src[v * Bu:(v + 1) * Bu], w=w) for v in range(V)]
        x = torch.cat([xl, uw, us])
        size = len(x) // Bl
        logits, fmap = self.model(interleave(x, size))
        logits = de_interleave(logits.transpose(0, 1), size).transpose(0, 1)   # [H,N,C]
        fmap = de_interleave(fmap, size)
        ls = logits[:, Bl + Bu:].reshape(len(logits), V, Bu, -1).transpose(0, 1)
        loss, logs, pl = self.fw.loss(logits[:, :Bl], yl, logits[:, Bl:Bl + Bu], ls, u_real, self.step, self.gen, mix)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.ema.update(self.model)
        if self.bem is not None:
            self.bem.update(self.step, x_l=xl, y_l=yl, logits_l=logits[0, :Bl].detach(), fmap_l=fmap[:Bl].detach(),
                            u_w=uw, logits_w=logits[0, Bl:Bl + Bu].detach(), q_u=pl['q'], mask_u=pl['mask'],
                            u_real=u_real, fmap_w=fmap[Bl:Bl + Bu].detach(),
                            head_weights=self.model.heads[0].weight.detach())
        self.step += 1
        # ACR's AverageMeters: loss.item() and the terms' .item() every step (host syncs)
        return loss.item(), {k: float(v.item()) for k, v in list(logs.items())[:3]}


class RefLTData(torch.utils.data.Dataset):
    def __init__(self, x, y, transform):
        self.x, self.y, self.t = _nhwc(x), y.cpu().numpy(), transform

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.t(Image.fromarray(self.x[i])), int(self.y[i])


class RefLT:
    """Pipeline (b) for LT: LDAM-DRW/RIDE PIL transforms + WeightedRandomSampler, fp32, .item() per step."""

    def __init__(self, task, workers=0):
        from torchvision import transforms as T
        a = task.args
        self.device, self.B = task.device, a.batch_size
        self.model = copy.deepcopy(task.model).to(memory_format=torch.contiguous_format)
        self.criterion = copy.deepcopy(task.criterion)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.wd,
                                   nesterov=a.nesterov)
        steps = task.lr_steps   # RIDE CustomLR: warm-up + step decays, stepped once per epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda e: ride.lr_lambda(e, warmup=5, steps=steps))
        self.step = task.step
        size = task.train_x.shape[-1]
        ops = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()]
        ops += [T.RandomRotation(task.degrees)] if task.degrees else []
        self.transform = T.Compose(ops + [T.ToTensor(), T.Normalize(task.mean, task.std)])
        y = task.train_y.cpu()
        n = torch.bincount(y, minlength=task.C).double()
        self.weights = (task.sampler.class_probs().double() / n.clamp(min=1))[y]   # per-sample u_y / n_y
        self.set = RefLTData(task.train_x, task.train_y, self.transform)
        self.workers, self.ipe, self._it = workers, task.ipe, None

    def next_batch(self):
        if self._it is None:
            s = torch.utils.data.WeightedRandomSampler(self.weights, self.ipe * self.B, replacement=True)
            self._it = _loader(self.set, self.B, self.workers, s)
        x, y = next(self._it)
        return x.to(self.device), y.to(self.device)

    def train_step(self):
        return self.step_on(*self.next_batch())

    def step_on(self, x, y):
        out = self.model(x)
        if self.criterion is None:
            loss = F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        else:
            loss = self.criterion(out, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        if self.step % self.ipe == 0:
            self.sched.step()
        return loss.item(), {}


# ================================================================================================
# Augmentation micro-benchmark (CPU)
# ================================================================================================

def _best_ms(fn, reps):
    fn()
    best = float('inf')
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return 1e3 * best


def aug_bench(images_u8, mean, std, reps):
    """µs per unlabeled ACR sample (weak + 2 strong, normalised): batched augment.py (1 and 2 threads)
    vs reference.py's per-image PIL TransformFixMatch incl. Image.fromarray (1 thread)."""
    x = images_u8.cpu().contiguous()
    B, threads0 = len(x), torch.get_num_threads()
    g = torch.Generator().manual_seed(0)

    def ours():
        uw = augment.weak(x, g)
        us = augment.strong(x.repeat(2, 1, 1, 1), g)
        augment.normalize(torch.cat([uw, us]), mean, std)

    pil = reference.FixMatchUnlabeled(_nhwc(x), np.zeros(B, np.int64), mean, std)
    out = {'batch': B}
    try:
        for th in sorted({1, min(2, os.cpu_count() or 1)}):
            torch.set_num_threads(th)
            out[f'ours_us_{th}t'] = 1e3 * _best_ms(ours, reps) / B
        torch.set_num_threads(1)
        out['pil_us_1t'] = 1e3 * _best_ms(lambda: [pil[i] for i in range(B)], reps) / B
    finally:
        torch.set_num_threads(threads0)
    for k in [k for k in out if k.startswith('ours_us_')]:
        out['ratio_' + k[len('ours_us_'):]] = out['pil_us_1t'] / out[k]
    return out


# ================================================================================================
# Driver
# ================================================================================================

def load_data(args):
    if args.dataset == 'synthetic' and args.quick:
        return data.make_synthetic(n_per_class=150, n_test=26, seed=args.seed)   # stated in the header
    return data.load_dataset(args.dataset, args.data_dir, with_unlabeled=True)


def _timed(step, warmup, steps, device, mem, flops, B, peak):
    mem.start()
    t = time_steps(step, warmup, steps, device)
    t.update(peak_mem_mib=mem.peak_mib(), mem_label=mem.label, images_per_step=B, flops_per_step=flops)
    t.update(images_per_s=1e3 * B / t['median_ms'], tflops=flops / t['median_ms'] / 1e9)
    t['pct_peak'] = 100 * t['tflops'] / peak
    return t


def wants_compile(cfg, mu, args):
    sel = args.compile_configs
    return 'compile' in args.modes and (sel is None or cfg in sel or f'{cfg}:{mu}' in sel)


def _free(dev):
    import gc
    gc.collect()
    if dev.type == 'cuda':
        torch.cuda.empty_cache()


def compiled_row(cfg, mu, args, ds, peak):
    """(a) with train.py --compile: the first step's wall time (compilation) and the timed steps after warm-up."""
    task = build_task(task_argv(cfg, mu, args, compile=True), ds)
    dev = task.device
    if cfg != 'lt':
        task.step = args.start_step
    B, mem = task.images_per_step, Memory(dev)
    flops = step_flops(task.model, B, tuple(task.test_x.shape[1:]))
    t0 = time.perf_counter()
    task.train_step()
    sync(dev)
    compile_s = time.perf_counter() - t0
    row = _timed(task.train_step, args.warmup, args.steps, dev, mem, flops, B, peak)
    row['compile_s'] = compile_s
    del task
    _free(dev)
    return row


def bench_config(cfg, mu, args, ds, peak):
    """Rows (a) and (b) of one configuration, plus (a)'s breakdown and evaluation time. Without eager in --modes,
    `a` is the compiled row (with eager, run() adds `a_compile` after every eager row: the budget cuts those first)."""
    eager = 'eager' in args.modes
    task = build_task(task_argv(cfg, mu, args, compile=not eager), ds)
    dev, lt = task.device, cfg == 'lt'
    ref = RefLT(task, args.workers) if lt else RefLTSSL(task, args.workers)   # snapshot: fresh weights/state
    if not lt:
        task.step = ref.step = args.start_step
    B, mem = task.images_per_step, Memory(dev)
    flops = step_flops(task.model, B, tuple(task.test_x.shape[1:]))
    r = {'a': _timed(task.train_step, args.warmup, args.steps, dev, mem, flops, B, peak)}
    nb = min(args.steps, 10)
    r['breakdown'] = lt_breakdown(task, nb) if lt else ltssl_breakdown(task, nb)
    r['eval_ms_per_10k'] = eval_ms_per_10k(task, args.eval_images)
    del task                       # (b) runs alone: (a)'s device data and graphs are freed first
    _free(dev)
    # (b): each worker prefetches prefetch_factor (2) batches before the timed steps; drain them in warm-up
    r['b_warmup'] = args.warmup + 2 * args.workers
    r['b'] = _timed(ref.train_step, r['b_warmup'], args.steps, dev, mem, flops, B, peak)
    del ref
    _free(dev)
    r['ratio'] = r['b']['median_ms'] / r['a']['median_ms']
    return r


def header(args, device, peak_info):
    mode = 'FULL'
    if args.quick:
        mode = (f'QUICK (reduced: batch {args.batch_size}, LT batch {args.lt_batch_size}, WRN-28-{args.width}, '
                f'{args.warmup} warm-up + {args.steps} timed steps, DataLoader workers={args.workers}'
                f'{" (in-process)" if args.workers == 0 else ""}, eval on {args.eval_images} test images'
                f'{", synthetic 150/class" if args.dataset == "synthetic" else ""})')
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else 0.0
    busy = (f' | WARNING: load average {load:.1f} on {os.cpu_count()} cores, CPU timings are noisy '
            f'(--threads 1 is steadier)' if load > (os.cpu_count() or 1) else '')
    return (f'bench: {device_name(device)} | torch {torch.__version__} | threads {torch.get_num_threads()} | '
            f'dataset {args.dataset} | mode {mode} | (a) {"+".join(args.modes)} | {peak_info}{busy}')


def report(res, args):
    from tabulate import tabulate
    rows, brk = [], []
    a_label = '(a) this repo' + (' compiled' if 'eager' not in args.modes else '')
    for r in res['configs']:
        for p, label, ratio in (('a', a_label, 'ratio'), ('a_compile', '(a) compiled', 'ratio_compile'),
                                ('b', '(b) reference', None)):
            if p not in r:
                continue
            t = r[p]
            rows.append([r['name'], r['mu'] if r['mu'] else '-', label, t['images_per_step'], f'{t["median_ms"]:.2f}',
                         f'{t["mean_ms"]:.2f}', f'{t["images_per_s"]:.0f}',
                         f'{r[ratio]:.2f}x' if ratio else '(1)', f'{t["tflops"]:.3f}',
                         f'{t["pct_peak"]:.2f}', f'{t["peak_mem_mib"]:.0f}'])
        b = r['breakdown']
        brk.append([r['name'], r['mu'] or '-'] + [f'{b.get(k, 0.0):.2f}' for k in BREAKDOWN]
                   + [f'{sum(b.values()):.2f}', f'{r["a"]["median_ms"]:.2f}', f'{r["eval_ms_per_10k"]:.0f}'])
    mem_label = res['configs'][0]['a']['mem_label'] if res['configs'] else ''
    print(tabulate(rows, headers=['config', 'mu', 'pipeline', 'img/step', 'ms/step (median)', 'ms/step (mean)',
                                  'img/s', 'ratio (b)/(a)', 'TFLOP/s', '% peak', f'peak MiB [{mem_label}]']))
    comp = [f'{r["name"]} mu={r["mu"] or "-"}: {r["a_compile"]["compile_s"]:.1f} s' for r in res['configs']
            if 'a_compile' in r]
    if comp:
        print('torch.compile first step (compilation): ' + '; '.join(comp))
    print('\nbreakdown of (a), ms per step (median; synchronised around each piece):')
    print(tabulate(brk, headers=['config', 'mu'] + list(BREAKDOWN.values()) + ['sum', 'step', 'eval ms/10k img']))
    for k, v in res.get('bem_overhead', {}).items():
        print(f'BEM added ms/step ({k}; difference of medians): (a) {v["a_ms"]:+.2f} ms ({v["a_pct"]:+.1f}%), '
              f'(b) {v["b_ms"]:+.2f} ms ({v["b_pct"]:+.1f}%); (a) breakdown: BEM draw+mix + update = '
              f'{v["a_breakdown_ms"]:.2f} ms')
    aug = res.get('augmentation')
    if aug:
        parts = [f'ours {aug[k]:.1f} us ({k[len("ours_us_"):]}, {aug["ratio_" + k[len("ours_us_"):]]:.2f}x)'
                 for k in aug if k.startswith('ours_us_')]
        print(f'\naugmentation (CPU, weak + 2 strong + normalize per unlabeled ACR sample, B={aug["batch"]}): '
              f'PIL reference {aug["pil_us_1t"]:.1f} us (1t) | ' + ' | '.join(parts))
    if res.get('skipped'):
        print(f'\nSKIPPED (--budget-s {args.budget_s:.0f} s reached): ' + ', '.join(res['skipped']))
    print()
    for line in res['targets']:
        print(line)


BREAKDOWN = {'augmentation': 'augmentation', 'bem_draw_mix': 'BEM draw+mix', 'fwd_bwd': 'fwd+bwd',
             'opt_ema': 'optimiser+EMA', 'bem_update': 'BEM update'}


def targets(res, args, device):
    """PASS/FAIL of the perf.md §5 targets, one line per (a) row of FixMatch+ACR+BEM mu=1, each with its figure.
    Off the target's setting (CPU or reduced sizes) the same lines say INFO instead: computed, not judged."""
    out = []
    h100 = [r for r in res['configs'] if r['key'] == 'acr_bem' and r['mu'] == 1]
    full = device.type == 'cuda' and args.batch_size == 64 and args.width == 2
    for r in h100:
        for p, ratio in (('a', 'ratio'), ('a_compile', 'ratio_compile')):
            if p not in r:
                continue
            kind = 'compiled' if p == 'a_compile' or 'eager' not in args.modes else 'eager'
            ms, x = r[p]['median_ms'], r[ratio]
            for what, ok, fig in (('<= 4 ms/step', ms <= 4.0, f'{ms:.2f} ms/step'),
                                  ('>= 4x vs (b)', x >= 4.0, f'{x:.2f}x')):
                verdict = ('PASS' if ok else 'FAIL') if full else 'INFO'
                out.append(f'{verdict}: target {what} FixMatch+ACR+BEM WRN-28-2 b64 mu=1 ({kind}): {fig}'
                           + ('' if full else f' [not the target setting: {device.type}, batch {args.batch_size}, '
                                              f'WRN-28-{args.width}]'))
    if not h100:
        out.append('SKIP: GPU target (<= 4 ms/step, >= 4x vs (b) for FixMatch+ACR+BEM WRN-28-2 b64 mu=1) '
                   'needs the acr_bem config at mu=1')
    aug = res.get('augmentation')
    if aug:
        ok = aug['ratio_1t'] >= 3.0
        out.append(f'{"PASS" if ok else "FAIL"}: CPU augmentation >= 3x faster than PIL at 1 thread: '
                   f'{aug["ratio_1t"]:.2f}x')
    return out


def main(argv=None):
    args = fill_defaults(build_parser().parse_args(argv))
    try:
        return run(args)
    except (train.UsageError, data.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = train.pick_device(args.device)
    if args.eval_images is None and device.type == 'cpu':
        args.eval_images = 64 if args.quick else 1024
    if device.type == 'cuda':
        measured = matmul_tflops(device, torch.bfloat16, 8192)
        peak, src = (args.peak_tflops, '--peak-tflops') if args.peak_tflops else bf16_peak(device_name(device))
        peak_info = f'peak {peak:.0f} TFLOP/s ({src}; measured bf16 matmul {measured:.0f})'
    else:
        measured = matmul_tflops(device, torch.float32, 1024 if args.quick else 2048)
        peak, peak_info = measured, f'peak = measured fp32 matmul {measured:.3f} TFLOP/s (rough CPU peak)'
    head = header(args, device, peak_info)
    print(head, flush=True)
    ds = load_data(args)
    res = {'header': head, 'device': device_name(device), 'torch': torch.__version__,
           'threads': torch.get_num_threads(), 'peak_tflops': peak, 'measured_matmul_tflops': measured,
           'args': {k: v for k, v in vars(args).items()}, 'configs': []}
    t_start, res['skipped'] = time.perf_counter(), []
    for cfg in args.configs:
        for mu in ([None] if cfg == 'lt' else args.mu):
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                res['skipped'].append(f'{CONFIGS[cfg][0]} mu={mu}')
                continue
            r = bench_config(cfg, mu, args, ds, peak)
            r.update(key=cfg, name=CONFIGS[cfg][0], mu=mu)
            res['configs'].append(r)
            print(f'  {r["name"]} mu={mu}: (a) {r["a"]["median_ms"]:.2f} ms  (b) {r["b"]["median_ms"]:.2f} ms  '
                  f'ratio {r["ratio"]:.2f}x', flush=True)
            write_json(res, args.json)
    for r in res['configs']:          # compiled rows last: eager figures first, compilation is slow
        if 'eager' not in args.modes or not wants_compile(r['key'], r['mu'], args):
            continue
        if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
            res['skipped'].append(f'{r["name"]} mu={r["mu"]} compiled')
            continue
        r['a_compile'] = c = compiled_row(r['key'], r['mu'], args, ds, peak)
        r['ratio_compile'] = r['b']['median_ms'] / c['median_ms']
        print(f'  {r["name"]} mu={r["mu"]}: (a) compiled {c["median_ms"]:.2f} ms (first step {c["compile_s"]:.0f} s)  '
              f'ratio {r["ratio_compile"]:.2f}x', flush=True)
        write_json(res, args.json)
    by = {(r['key'], r['mu']): r for r in res['configs']}
    res['bem_overhead'] = {}
    for mu in args.mu:
        if ('acr', mu) in by and ('acr_bem', mu) in by:
            base, on = by[('acr', mu)], by[('acr_bem', mu)]
            d = {p: on[p]['median_ms'] - base[p]['median_ms'] for p in 'ab'}
            res['bem_overhead'][f'ACR -> ACR+BEM, mu={mu}'] = {
                'a_ms': d['a'], 'b_ms': d['b'], 'a_pct': 100 * d['a'] / base['a']['median_ms'],
                'b_pct': 100 * d['b'] / base['b']['median_ms'],
                'a_breakdown_ms': on['breakdown'].get('bem_draw_mix', 0.0) + on['breakdown'].get('bem_update', 0.0)}
    if not args.no_aug:
        res['augmentation'] = aug_bench(torch.as_tensor(ds.train_x[:args.aug_batch]), ds.mean, ds.std, args.aug_reps)
    res['targets'] = targets(res, args, device)
    report(res, args)
    write_json(res, args.json)
    return 0


def write_json(res, path):
    """Every number so far, replaced atomically (a killed run leaves the last complete file)."""
    if path:
        import json
        with open(path + '.tmp', 'w') as f:
            json.dump(res, f, indent=1, default=float)
        os.replace(path + '.tmp', path)


if __name__ == '__main__':
    sys.exit(main())
