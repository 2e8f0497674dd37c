"""train.py: one CLI for both papers' training runs; flags are the only config (`python train.py --help`).

    python train.py --task ltssl --alg acr --bem      # BEM on FixMatch+ACR, CIFAR-10-LT, gamma 100 (ACR's split)
    python train.py --task lt --model ride            # jitter sampling (Method 1) on RIDE, CIFAR-100-LT, imb 100

What a run costs and gives, measured here (docs/results.md; paper-scale GPU figures: docs/speed.md, not yet run):
    `make demo` QUICK, Fashion-MNIST-LT on a 2-core CPU: 149 s for supervised / FixMatch / FixMatch+BEM.
    Fashion-MNIST-LT gamma 100, WRN-28-1, 250 steps, 2-core CPU, 2 seeds: FixMatch 40.7 +- 1.9 %, FixMatch+LA
    51.7 +- 0.1 % top-1 (~450-600 s a run); ResNet-32, 10 epochs: instance 54.1 +- 1.0 %, jitter2 71.0 +- 0.5 %
    mean per-class accuracy (~330 s a run).

A run writes runs/<name>/{args,env}.json, metrics.jsonl, summary.json and checkpoint.pt (atomic; --resume
continues a killed run and ends where the uninterrupted one ends). The file reads top to bottom: the LTSSL step
(augment -> [BEM draw + mix] -> one forward -> framework loss -> SGD + EMA -> [BEM update]), the LT step in its
epoch loop, the pieces both share, the loop, and main(). Every flag, its default and why: flags.py.
No host sync inside a step.
"""
import contextlib
import copy
import os
import signal
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import augment
import bem
import data
import ddp
import jitter
import ltssl
import models
import ride
import runio
import flags
from flags import _need, build_parser, check_world, drw_epoch, given_flags, lr_steps, rerun, resolve, run_name
from runio import UsageError


# ================================================================================================
# The LTSSL step: FixMatch / +LA / +ABC / +ACR (ltssl.py), with BEM (bem.py) or a mixing baseline
# ================================================================================================

def split_joint(z, Bl, Bu, dim=1):
    """The joint batch's labeled | weak | strong parts along dim (logits [H, N, C]: dim 1; feature maps: dim 0)."""
    return z.split([Bl, Bu, z.shape[dim] - Bl - Bu], dim)


