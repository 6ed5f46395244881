"""Produce the parity fixtures the CPU engine is tested against in CI (run on the GPU machine).

For each case in cases.json: the C# CLI writes a small random checkpoint (`swiftkv make-model ...`, seeded, so CI
rebuilds the identical files); this script computes logits for every position of a random token sequence and a
greedy continuation with an independent implementation:
  - plain Llama: Hugging Face transformers' LlamaForCausalLM (eager attention, fp32);
  - SwiftKV:     swiftkv_reference.py (written from the spec), itself checked against transformers with SwiftKV off.
It also encodes strings with Hugging Face's tokenizer loaded from the demo tokenizer.json the CLI wrote.

Regenerate (see README "Parity fixtures"):
  ../shared/device/pack.sh src/SwiftKV.Cli/SwiftKV.Cli.csproj, then on the device:
  bash .gpu/gpu-env.sh python3 tests/reference/make_fixtures.py --cli ".gpu/apps/SwiftKV.Cli/swiftkv.dll" --out $OUT
and unpack $OUT/parity.tar.gz into tests/fixtures/parity/.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import swiftkv_reference as ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def make_model(cli, args, out_dir):
    cmd = ["dotnet", cli, "make-model", "--out", out_dir] + args
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE)


def checkpoint_digest(path):
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name.endswith(".safetensors") or name == "config.json":
            h.update(name.encode())
            h.update(open(os.path.join(path, name), "rb").read())
    return h.hexdigest()


def hf_logits(path, ids):
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        gen = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_STEPS, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    return logits, gen


GREEDY_STEPS = 8


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    cases = json.load(open(os.path.join(HERE, "cases.json")))
    work = tempfile.mkdtemp()
    staging = os.path.join(work, "parity")
    os.makedirs(staging)
    report = []
    for case in cases["models"]:
        name = case["name"]
        ckpt = os.path.join(work, name)
        make_model(a.cli, case["make_model"], ckpt)
        cfg, t = ref.load_checkpoint(ckpt)
        gen = torch.Generator().manual_seed(case.get("token_seed", 1234))
        ids = torch.randint(0, cfg["vocab_size"], (case["tokens"],), generator=gen).tolist()
        swift = bool(cfg.get("swiftkv", False))
        with torch.no_grad():
            if swift:
                logits = ref.forward(cfg, t, ids, swiftkv=True)
                greedy = ref.greedy(cfg, t, ids, True, GREEDY_STEPS)
                # Anchor the reference: SwiftKV off must equal transformers on the same file.
                off = ref.forward(cfg, t, ids, swiftkv=False)
                hf_off, _ = hf_logits(ckpt, ids)
                anchor = float((off - hf_off).abs().max() / hf_off.abs().max())
                source = "swiftkv_reference.py (anchored: SwiftKV off vs transformers rel err %.2e)" % anchor
            else:
                logits, greedy = hf_logits(ckpt, ids)
                mine = ref.forward(cfg, t, ids, swiftkv=False)
                anchor = float((mine - logits).abs().max() / logits.abs().max())
                source = "transformers LlamaForCausalLM (reference vs transformers rel err %.2e)" % anchor
        assert anchor < 1e-5, (name, anchor)
        logits.numpy().astype("<f4").tofile(os.path.join(staging, name + ".logits.f32"))
        meta = {
            "name": name,
            "make_model": case["make_model"],
            "checkpoint_sha256": checkpoint_digest(ckpt),
            "config": cfg,
            "token_ids": ids,
            "greedy_tokens": greedy,
            "logits_shape": list(logits.shape),
            "reference": source,
        }
        json.dump(meta, open(os.path.join(staging, name + ".json"), "w"), indent=1)
        report.append(f"{name}: {source}; greedy {greedy}")
        print(report[-1], flush=True)

    # Tokenizer: HF's fast tokenizer over the demo tokenizer.json our CLI writes.
    from transformers import PreTrainedTokenizerFast
    tok_dir = os.path.join(work, "tokenizer-model")
    make_model(a.cli, cases["tokenizer_model"], tok_dir)
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(tok_dir, "tokenizer.json"))
    enc = [{"text": s, "ids": tok.encode(s, add_special_tokens=False)} for s in cases["tokenizer_strings"]]
    json.dump({"source": "transformers PreTrainedTokenizerFast on the demo tokenizer.json", "cases": enc},
              open(os.path.join(staging, "tokenizer.json"), "w"), indent=1, ensure_ascii=False)

    with tarfile.open(os.path.join(a.out, "parity.tar.gz"), "w:gz") as tar:
        tar.add(staging, arcname="parity")
    open(os.path.join(a.out, "report.txt"), "w").write("\n".join(report) + "\n")


if __name__ == "__main__":
    main()
