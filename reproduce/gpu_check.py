"""One prepared GPU run (issue 13): CUDA tests, speed, table throughput, fidelity on Fashion-MNIST-LT, GPU-hours.

Driven by reproduce/gpu_check.sh (read its header). Stages, in this order, each inside its share of BUDGET_S:
  1 tests       pytest of the CUDA-parametrised checks (tests/test_cuda_paths_cpu.py, the host-sync test) and a
                2-process torchrun run (NCCL + SyncBatchNorm on CUDA, gloo + GlobalBatchNorm on CPU)
  2 speed       bench.py --modes eager,compile in one process -> speed.json
  5 throughput  images/s of 1, 2, 4 concurrent ACR+BEM runs on the one GPU (workers meet at a file barrier)
  3 fidelity    FixMatch, +BEM, +ACR, ACR+BEM and ResNet-32 instance / jitter1 / jitter2, SEEDS seeds each, all
                at once on the GPU; steps from the step times of 2 and the concurrency gain of 5
  4 GPU-hours   every reproduce/ table's DRY_RUN plan x the step times of 2 (FLOP-scaled where not measured)
Writes $OUT/gpu_check.md (after every stage), speed.json, fidelity.png, throughput.png (the log goes to
gpu_check.log via the .sh). SIGTERM/SIGINT: the report keeps the finished stages, exit 128+signal.
"""
import argparse
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SSL_METHODS = {'fixmatch': ['--alg', 'fixmatch'], 'fixmatch+bem': ['--alg', 'fixmatch', '--bem'],
               'fixmatch+acr': ['--alg', 'acr'], 'fixmatch+acr+bem': ['--alg', 'acr', '--bem']}
LT_METHODS = {'instance': ['--sampler', 'instance'], 'jitter1': ['--sampler', 'jitter1'],
              'jitter2': ['--sampler', 'jitter2']}
# bench configuration whose measured step time stands for each method (fixmatch+bem: fixmatch + BEM's added time)
BENCH_OF = {'fixmatch': ('fixmatch', 1), 'fixmatch+acr': ('acr', 1), 'fixmatch+acr+bem': ('acr_bem', 1)}
SHARES = dict(tests=0.12, speed=0.45, throughput=0.13)   # of BUDGET_S; hours ~10 s; fidelity gets what is left
REPORT_RESERVE_S = 15
DDP_ONE_GPU = 'SKIP (one GPU)'   # NCCL's limit, not a failure of this code


def log(*a):
    print(f'[gpu_check {time.strftime("%H:%M:%S")}]', *a, flush=True)


CHILDREN = []   # the running child processes: a signal handler ends them (the script's one piece of shared state)


class Cut(BaseException):
    """SIGTERM / SIGINT (the device tool's timeout, Ctrl-C): ends the running stage; the report keeps the others.
    A BaseException, so a stage's `except Exception` does not swallow it."""


