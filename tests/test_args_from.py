"""--args-from RUN_DIR: a recorded run made again from its args.json, a flag given beside it overriding that value.

Oracles: the original run's own args.json and metrics (a re-run on one CPU thread is bit-identical), and for an
override the arguments of the same run typed out in full on the command line (flags.resolve of the plain argv).
"""
import json
import os
import subprocess

import pytest

import flags
from conftest import ROOT, TINY, TINY_LT, LT_SYNTHETIC, read_json, read_metrics, run_train
from test_bad_input import assert_rejected, run_inproc

NOT_CARRIED = ('out', 'args_from')     # a re-run is a new run directory, and it records where it came from


def same_except(a, b, keys=NOT_CARRIED):
    return {k: v for k, v in a.items() if k not in keys} == {k: v for k, v in b.items() if k not in keys}


def test_rerun_repeats_the_run(tmp_path):
    """Nothing given beside --args-from: the same args.json (but out) and the same metrics, step by step."""
    a = run_train(TINY + ['--alg', 'acr', '--tau1', '3', '--seed', '5'], tmp_path / 'a')
    b = run_train(['--args-from', a], tmp_path / 'b')
    args_a, args_b = read_json(a / 'args.json'), read_json(b / 'args.json')
    assert same_except(args_a, args_b) and args_b['args_from'] == str(a) and args_b['out'] == str(b)
    assert [m['acc'] for m in read_metrics(a)] == [m['acc'] for m in read_metrics(b)]
    c = flags.rerun(str(a / 'args.json'), ['--args-from', str(a / 'args.json'), '--iters', '1'])   # the file itself
    assert same_except(vars(c), {**args_a, 'iters': 1})


def typed_out(argv, out):
    """The oracle: the run's arguments from its full command line."""
    return vars(flags.resolve(flags.build_parser().parse_args(argv + ['--out', out]), flags.given_flags(argv)))


def set_flag(argv, flag, value):
    """argv with flag's value replaced (or the flag appended)."""
    if flag not in argv:
        return argv + [flag, value]
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


@pytest.mark.parametrize('first,override,full,note', [
    # a new --alg re-derives what depends on it: ACR's tau12/... go back to unset, its recorded tau1 3 is dropped
    (TINY + ['--alg', 'acr', '--tau1', '3'], ['--alg', 'fixmatch'], TINY + ['--alg', 'fixmatch'],
     'recorded tau1=3.0 dropped'),
    (TINY + ['--bem', '--seed', '2'], ['--seed', '1', '--ecb', 'on'], TINY + ['--bem', '--seed', '1', '--ecb', 'on'],
     None),
    # LT: --epochs moves what derives from it (jitter2's delta_fixed_from: 1 at 1 epoch, 3 at 4)
    (set_flag(TINY_LT, '--epochs', '1'), ['--epochs', '4'], set_flag(TINY_LT, '--epochs', '4'), None),
], ids=['alg', 'seed-ecb', 'lt-epochs'])
def test_override_equals_the_command_typed_out(first, override, full, note, tmp_path, capsys):
    a = run_train(first, tmp_path / 'a', **({'synthetic': LT_SYNTHETIC} if '--task' in first else {}))
    capsys.readouterr()
    got = vars(flags.rerun(str(a), ['--args-from', str(a)] + override + ['--out', str(tmp_path / 'b')]))
    assert got['args_from'] == str(a) and same_except(got, typed_out(full, str(tmp_path / 'b')))
    err = capsys.readouterr().err
    assert (note in err) if note else err == ''


def test_rerun_without_out_takes_a_new_name(tmp_path):
    a = run_train(TINY, tmp_path / 'runs' / 'x')
    first = flags.rerun(str(a), ['--args-from', str(a), '--runs-dir', str(tmp_path / 'runs')])
    name = tmp_path / 'runs' / flags.run_name(first)
    assert first.out == str(name)
    name.mkdir()
    assert flags.rerun(str(a), ['--args-from', str(a), '--runs-dir', str(tmp_path / 'runs')]).out == f'{name}-2'


def _write(path, rec):
    path.mkdir()
    (path / 'args.json').write_text(json.dumps(rec))
    return path


@pytest.mark.parametrize('case,key', [('missing', 'unreadable'), ('unknown key', "'warp'"),
                                      ('bad value', 'seed'), ('bad choice', "'cifar11'"),
                                      ('flag of another task', '--epochs'), ('torn', 'JSONDecodeError'),
                                      ('not an object', 'JSON list'), ('not finite', 'finite')])
def test_bad_args_from_exits_2(case, key, tmp_path, capsys):
    good = vars(flags.resolve(flags.build_parser().parse_args(TINY + ['--out', str(tmp_path / 'o')])))
    rec = {'missing': None, 'unknown key': {**good, 'warp': 9}, 'bad value': {**good, 'seed': -1},
           'bad choice': {**good, 'dataset': 'cifar11'}, 'flag of another task': good, 'torn': good,
           'not an object': [good], 'not finite': {**good, 'lr': 'inf'}}[case]
    src = _write(tmp_path / 'r', rec) if rec else tmp_path / 'nothing'
    if case == 'torn':                       # a copy cut short: half of the file
        (src / 'args.json').write_text((src / 'args.json').read_text()[:60])
    extra = ['--epochs', '3'] if case == 'flag of another task' else []
    out = tmp_path / 'new'
    rc, err = run_inproc(['--args-from', src, '--out', out] + extra, capsys)
    assert_rejected(rc, err, key)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# ROW=NAME bash reproduce/<table>.sh: one row of a table again, by its name
# ------------------------------------------------------------------------------------------------

def table_dry(tmp_path, **env):
    """DRY_RUN=1 bash reproduce/bem_table1.sh -> (exit code, stderr, the train.py command lines)."""
    e = dict(os.environ, DRY_RUN='1', SEEDS='1', RUNS=str(tmp_path / 'runs'), RESULTS=str(tmp_path / 'res'), **env)
    r = subprocess.run(['bash', 'reproduce/bem_table1.sh'], cwd=ROOT, capture_output=True, text=True, env=e,
                       timeout=60)
    return r.returncode, r.stderr, [ln for ln in r.stdout.splitlines() if 'train.py --task' in ln]


def test_row_reruns_one_table_row(tmp_path):
    """BEM Table 1 has 8 settings (CIFAR-10-LT at gamma 100/150 x 2 (N1, M1), CIFAR-100-LT at gamma 10/20 x 2): ROW
    gives that row's 8 commands, exactly as the whole table's run gives them; a prefix of a row name is not it."""
    rc, _, every = table_dry(tmp_path)
    rc_row, _, row = table_dry(tmp_path, ROW='fixmatch+acr')
    assert rc == rc_row == 0 and len(row) == 8
    assert row == [c for c in every if '/bem_table1/fixmatch+acr/' in c]
    rc, _, one = table_dry(tmp_path, ROW='fixmatch+acr/c100-g10-n50-m400')
    assert rc == 0 and one == [c for c in row if '/c100-g10-n50-m400/' in c] and len(one) == 1
    for env, key in ((dict(ROW='fixmatch+ac'), 'rows: fixmatch fixmatch+bem'), (dict(ROW='fixmatch', ONLY='c10'),
                                                                               'not both')):
        rc, err, cmds = table_dry(tmp_path, **env)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and key in err and cmds == []
