"""``dp-sam2 compare``: encoders compared closed-loop on MetaWorld with Diffusion Policy's own train.py
and eval.py (issue 25).

``grid`` (protocols, cells, shards, the Hydra overrides as data), ``cells`` (running one cell), ``results``
(results.csv, score_dp3, merging), ``report`` (markdown table, picture), ``latency`` (policy-call latency),
``probe`` and ``cached`` (run inside DP: trained-parameter count and latency of a checkpoint; the task
dataset wrapped by the feature cache), ``run`` (the command). Importing this package imports nothing heavy.
"""
