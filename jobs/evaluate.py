"""Entrypoint for `ray job submit -- python jobs/evaluate.py [options]` (same options as `cxr-ray evaluate`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["evaluate", *sys.argv[1:]], prog_name="jobs/evaluate.py"))
