"""reproduce/gpu_check.sh keeps what it measured (issue 21 item 4): a SIGTERM in the middle of a stage leaves the
report with every stage finished before it, and a fidelity run stopped at the deadline is reported from its last
evaluation. (No GPU: one line, exit 2 -- tests/test_bench.py; a compiled row that fails or outlasts its cap, and
bench.py's JSON after a kill -- tests/test_bench.py too.)

Oracles: the report is read back as a file (what the device tool returns), against values the test reads
independently (the run's own metrics.jsonl, the stage-1 lines gpu_check.log printed before the signal).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import conftest

ROOT = Path(conftest.ROOT)
sys.path.insert(0, str(ROOT / 'reproduce'))
import gpu_check  # noqa: E402  (reproduce/ is not a package)


@pytest.mark.slow
def test_sigterm_in_the_second_stage_keeps_the_first_stages_results(tmp_path):
    """SMOKE, STAGES=tests,speed; SIGTERM to gpu_check.sh once the log says the speed stage started: the script
    forwards it, gpu_check.py writes the report (stage 1's section, the cut stage named), stops bench.py, exits 143."""
    out, runs = tmp_path / 'out', tmp_path / 'runs'
    env = {k: v for k, v in os.environ.items() if k not in ('STAGES', 'BUDGET_S')}
    p = subprocess.Popen(['bash', 'reproduce/gpu_check.sh'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True,
                         env=dict(env, PYTHON=sys.executable, SMOKE='1', OUT=str(out), GPU_CHECK_RUNS=str(runs),
                                  STAGES='tests,speed'))
    logf = out / 'gpu_check.log'
    conftest.wait_for(lambda: logf.exists() and 'stage speed started' in logf.read_text(), p, timeout=400, poll=0.2)
    time.sleep(3)                                # bench.py is running (importing, or timing its first row)
    p.send_signal(signal.SIGTERM)
    stdout, _ = p.communicate(timeout=90)
    assert p.returncode == 128 + signal.SIGTERM, stdout[-3000:]
    report = (out / 'gpu_check.md').read_text()
    assert report in stdout                      # gpu_check.sh still prints the report
    assert f'cut by signal {int(signal.SIGTERM)} in stage speed' in report, report[:600]
    stage1 = report.split('## 1.')[1].split('## 2.')[0]
    assert 'torchrun' in stage1 and 'passed' in stage1, stage1
    assert f'## stage speed: CUT by signal {int(signal.SIGTERM)}' in report
    assert not (out / 'gpu_check.md.tmp').exists()
    with pytest.raises(ProcessLookupError):      # bench.py and every other child stopped with it
        os.killpg(p.pid, 0)


def test_a_fidelity_run_stopped_by_sigterm_is_reported_from_its_last_evaluation(tmp_path, monkeypatch):
    """A real train.py run (in-process) gets SIGTERM right after its first evaluation is written: it checkpoints
    and exits 143 without a finished summary.json, as at gpu_check's deadline. The fidelity table still shows it,
    with the accuracy its metrics.jsonl holds, marked stopped, and names it unfinished."""
    import runio
    out = tmp_path / 'ltssl' / 'fixmatch' / 'seed0'
    real = runio.append_metrics

    def append_then_sigterm(*a, **k):
        real(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)     # runio.Stop: stop at the next step boundary
    monkeypatch.setattr(runio, 'append_metrics', append_then_sigterm)
    conftest.run_train(conftest.TINY + ['--alg', 'fixmatch', '--iters', '40', '--eval-every', '2'], out,
                       expect=128 + signal.SIGTERM)
    assert not (out / 'summary.json').exists() and (out / 'checkpoint.pt').exists()
    rec = [json.loads(ln) for ln in (out / 'metrics.jsonl').read_text().splitlines() if '"acc"' in ln][-1]
    c = type('C', (), {'out': tmp_path})()
    lines = gpu_check.fidelity_tables(c, tmp_path, [('fixmatch', 0, 'ltssl', out, None)])
    row = next(line for line in '\n'.join(lines).splitlines() if line.startswith('| fixmatch'))
    cells = [x.strip() for x in row.strip('|').split('|')]
    assert cells[2] == f'{rec["step"]} (stopped)', cells
    assert cells[3] == f'{rec["acc"]["standard"]:.2f} ± 0.00', (cells, rec['acc'])
    assert any('Unfinished' in line and 'ltssl/fixmatch/seed0' in line for line in lines)
