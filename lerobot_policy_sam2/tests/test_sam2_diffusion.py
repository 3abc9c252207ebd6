"""sam2_diffusion on real LeRobot 0.6: discovery, the CLI config, a policy built from a local
LeRobotDataset, a training step, select_action, save / from_pretrained, the checkpoint without
the frozen trunk, and the error when the SAM 2 file is missing at load time."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("lerobot", reason="LeRobot is not installed (these tests run in the LeRobot venv of .ci/run)")

import torch  # noqa: E402

from fixtures import MODEL, SMALL  # noqa: E402

CAMERAS = ("observation.images.top", "observation.images.wrist")
BACKBONE = "diffusion.rgb_encoder.backbone."


def parse_train_config(*args):
    import draccus
    from lerobot.configs.train import TrainPipelineConfig

    import lerobot_policy_sam2  # noqa: F401  (registers the policy type, as LeRobot's plugin discovery does)

    return draccus.parse(TrainPipelineConfig, args=list(args))


def build(dataset_root, *policy_args):
    """(policy, preprocessor, postprocessor, dataset) as lerobot-train makes them."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    cfg = parse_train_config(
        "--policy.type=sam2_diffusion",
        f"--policy.sam2_model={MODEL}",
        *SMALL,
        *policy_args,
        "--dataset.repo_id=local/sam2_test",
        f"--dataset.root={dataset_root}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
    )
    meta = LeRobotDatasetMetadata("local/sam2_test", root=dataset_root)
    dataset = LeRobotDataset(
        "local/sam2_test", root=dataset_root, delta_timestamps=resolve_delta_timestamps(cfg.policy, meta)
    )
    policy = make_policy(cfg.policy, ds_meta=dataset.meta)
    pre, post = make_pre_post_processors(cfg.policy, dataset_stats=dataset.meta.stats)
    return policy, pre, post, dataset


def batch_of(dataset, pre, size=2):
    loader = torch.utils.data.DataLoader(dataset, batch_size=size, shuffle=False)
    return pre(next(iter(loader)))


def saved_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def trained(sam2_dir, dataset_root):
    """A frozen-backbone policy after one optimizer step."""
    torch.manual_seed(0)
    policy, pre, post, dataset = build(dataset_root)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    groups = policy.get_optim_params()
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    policy.train()
    loss, _ = policy.forward(batch_of(dataset, pre))
    loss.backward()
    optimizer.step()
    return policy, pre, post, dataset, before, groups, loss.item()


def test_plugin_is_discovered_by_lerobot():
    """LeRobot's own start-up discovery (what lerobot-train runs first) registers the type, and its
    naming convention finds the policy class and the processor factory."""
    code = (
        "from lerobot.configs.policies import PreTrainedConfig\n"
        "from lerobot.utils.import_utils import register_third_party_plugins\n"
        "assert 'sam2_diffusion' not in PreTrainedConfig.get_known_choices()\n"
        "register_third_party_plugins()\n"
        "from lerobot.policies.factory import _make_processors_from_policy_config, get_policy_class\n"
        "cfg = PreTrainedConfig.get_choice_class('sam2_diffusion')(sam2_model='sam2_tiny', device='cpu')\n"
        "print(get_policy_class('sam2_diffusion').__name__, cfg.type, type(cfg).__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    module = "lerobot_policy_sam2.configuration_sam2_diffusion"
    assert out.stdout.split() == ["SAM2DiffusionPolicy", "sam2_diffusion", module]
    from importlib import metadata

    assert metadata.distribution("lerobot_policy_sam2").metadata["Name"] == "lerobot_policy_sam2"


def test_config_parses_from_the_cli_form():
    cfg = parse_train_config(
        "--policy.type=sam2_diffusion",
        "--policy.sam2_model=sam2.1_large",
        "--policy.freeze=false",
        "--policy.lora_rank=4",
        "--policy.backbone_lr_scale=0.05",
        "--policy.precision=bf16",
        "--policy.pooling=spatial_softmax",
        "--dataset.repo_id=x/y",
        "--policy.device=cpu",
    )
    p = cfg.policy
    assert type(p).__name__ == "SAM2DiffusionConfig" and p.type == "sam2_diffusion"
    assert (p.sam2_model, p.sam2_image_size, p.freeze, p.lora_rank, p.backbone_lr_scale, p.precision, p.pooling) == (
        "sam2.1_large",
        256,
        False,
        4,
        0.05,
        "bf16",
        "spatial_softmax",
    )
    assert p.down_dims == (512, 1024, 2048) and p.n_obs_steps == 2  # LeRobot's diffusion defaults stay
    # the last occurrence of an option wins (the README command plus appended overrides)
    again = parse_train_config(
        "--policy.type=sam2_diffusion",
        "--policy.sam2_model=sam2_large",
        "--policy.sam2_model=sam2_tiny",
        "--dataset.repo_id=x/y",
        "--policy.device=cpu",
    )
    assert again.policy.sam2_model == "sam2_tiny" and again.policy.sam2_image_size == 224


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"vision_backbone": "resnet18"}, "sam2_model"),
        ({"pretrained_backbone_weights": "ResNet18_Weights.IMAGENET1K_V1"}, "sam2_checkpoint"),
        ({"sam2_model": "sam3_huge"}, "known names"),
        ({"image_size": 100}, "multiple of 32"),
        ({"lora_rank": 4}, "freeze=false"),
        ({"pooling": "max"}, "attention"),
        ({"precision": "fp16"}, "bf16"),
    ],
)
def test_bad_config_values_are_refused(kwargs, message):
    from lerobot_policy_sam2 import SAM2DiffusionConfig

    with pytest.raises(ValueError, match=message):
        SAM2DiffusionConfig(device="cpu", **kwargs)


