"""Resuming across devices (issue 21): a checkpoint written on a GPU continues on the CPU and back. A generator's
state is device-specific (CPU: 5056 bytes of Mersenne Twister; CUDA: 16 bytes, Philox seed and offset), so the
resumed run re-seeds its stream from (seed, step), says so in one line, and is then as deterministic as any run.

No GPU here: a CUDA checkpoint is a CPU one whose generator states are replaced by 16-byte CUDA-shaped states (what
torch.cuda's Generator.get_state() returns); everything else in a checkpoint is device-neutral (torch.load maps it).
"""
import io

import pytest
import torch

import conftest
import flags
import train

LTSSL = conftest.TINY + ['--alg', 'fixmatch', '--bem']
LT = conftest.TINY_LT + ['--sampler', 'jitter1']


def task_of(argv, logs):
    a = flags.resolve(flags.build_parser().parse_args(argv), flags.given_flags(argv))
    torch.manual_seed(a.seed)
    with pytest.MonkeyPatch.context() as mp:
        conftest.patch_small_data(mp, conftest.LT_SYNTHETIC if '--task' in argv else conftest.TINY_SYNTHETIC)
        return train.make_task(a, torch.device('cpu'), logs.append)


def take(task, n):
    for _ in range(n):
        if hasattr(task, 'ipe'):
            task.start_epoch(task.step // task.ipe, task.step % task.ipe)
        task.train_step()
    return [p.detach().clone() for p in task.model.parameters()]


def from_disk(state):
    """The checkpoint as a resumed run reads it: its own tensors (a loaded state shares none with a live task)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def as_cuda_checkpoint(state):
    """Every generator state in the checkpoint (the task's and its samplers') as a CUDA generator's: 16 bytes."""
    cuda_gen = torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0], dtype=torch.uint8)

    def walk(x):
        if isinstance(x, dict):
            return {k: cuda_gen.clone() if k == 'gen' else walk(v) for k, v in x.items()}
        return x
    return walk(state)


@pytest.mark.parametrize('argv', [LTSSL, LT], ids=['ltssl-bem', 'lt-jitter'])
def test_a_cuda_checkpoint_resumes_on_the_cpu_reseeded_and_deterministic(argv):
    logs = []
    first = task_of(argv, logs)
    take(first, 2)
    state = first.state_dict()
    same = task_of(argv, logs)
    same.load_state_dict(from_disk(state))                # the same device: the stream goes on exactly
    assert not [m for m in logs if 'another device' in m]
    after_same = take(same, 2)
    cuda = as_cuda_checkpoint(state)
    runs = []
    for _ in range(2):
        logs.clear()
        t = task_of(argv, logs)
        t.load_state_dict(from_disk(cuda))
        warned = [m for m in logs if 'another device' in m]
        assert len(warned) == 1 and 're-seeded at step 2' in warned[0] and '\n' not in warned[0]
        assert t.step == 2
        runs.append(take(t, 2))
    assert all(torch.equal(a, b) for a, b in zip(*runs))             # re-seeded from (seed, step): deterministic
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], after_same))   # and truly another stream
