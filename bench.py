"""Side-by-side benchmark: this repo's pipeline (a) against a reference-style pipeline (b).

Same process, same device, same batch, same model architecture, same framework losses (spec perf.md).
  (a) the real train.LTSSLTask / LTTask, built from train.py's own CLI, timing task.train_step(): device-resident
      uint8 data, batched per-sample augmentation, bf16 autocast + channels_last on CUDA, device BEM, no host sync.
  (b) reference.RefLTSSL / RefLT, the reference recipe (ACR train.py, kekmodel FixMatch; LDAM-DRW/RIDE loaders):
      PIL transforms in a torch DataLoader (--workers, ACR's default 4), fp32 NCHW, interleave, per-tensor
      ModelEMA, `.item()` every step, BEM with host-side cv2 CamMix boxes (details: reference.py). It shares
      bem.py's device bank, so its BEM cost is a lower bound; tests/test_bench.py checks (a) and (b) give equal losses.
Also: a breakdown of (a) (the real step's pieces, timed through task.clock; evaluation), the CPU augmentation
micro-benchmark (batched augment.py vs per-image PIL), BEM's added ms/step, FLOPs (FlopCounterMode on a meta-device
copy, i.e. the literal joint batch at zero cost) and % of peak. `python bench.py --quick`: about a minute on 2 CPU cores;
`--json PATH` keeps every number (rewritten after each configuration: a run cut by --budget-s keeps what it
measured). `--modes eager,compile` times (a) eager and compiled side by side ((b) once; both ratios against it).
"""
import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch

import augment
import data
import flags
import reference
import runio
import train

CONFIGS = {'fixmatch': ('FixMatch', 'fixmatch', False), 'acr': ('FixMatch+ACR', 'acr', False),
           'acr_bem': ('FixMatch+ACR+BEM', 'acr', True),
           'fixmatch_bem': ('FixMatch+BEM', 'fixmatch', True), 'lt': ('LT ResNet-32 jitter1', None, False)}
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
    a('--compile-timeout-s', type=float, default=None, help='seconds one compiled row may take, its cold compile '
      'included (default: what --budget-s leaves, at least 60; no cap without it); past it the row is TIMEOUT')
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
        raise flags.UsageError(f'unknown --configs {bad}; choose from {",".join(CONFIGS)}')
    args.mu = [int(m) for m in str(args.mu).split(',')]
    args.modes = [m.strip() for m in (args.modes or ('compile' if args.compile else 'eager')).split(',') if m.strip()]
    if not args.modes or set(args.modes) - {'eager', 'compile'}:
        raise flags.UsageError(f'--modes {",".join(args.modes)}: choose from eager,compile')
    if args.compile_timeout_s is not None and (args.compile_timeout_s <= 0 or args.modes != ['eager', 'compile']):
        raise flags.UsageError('--compile-timeout-s caps the isolated compiled rows of --modes eager,compile: give '
                               'it a positive number of seconds with --modes eager,compile, or drop it')
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


# ----------------------------------------------------------------------------- device: timing, memory, FLOPs, peak

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
        for e in ev[1:]:
            step()
            e.record()
        sync(device)
        per = [a.elapsed_time(b) for a, b in zip(ev, ev[1:])]
    else:
        stamps = [t0]
        for _ in range(steps):
            step()
            stamps.append(time.perf_counter())
        per = [1e3 * (b - a) for a, b in zip(stamps, stamps[1:])]
    total = 1e3 * (time.perf_counter() - t0)
    return dict(median_ms=statistics.median(per), mean_ms=total / steps, min_ms=min(per), per_step_ms=per)