def test_training_step_trains_heads_and_unet_not_the_frozen_trunk(trained):
    policy, _, _, _, before, groups, loss = trained
    assert torch.isfinite(torch.tensor(loss))
    after = policy.state_dict()
    backbone = [k for k in after if k.startswith(BACKBONE)]
    assert len(backbone) > 100 and all(torch.equal(after[k], before[k]) for k in backbone)
    assert not torch.equal(after["diffusion.rgb_encoder.heads.0.query"], before["diffusion.rgb_encoder.heads.0.query"])
    assert not torch.equal(after["diffusion.rgb_encoder.heads.1.query"], before["diffusion.rgb_encoder.heads.1.query"])
    assert len(groups) == 1  # frozen: no backbone group
    n_trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert sum(p.numel() for p in groups[0]["params"]) == n_trainable
    assert len(policy.diffusion.rgb_encoder.heads) == 2 and policy.diffusion.rgb_encoder.backbone.training is False


def test_select_action_runs_on_single_frames(trained):
    policy, pre, post, dataset, *_ = trained
    policy.eval()
    policy.reset()
    actions = []
    for i in range(5):  # n_action_steps = 4: a new chunk at the 1st and the 5th call
        frame = dataset[i]
        obs = {k: v[-1] for k, v in frame.items() if k.startswith("observation.") and not k.endswith("_is_pad")}
        obs["task"] = frame["task"]
        actions.append(post(policy.select_action(pre(obs))))
    assert all(a.shape == (1, 2) and torch.isfinite(a).all() for a in actions)


def test_saved_policy_leaves_out_the_frozen_trunk_and_loads_back_equal(trained, sam2_dir, tmp_path):
    from dp_sam2.checkpoints.files import load_checkpoint_state_dict
    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    policy, pre, _, dataset, *_ = trained
    policy.save_pretrained(tmp_path / "ckpt")
    keys = saved_keys(tmp_path / "ckpt")
    full = policy.state_dict()
    assert not any(k.startswith(BACKBONE) for k in keys)
    assert keys == {k for k in full if not k.startswith(BACKBONE)}
    trunk_bytes = sum(v.numel() * v.element_size() for k, v in full.items() if k.startswith(BACKBONE))
    assert trunk_bytes > 100e6  # sam2_tiny's 27 M weights stayed out
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size < 0.5 * trunk_bytes

    loaded = SAM2DiffusionPolicy.from_pretrained(tmp_path / "ckpt")
    reloaded = loaded.state_dict()
    assert reloaded.keys() == full.keys() and all(torch.equal(reloaded[k], full[k]) for k in full)
    official = load_checkpoint_state_dict(sam2_dir / "sam2_hiera_tiny.pt", MODEL)
    trunk = loaded.diffusion.rgb_encoder.backbone.state_dict()
    assert all(torch.equal(v, official[k]) for k, v in trunk.items())
    # the same random draws (DDPM adds noise at every step) -> the same actions from both policies
    batch = {k: v for k, v in batch_of(dataset, pre).items() if k.startswith("observation.")}
    chunks = []
    for p in (policy, loaded):
        p.eval()
        p.reset()
        torch.manual_seed(3)
        chunks.append(p.predict_action_chunk(batch))
    assert chunks[0].shape == (2, policy.config.n_action_steps, 2)
    torch.testing.assert_close(chunks[1], chunks[0], rtol=0, atol=0)


def test_missing_sam2_file_at_load_names_the_file_and_the_download(trained, tmp_path, monkeypatch):
    from lerobot_policy_sam2.encoder import SAM2WeightsNotFoundError

    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    trained[0].save_pretrained(tmp_path / "ckpt")
    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(tmp_path / "nothing_here"))
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")  # never random weights for a trunk-less checkpoint
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SAM2WeightsNotFoundError) as err:
        SAM2DiffusionPolicy.from_pretrained(tmp_path / "ckpt")
    text = str(err.value)
    assert "sam2_hiera_tiny.pt" in text and "`dp-sam2 download sam2_tiny`" in text and "nothing_here" in text


