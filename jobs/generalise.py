"""Entrypoint for `ray job submit -- python jobs/generalise.py [options]` (same options as `cxr-ray generalise`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["generalise", *sys.argv[1:]], prog_name="jobs/generalise.py"))
