"""Shared helpers for the end-to-end tests (test_train.py, test_data.py).

Cost control (the suite runs on 2 shared CPU cores): every run is in-process (`train.main([...])`,
no interpreter + torch import per run) on one thread, and the datasets are shrunk by wrapping the
real builders, not by editing them:
  - synthetic: `data.make_synthetic(n_per_class=..., n_test=...)` with the sizes below (the default
    costs 500 test images per evaluation), built once per size;
  - Fashion-MNIST: the real IDX files read by the real `data.load_fmnist`, then the first
    FMNIST_TRAIN/FMNIST_TEST images of each class kept (one evaluation of 10,000 test images would
    cost more than this whole file).
Anything that needs the full-size sets is out of scope here (reproduce/*.sh runs them).
data/train are imported lazily: a broken module must not stop the other test files from collecting.
"""
import copy
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# One thread: with 2 cores shared by several workers, 2 threads per process is 3-6x slower than one
# (measured); one thread is also what makes in-process and subprocess runs bit-identical.
torch.set_num_threads(1)

TINY_SYNTHETIC = dict(n_per_class=120, n_test=4)     # end-to-end runs: n1 40 + m1 80 = 120 per class
SMALL_SYNTHETIC = dict(n_per_class=150, n_test=20)   # learning test: 200 test images for a real accuracy
FMNIST_TRAIN, FMNIST_TEST = 150, 5
FMNIST_DIR = os.environ.get('FMNIST_DIR', '/usr/share/datasets/fashion-mnist')  # = data.FMNIST_SYSTEM_DIR (Debian dataset-fashion-mnist)
FMNIST_INSTALLED = all(os.path.exists(os.path.join(FMNIST_DIR, f)) for f in (
    'train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'))
needs_fmnist = pytest.mark.skipif(not FMNIST_INSTALLED, reason=f'Fashion-MNIST not installed at {FMNIST_DIR}')


def pytest_configure(config):
    # `make test` (the README's command, < 10 min on 2 cores) runs -m "not slow"; `make test-slow` runs the rest
    # (multi-process torchrun runs, the learning run, bench --quick: each 15-60 s). .ci/run calls both.
    config.addinivalue_line('markers', 'slow: an end-to-end check of 15 s or more (make test-slow)')


@functools.lru_cache(maxsize=None)
def _originals():
    """data's real builders, captured before any patch."""
    import data
    return data.make_synthetic, data.load_fmnist


@functools.lru_cache(maxsize=None)
def _small_synthetic(n_per_class, n_test):
    return _originals()[0](n_per_class=n_per_class, n_test=n_test)


def small_synthetic(sizes):
    """data.make_synthetic with the given sizes when called with no arguments (as load_dataset does)."""
    def make(*args, **kw):
        if args or kw:
            return _originals()[0](*args, **kw)
        return copy.deepcopy(_small_synthetic(**sizes))   # a run must not see another run's mutations
    return make


def first_per_class(y, k):
    """Indices of the first k images of every class, in dataset order."""
    y = np.asarray(y)
    return np.sort(np.concatenate([np.where(y == c)[0][:k] for c in np.unique(y)]))


@functools.lru_cache(maxsize=None)
def _small_fmnist(root):
    tx, ty, vx, vy = _originals()[1](root)
    a, b = first_per_class(ty, FMNIST_TRAIN), first_per_class(vy, FMNIST_TEST)
    return tx[a], ty[a], vx[b], vy[b]


def small_fmnist(root):
    return tuple(a.copy() for a in _small_fmnist(root))


def patch_small_data(mp, synthetic=TINY_SYNTHETIC):
    import data
    _originals()
    mp.setattr(data, 'make_synthetic', small_synthetic(synthetic))
    mp.setattr(data, 'load_fmnist', small_fmnist)


# ------------------------------------------------------------------------------------------------
# Running train.py
# ------------------------------------------------------------------------------------------------

COMMON = ['--device', 'cpu', '--no-progress']
# LTSSL on synthetic, as small as the code allows: WRN-28-1, 8 labeled + 8 unlabeled per step.
# n1 40 / m1 80 at gamma 10 fits the 120 images per class of TINY_SYNTHETIC.
TINY = COMMON + ['--dataset', 'synthetic', '--width', '1', '--n1', '40', '--m1', '80', '--imb-l', '10',
                 '--batch-size', '8', '--iters', '2', '--eval-every', '1', '--log-every', '1']
# LT task on synthetic, built from 40 images per class: lt_counts(40, 10, 40) = [40, 26, 17, 11, 7, 5, 3, 2, 1, 1]
# (113 images, 4 steps of 32 per epoch). test_lt_instance_many_medium_few uses 150 per class at --imb 100:
# [150, 89, 53, 32, 19, 11, 6, 4, 2, 1], so the many (>100) / medium / few (<20) groups are all populated.
LT_SYNTHETIC = dict(n_per_class=40, n_test=4)
TINY_LT = COMMON + ['--task', 'lt', '--dataset', 'synthetic', '--imb', '40', '--batch-size', '32',
                    '--epochs', '2', '--log-every', '1']


def run_train(argv, out, expect=0, synthetic=TINY_SYNTHETIC):
    """train.main(argv + --out out) in-process on the small datasets; asserts the exit code.

    runio.Stop installs SIGTERM/SIGINT handlers; they are restored afterwards so that Ctrl-C still
    stops pytest."""
    import train
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.MonkeyPatch.context() as mp:
            patch_small_data(mp, synthetic)
            rc = train.main([str(a) for a in argv] + ['--out', str(out)])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert rc == expect, f'train.main exited {rc}, expected {expect}: {argv}'
    return out


def cli_main(argv):
    """Entry point of the subprocess runs (kill tests): the same small datasets and one thread."""
    import train
    with pytest.MonkeyPatch.context() as mp:
        patch_small_data(mp, json.loads(os.environ['TEST_SYNTHETIC']))
        return train.main(argv)


def spawn_train(argv, out, synthetic=TINY_SYNTHETIC):
    """Start train.py (small data) in a subprocess; returns the Popen."""
    code = ('import sys; sys.path[:0] = [%r, %r]; import conftest; sys.exit(conftest.cli_main(sys.argv[1:]))'
            % (TESTS, ROOT))
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1',
               TEST_SYNTHETIC=json.dumps(synthetic))
    return subprocess.Popen([sys.executable, '-c', code, *map(str, argv), '--out', str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(pred, proc, timeout=120.0, poll=0.02):
    """Poll pred() until true; fails if the process ends first or the timeout passes."""
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f'process ended (rc {proc.returncode}) before the condition:\n{proc.stdout.read()}')
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError('timeout waiting for the condition')
        time.sleep(poll)


def read_metrics(run_dir):
    with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def snapshot(d):
    """{relative path: (size, mtime_ns, sha256)} of every file under d (the 'untouched' oracle)."""
    out = {}
    for base, _, files in os.walk(d):
        for f in files:
            p = os.path.join(base, f)
            st = os.stat(p)
            with open(p, 'rb') as fh:
                out[os.path.relpath(p, d)] = (st.st_size, st.st_mtime_ns, hashlib.sha256(fh.read()).hexdigest())
    return out
