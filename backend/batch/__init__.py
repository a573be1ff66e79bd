"""Many clips, and long clips in chunks, as Ray tasks (``python -m backend batch``); see ``driver``."""
from .driver import BatchConfig, run_batch

__all__ = ["BatchConfig", "run_batch"]