def test_lora_policy_saves_adapters_not_the_original_weights(sam2_dir, dataset_root, tmp_path):
    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    torch.manual_seed(1)
    policy, pre, _, dataset = build(
        dataset_root,
        "--policy.freeze=false",
        "--policy.lora_rank=2",
        "--policy.backbone_lr_scale=0.1",
        "--policy.pooling=mean",
    )
    groups = policy.get_optim_params()
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(policy.config.optimizer_lr * 0.1)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for n, p in policy.named_parameters() if "lora_" in n}
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    policy.train()
    loss, _ = policy.forward(batch_of(dataset, pre))
    loss.backward()
    optimizer.step()
    policy.save_pretrained(tmp_path / "lora")
    keys = saved_keys(tmp_path / "lora")
    backbone_keys = {k for k in keys if k.startswith(BACKBONE)}
    assert backbone_keys and all(".lora_a" in k or ".lora_b" in k for k in backbone_keys)
    loaded = SAM2DiffusionPolicy.from_pretrained(tmp_path / "lora")
    full, reloaded = policy.state_dict(), loaded.state_dict()
    assert reloaded.keys() == full.keys() and all(torch.equal(reloaded[k], full[k]) for k in full)


def test_random_weight_policy_is_saved_whole_and_loads_without_the_file(dataset_root, tmp_path, monkeypatch):
    """DP_SAM2_ALLOW_MISSING_CHECKPOINT=1 without a SAM 2 file: random weights, so the trunk is saved,
    and the checkpoint then loads on a machine without the file."""
    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    monkeypatch.setenv("DP_SAM2_CHECKPOINT_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("DP_SAM2_CACHE", str(tmp_path / "none"))
    monkeypatch.setenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="WITHOUT SAM 2 weights"):
        policy, *_ = build(dataset_root)
    policy.save_pretrained(tmp_path / "whole")
    assert sum(k.startswith(BACKBONE) for k in saved_keys(tmp_path / "whole")) == len(
        policy.diffusion.rgb_encoder.backbone.state_dict()
    )
    monkeypatch.delenv("DP_SAM2_ALLOW_MISSING_CHECKPOINT")
    loaded = SAM2DiffusionPolicy.from_pretrained(tmp_path / "whole")
    full, reloaded = policy.state_dict(), loaded.state_dict()
    assert all(torch.equal(reloaded[k], full[k]) for k in full)


def readme_lerobot_train() -> str:
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "README.md"
    lines = [line.strip() for line in readme.read_text().splitlines() if line.strip().startswith("lerobot-train ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.slow
def test_readme_lerobot_train_command_trains_saves_and_reloads(sam2_dir, dataset_root, tmp_path):
    """The README's command as it stands, the model swapped for sam2_tiny, with the CPU overrides a
    check appends (plus a small U-Net), run by LeRobot's own lerobot-train; then the checkpoint
    reloads, without the frozen trunk in it and with the trunk equal to the SAM 2 file."""
    import os
    import shlex
    from pathlib import Path

    from dp_sam2.checkpoints.files import load_checkpoint_state_dict
    from lerobot_policy_sam2 import SAM2DiffusionPolicy

    cmd = readme_lerobot_train()
    assert "--policy.type=sam2_diffusion" in cmd and "--policy.sam2_model=sam2_large" in cmd
    cmd = cmd.replace("--policy.sam2_model=sam2_large", f"--policy.sam2_model={MODEL}")
    out = tmp_path / "train"
    extra = [
        "--dataset.repo_id=local/sam2_test",
        f"--dataset.root={dataset_root}",
        "--policy.device=cpu",
        "--policy.push_to_hub=false",
        "--wandb.enable=false",
        "--steps=2",
        "--batch_size=2",
        "--save_freq=2",
        "--num_workers=0",
        f"--output_dir={out}",
        *SMALL,
    ]
    args = shlex.split(cmd)
    args[0] = str(Path(sys.executable).parent / "lerobot-train")  # this venv's console script
    proc = subprocess.run(
        args + extra,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=dict(os.environ, DP_SAM2_CHECKPOINT_DIR=str(sam2_dir)),
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    saved = out / "checkpoints" / "000002" / "pretrained_model"
    assert not any(k.startswith(BACKBONE) for k in saved_keys(saved))
    policy = SAM2DiffusionPolicy.from_pretrained(saved)
    assert policy.config.sam2_model == MODEL and policy.config.freeze is True
    official = load_checkpoint_state_dict(sam2_dir / "sam2_hiera_tiny.pt", MODEL)
    trunk = policy.diffusion.rgb_encoder.backbone.state_dict()
    assert trunk and all(torch.equal(v, official[k]) for k, v in trunk.items())
