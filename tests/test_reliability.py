"""Reliability of a run: preemption (SIGTERM/SIGINT), SIGKILL at random moments, corrupt checkpoints,
the NaN guard, atomic checkpoint writes. The oracle for every resumed run is an uninterrupted run with
the same seed: summary.json (minus 'timing'), metrics.jsonl and the final checkpoint (weights, EMA,
optimiser, generator, samplers, BEM state; minus 'elapsed') must be bit-identical.

Cost (2 shared cores): runs use conftest's small synthetic set and one thread. The interrupted runs are
forked from this process (multiprocessing 'fork': no interpreter + torch import each time; the fork is
always made from the main thread with no other thread alive); one SIGTERM run goes through a real
exec'd interpreter to cover the process entry point. The uninterrupted reference runs are forked at
module start and run in the background while the tests proceed. A step hook in the children reports
the training step to the test (a shared integer, or a '@step N' line), so that signals land at known
points; it does not touch what a step computes.
"""
import errno
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import runio
import train
from conftest import ROOT, TESTS, patch_small_data, snapshot

BASE = ['--dataset', 'synthetic', '--width', '1', '--batch-size', '8', '--n1', '40', '--m1', '80', '--imb-l', '10',
        '--no-progress', '--device', 'cpu']
# preemption: no evaluation before the end, so the only mid-run checkpoint is the signal handler's
SIG = BASE + ['--iters', '10', '--eval-every', '1000']
# LTSSL + BEM (CamMix, bank, ESS/ESM/ECB): checkpoints every 2 steps and at 15 (the end); the unlabeled
# distribution estimate (Eq. 3) starts at est_start = 6 x eval-every = step 12, inside the run
BEM = BASE + ['--bem', '--iters', '15', '--eval-every', '2']
# LT, ResNet-32, jitter without replacement, batch 64, 2 epochs, a checkpoint per epoch (steps per epoch
# are read from the reference run); --lr-steps 1,2 puts the lr decay and the fixed-delta stage in epoch 1,
# so the kills land after a change of schedule state.
LT = ['--task', 'lt', '--dataset', 'synthetic', '--imb', '100', '--batch-size', '64', '--epochs', '2',
      '--lr-steps', '1,2', '--sampler', 'jitter-noreplace', '--no-progress', '--device', 'cpu']
# NaN guard: checkpoint at step 3, NaN injected into step 4's loss, detected at the step-6 evaluation
NAN = BASE + ['--iters', '8', '--eval-every', '3']
# conftest's end-to-end synthetic size (n1 40 + m1 80 = 120 per class); passed explicitly so that the
# subprocesses and this process build the same data
SYNTH = dict(n_per_class=120, n_test=4)

_FORK = multiprocessing.get_context('fork')
TIMEOUT = 150.0


# ------------------------------------------------------------------------------------------------
# running train.main: in-process, forked, exec'd
# ------------------------------------------------------------------------------------------------

def run_inproc(argv, out):
    """train.main in this process (small data); runio.Stop's signal handlers are restored afterwards."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with pytest.MonkeyPatch.context() as mp:
            patch_small_data(mp, SYNTH)
            return train.main([*map(str, argv), '--out', str(out)])
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def _child(argv, step, hold, log):
    """Forked child: train.main with the step hook, output to `log`; `hold` > 0 = freeze inside the
    hold-th checkpoint write (temporary file written, not yet renamed) and report it (hold := -1) until the
    test releases it (hold := 0) or kills the child."""
    sys.stdout = sys.stderr = open(log, 'w', buffering=1)
    mp = pytest.MonkeyPatch()
    patch_small_data(mp, SYNTH)
    for cls in (train.LTSSLTask, train.LTTask):
        def hooked(self, orig=cls.train_step):
            orig(self)
            step.value = self.step
        mp.setattr(cls, 'train_step', hooked)
    if hold is not None:
        real, seen = os.fsync, [0]

        def fsync(fd):
            real(fd)
            if os.fstat(fd).st_size > 100_000:         # a checkpoint, not one of the small JSON files
                seen[0] += 1
                if seen[0] == hold.value:
                    hold.value, t0 = -1, time.time()
                    while hold.value == -1 and time.time() - t0 < TIMEOUT:
                        time.sleep(0.01)
        mp.setattr(os, 'fsync', fsync)
    sys.exit(train.main(argv))


def fork_run(argv, out, hold=None):
    """Returns (process, shared step counter, shared hold flag); the child's output goes to out.log-N."""
    step = _FORK.Value('i', -1, lock=False)
    h = _FORK.Value('i', hold, lock=False) if hold else None
    n = 0
    while os.path.exists(f'{out}.log-{n}'):
        n += 1
    p = _FORK.Process(target=_child, args=([*map(str, argv), '--out', str(out)], step, h, f'{out}.log-{n}'),
                      daemon=True)
    p.start()
    # keep the shared integers alive as long as the process object: a freed block is reused by the next
    # Value while a still-running child keeps writing into it
    p.log, p.step, p.hold = f'{out}.log-{n}', step, h
    return p, step, h


