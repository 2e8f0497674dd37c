"""CPU ms/step of FixMatch / +BEM / ACR / +BEM (WRN-28-2, batch 64, mu 1), measured side by side in one
process on `synthetic`, after the bank is full. Used for the figures in the README / closing note.
Usage: python reproduce/cpu_step_time.py   (a few minutes on 2 cores)."""
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import data  # noqa: E402
import flags  # noqa: E402
import train  # noqa: E402
torch.set_num_threads(2)
ds = data.load_dataset('synthetic')
res = {}
for name, extra in [('fixmatch', ['--alg', 'fixmatch']), ('fixmatch+bem', ['--alg', 'fixmatch', '--bem']),
                    ('acr', ['--alg', 'acr']), ('acr+bem', ['--alg', 'acr', '--bem'])]:
    a = flags.resolve(flags.build_parser().parse_args(['--dataset', 'synthetic', '--n1', '500', '--m1', '100', '--imb-l', '10',
         '--batch-size', '64', '--mu', '1', '--device', 'cpu', '--epoch-steps', '1'] + extra))
    t = train.LTSSLTask(a, ds, torch.device('cpu'), lambda *x: None)
    for _ in range(8):   # warm-up past BEM's est_start (6 * epoch_steps) so the bank is full and mixing is on
        t.train_step()
    ts = []
    for _ in range(4):
        t0 = time.perf_counter(); t.train_step(); ts.append(time.perf_counter() - t0)
    res[name] = np.median(ts) * 1000
    print(f'{name:14s} {res[name]:8.0f} ms/step (median of 4; steps {[round(x*1000) for x in ts]})', flush=True)
print(f"BEM adds {res['fixmatch+bem'] - res['fixmatch']:.0f} ms/step to FixMatch ({100*(res['fixmatch+bem']/res['fixmatch']-1):.1f} %), "
      f"{res['acr+bem'] - res['acr']:.0f} ms/step to ACR ({100*(res['acr+bem']/res['acr']-1):.1f} %)")
print('load average', os.getloadavg())
