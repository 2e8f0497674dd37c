"""reproduce/common.sh's concurrent dispatcher (GPUS / RUNS_PER_GPU) and SLURM=1 job-array script (issue 13).

A fake PYTHON stands in for train.py: it records CUDA_VISIBLE_DEVICES, its argv and start/end times, then writes
a finished summary.json. The oracle is that record: every planned run is called once, on a GPU of GPUS, never
more than RUNS_PER_GPU at a time per GPU; a finished run is skipped; a killed run (dir without summary) resumes.
"""
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE = r'''#!/usr/bin/env bash
# fake python: train.py --check-data -> ok; train.py ... --out DIR [--resume] -> record and finish; report.py -> ok
[ "$1" = train.py ] || exit 0
case " $* " in *" --check-data "*) exit 0 ;; esac
out=; prev=; for a in "$@"; do [ "$prev" = --out ] && out=$a; prev=$a; done
mkdir -p "$out"
echo "start $(date +%s.%N) ${CUDA_VISIBLE_DEVICES:-none}" >>"$LOG"
echo "${CUDA_VISIBLE_DEVICES:-none} $*" >>"$out/calls"
sleep 0.3
echo '{"finished": true}' >"$out/summary.json"
echo "end $(date +%s.%N) ${CUDA_VISIBLE_DEVICES:-none}" >>"$LOG"
'''


@pytest.fixture
def fake(tmp_path):
    py = tmp_path / 'fakepython'
    py.write_text(FAKE)
    py.chmod(py.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PYTHON=str(py), RUNS=str(tmp_path / 'runs'), RESULTS=str(tmp_path / 'res'),
               LOG=str(tmp_path / 'events'), SEEDS='2', ONLY='', GPUS='0,1', RUNS_PER_GPU='2')
    return tmp_path, env


def _bash(env, script='reproduce/bem_table4.sh'):
    return subprocess.run(['bash', script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _max_concurrent(events):
    live, peak = {}, {}
    for kind, _, gpu in sorted((line.split() for line in events), key=lambda e: (float(e[1]), e[0] == 'start')):
        live[gpu] = live.get(gpu, 0) + (1 if kind == 'start' else -1)
        peak[gpu] = max(peak.get(gpu, 0), live[gpu])
    return peak


def test_runs_spread_over_gpu_slots_skip_finished_resume_killed(fake):
    tmp, env = fake
    p = _bash(env)
    assert p.returncode == 0, p.stderr[-2000:]
    calls = sorted((tmp / 'runs').glob('**/calls'))
    plan = [line.split('\t') for line in (tmp / 'runs' / 'bem_table4' / 'jobs.tsv').read_text().splitlines()]
    assert len(calls) == len(plan) >= 4                              # every planned run, once
    gpus = [c.read_text().split()[0] for c in calls]
    assert set(gpus) <= {'0', '1'} and len(set(gpus)) == 2          # both GPUs used
    assert all(len(c.read_text().splitlines()) == 1 for c in calls)
    peak = _max_concurrent((tmp / 'events').read_text().splitlines())
    assert max(peak.values()) <= 2, peak                              # RUNS_PER_GPU
    # a finished run is skipped; a killed one (dir, no summary) is resumed with --resume
    killed = calls[0].parent
    (killed / 'summary.json').unlink()
    p = _bash(env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert [len(c.read_text().splitlines()) for c in calls] == [2] + [1] * (len(calls) - 1)
    assert calls[0].read_text().splitlines()[1].endswith('--resume')


def test_dry_run_prints_slots_and_every_command(fake):
    tmp, env = fake
    p = _bash(dict(env, DRY_RUN='1'))
    assert p.returncode == 0, p.stderr
    assert 'slot 3 -> GPU 1' in p.stdout and '4 workers' in p.stdout
    assert p.stdout.count('+ ' + env['PYTHON'] + ' train.py --task') >= 4
    assert not (tmp / 'runs').exists()                               # nothing written


def test_slurm_writes_an_array_script_whose_tasks_run_the_jobs(fake):
    tmp, env = fake
    p = _bash(dict(env, SLURM='1', SBATCH_ARGS='--time=1:00:00'))
    assert p.returncode == 0, p.stderr
    d = tmp / 'runs' / 'bem_table4'
    script = (d / 'sbatch.sh').read_text()
    m = len((d / 'jobs.tsv').read_text().splitlines())
    assert f'#SBATCH --array=1-{(m + 1) // 2}' in script and '#SBATCH --time=1:00:00' in script
    assert not list((tmp / 'runs').glob('**/calls'))                 # nothing trained yet
    # what Slurm would do: every array task with its own GPU
    for task in range(1, (m + 1) // 2 + 1):
        r = subprocess.run(['bash', str(d / 'sbatch.sh')], env=dict(env, SLURM_ARRAY_TASK_ID=str(task),
                           CUDA_VISIBLE_DEVICES=str(task % 2)), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert len(list((tmp / 'runs').glob('**/calls'))) == m           # incl. the cell shared with Table 1
    assert all(json.loads(s.read_text())['finished'] for s in (tmp / 'runs').glob('**/summary.json'))
