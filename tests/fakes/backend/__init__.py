"""A fake ``backend`` package for job-runner tests: its own ``__main__`` (no torch, fast, scriptable), while
every other module (protocol, result_format, conventions …) resolves to the real backend package."""

import os as _os

__version__ = "0.0.0-fake"
__path__.append(_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(
    _os.path.dirname(_os.path.abspath(__file__))))), "backend"))