def child_log(p):
    with open(p.log) as f:
        return f.read()


def wait_until(cond, p, what):
    t0 = time.time()
    while not cond():
        if not p.is_alive():
            raise AssertionError(f'the run ended (exit {p.exitcode}) before {what}:\n{child_log(p)}')
        if time.time() - t0 > TIMEOUT:
            p.kill()
            raise AssertionError(f'timeout waiting for {what}')
        time.sleep(0.005)


EXEC = '''import sys
sys.path[:0] = [{tests!r}, {root!r}]
import pytest, conftest, train
conftest.patch_small_data(pytest.MonkeyPatch(), {synth!r})
for cls in (train.LTSSLTask, train.LTTask):
    def hooked(self, orig=cls.train_step):
        orig(self)
        print('@step', self.step, flush=True)
    cls.train_step = hooked
sys.exit(train.main(sys.argv[1:]))
'''


def exec_run_signal(argv, out, sig, at):
    """A real interpreter running train.main (small data, step lines on stdout); a watcher thread sends
    `sig` once step `at` is reported. Returns (exit code, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    p = subprocess.Popen([sys.executable, '-c', EXEC.format(tests=TESTS, root=ROOT, synth=SYNTH), *map(str, argv),
                          '--out', str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    lines = []

    def watch():
        sent = False
        for line in p.stdout:
            lines.append(line)
            if not sent and line.startswith('@step') and int(line.split()[1]) >= at:
                p.send_signal(sig)
                sent = True
    t = threading.Thread(target=watch)
    t.start()
    try:
        p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
    t.join()
    return p.returncode, ''.join(lines), p.stderr.read()


# ------------------------------------------------------------------------------------------------
# oracles
# ------------------------------------------------------------------------------------------------

def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_metrics(d):
    with open(os.path.join(d, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def assert_same_state(a, b, path='checkpoint'):
    """Bit-identical nested state (tensors, arrays, numbers), ignoring the wall-clock 'elapsed'."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f'{path}: keys {sorted(a)} != {sorted(b)}'
        for k in a:
            if k != 'elapsed':
                assert_same_state(a[k], b[k], f'{path}.{k}')
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f'{path}: {a!r} != {b!r}'
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f'{path}[{i}]')
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f'{path}: tensors differ (max |diff| ' \
                                  f'{(a.double() - b.double()).abs().max().item() if a.is_floating_point() else "?"})'
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    else:
        assert a == b, f'{path}: {a!r} != {b!r}'


def assert_same_run(run, ref):
    """The resumed run ended exactly where the uninterrupted one did."""
    s, r = read_json(os.path.join(run, 'summary.json')), read_json(os.path.join(ref, 'summary.json'))
    assert s.pop('timing') and r.pop('timing')
    assert s == r
    assert s['finished'] is True
    assert read_metrics(run) == read_metrics(ref)
    assert_same_state(runio.load_checkpoint(str(run)), runio.load_checkpoint(str(ref)))
    assert_no_tmp(run)


