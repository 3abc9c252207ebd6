"""Compare the SAM 2 backbone weights inside a Diffusion Policy checkpoint with the SAM 2 file.

    python check_weights.py DP_CKPT SAM2_FILE --expect frozen|finetuned

``frozen``: every image-encoder weight and ``no_mem_embed`` in both the model and the EMA model
equals the file. ``finetuned``: the model's trained weights differ from it. Exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

import dill
import torch

PREFIX = "obs_encoder.backbone."


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dp_checkpoint")
    parser.add_argument("sam2_file")
    parser.add_argument("--expect", choices=["frozen", "finetuned"], required=True)
    args = parser.parse_args()
    payload = torch.load(open(args.dp_checkpoint, "rb"), pickle_module=dill, weights_only=False)
    official = torch.load(args.sam2_file, map_location="cpu", weights_only=True)["model"]
    ok = True
    for which in ("model", "ema_model"):
        state = payload["state_dicts"].get(which)
        if state is None:
            continue
        ours = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
        keys = sorted(k for k in ours if k in official)
        same = [k for k in keys if torch.equal(ours[k].cpu(), official[k])]
        print(f"{which}: {len(keys)} SAM 2 tensors, {len(same)} equal to the file, {len(keys) - len(same)} differ")
        if which == "model" or args.expect == "frozen":
            ok &= (len(same) == len(keys)) if args.expect == "frozen" else (len(same) < len(keys))
    print("OK" if ok else f"FAILED: expected {args.expect} weights")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
