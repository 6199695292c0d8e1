"""The zero-shot evaluation protocol: features, metrics, ``mmc segment`` and ``mmc similarity``."""