def assert_no_tmp(d):
    tmp = [f for f in os.listdir(d) if f.startswith('.tmp-')]
    assert not tmp, f'temporary files left in {d}: {tmp}'


def ckpt_step(d):
    s = runio.load_checkpoint(str(d), log=lambda *a: None)
    return None if s is None else s['step']


# ------------------------------------------------------------------------------------------------
# uninterrupted references: forked at module start, run in the background
# ------------------------------------------------------------------------------------------------

class _Refs:
    def __init__(self, root, configs):
        self.dirs, self.procs = {}, {}
        with pytest.MonkeyPatch.context() as mp:      # build the small data once, before forking
            patch_small_data(mp, SYNTH)
            import data
            data.load_dataset('synthetic')
        for name, argv in configs.items():
            self.dirs[name] = os.path.join(root, name)
            self.procs[name] = fork_run(argv, self.dirs[name])[0]

    def get(self, name):
        p = self.procs[name]
        p.join(TIMEOUT)
        assert p.exitcode == 0, f'reference run {name} exited {p.exitcode}'
        assert_no_tmp(self.dirs[name])
        return self.dirs[name]

    def close(self):
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
            p.join()


@pytest.fixture(scope='module')
def refs(tmp_path_factory):
    r = _Refs(str(tmp_path_factory.mktemp('refs')), {'sig': SIG, 'bem': BEM, 'lt': LT})
    yield r
    r.close()


# ------------------------------------------------------------------------------------------------
# preemption
# ------------------------------------------------------------------------------------------------

def _check_preempted(out, rc, sig, log):
    assert rc == 128 + sig, f'exit {rc}, expected {128 + sig}\n{log}'
    files = set(os.listdir(out))
    assert 'summary.json' not in files                       # unfinished
    assert 'metrics.jsonl' not in files                      # no evaluation ran ...
    assert 'checkpoint.prev.pt' not in files                 # ... so the one checkpoint is the handler's
    s = ckpt_step(out)
    assert s is not None and 1 <= s < 10, s
    assert f'stopped by signal {sig} at step {s}' in log
    assert_no_tmp(out)
    return s


def test_sigterm_checkpoints_and_resume_is_bit_exact(refs, tmp_path, capsys):
    out = tmp_path / 'run'
    rc, log, err = exec_run_signal(SIG, out, signal.SIGTERM, at=4)
    assert 'Traceback' not in err, err
    s = _check_preempted(out, rc, signal.SIGTERM, log)
    assert run_inproc(SIG + ['--resume'], out) == 0
    assert f'resumed {out} at step {s}' in capsys.readouterr().out
    assert_same_run(out, refs.get('sig'))


def test_sigint_checkpoints_and_resume_is_bit_exact(refs, tmp_path, capsys):
    out = tmp_path / 'run'
    p, step, _ = fork_run(SIG, out)
    wait_until(lambda: step.value >= 5, p, 'step 5')
    os.kill(p.pid, signal.SIGINT)
    p.join(TIMEOUT)
    log = child_log(p)
    assert 'Traceback' not in log, log
    s = _check_preempted(out, p.exitcode, signal.SIGINT, log)
    assert s >= 5
    capsys.readouterr()
    assert run_inproc(SIG + ['--resume'], out) == 0
    assert f'resumed {out} at step {s}' in capsys.readouterr().out
    assert_same_run(out, refs.get('sig'))


