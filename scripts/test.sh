#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (local Ray, moto S3 server).
# The default run leaves out the tests marked `slow` (whole studies, the fake autoscaling cluster), so that it fits
# CI's 20-minute goal on 2 cores; CXR_RAY_SLOW=1 runs them too. Arguments go to pytest (e.g. -m slow: those alone).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}  # Ray's token authentication; tests/conftest.py makes the session's token
select=(-m "not slow")
if [ "${CXR_RAY_SLOW:-0}" = 1 ]; then
  select=()
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "${select[@]}" "$@"
