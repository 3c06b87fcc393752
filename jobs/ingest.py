"""Entrypoint for `ray job submit -- python jobs/ingest.py SRC DEST [options]` (same options as `cxr-ray ingest`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["ingest", *sys.argv[1:]], prog_name="jobs/ingest.py"))