def test_sigint_during_a_checkpoint_write_finishes_it_then_stops(refs, tmp_path):
    """Ctrl-C while the step-4 checkpoint is being written (its temporary file complete, not yet renamed): the write
    completes (the handler only sets a flag), the run stops at that step's boundary (exit 130), and --resume ends
    exactly where the uninterrupted run ends."""
    out = tmp_path / 'run'
    p, _, hold = fork_run(BEM, out, hold=2)
    wait_until(lambda: hold.value == -1, p, 'the 2nd checkpoint write')
    os.kill(p.pid, signal.SIGINT)
    time.sleep(0.05)
    hold.value = 0                                   # the write goes on
    p.join(TIMEOUT)
    log = child_log(p)
    assert p.exitcode == 128 + signal.SIGINT and 'Traceback' not in log, log
    assert 'stopped by signal 2 at step 4' in log
    assert ckpt_step(out) == 4 and torch.load(out / 'checkpoint.prev.pt', weights_only=False)['step'] == 4
    assert [r['step'] for r in read_metrics(out)] == [2, 4]
    assert_no_tmp(out)
    assert run_inproc(BEM + ['--resume'], out) == 0
    assert_same_run(str(out), refs.get('bem'))


# ------------------------------------------------------------------------------------------------
# SIGKILL at random moments, resume each time
# ------------------------------------------------------------------------------------------------

def kill_cycles(argv, out, rng, kills, period, total, start=0):
    """`kills` times: run (from `start`), SIGKILL at a random moment after a checkpoint exists (checkpoints
    every `period` steps), check that a checkpoint loads. Returns [(step killed at, step resumed from)]."""
    resumed = []
    for _ in range(kills):
        p, step, _ = fork_run(argv + ['--resume'], out)    # a preemptible job always passes --resume
        lo = max(start, period) + 1                         # > a checkpoint step: one exists
        target = rng.randint(lo, max(lo, total - 3))        # anywhere in the rest of the run
        wait_until(lambda: step.value >= target, p, f'step {target}')
        time.sleep(rng.uniform(0.0, 0.1))                  # mid-step, mid-evaluation or mid-write
        os.kill(p.pid, signal.SIGKILL)
        p.join(TIMEOUT)
        killed_at = step.value
        if p.exitcode == 0:           # this machine stalled the test long enough for the run to finish
            break
        assert p.exitcode == -signal.SIGKILL, child_log(p)
        start = ckpt_step(out)                             # whatever the kill hit, a checkpoint loads
        assert start is not None and start >= period
        assert 'summary.json' not in os.listdir(out)
        resumed.append((killed_at, start))
    print('kills (step, resumed from):', resumed)    # shown if the test fails
    return resumed


def test_sigkill_mid_checkpoint_write_then_random_kills_ltssl_bem(refs, tmp_path):
    """First kill inside the 2nd checkpoint write (deterministic: after the temporary file is written,
    before the rename), then two kills at random moments; the final resume equals the reference."""
    out = tmp_path / 'run'
    p, _, hold = fork_run(BEM + ['--resume'], out, hold=2)
    wait_until(lambda: hold.value == -1, p, 'the 2nd checkpoint write')
    os.kill(p.pid, signal.SIGKILL)
    p.join(TIMEOUT)
    files = set(os.listdir(out))
    # the step-4 checkpoint is still a temp file; save_checkpoint rotates only after it is complete, so
    # checkpoint.pt (step 2) is where it was
    assert 'checkpoint.pt' in files and 'checkpoint.prev.pt' not in files, files
    assert any(f.startswith('.tmp-') for f in files), files
    assert ckpt_step(out) == 2
    kill_cycles(BEM, out, random.Random(0), kills=2, period=2, total=15, start=2)  # ~ steps 9, 12
    assert run_inproc(BEM + ['--resume'], out) == 0
    assert_same_run(str(out), refs.get('bem'))


