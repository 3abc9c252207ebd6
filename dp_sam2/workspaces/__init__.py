"""Training workspaces for Diffusion Policy's ``train.py`` (selected by a config's ``_target_``).

``dp_sam2.workspaces.data_parallel.TrainDiffusionDataParallelWorkspace``: DP's image-workspace loop,
data-parallel under ``torchrun`` / ``accelerate launch`` (one process: DP's behaviour). DP itself
is imported only when that class is looked up.
"""
