"""mmc-repro: Masked Momentum Contrastive learning (MMC) and zero-shot prompt-patch evaluation of ViTs."""

__version__ = "0.1.0"
