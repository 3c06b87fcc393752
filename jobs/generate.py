"""Entrypoint for `ray job submit -- python jobs/generate.py [options]` (same options as `cxr-ray generate`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["generate", *sys.argv[1:]], prog_name="jobs/generate.py"))