class Memory:
    """Peak memory of one pipeline run. CUDA: torch.cuda.max_memory_allocated (every live tensor of the process:
    (a)'s run also holds (b)'s small snapshot; (b) runs after (a)'s task is freed). CPU: host peak RSS via /proc
    VmHWM after a reset (clear_refs 5), else the getrusage ru_maxrss delta; DataLoader workers are not included."""

    def __init__(self, device):
        self.device, self.cuda = device, device.type == 'cuda'
        self.hwm = not self.cuda and self._reset_hwm()
        self.label = ('CUDA max_memory_allocated' if self.cuda else
                      'host peak RSS (VmHWM, reset per run)' if self.hwm else 'host ru_maxrss delta')

    @staticmethod
    def _reset_hwm():
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            return True
        except OSError:
            return False

    def start(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.hwm:
            self._reset_hwm()
        self.rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def peak_mib(self):
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        if self.hwm:
            with open('/proc/self/status') as f:
                return next((int(line.split()[1]) / 1024 for line in f if line.startswith('VmHWM:')), float('nan'))
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


# ----------------------------------------------------------------------------- pipeline (a): the real task

def task_argv(cfg, mu, args, compile=None):
    """train.py argv of one benchmark configuration (compile: override args.compile)."""
    _, alg, bem_on = CONFIGS[cfg]
    compile = args.compile if compile is None else compile
    argv = ['--dataset', args.dataset, '--data-dir', args.data_dir, '--device', args.device, '--seed', str(args.seed)]
    argv += ['--compile', 'step'] if compile else []   # the whole step as one graph (issue 21 item 3)
    if cfg == 'lt':
        return argv + ['--task', 'lt', '--model', 'resnet32', '--sampler', 'jitter1',
                       '--batch-size', str(args.lt_batch_size)]
    argv += ['--task', 'ltssl', '--alg', alg, '--batch-size', str(args.batch_size), '--mu', str(mu),
             '--width', str(args.width), '--iters', '250000']
    argv += ['--n1', str(args.n1)] if args.n1 else []
    argv += ['--m1', str(args.m1)] if args.m1 else []
    return argv + (['--bem'] if bem_on else [])


def build_task(argv, ds):
    """train.LTSSLTask / LTTask exactly as train.train() builds them, on an already-loaded dataset."""
    args = flags.resolve(flags.build_parser().parse_args(argv))
    device = train.pick_device(args.device)
    torch.manual_seed(args.seed)
    return train.task_on(args, copy.copy(ds), device, lambda *a, **k: None)   # copy: ImageNet-127 remaps ds.test_y


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


def breakdown(task, n):
    """Median ms per piece of the real step over n steps of the task's own loop (task.steps: LT steps inside its
    epoch loop): train.py wraps the pieces in `with task.clock(piece)`; this clock syncs around each and sums them."""
    untimed, task.clock, step = task.clock, Clock(task.device), partial(next, task.steps())
    for _ in range(n):
        task.clock.new_step()
        step()
    clock, task.clock = task.clock, untimed   # back to training's no-op clock
    return clock.medians()


def eval_ms_per_10k(task, n_images):
    """One task.evaluate() (after an untimed one), scaled to 10k test images."""
    if n_images is not None and n_images < len(task.test_y):
        task.test_x, task.test_y = task.test_x[:n_images], task.test_y[:n_images]
    return time_steps(task.evaluate, 1, 1, task.device)['mean_ms'] * 1e4 / len(task.test_y)


# ----------------------------------------------------------------------------- augmentation micro-benchmark (CPU)

def aug_bench(images_u8, mean, std, reps):
    """µs per unlabeled ACR sample (weak + 2 strong, normalised): batched augment.py (1 and 2 threads)
    vs reference.py's per-image PIL TransformFixMatch incl. Image.fromarray (1 thread)."""
    x, cpu, g = images_u8.cpu().contiguous(), torch.device('cpu'), torch.Generator().manual_seed(0)
    B, threads0 = len(x), torch.get_num_threads()
    best_us = lambda fn: 1e3 * time_steps(fn, 1, reps, cpu)['min_ms'] / B   # noqa: E731  (1 untimed call, best of reps)

    def ours():   # the step's order: weak, then the 2 strong views, then normalise
        augment.normalize(torch.cat([augment.weak(x, g), augment.strong(x.repeat(2, 1, 1, 1), g)]), mean, std)

    pil = reference.FixMatchUnlabeled(x.numpy(), np.zeros(B, np.int64), mean, std)   # [N,3,H,W] is transposed
    out = {'batch': B}
    try:
        for th in sorted({1, min(2, os.cpu_count() or 1)}):
            torch.set_num_threads(th)
            out[f'ours_us_{th}t'] = best_us(ours)
        torch.set_num_threads(1)
        out['pil_us_1t'] = best_us(lambda: [pil[i] for i in range(B)])
    finally:
        torch.set_num_threads(threads0)
    for k in [k for k in out if k.startswith('ours_us_')]:
        out['ratio_' + k[len('ours_us_'):]] = out['pil_us_1t'] / out[k]
    return out


# ----------------------------------------------------------------------------- driver

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


def _fresh(cfg, mu, args, ds, compile):
    """A fresh task (LTSSL: at --start-step), its step's FLOPs, and a callable running one step of task.steps()."""
    task = build_task(task_argv(cfg, mu, args, compile=compile), ds)
    task.step = args.start_step if cfg != 'lt' else 0
    flops = step_flops(task.model, task.images_per_step, tuple(task.test_x.shape[1:]))
    return task, flops, partial(next, task.steps())


def compiled_row(cfg, mu, args, ds, peak):
    """(a) with train.py --compile step: the first two steps' wall time (compilation: the first step runs eagerly,
    train.compile_step, the second compiles) and the timed steps after warm-up.
    BENCH_FAIL_COMPILE=KEY or KEY:MU (for tests) makes that row raise, as a compiler error would."""
    if os.environ.get('BENCH_FAIL_COMPILE') in (cfg, f'{cfg}:{mu}'):
        raise RuntimeError(f'injected compile failure (BENCH_FAIL_COMPILE={cfg})\nsecond line')
    task, flops, step = _fresh(cfg, mu, args, ds, compile=True)
    dev, B, mem = task.device, task.images_per_step, Memory(task.device)
    compile_s = 2 * time_steps(step, 0, 2, dev)['mean_ms'] / 1e3   # wall time incl. the final sync
    row = _timed(step, args.warmup, args.steps, dev, mem, flops, B, peak)
    row['compile_s'] = compile_s
    del task
    _free(dev)
    return row


def bench_config(cfg, mu, args, ds, peak):
    """Rows (a) and (b) of one configuration, plus (a)'s breakdown and evaluation time. Without eager in --modes,
    `a` is the compiled row (with eager, run() adds `a_compile` after every eager row: the budget cuts those first)."""
    task, flops, step = _fresh(cfg, mu, args, ds, compile='eager' not in args.modes)
    dev, B, mem = task.device, task.images_per_step, Memory(task.device)
    ref = (reference.RefLT if cfg == 'lt' else reference.RefLTSSL)(task, args.workers)   # fresh weights, same step
    r = {'a': _timed(step, args.warmup, args.steps, dev, mem, flops, B, peak)}
    r['breakdown'] = breakdown(task, min(args.steps, 10))
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
    mode = ('FULL' if not args.quick else
            f'QUICK (reduced: batch {args.batch_size}, LT batch {args.lt_batch_size}, WRN-28-{args.width}, '
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
    rows, brk, failed = [], [], []
    a_label = '(a) this repo' + (' compiled' if 'eager' not in args.modes else '')
    for r in res['configs']:
        for p, label, ratio in (('a', a_label, 'ratio'), ('a_compile', '(a) compiled', 'ratio_compile'),
                                ('b', '(b) reference', None)):
            t = r.get(p)
            if t and 'error' in t:
                failed.append(f'{r["name"]} mu={r["mu"] or "-"} {compiled_text(r)}')
                status = 'TIMEOUT' if t['error'].startswith('TIMEOUT') else 'FAILED'
                rows.append([r['name'], r['mu'] or '-', label, '', status] + [''] * 7)
                continue
            rows += [[r['name'], r['mu'] or '-', label, t['images_per_step'], f'{t["median_ms"]:.2f}',
                      f'{t["mean_ms"]:.2f}', f'{t["images_per_s"]:.0f}', f'{r[ratio]:.2f}x' if ratio else '(1)',
                      f'{r["compiled_vs_eager"]:.2f}' if p == 'a_compile' else '',
                      f'{t["tflops"]:.3f}', f'{t["pct_peak"]:.2f}', f'{t["peak_mem_mib"]:.0f}']] if t else []
        b = r['breakdown']
        brk.append([r['name'], r['mu'] or '-'] + [f'{b.get(k, 0.0):.2f}' for k in BREAKDOWN]
                   + [f'{sum(b.values()):.2f}', f'{r["a"]["median_ms"]:.2f}', f'{r["eval_ms_per_10k"]:.0f}'])
    mem_label = res['configs'][0]['a']['mem_label'] if res['configs'] else ''
    print(tabulate(rows, headers=['config', 'mu', 'pipeline', 'img/step', 'ms/step (median)', 'ms/step (mean)',
                                  'img/s', 'ratio (b)/(a)', 'compiled/eager', 'TFLOP/s', '% peak',
                                  f'peak MiB [{mem_label}]']))
    for line in failed:
        print(line)
    for r in res['configs']:
        for note in r.get('a_compile', {}).get('compiler_notes', []):
            print(f'{r["name"]} mu={r["mu"] or "-"} compiled: {note}')
    comp = [f'{r["name"]} mu={r["mu"] or "-"}: {r["a_compile"]["compile_s"]:.1f} s' for r in res['configs']
            if 'compile_s' in r.get('a_compile', {})]
    if comp:
        print('torch.compile, first two steps (compilation): ' + '; '.join(comp))
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


BREAKDOWN = {'augmentation': 'augmentation', 'bem_draw_mix': 'BEM draw+mix', 'forward': 'forward+loss',
             'backward': 'guard+backward',
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
            if 'error' in r[p]:
                out.append(f'SKIP: targets of FixMatch+ACR+BEM mu=1 ({kind}): row FAILED {r[p]["error"]}')
                continue
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
        out.append(f'{"PASS" if aug["ratio_1t"] >= 3.0 else "FAIL"}: CPU augmentation >= 3x faster than PIL at 1 '
                   f'thread: {aug["ratio_1t"]:.2f}x')
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ['--row-child']:
        return row_child()
    args = build_parser().parse_args(argv)
    try:
        return run(fill_defaults(args))
    except (flags.UsageError, data.DataError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2


def peak_tflops(args, device):
    """(peak, measured matmul TFLOP/s, header text): CUDA the bf16 datasheet peak, CPU a measured fp32 matmul."""
    if device.type == 'cuda':
        measured = matmul_tflops(device, torch.bfloat16, 8192)
        peak, src = (args.peak_tflops, '--peak-tflops') if args.peak_tflops else bf16_peak(device_name(device))
        return peak, measured, f'peak {peak:.0f} TFLOP/s ({src}; measured bf16 matmul {measured:.0f})'
    measured = matmul_tflops(device, torch.float32, 1024 if args.quick else 2048)
    return measured, measured, f'peak = measured fp32 matmul {measured:.3f} TFLOP/s (rough CPU peak)'


def bem_overhead(res, args):
    """ACR -> ACR+BEM at each mu: the difference of the median step times of (a) and of (b)."""
    by, out = {(r['key'], r['mu']): r for r in res['configs']}, {}
    for mu in args.mu:
        if ('acr', mu) in by and ('acr_bem', mu) in by:
            base, on = by[('acr', mu)], by[('acr_bem', mu)]
            d = {p: on[p]['median_ms'] - base[p]['median_ms'] for p in 'ab'}
            out[f'ACR -> ACR+BEM, mu={mu}'] = {
                'a_ms': d['a'], 'b_ms': d['b'], 'a_pct': 100 * d['a'] / base['a']['median_ms'],
                'b_pct': 100 * d['b'] / base['b']['median_ms'],
                'a_breakdown_ms': on['breakdown'].get('bem_draw_mix', 0.0) + on['breakdown'].get('bem_update', 0.0)}
    return out


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = train.pick_device(args.device)
    if args.eval_images is None and device.type == 'cpu':
        args.eval_images = 64 if args.quick else 1024
    peak, measured, peak_info = peak_tflops(args, device)
    head = header(args, device, peak_info)
    print(head, flush=True)
    ds = load_data(args)
    res = {'header': head, 'device': device_name(device), 'torch': torch.__version__,
           'threads': torch.get_num_threads(), 'peak_tflops': peak, 'measured_matmul_tflops': measured,
           'args': {k: v for k, v in vars(args).items()}, 'configs': [], 'skipped': []}
    save = partial(save_so_far, res, args, device)
    save()
    t_start = time.perf_counter()
    left = lambda: None if args.budget_s is None else args.budget_s - (time.perf_counter() - t_start)  # noqa: E731
    for cfg, mu in [(c, mu) for c in args.configs for mu in ([None] if c == 'lt' else args.mu)]:
        if left() is not None and left() < 0:
            res['skipped'].append(f'{CONFIGS[cfg][0]} mu={mu}')
            continue
        r = bench_config(cfg, mu, args, ds, peak)
        r.update(key=cfg, name=CONFIGS[cfg][0], mu=mu)
        res['configs'].append(r)
        save()                        # before the progress line: a reader of it finds the row on disk
        print(f'  {r["name"]} mu={mu}: (a) {r["a"]["median_ms"]:.2f} ms  (b) {r["b"]["median_ms"]:.2f} ms  '
              f'ratio {r["ratio"]:.2f}x', flush=True)
    compiled = [r for r in res['configs'] if 'eager' in args.modes and wants_compile(r['key'], r['mu'], args)]
    for r in compiled:                # compiled rows last: eager figures first, compilation is slow
        if left() is not None and left() < 0:
            res['skipped'].append(f'{r["name"]} mu={r["mu"]} compiled')
            continue
        r['a_compile'] = isolated_compiled_row(r['key'], r['mu'], args, peak, compile_cap(args, left()))
        save()
        print(f'  {r["name"]} mu={r["mu"]}: {compiled_text(r)}', flush=True)
    if not args.no_aug:
        res['augmentation'] = aug_bench(torch.as_tensor(ds.train_x[:args.aug_batch]), ds.mean, ds.std, args.aug_reps)
    save()
    report(res, args)
    return 0


def save_so_far(res, args, device):
    """The derived figures of what is measured so far (ratios, BEM overhead, targets), and, with --json, every
    number written atomically: the device tool kills a run at its timeout, and the last row must survive it."""
    for r in res['configs']:
        c = r.get('a_compile')
        if c and 'median_ms' in c:
            r['ratio_compile'] = r['b']['median_ms'] / c['median_ms']
            r['compiled_vs_eager'] = c['median_ms'] / r['a']['median_ms']
    res['bem_overhead'] = bem_overhead(res, args)
    res['targets'] = targets(res, args, device)
    if args.json:
        runio.write_json(args.json, res)


def compiled_text(r):
    """One line of a compiled row: its time and ratios, or what stopped it."""
    c = r['a_compile']
    if 'error' in c:
        return f'compiled: {"" if c["error"].startswith("TIMEOUT") else "FAILED "}{c["error"]}'
    return (f'compiled {c["median_ms"]:.2f} ms (first two steps {c["compile_s"]:.0f} s)  compiled/eager '
            f'{r["compiled_vs_eager"]:.2f}  ratio {r["ratio_compile"]:.2f}x')


def compile_cap(args, left):
    """Seconds one compiled row may take: --compile-timeout-s, else what --budget-s leaves (at least 60 s, so a
    row started near the end still gets its compile), else no cap."""
    if args.compile_timeout_s is not None:
        return args.compile_timeout_s
    return None if left is None else max(left, 60.0)


def isolated_compiled_row(cfg, mu, args, peak, cap):
    """compiled_row in a child process (bench.py --row-child): a compile failure, a crash of the compiler or its
    kernels (an inductor/Triton abort takes the process with it) or a compile past `cap` seconds becomes
    {'error': one line} and the run goes on. A child process, not a try/except in this one, because only a process
    can be stopped mid-compile and survive a fatal error; it costs one import and one dataset load per row."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'row.json')
        payload = json.dumps({'cfg': cfg, 'mu': mu, 'peak': peak, 'out': out, 'args': vars(args)})
        child = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--row-child'], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = child.communicate(payload, timeout=cap)
        except subprocess.TimeoutExpired:
            return {'error': f'TIMEOUT after {cap:g} s (--compile-timeout-s)'}
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        if os.path.exists(out):
            with open(out) as f:
                row = json.load(f)
            notes = compiler_notes(err, row)
            return dict(row, compiler_notes=notes) if notes else row
        last = [line for line in err.splitlines() if line.strip()][-1:] or ['no output']
        return {'error': f'exit code {child.returncode}: {last[0][:300]}'}


def compiler_notes(stderr, row):
    """What the compiler did not do, for the report: CUDA graphs skipped by Inductor (mode='reduce-overhead' then
    runs the kernels without CUDA graphs: correct, only slower; TORCH_LOGS=cudagraphs names the reason), more graphs
    than the 3 of tests/test_compile.py (a graph break or a recompilation), and the lines of the child's stderr
    that say so (Dynamo's recompilation limit: the step falls back to eager). At most 4, each cut to 200 chars."""
    notes = []
    if row.get('cudagraph_skips'):
        notes.append(f'CUDA graphs skipped {row["cudagraph_skips"]} time(s) (rerun with TORCH_LOGS=cudagraphs '
                     'for the reason)')
    if row.get('graphs', 0) > 3:
        notes.append(f'{row["graphs"]} graphs (3 expected: a graph break or a recompilation; TORCH_LOGS='
                     'graph_breaks,recompiles)')
    keys = ('skipping cudagraphs', 'recompile_limit', 'cache_size_limit')
    for line in stderr.splitlines():
        text = line.strip()[:200]
        if any(k in text for k in keys) and text not in notes:
            notes.append(text)
    return notes[:4]


def row_child():
    """The child of isolated_compiled_row: one compiled row, written to the file the parent named."""
    p = json.loads(sys.stdin.read())
    args = argparse.Namespace(**p['args'])
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        row = compiled_row(p['cfg'], p['mu'], args, load_data(args), p['peak'])
        from torch._dynamo.utils import counters
        row.update(graphs=counters['stats']['unique_graphs'],        # 3 expected (tests/test_compile.py)
                   cudagraph_skips=counters['inductor']['cudagraph_skips'])
    except Exception as e:   # noqa: BLE001  (any failure of the compiler is the row's result, in one line)
        row = {'error': f'{type(e).__name__}: {(str(e).strip().splitlines() or [""])[0][:300]}'}
    runio.write_json(p['out'], row)
    return 0


if __name__ == '__main__':
    sys.exit(main())
