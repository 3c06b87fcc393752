"""Entrypoint for `ray job submit -- python jobs/tune.py [options]` (same options as `cxr-ray tune`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["tune", *sys.argv[1:]], prog_name="jobs/tune.py"))
