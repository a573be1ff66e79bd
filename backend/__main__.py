import sys

from .openmp_env import configure_openmp

configure_openmp()  # before torch is imported

from .cli import main  # noqa: E402

sys.exit(main())
