"""Ray job entrypoint for the `control` stage; takes the same arguments as `raysys control`.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/control.py configs/quickstart.yaml [key=value ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysys.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["control", *sys.argv[1:]]))
