"""`pip install .` in a fresh virtual environment, then the modules import from another directory.

No download: the new venv sees this interpreter's site-packages through a .pth file (so torch & co. count as
installed), pip runs with --no-index and --no-build-isolation (this interpreter's setuptools builds the wheel).
The project is installed from a copy of the checkout's files, so no build/ or *.egg-info lands in the checkout.
"""
import ast
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT

tomllib = pytest.importorskip('tomllib')     # Python 3.11+

with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    PYPROJECT = tomllib.load(f)
MODULES = PYPROJECT['tool']['setuptools']['py-modules']


def test_every_top_level_module_is_packaged():
    assert sorted(MODULES) == sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py')))


def requirements(name):
    with open(os.path.join(ROOT, name)) as f:
        return [ln.strip() for ln in f if ln.strip() and not ln.startswith('#')]


def test_one_dependency_list():
    """pyproject reads requirements-core.txt; requirements.txt (make's .venv) installs it, then the dev extras."""
    assert PYPROJECT['tool']['setuptools']['dynamic']['dependencies'] == {'file': ['requirements-core.txt']}
    assert requirements('requirements.txt')[0] == '-r requirements-core.txt'
    assert 'torch' in requirements('requirements-core.txt') and 'pytest' not in requirements('requirements-core.txt')


def checkout_files():
    """The checkout's files (tracked and new, not ignored); without git, what the package needs."""
    try:
        out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        return [p for p in out.split('\0') if p and os.path.isfile(os.path.join(ROOT, p))]
    except (OSError, subprocess.CalledProcessError):
        return ['pyproject.toml', 'README.md', 'requirements-core.txt'] + [f'{m}.py' for m in MODULES]


def test_pip_install_in_a_fresh_venv(tmp_path):
    src, venv, elsewhere = tmp_path / 'src', tmp_path / 'venv', tmp_path / 'elsewhere'
    for p in checkout_files():
        os.makedirs(src / os.path.dirname(p), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, p), src / p)
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    py = str(venv / 'bin' / 'python')
    site = subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, 'dev_env.pth'), 'w') as f:       # torch, numpy, cv2, setuptools, pip: not fetched
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PIP_REQUIRE_VIRTUALENV')}
    r = subprocess.run([py, '-m', 'pip', 'install', '-q', '--no-index', '--no-build-isolation', str(src)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    elsewhere.mkdir()
    code = ('import importlib.metadata as md, bem, jitter, train; '
            'print(bem.__file__); print(jitter.__file__); print(md.requires("bem-jitter-lt"))')
    r = subprocess.run([py, '-c', code], cwd=elsewhere, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    bem_file, jitter_file, requires = r.stdout.splitlines()
    assert bem_file == os.path.join(site, 'bem.py') and jitter_file == os.path.join(site, 'jitter.py')
    assert sorted(ast.literal_eval(requires)) == sorted(requirements('requirements-core.txt'))