def test_sigkill_random_kills_lt_jitter_noreplace(refs, tmp_path):
    """A SIGTERM in the middle of epoch 0 (a mid-epoch checkpoint: the sampler half-way through its
    without-replacement pass), then two SIGKILLs at random moments in epoch 1, then the final resume."""
    ref = refs.get('lt')
    period, total = read_metrics(ref)[0]['step'], read_json(os.path.join(ref, 'summary.json'))['steps']
    assert total == 2 * period >= 8, (period, total)
    out = tmp_path / 'run'
    p, step, _ = fork_run(LT, out)
    wait_until(lambda: step.value >= period // 2, p, f'step {period // 2}')
    os.kill(p.pid, signal.SIGTERM)
    p.join(TIMEOUT)
    assert p.exitcode == 128 + signal.SIGTERM, child_log(p)
    s = ckpt_step(out)
    assert period // 2 <= s < period, s
    kill_cycles(LT, out, random.Random(2), kills=2, period=period, total=total, start=s)
    assert run_inproc(LT + ['--resume'], out) == 0
    assert_same_run(str(out), ref)


def test_resume_removes_stale_temp_files(refs, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(refs.get('bem'), out)
    with open(out / '.tmp-k1ll3d', 'wb') as f:         # what a kill inside atomic_write leaves
        f.write(b'\0' * 1000)
    os.remove(out / 'summary.json')
    assert run_inproc(BEM + ['--resume'], out) == 0
    assert_no_tmp(out)


# ------------------------------------------------------------------------------------------------
# corrupt / truncated checkpoints
# ------------------------------------------------------------------------------------------------

def _truncate(path):
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(size // 2)


def test_load_checkpoint_falls_back_to_previous(refs, tmp_path):
    ref = refs.get('bem')        # checkpoints at steps 14 (prev) and 15 (final)
    d = tmp_path / 'run'
    shutil.copytree(ref, d)
    assert ckpt_step(d) == 15
    _truncate(d / 'checkpoint.pt')
    logs = []
    state = runio.load_checkpoint(str(d), log=logs.append)
    assert state['step'] == 14
    assert len(logs) == 1 and 'checkpoint.pt' in logs[0] and 'warning' in logs[0]
    assert_same_state(state, torch.load(os.path.join(ref, 'checkpoint.prev.pt'), weights_only=False))
    # not a pickle at all
    (d / 'checkpoint.pt').write_bytes(b'PK\x03\x04 garbage')
    assert runio.load_checkpoint(str(d), log=logs.append)['step'] == 14
    # both unreadable: nothing to resume from, said twice
    _truncate(d / 'checkpoint.prev.pt')
    logs.clear()
    assert runio.load_checkpoint(str(d), log=logs.append) is None
    assert len(logs) == 2


def test_resume_from_truncated_checkpoint_is_bit_exact(refs, tmp_path, capsys):
    """The last checkpoint is torn (e.g. a disk error) and the run had not written its summary:
    --resume continues from checkpoint.prev.pt and ends exactly where the uninterrupted run ended."""
    ref = refs.get('bem')
    out = tmp_path / 'run'
    shutil.copytree(ref, out)
    _truncate(out / 'checkpoint.pt')
    os.remove(out / 'summary.json')
    capsys.readouterr()
    assert run_inproc(BEM + ['--resume'], out) == 0
    log = capsys.readouterr().out
    assert 'warning' in log and 'checkpoint.pt' in log
    assert f'resumed {out} at step 14' in log
    assert_same_run(out, ref)


# ------------------------------------------------------------------------------------------------
# NaN guard
# ------------------------------------------------------------------------------------------------

def test_nan_stops_with_exit_3_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / 'run'
    capsys.readouterr()
    assert run_inproc(NAN + ['--inject-nan', '4'], out) == 3
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert 'step 4' in lines[0]
    terms = read_metrics(out)[-1]['train']          # the loss terms the step-3 evaluation logged
    named = lines[0].split('(term ')[1].split(')')[0].split(', ')
    assert named and set(named) <= set(terms), (named, sorted(terms))
    assert 'summary.json' not in os.listdir(out)
    state = runio.load_checkpoint(str(out))         # the step-3 checkpoint survives, finite
    assert state['step'] == 3
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())
    assert [r['step'] for r in read_metrics(out)] == [3]
    assert_no_tmp(out)
    # the fix the message suggests works from that checkpoint: resume without the injection
    assert run_inproc(NAN + ['--resume'], out) == 0
    assert read_json(os.path.join(out, 'summary.json'))['finished'] is True


def test_nan_policy_skip_completes(tmp_path):
    out = tmp_path / 'run'
    argv = BASE + ['--iters', '5', '--eval-every', '1000', '--inject-nan', '2', '--nan-policy', 'skip']
    assert run_inproc(argv, out) == 0
    s = read_json(os.path.join(out, 'summary.json'))
    assert s['finished'] is True and s['steps'] == 5
    state = runio.load_checkpoint(str(out))
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())
    assert_no_tmp(out)


# ------------------------------------------------------------------------------------------------
# A run directory that defends itself: written over only by its own --resume (lock, checkpoints, args.json,
# metrics.jsonl, a full disk). Each refusal: exit 2, one stderr line, no traceback, the directory byte-for-byte
# unchanged; a repaired resume ends where the uninterrupted run (`finished`) ended.
# ------------------------------------------------------------------------------------------------

# checkpoints at steps 2 (checkpoint.prev.pt) and 4 (checkpoint.pt), evaluations at 2 and 4
DIR = BASE + ['--iters', '4', '--eval-every', '2']


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp('finished') / 'run'
    assert run_inproc(DIR, out) == 0
    assert ckpt_step(out) == 4 and os.path.exists(out / 'checkpoint.prev.pt')
    return out


def _copy(finished, tmp_path):
    out = tmp_path / 'run'
    shutil.copytree(finished, out)
    return out


def refused(argv, out, capsys, key, before=None):
    """train.main refuses: exit 2, one line on stderr naming `key`, nothing on stdout, `out` unchanged."""
    before = snapshot(out) if before is None else before
    capsys.readouterr()
    rc = run_inproc(argv, out)
    o, err = capsys.readouterr()
    assert rc == 2, f'exit {rc}\n{o}\n{err}'
    assert 'Traceback' not in o + err and len(err.strip().splitlines()) == 1, err
    assert not o.strip(), o
    assert key.lower() in err.lower(), err
    assert snapshot(out) == before
    return err


def test_run_dir_locked_by_another_process_is_refused_naming_it(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    os.remove(out / 'summary.json')
    (out / '.lock').write_text('99999999999\n')    # a longer stale pid: the holder's shorter one leaves a torn line
    holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); '
                               'fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, b"%d\\n" % os.getpid(), 0); '
                               'print("held", flush=True); sys.stdin.read()', str(out / '.lock')],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        err = refused(DIR + ['--resume'], out, capsys, f'in use by process {holder.pid}')
        assert str(out / '.lock') in err
    finally:
        holder.communicate('')
    assert run_inproc(DIR + ['--resume'], out) == 0          # the holder gone, the lock is free (no stale lock)
    assert_same_run(out, finished)


