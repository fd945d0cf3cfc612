#!/usr/bin/env bash
# Quick start: install sr2fhir into .venv and run it on its embedded default.
# Today that is `sr2fhir convert` on the example SR the project ships; the Bundle goes to
# stdout, notes about skipped content items to stderr. Extra arguments go to sr2fhir.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/sr2fhir "$@"
fi
exec .venv/bin/sr2fhir convert examples/measurement-report.dcm
