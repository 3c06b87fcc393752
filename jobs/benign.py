"""Entrypoint for `ray job submit -- python jobs/benign.py [options]` (same options as `cxr-ray benign`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["benign", *sys.argv[1:]], prog_name="jobs/benign.py"))
