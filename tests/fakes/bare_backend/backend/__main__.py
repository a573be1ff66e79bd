"""``python -m backend --version --json`` and ``python -m backend selftest --out DIR`` with the standard library only.

FAKE_BACKEND_MODE=fail: the smoke test fails as a backend that finds no face would.
"""

import json
import os
import sys

from backend import __version__
from backend.contracts.protocol import PROTOCOL_VERSION, EventWriter, ExitCode


def main() -> int:
    if "--version" in sys.argv:
        print(json.dumps({"protocol": PROTOCOL_VERSION, "backend": __version__, "python": sys.version.split()[0],
                          "torch": None, "devices": ["cpu"], "models": []}))
        return ExitCode.OK
    if sys.argv[1:2] != ["selftest"]:
        print(f"bare fake backend: only --version and selftest, not {sys.argv[1:]}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    events = EventWriter()
    events.hello(__version__)
    if os.environ.get("FAKE_BACKEND_MODE") == "fail":
        events.error("The smoke test found no face", "Reinstall the backend.", code="internal")
        return ExitCode.INTERNAL_ERROR
    events.progress("tracking", 1, 1, frame=0, message="frame 0")
    events.emit("summary", device="cpu", seconds=0.25, frames=1, devices=["cpu"])
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
