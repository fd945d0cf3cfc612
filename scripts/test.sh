#!/usr/bin/env bash
# Run the whole test suite: installs sr2fhir with its test dependencies into .venv, then
# runs pytest (extra arguments go to pytest). Tests that need ../shared (the IG validator,
# the real SR samples) skip without it, unless SR2FHIR_REQUIRE_SHARED=1 (as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test

# System packages the integration tests use: dcmtk (storescu, a real DICOM sender), Orthanc
# (a real PACS auto-forwarding to us), Node.js + npm (the loopback FHIR server under
# tests/fhir_server), Java 17 + Maven (the HAPI FHIR server and the HL7 validator engine under
# tests/hapi_server, built from Maven Central).
missing=()
command -v storescu >/dev/null || missing+=(dcmtk)
{ command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ]; } || missing+=(orthanc)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "scripts/test.sh: please install: ${missing[*]} (Debian/Ubuntu: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi
# Build the HAPI FHIR test server and validator now (about 15 s and 350 MB from Maven Central
# the first time, nothing when up to date), so the download is not charged to a test.
tests/hapi_server/build.sh
# Compile the Radiation Dose Summary IG (FSH, ../shared) with SUSHI for the R4 profile checks
# (about 30 s the first time, nothing when up to date; tests/dose_ig/README.md).
tests/dose_ig/build.sh
exec .venv/bin/python -m pytest "$@"
