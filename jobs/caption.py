"""Ray job entrypoint for the `caption` stage; takes the same arguments as `raysys caption`.

    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/caption.py configs/quickstart.yaml [key=value ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from raysys.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["caption", *sys.argv[1:]]))
