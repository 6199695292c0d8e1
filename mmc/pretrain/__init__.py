"""MMC pretraining (docs/method.md#pretraining): masked image modelling + momentum self-distillation + global contrast.

Modules: ``model`` (student/teacher around a timm VisionTransformer), ``masking`` (block-wise masks),
``losses`` (pure loss functions), ``schedules`` (pure functions of the global step), ``augment``
(multi-crop views), ``data`` (per-sample seeded dataset and global-batch sampler), ``checkpoint``
(atomic save, validated resume), ``train`` (the loop), ``cli`` (``mmc pretrain``).
"""
