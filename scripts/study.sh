#!/usr/bin/env bash
# Set up .venv if needed, then run the study. Default: the quick profile on the
# embedded sample of real X-rays, local Ray, results under runs/study.
# Extra arguments go to jobs/full_study.py (e.g. --profile full --data DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}  # Ray's token authentication (a local cluster makes its token)
exec .venv/bin/python jobs/full_study.py "$@"
