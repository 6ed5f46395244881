"""Reference gradients and Adam steps for SwiftKV distillation (run on the GPU machine; CPU torch works too).

For two SwiftKV parity checkpoints of cases.json (the C# CLI writes them, seeded, so CI rebuilds the identical
files), PyTorch autograd in float64 computes, over a batch of two token sequences with loss masks:
  loss = T^2 * sum over scored positions of KL(softmax(z_teacher / T) || softmax(z_student / T)) / scored positions
with the teacher = swiftkv_reference.forward(swiftkv=False) and the student = forward(swiftkv=True), as SWIFTKV.md's
"Distillation" defines it (one case adds its optional term: the squared difference of the states entering the last
layer, averaged over hidden units, weighted 0.5); the gradient of every trainable tensor (norm_swiftkv and the *_swiftkv projections); and
the tensors after three torch.optim.Adam steps (betas 0.9 / 0.999, eps 1e-8, no weight decay) on that batch.

  bash .gpu/gpu-env.sh python3 tests/reference/make_distill_fixtures.py --cli .gpu/apps/SwiftKV.Cli/swiftkv.dll --out $OUT
then unpack $OUT/distill.tar.gz into tests/fixtures/.
"""
import argparse
import json
import os
import sys
import tarfile
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
import swiftkv_reference as ref  # noqa: E402
from make_fixtures import checkpoint_digest, make_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# (fixture name, parity checkpoint, weight of the hidden-state MSE term)
CASES = [("swiftkv_50_g2", "swiftkv_50_g2", 0.0), ("swiftkv_50_g2_tied_bias", "swiftkv_50_g2_tied_bias", 0.0),
         ("swiftkv_50_g4_hidden", "swiftkv_50_g4", 0.5)]
TEMPERATURE = 2.0
LEARNING_RATE = 1e-2
STEPS = 3


def trainable(cfg, tensors):
    names = ["model.norm_swiftkv.weight"]
    l, g = cfg["num_key_value_layers"], cfg.get("key_value_group_size", 1)
    for j in range(l, cfg["num_hidden_layers"]):
        a = f"model.layers.{j}.self_attn."
        projections = ["q_proj_swiftkv"] + (["k_proj_swiftkv", "v_proj_swiftkv"] if (j - l) % g == 0 else [])
        for p in projections:
            for kind in ("weight", "bias"):
                if a + p + "." + kind in tensors:
                    names.append(a + p + "." + kind)
    return names


def batch_loss(cfg, t, batch, hidden_weight):
    """T^2 KL summed over scored positions, plus hidden_weight * the mean over hidden units of the squared difference of
    the states entering the last layer, summed over the same positions; divided by the batch's scored positions."""
    total, positions = 0.0, 0
    for ids, mask in batch:
        kt, ks = {}, {}
        with torch.no_grad():
            zt = ref.forward(cfg, t, ids, swiftkv=False, keep=kt)
        zs = ref.forward(cfg, t, ids, swiftkv=True, keep=ks)
        m = torch.tensor(mask)
        pt = torch.softmax(zt[m] / TEMPERATURE, dim=-1)
        log_ps = torch.log_softmax(zs[m] / TEMPERATURE, dim=-1)
        total = total + TEMPERATURE ** 2 * (pt * (pt.log() - log_ps)).sum()
        if hidden_weight:
            total = total + hidden_weight * ((ks["before_last"][m] - kt["before_last"][m]) ** 2).mean(dim=-1).sum()
        positions += int(m.sum())
    return total / positions


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cases = {c["name"]: c for c in json.load(open(os.path.join(HERE, "cases.json")))["models"]}
    work = tempfile.mkdtemp()
    staging = os.path.join(work, "distill")
    os.makedirs(staging)
    for name, source, hidden_weight in CASES:
        case = cases[source]
        ckpt = os.path.join(work, name)
        make_model(a.cli, case["make_model"], ckpt)
        cfg, t = ref.load_checkpoint(ckpt)
        t = {k: v.to(torch.float64) for k, v in t.items()}
        gen = torch.Generator().manual_seed(77)
        batch = []
        for length in (17, 11):
            ids = torch.randint(0, cfg["vocab_size"], (length,), generator=gen).tolist()
            mask = [bool(torch.rand(1, generator=gen) < 0.7) and i < length - 1 for i in range(length)]
            batch.append((ids, mask))
        names = trainable(cfg, t)
        for n in names:
            t[n].requires_grad_(True)
        loss = batch_loss(cfg, t, batch, hidden_weight)
        loss.backward()
        grads = torch.cat([t[n].grad.reshape(-1) for n in names])
        opt = torch.optim.Adam([t[n] for n in names], lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
        losses = []
        for n in names:
            t[n].grad = None
        for _ in range(STEPS):
            opt.zero_grad()
            step_loss = batch_loss(cfg, t, batch, hidden_weight)
            step_loss.backward()
            opt.step()
            losses.append(step_loss.item())
        after = torch.cat([t[n].detach().reshape(-1) for n in names])
        grads.numpy().astype("<f4").tofile(os.path.join(staging, name + ".grads.f32"))
        after.numpy().astype("<f4").tofile(os.path.join(staging, name + ".after.f32"))
        meta = {
            "name": name,
            "make_model": case["make_model"],
            "checkpoint_sha256": checkpoint_digest(ckpt),
            "config": cfg,
            "temperature": TEMPERATURE,
            "hidden_loss_weight": hidden_weight,
            "learning_rate": LEARNING_RATE,
            "steps": STEPS,
            "sequences": [{"token_ids": ids, "loss_mask": mask} for ids, mask in batch],
            "tensors": [{"name": n, "size": t[n].numel()} for n in names],
            "loss": loss.item(),
            "step_losses": losses,
            "reference": "PyTorch %s autograd in float64 over tests/reference/swiftkv_reference.py; torch.optim.Adam" % torch.__version__,
        }
        json.dump(meta, open(os.path.join(staging, name + ".json"), "w"), indent=1)
        print(f"{name}: loss {loss.item():.6f}, step losses {losses}, {len(names)} tensors, {grads.numel()} values", flush=True)
    with tarfile.open(os.path.join(a.out, "distill.tar.gz"), "w:gz") as tar:
        tar.add(staging, arcname="distill")


if __name__ == "__main__":
    main()