def test_two_processes_on_one_out_exactly_one_trains(finished, tmp_path):
    out = tmp_path / 'run'
    procs = []
    for _ in range(2):
        procs.append(fork_run(DIR, out)[0])
        wait_until(lambda: os.path.exists(procs[-1].log), procs[-1], 'its log')   # fork_run numbers logs by file
    for p in procs:
        p.join(TIMEOUT)
    codes = sorted(p.exitcode for p in procs)
    assert codes == [0, 2], [child_log(p) for p in procs]
    # the loser's stdout may hold the dataset line (a fresh --out is locked once it exists, after the data load)
    log = child_log(next(p for p in procs if p.exitcode == 2))
    errors = [line for line in log.splitlines() if line.startswith('error:')]
    assert 'Traceback' not in log and len(errors) == 1 and len(log.splitlines()) <= 2, log
    assert any(k in errors[0] for k in ('in use by process', 'another process', 'already exists')), log
    assert_same_run(out, finished)                 # one run's records only, none interleaved


def test_both_checkpoints_unreadable_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    for f in ('checkpoint.pt', 'checkpoint.prev.pt'):
        with open(out / f, 'r+b') as fh:
            fh.truncate(100)
    os.remove(out / 'summary.json')
    refused(DIR + ['--resume'], out, capsys, 'no readable checkpoint')
    os.remove(out / 'checkpoint.prev.pt')                    # a zero-byte checkpoint, no previous one
    (out / 'checkpoint.pt').write_bytes(b'')
    refused(DIR + ['--resume'], out, capsys, 'checkpoint.pt unreadable')


