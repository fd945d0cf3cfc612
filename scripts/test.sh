#!/usr/bin/env bash
# Run the whole test suite: installs sr2fhir with its test dependencies into .venv, then
# runs pytest (extra arguments go to pytest). Tests that need ../shared (the IG validator,
# the real SR samples) skip without it, unless SR2FHIR_REQUIRE_SHARED=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
exec .venv/bin/python -m pytest "$@"