def on_signal(sig, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # one cut: the report is being written
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Cut(sig)


def stop_children(grace=10):
    """SIGTERM every child (train.py then checkpoints and exits 143), SIGKILL what is left after `grace` s."""
    for p in list(CHILDREN):
        if p.poll() is None:
            p.terminate()
    end = time.time() + grace
    for p in list(CHILDREN):
        try:
            p.wait(timeout=max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


def spawn(cmd, cwd=ROOT, env=None, **kw):
    p = subprocess.Popen([str(x) for x in cmd], cwd=cwd, env=env, **kw)
    CHILDREN.append(p)
    return p


def run(cmd, timeout, env=None, cwd=ROOT, capture=None):
    """Run a command, its output into our log (and into the file `capture` as well); returns (rc, seconds). rc 124
    on timeout (SIGTERM, then SIGKILL)."""
    log('+', ' '.join(shlex.quote(str(c)) for c in cmd))
    t0 = time.time()
    sink = open(capture, 'w') if capture else None
    p = spawn(cmd, cwd=cwd, env=env, stdout=sink or sys.stdout, stderr=subprocess.STDOUT if sink else sys.stderr)
    try:
        rc = p.wait(timeout=max(1, timeout))
    except subprocess.TimeoutExpired:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
        rc = 124
    finally:
        if p.poll() is None:      # a Cut while waiting: the child goes too
            stop_children()
        CHILDREN.remove(p)
        if sink:
            sink.close()
            sys.stdout.write(Path(capture).read_text(errors='replace'))
    return rc, time.time() - t0


def preflight():
    """The first seconds of a GPU run: is a CUDA device visible? One line and exit 2 if not (nothing measured on
    the CPU is a GPU figure). Prints the device on success."""
    import torch
    if not torch.cuda.is_available():
        print('gpu_check: no CUDA device visible (torch.cuda.is_available() is False); run it on the GPU machine, or '
              'SMOKE=1 bash reproduce/gpu_check.sh for the CPU toy run', file=sys.stderr)
        return 2
    print(f'gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}', flush=True)
    return 0


def compiler_check():
    """(ok, line): torch.compile's GPU backend needs Triton and a C compiler for its launcher stubs."""
    try:
        import triton
    except ImportError:
        return False, 'Triton is not installed: compiled rows skipped, eager rows measured'
    cc = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc') or shutil.which('clang')
    if not cc:
        return False, 'no C compiler (cc, gcc, clang) for Triton: compiled rows skipped, eager rows measured'
    return True, f'Triton {triton.__version__}, C compiler {cc}'


class Ctx:
    def __init__(self, a):
        self.a, self.t0 = a, time.time()
        self.smoke = a.smoke
        self.out = Path(a.out)
        self.runs = Path(a.runs)
        self.py = sys.executable
        import torch
        self.cuda = torch.cuda.is_available() and not self.smoke
        self.gpu = torch.cuda.get_device_name(0) if self.cuda else 'CPU (SMOKE)'
        self.env = dict(os.environ, PYTHONUNBUFFERED='1', MPLBACKEND='Agg')
        if self.smoke:
            self.env.update(CUDA_VISIBLE_DEVICES='', TORCHDYNAMO_DISABLE='1')   # CPU; compile path without inductor
        self.device = 'cuda' if self.cuda else 'cpu'
        self.md, self.notes = [], []
        self.fmnist = self._fmnist()
        self.compiles, line = compiler_check() if self.cuda else (True, '')
        if line:
            self.notes.append(line)
        import bem
        if not bem.has_saliency():   # opencv-python-headless without contrib (the lent GPU machine's build)
            self.notes.append('cv2.saliency missing (OpenCV without contrib): SaliencyMix (bem_table5, --mix '
                              'saliencymix) cannot run here; its tests skip by name, train.py refuses it in one line.')

    def left(self):
        return self.a.budget_s - (time.time() - self.t0)

    def share(self, name):
        """Seconds a stage may take. SMOKE's work is fixed-size, so there the budget is only a cap."""
        if self.smoke:
            return self.left() - REPORT_RESERVE_S
        return min(SHARES[name] * self.a.budget_s, self.left() - REPORT_RESERVE_S)

    def _fmnist(self):
        import data
        ok = data._find_fmnist(self.a.data_dir) is not None
        if ok and self.smoke:
            self.notes.append(f'Fashion-MNIST found ({data._find_fmnist(self.a.data_dir)[0]}); SMOKE trains on '
                              '`synthetic` anyway (10k-image evaluations take minutes on a CPU).')
            return False
        if not ok:
            self.notes.append('Fashion-MNIST not found ($FMNIST_DIR, /usr/share/datasets/fashion-mnist, '
                              f'{self.a.data_dir}/fashion-mnist): the fidelity stage used `synthetic`.')
        return ok


# ================================================================================================
# 1. CUDA-only tests and the CUDA smoke
# ================================================================================================

CUDA_TESTS = ['tests/test_cuda_paths_cpu.py', 'tests/test_ltssl.py::test_no_host_sync']


def stage_tests(c):
    budget = c.share('tests')
    junit = c.runs / 'pytest.xml'
    rc, secs = run([c.py, '-m', 'pytest', '-q', '-rs', '-p', 'no:cacheprovider', f'--junitxml={junit}'] + CUDA_TESTS,
                   budget * 0.7, c.env)
    counts = _junit_counts(junit)
    rows = [['pytest ' + ' '.join(CUDA_TESTS), _verdict(rc), counts, f'{secs:.0f}']]
    rows.append(ddp_row(c, max(5, budget - secs)))
    c.md += ['## 1. CUDA-only tests and CUDA smoke', '',
             'The CUDA-parametrised checks of tests/test_cuda_paths_cpu.py (select-mode augmentation vs group mode, '
             'device connected components vs cv2, fused SGD vs the update formula, channels_last + bf16 autocast vs '
             'fp32, a whole ACR+BEM step with every CUDA default vs the fp32 step), the host-sync test '
             '(torch.cuda.set_sync_debug_mode), and a 2-process torchrun run (DDP + global BatchNorm).' + (' SMOKE: CPU, so the `cuda` cases '
                                                                            'skip.' if c.smoke else ''), '',
             _table(['check', 'result', 'counts', 's'], rows), '']
    c.tests_ok = rc == 0 and rows[-1][1] in ('PASS', DDP_ONE_GPU)


def ddp_row(c, timeout):
    """Two torchrun processes (ddp.init: NCCL on CUDA, gloo on CPU; DDP; SyncBatchNorm on CUDA, GlobalBatchNorm2d
    on CPU). What ran is read from train.py's own 'torchrun:' line, not assumed. On one GPU NCCL may refuse two
    ranks on the same device: the row then says so (a GPU count limit, not a code failure)."""
    out = c.runs / 'torchrun'
    _fresh(out)
    flags = ['--dataset', 'synthetic', '--alg', 'acr', '--bem', '--width', '1', '--batch-size', '8', '--n1', '40',
             '--m1', '80', '--imb-l', '10', '--iters', '4', '--eval-every', '4', '--no-progress', '--out', out]
    logf = c.runs / 'torchrun.log'
    rc, secs = run([c.py, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'train.py'] + flags,
                   timeout, c.env, capture=logf)
    text = logf.read_text(errors='replace') if logf.exists() else ''
    ran = next((ln.split('torchrun: ', 1)[1] for ln in text.splitlines() if 'torchrun: world' in ln), None)
    done = (out / 'summary.json').exists()
    if done and rc == 0:
        return ['torchrun 2 processes', 'PASS', f'{ran or "(no torchrun line)"}; summary.json written', f'{secs:.0f}']
    if 'Duplicate GPU' in text:
        return ['torchrun 2 processes', DDP_ONE_GPU, 'NCCL refused two ranks on one GPU (Duplicate GPU detected): '
                'the DDP path needs 2 GPUs to run here', f'{secs:.0f}']
    why = next((ln.strip()[:160] for ln in reversed(text.splitlines()) if 'Error' in ln), 'no summary')
    return ['torchrun 2 processes', _verdict(rc or 1), f'{ran or "no torchrun line"}; {why}', f'{secs:.0f}']


def _fresh(d):
    import shutil
    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)


def _verdict(rc):
    return 'PASS' if rc == 0 else ('TIMEOUT' if rc == 124 else f'FAIL (rc {rc})')


def _junit_counts(path):
    try:
        import xml.etree.ElementTree as ET
        s = ET.parse(path).getroot()
        s = s if s.tag == 'testsuite' else s[0]
        n, f, e, sk = (int(s.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped'))
        return f'{n - f - e - sk} passed, {f + e} failed, {sk} skipped'
    except Exception as ex:   # noqa: BLE001 -- a missing file means pytest did not finish
        return f'no junit ({type(ex).__name__})'


# ================================================================================================
# 2. Speed (bench.py)
# ================================================================================================

def stage_speed(c):
    budget = c.share('speed')
    path = c.out / 'speed.json'
    if c.smoke:
        args = ['--quick', '--threads', '1', '--configs', 'acr_bem,lt', '--mu', '1', '--warmup', '1',
                '--steps', '2', '--eval-images', '32', '--no-aug', '--compile-configs', 'acr_bem:1']
    else:   # full size: WRN-28-2 batch 64 mu 1 and 2, ResNet-32 batch 128; compiled rows for the target and LT
        args = ['--configs', 'fixmatch,acr,acr_bem,lt', '--mu', '1,2', '--compile-configs', 'acr_bem:1,lt']
    # --budget-s: no configuration starts after 80% of the share (compiled rows come last, so they go first)
    modes = 'eager,compile' if c.compiles else 'eager'      # no Triton / C compiler: eager rows only (a note says so)
    path.unlink(missing_ok=True)      # never a previous run's figures
    cmd = [c.py, 'bench.py', '--modes', modes, '--budget-s', f'{budget * 0.8:.0f}', '--json', path] + args
    try:
        rc, secs = run(cmd, budget, c.env)
    except Cut:     # bench rewrites its JSON after every row: a cut keeps what it measured
        c.speed = _read_json(path) or {'configs': []}
        speed_section(c, modes, args, 'cut by a signal: the rows measured before it')
        raise
    c.speed = _read_json(path) or {'configs': []}
    speed_section(c, modes, args, f'{_verdict(rc)}, {secs:.0f} s')


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def speed_section(c, modes, args, how):
    """The speed section from whatever bench.py's JSON holds (a failed compiled row is one line)."""
    c.md += ['## 2. Speed (bench.py, one process)', '',
             f'`python bench.py --modes {modes} {" ".join(args)}` ({how}). ' + c.speed.get('header', ''), '']
    if not c.speed['configs']:
        c.md += ['bench.py measured nothing; see gpu_check.log.', '']
        return
    rows, brk = [], []
    for r in c.speed['configs']:
        for p, label, ratio in (('a', '(a) eager', 'ratio'), ('a_compile', '(a) compiled', 'ratio_compile'),
                                ('b', '(b) reference', None)):
            if p in r and 'error' in r[p]:
                rows.append([r['name'], r['mu'] or '-', label, f'FAILED: {r[p]["error"]}'[:140]] + [''] * 6)
            elif p in r:
                t = r[p]
                rows.append([r['name'], r['mu'] or '-', label, f'{t["median_ms"]:.2f}', f'{t["images_per_s"]:.0f}',
                             f'{r[ratio]:.2f}x' if r.get(ratio) else '', f'{t["tflops"]:.2f}', f'{t["pct_peak"]:.1f}',
                             f'{t["peak_mem_mib"]:.0f}', f'{t.get("compile_s", float("nan")):.0f}' if 'compile_s' in t
                             else ''])
        b = r.get('breakdown', {})
        brk.append([r['name'], r['mu'] or '-'] + [f'{b.get(k, 0.0):.2f}' for k in
                   ('augmentation', 'bem_draw_mix', 'forward', 'backward', 'opt_ema', 'bem_update')]
                   + [f'{r["eval_ms_per_10k"]:.0f}' if 'eval_ms_per_10k' in r else ''])
    c.md += [_table(['config', 'mu', 'pipeline', 'ms/step', 'img/s', '(b)/row', 'TFLOP/s', '% bf16 peak',
                     'peak MiB', 'compile s'], rows), '',
             'Breakdown of (a) eager, ms/step (synchronised around each piece):', '',
             _table(['config', 'mu', 'augmentation', 'BEM draw+mix', 'forward+loss', 'guard+backward', 'optimiser+EMA', 'BEM update',
                     'eval ms/10k img'], brk), '']
    notes = [f'{r["name"]} mu={r["mu"] or "-"}: {n}' for r in c.speed['configs']
             for n in r.get('a_compile', {}).get('compiler_notes', [])]
    if notes:   # e.g. CUDA graphs skipped: the compiled step is correct but not what the target assumes
        c.md += ['Compiler notes (from the compiled rows\' stderr):', ''] + [f'- {n}' for n in notes] + ['']
    if c.speed.get('skipped'):
        c.md += ['Skipped by the budget: ' + ', '.join(c.speed['skipped']), '']
    c.md += ['```'] + c.speed.get('targets', ['(bench.py wrote no targets)']) + ['```', '']


def ms_of(c, key, mu=1):
    for r in c.speed.get('configs', []):
        if r['key'] == key and (r['mu'] == mu or key == 'lt'):
            return r['a']['median_ms'], r
    return None, None


def nearest_row(c, key, mu):
    """(ms, row, exact) of the measured LTSSL row closest to (key, mu): same key and mu, same key, then any."""
    for k, m in [(key, mu), (key, 1), (key, 2)] + [(k2, m2) for k2 in ('acr', 'acr_bem', 'fixmatch') for m2 in (mu, 1, 2)]:
        ms, row = ms_of(c, k, m)
        if ms:
            return ms, row, (k, m) == (key, mu)
    return None, None, False


# ================================================================================================
# 5. Throughput of concurrent runs (worker mode: python reproduce/gpu_check.py --worker ...)
# ================================================================================================

def worker(a):
    """Build the bench task, warm up, meet the others at the barrier, run for --seconds; print one JSON line."""
    import torch
    import bench
    import data
    quick = a.smoke
    ds = data.make_synthetic(n_per_class=150, n_test=8, seed=0) if quick else data.load_dataset('synthetic')
    args = bench.fill_defaults(bench.build_parser().parse_args(
        (['--quick'] if quick else []) + ['--configs', 'acr_bem', '--mu', '1', '--device', a.device]))
    if quick:
        torch.set_num_threads(1)
    task = bench.build_task(bench.task_argv('acr_bem', 1, args), ds)
    task.step = args.start_step
    for _ in range(3 if not quick else 1):
        task.train_step()
    bench.sync(task.device)
    Path(a.barrier, f'ready{a.wid}').touch()
    while len(list(Path(a.barrier).glob('ready*'))) < a.k:
        time.sleep(0.005)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < a.seconds:
        for _ in range(5):
            task.train_step()
        n += 5
        bench.sync(task.device)
    secs = time.perf_counter() - t0
    print(json.dumps({'wid': a.wid, 'steps': n, 'secs': secs, 'images_per_s': n * task.images_per_step / secs}))


def stage_throughput(c):
    budget = c.share('throughput')
    ks = (1, 2) if c.smoke else (1, 2, 4)
    secs = 2.0 if c.smoke else max(3.0, min(10.0, budget / len(ks) - 15))
    rows, c.gain = [], {}
    base = None
    for k in ks:
        if c.left() - REPORT_RESERVE_S < secs + 10:
            rows.append([k, 'skipped (budget)', '', '', ''])
            continue
        bar = c.runs / f'barrier{k}'
        bar.mkdir(parents=True, exist_ok=True)
        for f in bar.glob('ready*'):
            f.unlink()
        env = dict(c.env, OMP_NUM_THREADS='1')
        cmd = [c.py, __file__, '--worker', '--k', str(k), '--seconds', str(secs), '--barrier', str(bar),
               '--device', c.device] + (['--smoke'] if c.smoke else [])
        log(f'throughput: {k} concurrent run(s)')
        procs = [spawn(cmd + ['--wid', str(i)], env=env, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
                 for i in range(k)]
        res = []
        for p in procs:
            try:
                o, _ = p.communicate(timeout=max(10, budget))
                res += [json.loads(line) for line in o.splitlines() if line.startswith('{')]
            except subprocess.TimeoutExpired:
                p.kill()
            CHILDREN.remove(p)
        if len(res) < k:
            rows.append([k, f'FAIL ({len(res)}/{k} workers reported)', '', '', ''])
            continue
        tot = sum(r['images_per_s'] for r in res)
        base = base or tot
        c.gain[k] = tot / base
        rows.append([k, f'{tot:.0f}', f'{tot / k:.0f}', f'{tot / base:.2f}x', f'{sum(r["steps"] for r in res)}'])
    c.md += ['## 5. Table throughput: concurrent runs on the one GPU', '',
             f'FixMatch+ACR+BEM {"(QUICK sizes) " if c.smoke else "WRN-28-2 batch 64 mu=1 "}on synthetic data; each '
             f'run builds its task, warms up, waits at a file barrier, then trains for {secs:.0f} s.', '',
             _table(['concurrent runs', 'images/s (all)', 'images/s per run', 'vs 1 run', 'steps'], rows), '']
    _plot_throughput(c, rows)


def _plot_throughput(c, rows):
    pts = [(r[0], float(r[1])) for r in rows if _isnum(r[1])]
    if not pts:
        return
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], 'o-')
    ax.set(xlabel='concurrent runs', ylabel='images/s (sum)', title=f'throughput on {c.gpu}'[:60])
    fig.tight_layout()
    fig.savefig(c.out / 'throughput.png', dpi=110)
    c.md += ['![throughput](throughput.png)', '']


def _isnum(s):
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


# ================================================================================================
# 3. Fidelity on Fashion-MNIST-LT
# ================================================================================================

def fmnist_lt_size(gamma=100, n_max=6000, C=10):
    """Training images of Fashion-MNIST-LT: the counts data.py builds (data.lt_counts, IMBALANCECIFAR's formula)."""
    import data  # here, not at the top: the orchestrator itself stays free of torch
    return sum(data.lt_counts(n_max, C, gamma))


def fidelity_plan(c, avail):
    """Steps per run from the measured step times: all runs share the GPU for `avail` seconds of training, and
    together run `gain` (the 4-run throughput over the 1-run one) times faster than one after another."""
    data_flag = 'fmnist' if c.fmnist else 'synthetic'
    seeds = list(range(c.a.seeds))
    runs = []
    if c.smoke:
        ssl_common = ['--dataset', data_flag, '--width', '1', '--batch-size', '8', '--device', 'cpu', '--no-progress',
                      '--n1', '150', '--m1', '300', '--img-size', '32']
        for m, f in SSL_METHODS.items():
            for s in seeds:
                runs.append((m, s, 'ltssl', ssl_common + f + ['--iters', '4', '--eval-every', '4', '--epoch-steps', '2']))
        for m, f in LT_METHODS.items():
            for s in seeds:
                runs.append((m, s, 'lt', ['--task', 'lt', '--dataset', data_flag, '--batch-size', '32', '--epochs', '2',
                                          '--iters-per-epoch', '2', '--eval-every', '2', '--device', 'cpu',
                                          '--no-progress'] + f))
        return runs, 'SMOKE: 4 LTSSL steps (batch 8, WRN-28-1), LT 2 epochs x 2 steps (batch 32)'
    ms = {m: ms_of(c, *BENCH_OF[m])[0] for m in BENCH_OF}
    ms_acr = ms['fixmatch+acr'] or 10.0
    ms = {m: v or ms_acr for m, v in ms.items()}
    ms['fixmatch+bem'] = ms['fixmatch'] + max(0.0, ms['fixmatch+acr+bem'] - ms['fixmatch+acr'])
    ms_lt = ms_of(c, 'lt')[0] or 3.0                   # bench's LT step: ResNet-32 batch 128, as these runs
    n_runs = (len(SSL_METHODS) + len(LT_METHODS)) * len(seeds)
    gain = max(1.0, c.gain.get(4) or max(c.gain.values(), default=1.0))   # 4 runs: the closest measured
    train_s = max(10.0, 0.75 * avail - 25)             # 25 s: process start, data, cuDNN autotune; 0.75: evals, noise
    per_run_gpu_s = train_s * gain / n_runs
    steps = {m: per_run_gpu_s * 1e3 / v for m, v in ms.items()}
    ssl_steps = int(max(200, min(steps.values())) // 100 * 100)   # every SSL method the same length
    ipe = math.ceil(fmnist_lt_size() / 128)
    epochs = max(6, int(per_run_gpu_s * 1e3 / ms_lt / ipe))
    ssl_common = ['--dataset', data_flag, '--n1', '1000', '--m1', '2000', '--imb-l', '100', '--setting', 'consistent',
                  '--split', 'acr', '--iters', str(ssl_steps), '--eval-every', str(max(1, ssl_steps // 5)),
                  '--epoch-steps', str(min(500, max(25, ssl_steps // 20))), '--device', 'cuda', '--no-progress']
    lt_common = ['--task', 'lt', '--dataset', data_flag, '--imb', '100', '--model', 'resnet32', '--epochs', str(epochs),
                 '--batch-size', '128', '--lr', '0.1',
                 '--eval-every', str(max(1, epochs // 5)), '--group-l2norm', 'off', '--device', 'cuda',
                 '--no-progress']
    for m, f in SSL_METHODS.items():
        for s in seeds:
            runs.append((m, s, 'ltssl', ssl_common + f))
    for m, f in LT_METHODS.items():
        for s in seeds:
            runs.append((m, s, 'lt', lt_common + f))
    how = (f'{n_runs} runs at once; measured ms/step ' + ', '.join(f'{m} {v:.1f}' for m, v in ms.items())
           + f', LT {ms_lt:.1f}; concurrency gain {gain:.2f}x; {train_s:.0f} s of training -> '
           f'LTSSL {ssl_steps} steps (WRN-28-2, batch 64, mu 1, lr 0.03, EMA 0.999: train.py defaults; '
           f'--epoch-steps {min(500, max(25, ssl_steps // 20))} so the ACR/BEM estimates start inside the run), '
           f'LT {epochs} epochs x {ipe} steps (ResNet-32, batch 128, lr 0.1 = the LDAM-DRW CIFAR recipe, 5 warm-up '
           f'epochs, group L2norm off as reproduce/fmnist_cpu.sh)')
    return runs, how


def stage_fidelity(c):
    avail = c.left() - REPORT_RESERVE_S
    runs, how = fidelity_plan(c, avail)
    root = c.runs / 'fidelity'
    procs = []
    env = dict(c.env, OMP_NUM_THREADS='1')
    t0 = time.time()
    cut = None
    try:
        for m, s, task, flags in runs:
            out = root / task / m / f'seed{s}'
            _fresh(out)                                   # a fresh schedule each time: steps depend on this GPU
            cmd = [c.py, 'train.py'] + flags + ['--seed', str(s), '--out', str(out)]
            log('+', ' '.join(cmd))
            procs.append((m, s, task, out, spawn(cmd, env=env, stdout=sys.stdout, stderr=sys.stderr)))
        deadline = t0 + max(5, avail)
        for *_, p in procs:     # the steps were fitted to the time; a run still going at the deadline gets SIGTERM
            p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass
    except Cut as e:
        cut = e
    stop_children()   # SIGTERM: train.py checkpoints; its metrics.jsonl keeps every evaluation it made
    for *_, p in procs:
        CHILDREN.remove(p)
    wall = time.time() - t0
    c.md += ['## 3. Fidelity on Fashion-MNIST-LT' + ('' if c.fmnist else ' (here on `synthetic`: see the note above)'), '',
             f'gamma = 100, the demo\'s split (N1/M1 = 1000/2000, consistent, ACR first-k split); LT: imbalance 100. '
             f'{how}. Wall time {wall:.0f} s.', '']
    c.md += fidelity_tables(c, root, procs)
    if cut is not None:
        raise cut


def _ms(vals):
    import numpy as np
    v = [x for x in vals if x is not None]
    return (float(np.mean(v)), float(np.std(v))) if v else (float('nan'), float('nan'))


def run_summary(run):
    """summary.json of a finished run; else, for a run stopped at the deadline, its last evaluation in
    metrics.jsonl (the reported head's top-1 and per-class accuracy, marked unfinished); None if it never
    evaluated."""
    s = _read_json(run / 'summary.json')
    if s and s.get('finished'):
        return s
    try:
        recs = [json.loads(ln) for ln in (run / 'metrics.jsonl').read_text().splitlines() if ln.strip()]
    except (OSError, ValueError):
        return None
    recs = [r for r in recs if isinstance(r, dict) and 'acc' in r]
    if not recs:
        return None
    args = _read_json(run / 'args.json') or {}
    head = 'model'
    if args.get('task') == 'ltssl':
        import ltssl
        fw = ltssl.FRAMEWORK[args['alg']]
        head = {v: k for k, v in fw.eval_heads.items()}[fw.eval_head]
    last = recs[-1]
    return {'last': last['acc'][head], 'per_class': last['per_class'][head], 'steps': last['step'],
            'statistic': 'last evaluation', 'timing': {}, 'finished': False}


def fidelity_tables(c, root, procs):
    """mean ± std over seeds (population std, ddof 0, as report.py), head/tail half, few-shot, steps, and the
    gain over the task's baseline (FixMatch / instance sampling) against the seed spread sqrt(s_m^2 + s_base^2)."""
    out, curves = [], {}
    for task, methods, base, small in (('ltssl', SSL_METHODS, 'fixmatch', 'few'),
                                       ('lt', LT_METHODS, 'instance', 'few')):
        stats = {}
        for m in methods:
            ss = [s for s in map(run_summary, sorted((root / task / m).glob('seed*'))) if s]
            if ss:
                stats[m] = ss
        if not stats:
            out += [f'{task}: no run evaluated (see gpu_check.log).', '']
            continue
        rows = []
        b = _ms([s['last'] for s in stats.get(base, [])])
        for m, ss in stats.items():
            mean, sd = _ms([s['last'] for s in ss])
            cell = lambda k: '{:.2f} ± {:.2f}'.format(*_ms([s.get(k) for s in ss]))   # noqa: E731
            gain = mean - b[0]
            spread = math.hypot(sd, b[1])
            verdict = ('baseline' if m == base else
                       f'{gain:+.2f} vs ±{spread:.2f} ({abs(gain) / spread:.1f}x spread)' if spread > 0 else f'{gain:+.2f}')
            steps = '/'.join(sorted({str(s['steps']) + ('' if s.get('finished') else ' (stopped)') for s in ss}))
            rows.append([m, len(ss), steps, f'{mean:.2f} ± {sd:.2f}', cell('head_half'), cell('tail_half'),
                         cell(small) if any(s.get(small) is not None for s in ss) else '– (no class < 20 images)',
                         cell('mean_last20'), verdict, f'{_ms([s["timing"].get("images_per_s") for s in ss])[0]:.0f}'])
            import numpy as np
            curves[f'{task}:{m}'] = np.mean([s['per_class'] for s in ss], 0)
        stat = next(iter(stats.values()))[0]['statistic']
        out += [f'**{task}** ({stat}; gain = mean − {base} mean, spread = sqrt(std_m² + std_{base}²))', '',
                _table(['method', 'seeds', 'steps', 'last', 'head half', 'tail half', 'few (<20 labels)',
                        'mean_last20', 'gain vs seed spread', 'img/s per run'], rows), '']
    missing = [f'{t}/{m}/seed{s}' for m, s, t, o, _ in procs if not (o / 'summary.json').exists()]
    if missing:
        out += ['Unfinished (stopped at the budget or failed): ' + ', '.join(missing), '']
    if curves:
        _plot_fidelity(c, curves)
        out += ['![per-class accuracy](fidelity.png)', '']
    return out


def _plot_fidelity(c, curves):
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, task in zip(axes, ('ltssl', 'lt')):
        items = [(k.split(':', 1)[1], v) for k, v in curves.items() if k.startswith(task + ':')]
        for j, (name, pc) in enumerate(items):
            w = 0.8 / max(1, len(items))
            ax.bar(np.arange(len(pc)) + (j - (len(items) - 1) / 2) * w, pc, w, label=name)
        ax.set(xlabel='class (0 = head)', ylabel='test accuracy %', title=f'{task}: per-class (mean over seeds)')
        if items:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(c.out / 'fidelity.png', dpi=110)


# ================================================================================================
# 4. GPU-hours per reproduce/ table
# ================================================================================================

TABLE_SCRIPTS = ['bem_table1', 'bem_table2', 'bem_table3', 'bem_table4', 'bem_table5', 'bem_fig1',
                 'jitter_table1', 'jitter_table2', 'jitter_table3', 'jitter_table4', 'jitter_table5']
LT_TRAIN = {'cifar10': (5000, 10), 'cifar100': (500, 100), 'fmnist': (6000, 10)}   # (n_max, classes) before LT


def plan_commands(script, seeds=3):
    """The train.py argv of every cell x seed of a table (its DRY_RUN plan), and the --out of each."""
    env = dict(os.environ, DRY_RUN='1', SEEDS=str(seeds), SMOKE='0', RUNS='/nonexistent-gpu-check-runs')
    env.pop('GPUS', None), env.pop('SLURM', None)
    p = subprocess.run(['bash', f'reproduce/{script}.sh'], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    cmds = []
    for line in p.stdout.splitlines():
        words = line[2:].split() if line.startswith('+ ') else []
        if 'train.py' in words and '--check-data' not in words:
            cmds.append(words[words.index('train.py') + 1:])
    return cmds


def _cell_cost(argv, c, cache):
    """(seconds, basis) of one run: steps x ms/step; ms/step = the measured step of the matching bench row,
    or FLOPs(cell) / the achieved FLOP rate of the nearest measured row (bench's FlopCounterMode count)."""
    import flags
    a = flags.build_parser().parse_args(argv)
    try:
        a = flags.resolve(a)
    except Exception:   # noqa: BLE001 -- resolve checks against data; the flags are enough here
        pass
    if a.task == 'ltssl':
        V, heads = fw_shape(a)
        key = 'acr' if heads == 2 else 'fixmatch'     # the bench row of the same network (one head or two)
        key = 'acr_bem' if (a.bem or (a.mix not in (None, 'none'))) and key == 'acr' else key
        ms, row, exact = nearest_row(c, key, a.mu)
        if row is None:
            return None, 'no measured row'
        B = a.batch_size or 64
        imgs = B + (a.mu * B * (1 + V) if V else 0)
        size = a.img_size or 32
        name = f'wrn28-{a.width}' if a.model in (None, 'wrn') else a.model
        ckey = (name, imgs, size)
        if ckey not in cache:
            cache[ckey] = _flops(name, a, imgs, size)
        steps = a.iters
        same = exact and name == 'wrn28-2' and B == 64 and size == 32
        rate = row['a']['flops_per_step'] / ms   # FLOP per ms achieved by the measured row
        step_ms = ms if same else cache[ckey] / rate
        evals = steps / (a.eval_every or 500) * row['eval_ms_per_10k'] * step_ms / ms
        return (steps * step_ms + evals) / 1e3, 'measured' if same else 'FLOP-scaled'
    ms, row = ms_of(c, 'lt')
    if row is None or a.dataset == 'imagenet_lt':
        return None, 'ImageNet-LT: JPEG decode bound, not measured here'
    n_max, C = LT_TRAIN.get(a.dataset, (500, 100))
    B = a.batch_size or 128
    ipe = math.ceil(fmnist_lt_size(a.imb or 100, n_max, C) / B)
    if a.iters_per_epoch:
        ipe = min(ipe, a.iters_per_epoch)
    steps = (a.epochs or 200) * ipe
    name = 'ride' if a.model == 'ride' else 'resnet32'
    ckey = (name, a.experts, B)
    if ckey not in cache:
        cache[ckey] = _flops(name, a, B, 32, C)
    rate = row['a']['flops_per_step'] / ms
    same = name == 'resnet32' and B == row['a']['images_per_step']
    return steps * (ms if same else cache[ckey] / rate) / 1e3, 'measured' if same else 'FLOP-scaled'


def fw_shape(a):
    """(strong views, heads) of a run's framework, as the framework declares them (ltssl.shape_of)."""
    import ltssl
    return ltssl.shape_of(a.alg, vars(a))


def _flops(name, a, imgs, size, C=10):
    import bench
    import models
    two = a.task == 'ltssl' and fw_shape(a)[1] == 2
    if name.startswith('wrn28-'):
        m = models.wrn28(100, int(name.split('-')[1]), two_heads=two)
    elif name == 'resnet50':
        m = models.resnet50(127, two_heads=two)
    elif name == 'ride':
        import ride
        m = ride.ride_resnet32(C, experts=a.experts, reduce=a.reduce)
    else:
        import jitter
        m = jitter.resnet32(C, group_l2norm=False)
    return bench.step_flops(m, imgs, (3, size, size))


def stage_gpu_hours(c):
    rows, cache = [], {}
    for script in TABLE_SCRIPTS:
        if c.left() < 10:
            rows.append([script, 'skipped (budget)', '', '', ''])
            continue
        try:
            cmds = plan_commands(script)
        except subprocess.TimeoutExpired:
            rows.append([script, 'DRY_RUN timed out', '', '', ''])
            continue
        own = [cm for cm in cmds if f'/{script}/' in ' '.join(cm)]
        secs, bases, unknown = 0.0, set(), 0
        for cm in own:
            s, basis = _cell_cost(cm, c, cache)
            if s is None:
                unknown += 1
                bases.add(basis)
            else:
                secs += s
                bases.add(basis)
        rows.append([script, len(own), len(cmds) - len(own), f'{secs / 3600:.1f}' + (f' (+{unknown} runs not costed)'
                                                                                      if unknown else ''),
                     ', '.join(sorted(bases))])
    c.md += ['## 4. GPU-hours per reproduce/ table (from the step times of 2)', '',
             f'{"SMOKE: CPU QUICK step times, so these hours are not GPU figures. " if c.smoke else ""}'
             f'Each script\'s DRY_RUN plan (3 seeds, runs owned by the table; shared runs are counted by their '
             f'owner) x ms/step on {c.gpu}: the eager (a) row of the same configuration ("measured"), or its FLOPs '
             f'(FlopCounterMode) over the FLOP rate the nearest measured row achieved ("FLOP-scaled": other '
             f'widths, ResNet-50, RIDE), plus evaluations. One run per GPU; section 5 gives the gain of several.', '',
             _table(['script', 'runs', 'shared runs', 'GPU-h', 'basis'], rows), '']


# ================================================================================================
# Report
# ================================================================================================

def _table(headers, rows):
    from tabulate import tabulate
    return tabulate(rows, headers=headers, tablefmt='github', disable_numparse=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    a = p.add_argument
    a('--out', default=os.environ.get('OUT') or 'results/gpu_check')
    a('--runs', default=os.environ.get('GPU_CHECK_RUNS', 'runs/gpu_check'))
    a('--budget-s', type=float, default=float(os.environ.get('BUDGET_S', 300)))
    a('--smoke', action='store_true', default=os.environ.get('SMOKE') == '1')
    a('--seeds', type=int, default=int(os.environ.get('SEEDS', 1 if os.environ.get('SMOKE') == '1' else 2)))
    a('--data-dir', default=os.environ.get('DATA_DIR', './datasets'))
    a('--stages', default=os.environ.get('STAGES', 'tests,speed,throughput,fidelity,hours'))
    a('--preflight', action='store_true', help='only check that a CUDA device is visible (exit 2 if not)')
    # worker mode (stage 5)
    a('--worker', action='store_true', help=argparse.SUPPRESS)
    a('--k', type=int, default=1, help=argparse.SUPPRESS)
    a('--wid', type=int, default=0, help=argparse.SUPPRESS)
    a('--seconds', type=float, default=5, help=argparse.SUPPRESS)
    a('--barrier', default=None, help=argparse.SUPPRESS)
    a('--device', default='cpu', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.chdir(ROOT)
    if args.worker:
        return worker(args)
    if args.preflight:
        return 0 if args.smoke else preflight()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    c = Ctx(args)
    c.out.mkdir(parents=True, exist_ok=True)
    c.runs.mkdir(parents=True, exist_ok=True)
    c.speed, c.gain, c.tests_ok = {'configs': []}, {}, None
    stages = [s.strip() for s in args.stages.split(',')]
    log(f'device {c.gpu} | budget {args.budget_s:.0f} s | SMOKE={int(c.smoke)} | out {c.out}')
    c.times, c.sections, c.state = [], {}, 'running'
    # hours before fidelity: it needs only the step times, and fidelity takes whatever budget is left
    order = [(1, 'tests', stage_tests), (2, 'speed', stage_speed), (5, 'throughput', stage_throughput),
             (4, 'hours', stage_gpu_hours), (3, 'fidelity', stage_fidelity)]
    order = [st for st in order if st[1] in stages]
    cut = None
    try:
        for k, (num, name, fn) in enumerate(order):
            c.md = c.sections[num] = []
            t = time.time()
            log(f'stage {name} started')
            try:
                fn(c)
            except Cut as e:
                cut = e.args[0]
                c.md += [f'## stage {name}: CUT by signal {cut} after {time.time() - t:.0f} s (what it measured '
                         'before the cut is above)', '']
            except Exception as e:   # noqa: BLE001 -- one broken stage must not cost the others their figures
                import traceback
                traceback.print_exc()
                c.md += [f'## stage {name}: ERROR {type(e).__name__}: {e}', '']
            c.times.append(f'{name} {time.time() - t:.0f} s')
            left = [n for _, n, _ in order[k + 1:]]
            c.state = (f'cut by signal {cut} in stage {name}; not run: {", ".join(left) or "none"}' if cut else
                       f'done: {", ".join(n for _, n, _ in order[:k + 1])}' + (f'; to come: {", ".join(left)}'
                                                                              if left else ''))
            write_report(c)
            log(f'stage {name} {"cut" if cut else "done"} in {time.time() - t:.0f} s; {c.left():.0f} s left')
            if cut:
                break
    except Cut as e:   # between stages, or while a report was written
        cut = e.args[0]
        c.state = f'cut by signal {cut} between stages'
        write_report(c)
    finally:
        stop_children(grace=5)
    if cut:
        return 128 + cut
    body = [line for num in sorted(c.sections) for line in c.sections[num]]
    ok = c.tests_ok is not False and not any(line.startswith('## stage') for line in body)
    return 0 if ok else 1


def write_report(c):
    """gpu_check.md from the stages so far (rewritten after each stage; temp file + rename: never torn)."""
    import torch
    head = [f'# gpu_check on {c.gpu}', '',
            f'`{"SMOKE=1 " if c.smoke else ""}bash reproduce/gpu_check.sh` | BUDGET_S={c.a.budget_s:.0f} | torch '
            f'{torch.__version__} | {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} | wall '
            f'{time.time() - c.t0:.0f} s ({", ".join(c.times)}) | log: gpu_check.log', '',
            f'Stages: {c.state}.', '']
    head += [f'Note: {n}' for n in c.notes] + ([''] if c.notes else [])
    body = [line for num in sorted(c.sections) for line in c.sections[num]]
    tmp = c.out / 'gpu_check.md.tmp'
    tmp.write_text('\n'.join(head + body) + '\n')
    os.replace(tmp, c.out / 'gpu_check.md')
    log(f'report: {c.out / "gpu_check.md"}')


if __name__ == '__main__':
    sys.exit(main())
