"""Entrypoint for `ray job submit -- python jobs/train_classifier.py [options]` (same options as `cxr-ray train`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["train", *sys.argv[1:]], prog_name="jobs/train_classifier.py"))
