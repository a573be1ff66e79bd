"""A fake ``backend`` for the installer tests' new environments, which hold only the standard library: it answers
the version handshake and the smoke test (``selftest``); every other module (``contracts.protocol`` …) resolves to
the real backend package."""

import os as _os

__version__ = "0.0.0-fake"
__path__.append(_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.dirname(_os.path.dirname(
    _os.path.dirname(_os.path.abspath(__file__)))))), "backend"))