def test_missing_or_invalid_args_json_with_checkpoints_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    os.remove(out / 'args.json')
    os.remove(out / 'summary.json')
    refused(DIR + ['--resume'], out, capsys, 'no args.json')
    refused(DIR + ['--seed', '3'], out, capsys, '--resume')          # another seed, no --resume: not written over
    (out / 'args.json').write_text('[1, 2]\n')                       # valid JSON, not a run's arguments
    refused(DIR + ['--resume'], out, capsys, 'args.json')


def test_checkpoint_of_another_configuration_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    other = tmp_path / 'la'
    assert run_inproc(BASE + ['--iters', '2', '--eval-every', '2', '--alg', 'la'], other) == 0
    shutil.copy(other / 'checkpoint.pt', out / 'checkpoint.pt')      # same shapes: only the record tells them apart
    os.remove(out / 'summary.json')
    err = refused(DIR + ['--resume'], out, capsys, 'alg')
    assert "'la'" in err and "'fixmatch'" in err
    # a checkpoint without the record (an older version) whose state does not fit: ACR's second head
    acr = tmp_path / 'acr'
    assert run_inproc(BASE + ['--iters', '2', '--eval-every', '2', '--alg', 'acr'], acr) == 0
    state = torch.load(acr / 'checkpoint.pt', weights_only=False)
    del state['config']
    torch.save(state, out / 'checkpoint.pt')
    before = snapshot(out)
    capsys.readouterr()
    assert run_inproc(DIR + ['--resume'], out) == 2
    o, err = capsys.readouterr()
    assert 'Traceback' not in o + err and len(err.strip().splitlines()) == 1 and 'does not fit' in err, err
    assert snapshot(out) == before


