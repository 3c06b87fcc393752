#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (local Ray, moto S3 server).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}  # Ray's token authentication; tests/conftest.py makes the session's token
exec .venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 "$@"
