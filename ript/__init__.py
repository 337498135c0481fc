"""ript: RL post-training of flow-matching VLA policies on LIBERO with classifier-free guidance."""

__version__ = "0.1.0"
