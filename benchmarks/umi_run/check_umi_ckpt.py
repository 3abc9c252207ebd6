"""Compare the SAM 2 backbone in a UMI checkpoint (model and EMA) with the SAM 2 file.

python check_umi_ckpt.py data/outputs/run1/checkpoints/latest.ckpt checkpoints/sam2_hiera_tiny.pt
"""

import sys

import dill
import torch

path, sam = sys.argv[1], sys.argv[2]
payload = torch.load(path, pickle_module=dill, map_location="cpu", weights_only=False)
official = torch.load(sam, map_location="cpu", weights_only=True)["model"]
for name in ("model", "ema_model"):
    sd = payload["state_dicts"][name]
    prefix = "obs_encoder.key_model_map.camera0_rgb."
    keys = [k for k in sd if k.startswith(prefix)]
    same = sum(torch.equal(sd[k], official[k[len(prefix) :]]) for k in keys if k[len(prefix) :] in official)
    print(
        f"{name}: {len(keys)} SAM 2 tensors under {prefix}, {same} equal to the file, "
        f"{sum(k.startswith('obs_encoder.heads.') for k in sd)} head tensors"
    )
node = payload["cfg"]["policy"]["obs_encoder"]
print("cfg encoder:", node["_target_"], node["model_name"])
