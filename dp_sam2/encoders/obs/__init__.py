"""The Diffusion Policy obs encoder: SAM 2's backbone (``backbone``), what it is given
(``inputs``: shape_meta, crops, ranges), pooling heads (``heads``), finetune/LoRA (``finetune``),
a start-up guard (``guard``) and the encoder itself (``encoder``)."""
