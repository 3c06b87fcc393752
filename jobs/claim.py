"""Entrypoint for `ray job submit -- python jobs/claim.py [options]` (same options as `cxr-ray claim`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["claim", *sys.argv[1:]], prog_name="jobs/claim.py"))