class LTSSLTask:
    """FixMatch-style LTSSL on device-resident uint8 data; a step reads as DESIGN.md's data flow:
    draw -> augment -> [BEM: before_forward] -> one forward -> framework loss -> [BEM: after_forward] -> backward ->
    SGD + EMA. BEM is called exactly as a user's loop calls it (bem.BEM's docstring, examples/fixmatch_bem.py)."""

    def __init__(self, args, ds, device, log, dist=None):
        init_common(self, args, device, dist, log)
        self.C, self.mean, self.std = ds.num_classes, ds.mean, ds.std
        self.ssl = args.alg != 'supervised'
        n_unl = self._data(ds)
        self.fw = ltssl.make_framework(
            args.alg, num_classes=self.C, labeled_counts=self.counts.tolist(), total_steps=args.iters,
            steps_per_epoch=args.epoch_steps, threshold=args.threshold, device=device,
            **{k: getattr(args, k) for k in ltssl.FRAMEWORK[args.alg].options})
        self.V = self.fw.strong_views
        self._model()
        self.total_steps = args.iters
        self.lab_sampler = data.EpochSampler(len(self.lab_x), args.batch_size, device, self.gen)
        self.unl_sampler = data.EpochSampler(n_unl, args.mu * args.batch_size, device, self.gen) if self.ssl else None
        # BEM, a mixing baseline, or ECB alone (flags.bem_built: the one rule)
        self.bem = self._bem(n_unl) if flags.bem_built(args) else None
        self.images_per_step = args.batch_size + (args.mu * args.batch_size * (1 + self.V) if self.ssl else 0)
        self.step_fn = compile_step(self, self.math_step)
        c = self.counts.tolist()
        log(f'{ds.name}: labeled {len(self.lab_x)} {c[:10]}{"..." if self.C > 10 else ""}, unlabeled {n_unl}, '
            f'test {len(ds.test_y)}; {args.alg}{" + BEM" if args.bem else ""} on {device}')

    def _data(self, ds):
        """The LTSSL split (data.ltssl_indices) as uint8 device tensors. Returns the unlabeled set's size."""
        a, dev = self.args, self.device
        lab, unl, real, train_y, unl_x = data.ltssl_indices(ds, a.n1, a.m1, a.imb_l, a.imb_u, a.setting, a.split,
                                                            a.seed, supervised=not self.ssl)
        self.counts = np.bincount(train_y[lab], minlength=self.C)
        grow_l, grow_u = flags.split_fixes(a)
        _need(len(lab) >= a.batch_size, f'--batch-size {a.batch_size} is larger than the labeled set ({len(lab)} '
              f'images); lower --batch-size or {grow_l}')
        _need(not self.ssl or len(unl) >= a.mu * a.batch_size, f'unlabeled batch {a.mu * a.batch_size} is larger '
              f'than the unlabeled set ({len(unl)}); lower --mu/--batch-size or {grow_u}')
        to = lambda x, dt=None: torch.as_tensor(x, dtype=dt).to(dev)  # noqa: E731
        self.lab_x, self.lab_y = to(ds.train_x[lab]), to(train_y[lab], torch.long)
        self.unl_x, self.u_real = to(unl_x[unl]), to(real, torch.bool)
        self.test_x, self.test_y = to(ds.test_x), to(ds.test_y, torch.long)
        return len(unl) if self.ssl else 0

    def _model(self):
        """WRN-28 (ResNet-50 on ImageNet-127), two heads for ACR; SGD without decay on BN/bias, ACR's cosine."""
        a, two = self.args, self.fw.num_heads == 2
        net = (models.wrn28(self.C, a.width, two, a.bn_momentum) if a.model == 'wrn'
               else models.resnet50(self.C, two))
        self.model = wrap_model(self, net, find_unused=a.model == 'wrn')
        self.ema = EMA(self.model, a.ema)
        self.opt = torch.optim.SGD(models.no_decay_groups(self.model, a.wd), lr=learning_rate(self, a.lr),
                                   momentum=a.momentum, nesterov=a.nesterov, **_foreach(self.device))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, ltssl.acr_cosine(a.iters))

    def _bem(self, n_unl):
        a = self.args
        self.plain_cam = self.model.cam_layer_matches_head      # WRN: CAM from the head; ResNet-50: Grad-CAM
        # under ACR, Eq. 3's d^u IS ACR's u_py (same EMA, same start): one estimate, saved once (in the framework)
        return bem.BEM(self.C, tuple(self.lab_x.shape[1:]), self.counts.tolist(), n_unl, self.device,
                       bank_size=a.bank_size, beta=a.beta, lambda_d=a.lambda_d, est_start=6 * a.epoch_steps,
                       ess=a.ess, esm=a.esm, ecb=a.ecb, ecb_scope=a.ecb_scope, tau_c=a.tau_c, mix=a.mix,
                       bank=a.bank, views=self.V, mix_views=a.mix_views, cam_refresh=a.cam_refresh,
                       box_mode='device' if self.graph_mode else None, d_u_fn=(lambda: self.fw.u_py) if a.alg == 'acr' else None)

    # -- the step --------------------------------------------------------------------------------
    def steps(self):
        while self.step < self.total_steps:
            self.train_step()
            yield

    def train_step(self):
        """Draw the step's random numbers (eager), run its math (eager, or compiled: --compile step), step the lr."""
        self.opt.zero_grad(set_to_none=True)         # eager: Dynamo does not trace Optimizer.zero_grad
        if not self.step_fn(self.draw()):
            self.sched.step()
        self.step, self.log_n = self.step + 1, self.log_n + 1

    def draw(self):
        """Every random number of one step, in one place: the index samplers, the augmentation, BEM's draws and the
        framework's (ABC's masks), from the task's one generator. torch.compile cannot trace explicit generators,
        so the step's math takes these tensors, eager and compiled alike (the same numbers either way)."""
        g, dev, size = self.gen, self.device, self.lab_x.shape[-1]
        il = self.lab_sampler.next()
        r = dict(il=il, weak_l=augment.draw_weak(len(il), g, dev, size))
        if self.ssl:
            iu = self.unl_sampler.next()
            r.update(iu=iu, weak_u=augment.draw_weak(len(iu), g, dev, size),
                     strong=augment.draw_strong(self.V * len(iu), g, dev, size))
            r['bem'] = self.bem.random_draws(self.V * len(iu), g) if self.bem is not None else None
            r['fw'] = self.fw.random_draws(len(il), len(iu), g, dev)
        return r

    def math_step(self, r):
        """One step's math on its random numbers r. Returns whether the NaN guard skipped it (--nan-policy skip)."""
        clock, ssl = self.clock, self.ssl            # clock: bench.py times these pieces; a no-op in training
        with clock('augmentation'):
            xl, yl, uw, us, u_real = self.augment(r)
        mixes = None                                 # per strong view: bem.Mix (lam, pasted label, ECB weights)
        if self.bem is not None:
            with clock('bem_draw_mix'):
                us, mixes = self.bem.before_forward(us, rand=r['bem'], u_w=uw, teacher=self.teacher)
        with clock('forward'):
            Bl, Bu = len(xl), len(uw) if ssl else 0
            logits, fmap = self.forward([xl, uw, us] if ssl else [xl], Bl, Bu)
            logits = logits.float()                                  # losses, softmax, thresholds in fp32
            zl, zw, zs = split_joint(logits, Bl, Bu) if ssl else (logits, None, None)
            zs = zs.reshape(len(logits), self.V, Bu, -1).transpose(0, 1) if ssl else None   # [V, H, Bu, C]
            loss, logs, pl = self.fw.loss(zl, yl, zw, zs, u_real, self.step_t, r.get('fw'), mixes)
        if self.bem is not None:
            with clock('bem_update'):               # before backward: the boxes come from this forward's model state
                self.bem_update(xl, yl, uw, u_real, zl, zw, fmap, pl)
        with clock('backward'):                     # inline: one graph break (at backward) under --compile step
            skip = guard(self, loss, dict(logs, loss=loss.detach()))
            if not skip:
                loss.backward()
        with clock('opt_ema'):
            if not skip:
                self.opt.step()
                self.ema.update()
            self.step_t.add_(1)
        return skip

    def augment(self, r):
        """Labeled weak view; unlabeled weak view and V strong views (RandAugment, each with its own draws)."""
        xl, yl = augment.weak(self.lab_x[r['il']], r['weak_l'], self.args.labeled_pad), self.lab_y[r['il']]
        if not self.ssl:
            return xl, yl, None, None, None
        u = self.unl_x[r['iu']]
        uw = augment.weak(u, r['weak_u'])
        us = augment.strong(u.repeat(self.V, 1, 1, 1), r['strong'], 'select' if self.graph_mode else None)
        return xl, yl, uw, us, self.u_real[r['iu']]

    def forward(self, parts, Bl, Bu):
        """One joint forward over labeled + weak + strong views (BN statistics over all of them, as in
        ACR). Under torchrun each rank forwards 1/N of every view; logits come back global (ddp.py)."""
        x = augment.normalize(torch.cat(parts), self.mean, self.std)
        if self.dist is None:
            with autocast(self.device):
                return self.fwd(prep_input(x, self.channels_last))
        sizes = [Bl] + [Bu] * (1 + self.V) if self.ssl else [Bl]
        with autocast(self.device):
            logits, fmap = self.fwd(prep_input(ddp.shard(x.split(sizes), self.dist), self.channels_last))
        # Grad-CAM (ResNet-50) needs the gradient, which exists only on this rank's own slice, before the gather
        self.local_out = (logits, fmap) if self.bem is not None and not self.plain_cam else None
        # the feature map is read only by BEM/mixing (CAM boxes): gather it only then, not every step
        fmap = ddp.gather(fmap.detach(), sizes, self.dist, dim=0, autograd=False) if self.bem is not None else fmap
        return ddp.gather(logits, sizes, self.dist, dim=1), fmap

    def teacher(self, x):
        """The EMA model, no grad: (head 0's logits, feature map, head 0's weight) of images x. BEM's in-batch
        partners (--no-bank) and --cam-refresh boxes: labels and CAMs that exist before the step's forward."""
        with torch.no_grad(), autocast(self.device):
            logits, fmap = self.ema.model(prep_input(augment.normalize(x, self.mean, self.std), self.channels_last))
        return logits[0].float(), fmap.float(), self.ema.model.heads[0].weight

    def bem_update(self, xl, yl, uw, u_real, zl, zw, fmap, pl):
        """bem.after_forward: Eq. 3, the E2 entropies, the bank push with CAM boxes from this step's forward (plain CAM
        from head 0's weights; Grad-CAM weights on ResNet-50, whose CAM layer is not the head's input)."""
        fl, fw, _ = split_joint(fmap.detach().float(), len(xl), len(uw), dim=0)
        kw = dict(head_weight=self.model.heads[0].weight.detach())
        if not self.plain_cam:
            kw = dict(cam_weights=self._grad_cam(zl, yl, zw, pl['q'], fmap))
        if 'q_est' in pl:   # ACR: entropies from the balanced head, grouped by u_py's own pseudo-labels
            kw.update(stat_logits_l=zl[1].detach(), stat_logits_w=zw[1].detach(), stat_q=pl['q_est'],
                      stat_mask=pl['mask_est'])
        self.bem.after_forward(self.step_t, x_l=xl, y_l=yl, logits_l=zl[0].detach(), fmap_l=fl, u_w=uw,
                               logits_w=zw[0].detach(), q_u=pl['q'], mask_u=pl['mask'], u_real=u_real, fmap_w=fw, **kw)

    def _grad_cam(self, zl, yl, zw, q, fmap):
        if self.dist is not None:   # each rank differentiates its own rows, then the weights are gathered
            (z, f), self.local_out = self.local_out, None
            return ddp.grad_cam_local(z[0].float(), f, yl, q, self.dist, bem.grad_cam_split)
        return bem.grad_cam_split(zl[0], yl, zw[0], q, fmap)

    # -- evaluation, summary, checkpoint ------------------------------------------------------------
    def at_eval(self):
        return self.step % self.args.eval_every == 0 or self.step == self.total_steps

    def confusion(self, model=None):
        """The EMA model (or `model`) on the test set, every head: confusion counts [H,C,C] on the device."""
        return eval_confusion(self.ema.model if model is None else model, self.test_x, self.test_y, self.mean,
                              self.std, self.C, lambda out: self.fw.test_logits(out[0].float()),
                              bf16=self.args.eval_bf16, channels_last=self.channels_last)

    def evaluate(self):
        names = {v: k for k, v in self.fw.eval_heads.items()}
        top1, per_class = accuracies(self.confusion())
        self.model.train()
        rec = {'step': self.step, 'acc': {names[h]: round(float(top1[h]), 4) for h in names},
               'per_class': {names[h]: per_class[h].round(3).tolist() for h in names},
               'lr': self.sched.get_last_lr()[0], 'train': runio.pop_logs(self)}
        if self.bem is not None:   # s_c, r_c, w_c, d^u, entropies, queue fill, loss-mass shares per class
            b = runio.rounded(self.bem.stats(reset=True))
            b['u_counts'] = b.pop('u_count')
            rec.update(bem=b, u_counts=b['u_counts'], u_entropy=b['u_entropy'], box_area=b['box_area'])
        self.last_acc = rec['acc'][self._eval_name()]
        return rec

    def _eval_name(self):
        return {v: k for k, v in self.fw.eval_heads.items()}[self.fw.eval_head]

    def summary(self, history):
        stat = (f'top-1 (%) of the EMA model, {self._eval_name()} head; tables use mean_last20 '
                f'(mean of the last 20 evaluations, ACR protocol)')
        return runio.summary(self, history, stat, self._eval_name(), {})

    def state_dict(self):
        return dict(runio.task_state(self), ema=self.ema.model.state_dict(), fw=self.fw.state_dict(),
                    lab_sampler=self.lab_sampler.state_dict(),
                    unl_sampler=self.unl_sampler.state_dict() if self.unl_sampler else None,
                    bem=self.bem.state_dict() if self.bem else None)

    def load_state_dict(self, s):
        runio.load_task_state(self, s)
        self.ema.model.load_state_dict(s['ema'])
        self.fw.load_state_dict(s['fw'])
        load_sampler(self.lab_sampler, s['lab_sampler'])
        if self.unl_sampler:
            load_sampler(self.unl_sampler, s['unl_sampler'])
        if self.bem:
            self.bem.load_state_dict(s['bem'])


