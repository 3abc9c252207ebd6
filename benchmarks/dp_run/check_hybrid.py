"""What a hybrid-workspace DP checkpoint holds: the policy target and class that were built, the
obs-encoder keys (fp32, official SAM 2 names under ``obs_encoder.backbone.``) and no robomimic model.

    python check_hybrid.py DP_CKPT

Exit 1 when a robomimic/ResNet key or a non-fp32 encoder tensor is found, or the encoder is absent.
"""

from __future__ import annotations

import argparse
import sys

import dill
import torch

ROBOMIMIC_HINTS = ("obs_nets", "obs_randomizers", "nets.obs", "resnet", "ResNet18Conv", "pool.nets")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("dp_checkpoint")
    args = parser.parse_args()
    payload = torch.load(open(args.dp_checkpoint, "rb"), pickle_module=dill, weights_only=False)
    print("workspace:", payload["cfg"]["_target_"])
    print("policy._target_:", payload["cfg"]["policy"]["_target_"])
    ok = True
    for which in ("model", "ema_model"):
        state = payload["state_dicts"].get(which)
        if state is None:
            continue
        enc = {k: v for k, v in state.items() if k.startswith("obs_encoder.")}
        trunk = [k for k in enc if k.startswith("obs_encoder.backbone.image_encoder.trunk.")]
        robomimic = [k for k in state if any(h.lower() in k.lower() for h in ROBOMIMIC_HINTS)]
        dtypes = sorted({str(v.dtype) for v in enc.values()})
        parts = sorted({".".join(k.split(".")[:3]) for k in enc})
        print(
            f"{which}: {len(state)} tensors, {len(enc)} under obs_encoder. ({len(trunk)} trunk), dtypes {dtypes}, "
            f"robomimic/ResNet keys: {len(robomimic)}; encoder parts {parts}"
        )
        ok &= bool(trunk) and not robomimic and dtypes == ["torch.float32"]
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
