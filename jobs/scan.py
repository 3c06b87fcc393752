"""Entrypoint for `ray job submit -- python jobs/scan.py [options]` (same options as `cxr-ray scan`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["scan", *sys.argv[1:]], prog_name="jobs/scan.py"))