def _torn(path, keep_lines):
    """metrics.jsonl cut in the middle of the line after the first `keep_lines` lines."""
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b''.join(lines[:keep_lines]) + lines[keep_lines][:len(lines[keep_lines]) // 2])


def test_torn_last_metrics_line_is_repaired_on_resume(finished, tmp_path, capsys):
    """Killed inside the step-4 evaluation's append (before its checkpoint): checkpoint.pt is the step-2 one and
    metrics.jsonl ends in half a line. --resume drops it, recomputes step 4 and ends as the uninterrupted run."""
    out = _copy(finished, tmp_path)
    os.replace(out / 'checkpoint.prev.pt', out / 'checkpoint.pt')
    os.remove(out / 'summary.json')
    _torn(out / 'metrics.jsonl', 1)
    capsys.readouterr()
    assert run_inproc(DIR + ['--resume'], out) == 0
    o = capsys.readouterr().out
    assert 'repaired' in o and 'line 2' in o, o
    assert_same_run(out, finished)


def test_damaged_metrics_line_before_the_last_is_refused(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    os.remove(out / 'summary.json')
    lines = (out / 'metrics.jsonl').read_bytes().splitlines(keepends=True)
    (out / 'metrics.jsonl').write_bytes(lines[0][:50] + b'\n' + lines[1])
    refused(DIR + ['--resume'], out, capsys, 'line 1')


class _FullDisk:
    """os.fsync of a file above `size` bytes, and runio's appends to metrics.jsonl after `after` of them, fail with
    ENOSPC (an append writes half its line first, as a filling disk does)."""

    def __init__(self, mp, size, appends=None):
        real_fsync, real_open = os.fsync, open
        self.appends = 0

        def fsync(fd):
            if os.fstat(fd).st_size > size:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        def open_(path, mode='r', *a, **k):
            f = real_open(path, mode, *a, **k)
            if mode == 'a' and appends is not None:
                self.appends += 1
                if self.appends > appends:
                    write = f.write

                    def torn(text):
                        write(text[:len(text) // 2])
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    f.write = torn
            return f
        mp.setattr(os, 'fsync', fsync)
        mp.setattr(runio, 'open', open_, raising=False)


def _disk_full_run(argv, out, capsys, **full):
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        _FullDisk(mp, **full)
        rc = run_inproc(argv, out)
    o, err = capsys.readouterr()
    assert rc == 2, f'exit {rc}\n{o}\n{err}'
    assert 'Traceback' not in o + err and len(err.strip().splitlines()) == 1 and 'no space left' in err, err
    assert_no_tmp(out)
    return err


def test_disk_full_exits_2_keeps_the_last_checkpoint_and_resumes(finished, tmp_path, capsys):
    out = tmp_path / 'run'
    # the step-4 checkpoint does not fit: checkpoint.pt stays the step-2 one
    err = _disk_full_run(DIR, out, capsys, size=10 ** 9, appends=1)      # the step-4 metrics line is torn
    assert 'metrics.jsonl' in err
    assert ckpt_step(out) == 2
    # --resume while the disk is still full (the small JSON files fail too): refused, the run unchanged
    before = {k: v for k, v in snapshot(out).items() if k != '.lock'}
    _disk_full_run(DIR + ['--resume'], out, capsys, size=0)
    assert {k: v for k, v in snapshot(out).items() if k != '.lock'} == before
    assert run_inproc(DIR + ['--resume'], out) == 0           # space is back
    assert_same_run(out, finished)


def test_disk_full_during_a_checkpoint_keeps_both_checkpoints(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    os.remove(out / 'summary.json')
    os.replace(out / 'checkpoint.prev.pt', out / 'checkpoint.pt')     # resume from step 2
    runio.write_metrics(str(out), read_metrics(out)[:1])
    before = snapshot(out / 'checkpoint.pt')
    err = _disk_full_run(DIR + ['--resume'], out, capsys, size=100_000)   # every checkpoint write fails
    assert 'checkpoint.pt' in err
    assert snapshot(out / 'checkpoint.pt') == before and not os.path.exists(out / 'checkpoint.prev.pt')
    assert run_inproc(DIR + ['--resume'], out) == 0
    assert_same_run(out, finished)


def test_nan_batchnorm_statistics_stop_the_run(tmp_path, capsys, monkeypatch):
    """The loss stays finite for a step while a BatchNorm running variance is NaN (they change in the forward, not
    through the loss): the guard names the statistics and --bn-momentum, exit 3, the step-3 checkpoint kept."""
    orig = train.LTSSLTask.train_step

    def poisoned(self):
        orig(self)
        if self.step == 4:
            bn = next(m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float('nan')
    monkeypatch.setattr(train.LTSSLTask, 'train_step', poisoned)
    out = tmp_path / 'run'
    capsys.readouterr()
    assert run_inproc(NAN + ['--nan-policy', 'skip'], out) == 3          # skipping steps cannot repair statistics
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert 'BatchNorm running statistics at step 4' in err and '--bn-momentum' in err, err
    assert ckpt_step(out) == 3 and 'summary.json' not in os.listdir(out)


def test_sigint_during_an_evaluation_finishes_it_then_stops(finished, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of the step-2 evaluation (in-process: the signal is sent from inside it): the evaluation
    and its checkpoint complete, the run stops there (exit 130, no traceback), and --resume ends as the uninterrupted
    run."""
    orig = train.LTSSLTask.evaluate

    def evaluate(self):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)      # the handler runs here, before the evaluation's forward
        return orig(self)
    out = tmp_path / 'run'
    with monkeypatch.context() as mp:
        mp.setattr(train.LTSSLTask, 'evaluate', evaluate)
        capsys.readouterr()
        assert run_inproc(DIR, out) == 128 + signal.SIGINT
    o, err = capsys.readouterr()
    assert 'stopped by signal 2 at step 2' in o and 'Traceback' not in o + err, o + err
    assert ckpt_step(out) == 2 and [r['step'] for r in read_metrics(out)] == [2]
    assert run_inproc(DIR + ['--resume'], out) == 0
    assert_same_run(out, finished)
