"""Entrypoint for `ray job submit -- python jobs/train_gan.py TABLE [options]` (same options as `cxr-ray train-gan`)."""

import sys

from cxr_ray.cli.app import app

if __name__ == "__main__":
    sys.exit(app(["train-gan", *sys.argv[1:]], prog_name="jobs/train_gan.py"))
