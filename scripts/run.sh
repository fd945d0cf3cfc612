#!/usr/bin/env bash
# Quick start: install sr2fhir into .venv and start the daemon on its embedded default,
# the shipped config.yaml: a C-STORE SCP on 127.0.0.1:11112 (AE title SR2FHIR), spool in
# ./spool, and - no FHIR server configured - every Bundle written to ./outbox as JSON.
# Stop it with Ctrl-C (SIGINT) or SIGTERM. Extra arguments replace `serve`: e.g.
#   scripts/run.sh convert examples/measurement-report.dcm
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if [ "$#" -gt 0 ]; then
    exec .venv/bin/sr2fhir "$@"
fi
exec .venv/bin/sr2fhir serve --config config.yaml
