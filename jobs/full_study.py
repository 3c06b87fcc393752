"""Entrypoint for `ray job submit -- python jobs/full_study.py [--profile quick|full] [--storage URI]`."""

import sys

from cxr_ray.study import run_study_cli

if __name__ == "__main__":
    sys.exit(run_study_cli(sys.argv[1:]))