# ================================================================================================
# The LT step: jitter samplers (jitter.py) on ResNet-32 or RIDE (ride.py), inside an epoch loop
# ================================================================================================

class LTTask:
    """Long-tailed supervised training in epochs (LDAM-DRW / RIDE): the lr steps, DRW starts and the jitter
    sampler's δt changes at epoch boundaries; the sampler's draws per class are counted for the records."""

    def __init__(self, args, ds, device, log, dist=None):
        init_common(self, args, device, dist, log)
        self.C, self.ride = ds.num_classes, args.model == 'ride'
        n = self._data(ds)
        _need(n >= args.batch_size, f'--batch-size {args.batch_size} is larger than the training set ({n}); lower it')
        self.mean, self.std = data.LT_STATS.get(ds.name, (ds.mean, ds.std))
        # RIDE's CIFAR pipeline adds RandomRotation(15); LDAM-DRW's is crop + flip (spec jitter.md §4.2)
        self.degrees = 0.0 if (args.loss == 'ldam' and not self.ride) else 15.0
        inet = args.dataset == 'imagenet_lt'
        net = ride.make_model(args.model, self.C, inet, args.experts, args.reduce, args.group_l2norm, args.loss)
        self.model = wrap_model(self, net, find_unused=False, channels_last=False)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=learning_rate(self, args.lr), momentum=args.momentum,
                                   weight_decay=args.wd, nesterov=args.nesterov, **_foreach(device))
        self.lr_steps = steps = lr_steps(args)
        # RIDE / LDAM-DRW loss with DRW from epoch 160 of 200 (CIFAR), 80 of 100 (ImageNet-LT); None: plain CE.
        # Its margins, DRW weights and class temperatures are buffers: on the training device
        crit = ride.make_loss(args.loss, self.counts.tolist(), drw_epoch(args), args.ride_stage1, inet)
        self.criterion = None if crit is None else crit.to(device)
        g = 0.1 if inet else 0.01                 # lr x0.1 per step on ImageNet-LT, x0.01 on CIFAR
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda e: ride.lr_lambda(e, warmup=5, steps=steps, gamma=g))
        labels, gen = self.sampler_source()
        self.sampler = jitter.make_sampler(
            args.sampler, labels, self.C, args.batch_size, args.epochs, alpha=args.jitter_alpha,
            beta=args.jitter_beta, gamma=args.jitter_gamma, delta_fixed=args.delta_fixed,
            delta_fixed_from=args.delta_fixed_from, gen=gen, counts=self.counts)
        self.ipe = min(self.sampler.iters_per_epoch, args.iters_per_epoch or self.sampler.iters_per_epoch)
        self.total_steps, self.images_per_step = args.epochs * self.ipe, args.batch_size
        # the sampler, visible: δt per epoch, this epoch's draws per class (counted on the device, no sync per
        # step), and the finished epochs' (epoch, δt, draws) not yet written to metrics.jsonl
        self.deltas, self.epoch_draws = [], []
        self.drawn = torch.zeros(self.C, dtype=torch.long, device=device)
        self.step_fn = compile_step(self, self.math_step)
        for note in ds.notes:
            log(f'warning: {note}')
        c = self.counts.tolist()
        log(f'{ds.name}-LT imb {max(c) / max(min(c), 1):g}: {n} images {c[:5]}..{c[-1]}; {args.model} '
            f'{args.loss} {args.sampler}; {args.epochs} epochs x {self.ipe} steps on {device}')

    def _data(self, ds):
        """LDAM-DRW's long-tailed subset (IMBALANCECIFAR) and the test set, on the device. Returns its size."""
        self.counts, self.train_x, self.train_y, self.test_x, self.test_y = data.lt_train_set(ds, self.args.imb,
                                                                                             self.device)
        return len(self.train_y)

    def sampler_source(self):
        """The labels the sampler draws from and its generator: the device's (batches index the device tensors)."""
        return self.train_y, self.gen

    # -- the epoch loop and the step ------------------------------------------------------------------
    def steps(self):
        """Epochs of ipe steps. A run resumed mid-epoch re-enters its epoch with the steps already done."""
        for epoch in range(self.step // self.ipe, self.args.epochs):
            done = self.step - epoch * self.ipe
            self.start_epoch(epoch, done)
            for _ in range(done, self.ipe):
                self.train_step()
                if self.step % self.ipe == 0:
                    self.end_epoch(epoch)              # lr step and the epoch's record, before its evaluation
                yield

    def start_epoch(self, e, done=0):
        """The sampler's δt (Method 1/2) and the loss's DRW stage for epoch e. done > 0: a resumed epoch, whose
        sampler (set_epoch is then a no-op) and δt the checkpoint restored."""
        self.sampler.set_epoch(e)
        if self.criterion is not None and hasattr(self.criterion, 'set_epoch'):
            self.criterion.set_epoch(e)
        if done == 0:
            self.deltas.append(float(self.sampler.delta))

    def end_epoch(self, e):
        self.sched.step()                       # epoch-wise LambdaLR (RIDE CustomLR)
        self.epoch_draws.append((e, self.deltas[-1], self.drawn.clone()))
        self.drawn.zero_()

    def train_step(self):
        """Draw the batch and its view's random numbers (eager), then the step's math (eager or compiled)."""
        self.opt.zero_grad(set_to_none=True)         # eager: Dynamo does not trace Optimizer.zero_grad
        self.step_fn(self.draw())
        self.step, self.log_n = self.step + 1, self.log_n + 1

    def math_step(self, r):
        clock = self.clock                          # bench.py times these pieces; a no-op in training
        with clock('augmentation'):
            x, y = self.batch(r)
            x = augment.normalize(x, self.mean, self.std)
        with clock('forward'):
            out = self.forward(x, len(y))
            out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
            loss = self.criterion(out, y) if self.criterion is not None else F.cross_entropy(
                out[0] if isinstance(out, tuple) else out, y)
        with clock('backward'):
            skip = guard(self, loss, {'loss': loss.detach()})
            if not skip:
                loss.backward()
        with clock('opt_ema'):
            if not skip:
                self.opt.step()
            self.step_t.add_(1)
        return skip

    def count(self, y):
        """Add a global batch's labels to this epoch's per-class draws (index_add_: no host sync, unlike bincount)."""
        self.drawn.index_add_(0, y, torch.ones_like(y))

    def draw(self):
        """The step's random numbers: the jitter sampler's index batch (the GLOBAL batch: every rank draws the same
        indices and augmentation from the same generator) and its view's crop / flip / rotation."""
        idx = self.sampler.next_batch()
        return dict(idx=idx, view=data.draw_lt_view(len(idx), self.gen, self.device))

    def batch(self, r):
        """uint8 training view and labels of the global batch: RIDE's crop/flip/rotation as one batched resample on
        the device; the labels are counted for the sampler's records."""
        y = self.train_y[r['idx']]
        self.count(y)
        return data.lt_view(self.train_x[r['idx']], r['view'], degrees=self.degrees), y

    def local(self, x):
        """This rank's rows of the global batch (ImageNet-LT's ranks decode only their rows: no-op there)."""
        return ddp.shard_rows(x, self.dist)

    def forward(self, x, n):
        """Logits of the global batch of n rows. Under torchrun each rank forwards its rows and the outputs
        come back global (autograd all_gather), so the loss is the one-process loss on the same batch."""
        with autocast(self.device):
            out = self.fwd(prep_input(x if self.dist is None else self.local(x), self.channels_last))
        if self.dist is None:
            return out
        if isinstance(out, tuple):                  # RIDE: (mean [b, C], experts [E, b, C])
            return ddp.gather_rows(out[0], n, self.dist), ddp.gather_rows(out[1], n, self.dist, dim=1)
        return ddp.gather_rows(out, n, self.dist)

    # -- evaluation, summary, checkpoint ------------------------------------------------------------
    def at_eval(self):
        return self.step % (self.args.eval_every * self.ipe) == 0 or self.step == self.total_steps

    def test_set(self):
        """(test data, reduce): every rank evaluates the whole device-resident test set, nothing to sum."""
        return (self.test_x, self.test_y), None

    def confusion(self, model=None):
        """The model (or `model`) on the test set (RIDE: the experts' mean): confusion counts [1,C,C] on the device."""
        fn = (lambda out: out[0][None]) if self.ride else (lambda out: out[None])
        test, reduce = self.test_set()
        return eval_confusion(self.model if model is None else model, test, None, self.mean, self.std, self.C, fn,
                              bf16=self.args.eval_bf16, reduce=reduce, channels_last=self.channels_last)

    def evaluate(self):
        top1, per_class = accuracies(self.confusion())
        self.model.train()
        macc = float(per_class[0].mean())   # the paper's metric: mean per-class accuracy
        self.epoch_draws, draws = [], self.epoch_draws
        self.last_acc = macc
        return {'step': self.step, 'epoch': self.step // self.ipe, 'acc': {'model': round(macc, 4)},
                'top1': round(float(top1[0]), 4), 'per_class': {'model': per_class[0].round(3).tolist()},
                'lr': self.sched.get_last_lr()[0], 'delta': self.deltas[-1] if self.deltas else 0.0,
                'class_probs': [round(float(p), 5) for p in self.sampler.class_probs()],
                'sampling': runio.sampling_records(draws), 'train': runio.pop_logs(self)}

    def summary(self, history):
        stat = 'mean per-class accuracy (%) of the final model (jitter paper §4.1); many >100, few <20 training images'
        return runio.summary(self, history, stat, 'model', {'lr_steps': list(self.lr_steps)})

    def state_dict(self):
        crit = self.criterion.state_dict() if hasattr(self.criterion, 'state_dict') else None
        return dict(runio.task_state(self), sampler=self.sampler.state_dict(), deltas=self.deltas, drawn=self.drawn,
                    epoch_draws=self.epoch_draws, criterion=crit)

    def load_state_dict(self, s):
        runio.load_task_state(self, s)
        load_sampler(self.sampler, s['sampler'])
        self.deltas = s['deltas']
        self.drawn = s['drawn'].to(self.device)
        self.epoch_draws = [(e, d, c.to(self.device)) for e, d, c in s['epoch_draws']]
        if s.get('criterion') is not None:
            self.criterion.load_state_dict(s['criterion'])


class ImageNetLTTask(LTTask):
    """LTTask on ImageNet-LT: 115k full-size JPEGs, decoded and augmented by PIL in DataLoader workers
    (data.JpegEpochs). The jitter sampler draws the indices on the host, one epoch at a time (the workers need
    them there, and no device value is read back), so the workers decode ahead of the step. A mid-epoch
    checkpoint stores the sampler as it was at the epoch's start; the resumed epoch draws it again and skips the
    batches already trained."""

    def _data(self, ds):
        # the ImageNet-LT train list IS the long-tailed split (1280 -> 5 images): no LDAM subset
        self.counts = np.bincount(ds.train_y, minlength=self.C)
        self.host_y = torch.as_tensor(ds.train_y, dtype=torch.long)       # the sampler's and the workers' labels
        self.train_y = self.host_y.to(self.device)
        rows = (lambda keys: keys) if self.dist is None else (lambda keys: keys[slice(*ddp.row_range(len(keys), self.dist))])
        self.jpegs = data.JpegEpochs(ds, self.args.img_size, self.args.seed, self.args.workers, self.device, rows)
        self.epoch_state = None
        return len(ds.train_y)

    def sampler_source(self):
        """Host labels and a host generator (made by the one seam): the epoch's indices go to the decode workers."""
        return self.host_y, make_generator(torch.device('cpu'), self.args.seed)

    def start_epoch(self, e, done=0):
        super().start_epoch(e, done)
        self.epoch_state = self.sampler.state_dict()
        # a list, not a stack: shuffle / jitter-noreplace end the epoch with a partial batch
        idx = [self.sampler.next_batch() for _ in range(self.ipe)]
        to = lambda b: self.host_y[b].to(self.device, non_blocking=True)  # noqa: E731  the global batch's labels
        if done == 0:                        # resumed: the checkpoint's counts already hold the whole epoch
            for b in idx:
                self.count(to(b))
        self.epoch_x = self.jpegs.train(idx, self.step - done, skip=done)
        self.epoch_y = (to(b) for b in idx[done:])

    def draw(self):
        """This rank's decoded rows (PIL-augmented in the workers) and the GLOBAL batch's labels (the loss is taken
        on the global batch): the sampler drew the whole epoch at its start, so the step draws nothing."""
        return dict(x=next(self.epoch_x), y=next(self.epoch_y))

    def batch(self, r):
        return r['x'], r['y']

    def local(self, x):
        return x                             # already this rank's rows (JpegEpochs rows)

    def test_set(self):
        """This rank's rows of the test set; the per-class counts are summed over the ranks."""
        return self.jpegs.test(), None if self.dist is None else ddp.all_sum

    def state_dict(self):
        s = super().state_dict()
        if self.step % self.ipe != 0:        # mid-epoch: the sampler has already drawn the whole epoch
            s['sampler'] = self.epoch_state
        return s


# ================================================================================================
# Shared pieces: device, model wrapping, EMA, NaN guard, evaluation, summaries, checkpoints
# ================================================================================================

def pick_device(name):
    _need(name != 'cuda' or torch.cuda.is_available(), '--device cuda but no CUDA device is visible; use '
          '--device cpu or check CUDA_VISIBLE_DEVICES')
    return torch.device('cuda' if name in ('auto', 'cuda') and torch.cuda.is_available() else 'cpu')


def use_channels_last(device):
    """channels_last activations and weights on CUDA (perf.md §7); NCHW elsewhere."""
    return device.type == 'cuda'


def prep_input(x, channels_last):
    """bf16 autocast handles the dtype; channels_last (CUDA) needs the activations in that memory format."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def autocast(device, bf16=None):
    """bf16 autocast on CUDA, off elsewhere. bf16=False keeps fp32 (evaluation's default); bf16=True forces
    it on CPU too (tests/test_cuda_paths_cpu.py)."""
    bf16 = device.type == 'cuda' if bf16 is None else bf16
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def _foreach(device, fused=None):
    """Fused SGD on CUDA (one kernel for all parameters); foreach elsewhere; fused=True forces it (CPU tests)."""
    fused = device.type == 'cuda' if fused is None else fused
    return {'fused': True} if fused else {'foreach': True}


def _untimed(piece):
    """The default clock of a task: no timing (bench.py swaps in one that times each piece of the step)."""
    return contextlib.nullcontext()


def make_generator(device, seed):
    """The task's one generator, on its device: every random number of a step comes from it (task.draw). The seam
    tests/test_cuda_standin.py swaps: a CUDA generator cannot be made without a GPU, even under fake tensors."""
    return torch.Generator(device).manual_seed(seed)


def init_common(task, args, device, dist, log):
    """What both tasks carry: step counter (a host int, and step_t on the device for the step's math), generator,
    NaN guard, loss-log accumulators, torchrun state, and whether the step is compiled whole (--compile step)."""
    task.args, task.device, task.dist, task.log = args, device, dist, log
    task.channels_last = use_channels_last(device)
    task.graph_mode = args.compile == 'step'       # traceable paths: select-mode augmentation, device CCL boxes
    task.step, task.elapsed, task.images, task.clock = 0, 0.0, 0, _untimed
    task.step_t = torch.zeros((), dtype=torch.long, device=device)
    task.gen = make_generator(device, args.seed)
    task.first_bad = torch.full((), -1, dtype=torch.long, device=device)
    task.bad_terms, task.log_sums, task.log_n = {}, {}, 0


def load_sampler(sampler, sd):
    """A sampler's state; from a checkpoint of another device its generator (the task's, already re-seeded by
    runio.load_task_state) keeps its new state."""
    if 'gen' in sd and sd['gen'].numel() != sampler.gen.get_state().numel():
        sd = dict(sd, gen=sampler.gen.get_state())
    sampler.load_state_dict(sd)


def learning_rate(task, lr):
    """The optimiser's lr: a device tensor under --compile step (the schedule fills it in place, so the compiled
    step neither recompiles nor re-captures its CUDA graph when the lr changes), a float otherwise."""
    return torch.tensor(lr, device=task.device) if task.graph_mode else lr


def compile_step(task, math_step):
    """--compile step: the step's math (augmentation, BEM, forward, losses, NaN guard | backward | SGD, EMA) as one
    torch.compile'd function: Dynamo splits it at loss.backward() (AOTAutograd compiles the backward), so a step is
    at most 3 graphs (tests/test_compile.py counts them; bench.py reports them per compiled row). CUDA:
    mode='reduce-overhead' (CUDA graphs; the shapes are static). --compile model compiles the network alone (wrap_model); off: eager."""
    if task.args.compile != 'step':
        return math_step
    _need(task.dist is None, '--compile step runs in one process; under torchrun use --compile model')
    compiled = torch.compile(math_step, mode='reduce-overhead' if task.device.type == 'cuda' else None)
    marked = False

    def step(r):
        nonlocal marked
        # The first step runs eagerly: it creates the loss-log and NaN-guard accumulators (guard()). Created inside
        # the graph, Inductor folds `zeros + loss.detach()` into the loss's own buffer and hands back a loss with no
        # grad_fn (backward fails at step 1: torch 2.14, CPU), and the dict's new keys would recompile at step 2.
        if not task.log_sums:
            return math_step(r)
        if not marked:             # once, after the accumulators exist (a resumed run: after the checkpoint load)
            for t in step_tensors(task):
                torch._dynamo.mark_static_address(t)
            marked = True
        return compiled(r)
    return step


STEP_STATE = ('fw', 'bem', 'ema', 'criterion', 'model', 'log_sums', 'bad_terms', 'step_t', 'first_bad', 'drawn')
_OWN_MODULES = {'bem', 'ltssl', 'train', 'ride', 'jitter', 'data', 'augment', 'models'}


def step_tensors(task):
    """Every tensor of the state a step reads and updates in place (the framework's and BEM's statistics and bank,
    EMA, loss buffers, BatchNorm statistics, the accumulators, the lr). --compile step marks them static
    (torch._dynamo.mark_static_address): CUDA graphs (mode='reduce-overhead') replay only over inputs at fixed
    addresses, and skip a graph that mutates any other input. They keep their identity for the whole run
    (tests/test_compile.py), so the marks add no recompilation."""
    seen, out = set(), []

    def walk(o, depth):
        if id(o) in seen or depth > 5:
            return
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            out.append(o)
        elif isinstance(o, torch.nn.Module):
            for t in list(o.parameters()) + list(o.buffers()):
                walk(t, depth + 1)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, depth + 1)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v, depth + 1)
        elif type(o).__module__ in _OWN_MODULES and hasattr(o, '__dict__'):
            for v in vars(o).values():
                walk(v, depth + 1)
    for name in STEP_STATE:
        walk(getattr(task, name, None), 0)
    walk([g['lr'] for g in task.opt.param_groups], 0)
    return out


def wrap_model(task, net, find_unused, channels_last=None):
    """The trained module on the task's device (channels_last on CUDA; global BN under torchrun) and task.fwd,
    what the step calls (DDP; torch.compile of the network alone under --compile model). One move: a module that
    is already on the device is not moved again (fake tensors cannot be swapped twice: test_cuda_standin.py)."""
    cl = task.channels_last if channels_last is None else channels_last
    net = net.to(task.device, memory_format=torch.channels_last if cl else torch.preserve_format)
    if task.dist is not None:
        net = ddp.convert_bn(net, task.device)              # BatchNorm over the global batch
        bns = sorted({type(m).__name__ for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)})
        task.log(f'torchrun: world {task.dist.world}, backend {torch.distributed.get_backend()}, DDP, '
                 f'BatchNorm {"/".join(bns) or "none"} on {task.device}')   # what ran (gpu_check's DDP row reads it)
    task.fwd = ddp.wrap(net, task.dist, find_unused=find_unused) if task.dist is not None else net
    task.fwd = torch.compile(task.fwd) if task.args.compile == 'model' else task.fwd
    return net


class EMA:
    """kekmodel/ACR ModelEMA: ema = d*ema + (1-d)*param for parameters; buffers (BN stats) copied."""

    def __init__(self, model, decay):
        self.model, self.decay = copy.deepcopy(model).eval(), decay
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.src_p, self.dst_p = list(model.parameters()), list(self.model.parameters())
        self.src_b, self.dst_b = list(model.buffers()), list(self.model.buffers())

    @torch.no_grad()
    def update(self):
        torch._foreach_mul_(self.dst_p, self.decay)
        torch._foreach_add_(self.dst_p, self.src_p, alpha=1 - self.decay)
        for d, s in zip(self.dst_b, self.src_b):
            d.copy_(s)


class NonFinite(Exception):
    """A loss became NaN/inf: the run stops, names the step and the loss term, keeps the last checkpoint."""


def guard(task, loss, logs):
    """Record (on the device, no sync) the first step whose loss or a loss term is non-finite; sum the logs. Every
    accumulator is updated in place (a compiled step's CUDA graph replays into the same memory)."""
    if task.args.inject_nan is not None:         # tests: NaN at step --inject-nan (a tensor test, no host branch)
        nan = torch.where(task.step_t == task.args.inject_nan, float('nan'), 1.0)
        k = next(iter(logs))
        logs[k], loss = logs[k] * nan, loss * nan
    bad = ~torch.isfinite(loss) | _bn_bad(task)
    task.first_bad.copy_(torch.where(bad & (task.first_bad < 0), task.step_t, task.first_bad))
    for k, v in logs.items():
        if k not in task.bad_terms:
            task.bad_terms[k] = torch.zeros((), dtype=torch.bool, device=task.device)
        if k not in task.log_sums:
            task.log_sums[k] = torch.zeros((), device=task.device)
        task.bad_terms[k] |= ~torch.isfinite(v)
        task.log_sums[k] += v.detach().float()     # log_n (a host int) is counted by train_step, outside the math
    return bool(bad.item()) if task.args.nan_policy == 'skip' else False   # opt-in: one host sync per step


BN_TERM = 'BatchNorm running statistics'


def _bn_bad(task):
    """Whether a BatchNorm running mean/var is non-finite (they change in the forward, outside the loss): one max-abs
    per buffer and one flag, on the device (no sync), accumulated into bad_terms like a loss term."""
    if not hasattr(task, 'bn_stats'):
        task.bn_stats = [t for m in task.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                         and m.track_running_stats for t in (m.running_mean, m.running_var)]
    if not task.bn_stats:
        return torch.zeros((), dtype=torch.bool, device=task.device)
    bad = ~torch.isfinite(torch.stack(torch._foreach_norm(task.bn_stats, float('inf')))).all()
    if BN_TERM not in task.bad_terms:
        task.bad_terms[BN_TERM] = torch.zeros((), dtype=torch.bool, device=task.device)
    task.bad_terms[BN_TERM] |= bad
    return bad


def check_finite(task):
    """The host side of the NaN guard (every --log-every steps): non-finite BatchNorm statistics stop the run under
    either --nan-policy (skipping steps cannot repair them); the hint names the flag most likely at fault."""
    s = int(task.first_bad.item())
    terms = [k for k, v in task.bad_terms.items() if bool(v.item())] if s >= 0 else []
    if s < 0 or (task.args.nan_policy != 'stop' and BN_TERM not in terms):
        return
    loss_terms = [k for k in terms if k != BN_TERM]
    if BN_TERM in terms and not loss_terms:      # a NaN loss poisons the weights, then the statistics: name the loss
        hint = 'lower --bn-momentum or --lr' if getattr(task.args, 'bn_momentum', None) is not None else 'lower --lr'
        raise NonFinite(f'non-finite {BN_TERM} at step {s}; the last good checkpoint is kept -- {hint}')
    raise NonFinite(f'non-finite loss at step {s} (term {", ".join(loss_terms or ["total"])}); the last good checkpoint '
                    f'is kept -- lower --lr, or pass --nan-policy skip to skip such steps')


@torch.no_grad()
def eval_confusion(model, x_u8, y, mean, std, num_classes, head_fn, batch=1024, bf16=False, reduce=None,
                   channels_last=False):
    """Per head, the test set's confusion counts [H, C true, C predicted], on the device, no host copy: the one
    evaluation loop (train.py's periodic evaluation and report.py eval both call it).

    x_u8, y: device tensors; or x_u8 = an iterable of (uint8 images, labels) device batches and y = None.
    fp32 unless bf16 (--eval-bf16): training runs under bf16 autocast, evaluation does not by default.
    reduce: sums the counts over ranks when each rank evaluated only its share of the test set.
    """
    model.eval()
    if y is None and isinstance(x_u8, tuple):
        x_u8, y = x_u8
    batches = ((x_u8[i:i + batch], y[i:i + batch]) for i in range(0, len(x_u8), batch)) if y is not None else x_u8
    cm = None
    for xb, yb in batches:
        with autocast(xb.device, bf16=None if bf16 else False):  # fp32 by default; --eval-bf16: as training
            logits = head_fn(model(prep_input(augment.normalize(xb, mean, std), channels_last))).float()  # [H,B,C]
        classes = torch.arange(num_classes, device=yb.device)
        pred = (logits.argmax(-1)[..., None] == classes).float()                         # [H,B,C] one-hot
        true = (yb[:, None] == classes).float()                                         # [B,C], no range check
        c = torch.einsum('bt,hbp->htp', true, pred)                                     # [H,C,C]
        cm = c if cm is None else cm + c
    return cm if reduce is None else reduce(cm)


def accuracies(cm):
    """(top-1 [H], per-class accuracy [H,C]) in %, as numpy, from eval_confusion's counts: the evaluation's one
    host copy."""
    correct, total = cm.diagonal(dim1=1, dim2=2), cm[0].sum(1)                       # [H,C], images per class [C]
    return ((100 * correct.sum(1) / total.sum()).cpu().numpy(), (100 * correct / total.clamp(min=1)).cpu().numpy())


# ================================================================================================
# The loop: run directory, resume, periodic evaluation and checkpoint, clean stop on a signal
# ================================================================================================

def make_task(args, device, log, dist=None):
    """The run's data, then its task: what train() runs and report.py eval rebuilds."""
    ds = data.load_dataset(args.dataset, args.data_dir, args.img_size,
                           with_unlabeled=(args.task == 'ltssl' and args.alg != 'supervised'),
                           counts=args.folder_counts, labeled_share=args.labeled_share, device=device)
    return task_on(args, ds, device, log, dist)


def task_on(args, ds, device, log, dist=None):
    """The task of `args` on a loaded dataset (bench.py times several configurations on one load)."""
    if args.task == 'ltssl':
        return LTSSLTask(args, ds, device, log, dist)
    return (ImageNetLTTask if ds.streaming else LTTask)(args, ds, device, log, dist)


def train(args, log=print):
    dist = ddp.init()
    device = dist.device if dist else pick_device(args.device)
    write = dist is None or dist.main                  # only rank 0 writes
    log = log if write else (lambda *a, **k: None)
    if dist is not None:
        check_world(args, dist.world)
    if args.deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    run_dir = args.out or os.path.join(args.runs_dir, run_name(args))
    lock = runio.RunLock(run_dir)        # rank 0 holds it from the first check to the end of the run
    try:
        return _run(args, run_dir, lock, device, dist, write, log)
    finally:
        lock.release()


def _run(args, run_dir, lock, device, dist, write, log):
    """Every check (arguments against the run directory, the checkpoint, metrics.jsonl, the data) before the first
    write, so that a refused run leaves the directory byte-for-byte as it was."""
    args_dict = {k: v for k, v in vars(args).items()}
    resuming = runio.prepare(run_dir, args_dict, args.resume)
    if write:
        lock.acquire()                    # a second process on the same --out stops here (or in create)
    state = runio.resume_state(run_dir, args_dict, log) if resuming else None
    history = runio.read_metrics(run_dir, state['step'] if state else 0, log) if resuming else []
    if dist is not None:
        torch.distributed.barrier()                      # every rank checked the run dir before rank 0 creates it
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    task = make_task(args, device, log, dist)    # loads data: a DataError leaves no run directory behind
    if state is not None:
        _load_state(task, state, run_dir)
        log(f'resumed {run_dir} at step {task.step}')
    if write:
        runio.create(run_dir, args_dict, runio.env_record(device), lock, resuming)
        if resuming:
            runio.write_metrics(run_dir, history)
    tb = runio.TensorBoard(run_dir, task.step + 1 if resuming else None) if write and args.tensorboard else None
    try:
        return loop(task, run_dir, history, args, log, write, tb)
    finally:
        if tb is not None:
            tb.close()


def _load_state(task, state, run_dir):
    """A checkpoint written before checkpoints recorded their configuration may still not fit: refused, not a
    state_dict traceback."""
    try:
        task.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise UsageError(f'the checkpoint in {run_dir} does not fit this run ({type(e).__name__}: '
                         f'{str(e).splitlines()[0][:120] if str(e) else "?"}); restore the run\'s own checkpoint '
                         f'or use another --out') from None


def loop(task, run_dir, history, args, log, write=True, tb=None):
    stop, t0, n0, elapsed = runio.Stop(), time.time(), task.step, task.elapsed
    bar = _progress(task, args.progress if write else False)
    for _ in task.steps():
        bar.update(1)
        boundary = task.step % args.log_every == 0 or task.step == task.total_steps
        if boundary:
            check_finite(task)                    # host sync: only every --log-every steps
            bar.set_postfix_str(runio.postfix(task, time.time() - t0, task.step - n0))
        if task.at_eval():
            check_finite(task)
            history.append(task.evaluate())
            task.elapsed = elapsed + time.time() - t0
            if write:
                runio.append_metrics(run_dir, history[-1], tb)
                runio.save_checkpoint(run_dir, task.state_dict())
        if _stop_requested(stop, boundary, task.dist):
            return _stopped(task, run_dir, stop, bar, elapsed + time.time() - t0, write, log)
    bar.close()
    task.elapsed = elapsed + time.time() - t0
    s = task.summary(history)
    if write:
        runio.write_json(os.path.join(run_dir, 'summary.json'), s)
    log(f'done: {run_dir}  {s["statistic"]}: last {s["last"]:.2f}  mean_last20 {s["mean_last20"]:.2f}')
    return 0


def _stopped(task, run_dir, stop, bar, elapsed, write, log):
    check_finite(task)
    task.elapsed = elapsed
    if write:
        runio.save_checkpoint(run_dir, task.state_dict())
    bar.close()
    sig = stop.signal or signal.SIGTERM
    log(f'stopped by signal {sig} at step {task.step}; checkpoint written, continue with --resume')
    return 128 + sig


def _stop_requested(stop, boundary, dist):
    """Single process: stop at the next step. torchrun: ranks agree at --log-every boundaries (one all_reduce)."""
    if dist is None:
        return stop.signal is not None
    return boundary and ddp.any_flag(stop.signal is not None, dist)


def _progress(task, show):
    show = show if show is not None else sys.stderr.isatty()
    return tqdm(total=task.total_steps, initial=task.step, disable=not show, dynamic_ncols=True, smoothing=0.05,
                file=QuietOnClose(sys.stderr))


class QuietOnClose:
    """A stream for the progress bar: when its pipe closes (`train.py --progress 2>&1 | head -1`) it goes quiet and
    the run goes on (tqdm's BrokenPipeError ended the run with exit 1)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        self._quiet_on_close(self.stream.write, text)

    def flush(self):
        self._quiet_on_close(self.stream.flush)

    def _quiet_on_close(self, fn, *a):
        try:
            fn(*a)
        except BrokenPipeError:
            quiet(self.stream)

    def __getattr__(self, name):          # fileno, isatty ... (tqdm sizes the bar from the terminal)
        return getattr(self.stream, name)


def _error(e):
    if os.environ.get('RANK', '0') == '0':        # under torchrun, one line from rank 0, not one per process
        QuietOnClose(sys.stderr).write(f'error: {e}\n')


def say(*a, **k):
    """print for the run's log lines; a closed stdout (`train.py ... | head -1`) silences them, the run goes on."""
    try:
        print(*a, **k, flush=True)
    except BrokenPipeError:
        quiet(sys.stdout)


def quiet(stream):
    """Point a closed stream's descriptor at /dev/null: the interpreter's final flush would otherwise raise
    BrokenPipeError again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        args = rerun(args.args_from, argv) if args.args_from else resolve(args, given_flags(argv))
        if args.check_data:
            ok, msg = data.dataset_present(args.dataset, args.data_dir, args.img_size)
            _need(ok, msg + '; see README "Datasets" for where the files go')
            return 0
        return train(args, log=say)
    except (UsageError, data.DataError) as e:
        _error(e)
        return 2
    except NonFinite as e:
        _error(e)
        return 3
    except KeyboardInterrupt:            # Ctrl-C before the loop's handler (startup, data load): nothing half-written
        _error('interrupted (Ctrl-C) before training started; run the command again (with --resume if the run '
               'directory exists)')
        return 128 + signal.SIGINT


if __name__ == '__main__':
    code = main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for stream in (sys.stdout, sys.stderr):
        QuietOnClose(stream).flush()
    sys.exit(code)
