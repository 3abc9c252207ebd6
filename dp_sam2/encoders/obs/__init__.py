"""The Diffusion Policy obs encoder: SAM 2's backbone (``backbone``), what it is given
(``inputs``: shape_meta, sizes, crops, ranges), pooling heads (``heads``), finetune/LoRA (``finetune``),
a start-up guard (``guard``), the encoder in DP's words (``encoder``), UMI's words for it (``umi``) and
the one table of keys 0.2.x took (``old_keys``)."""
