#!/usr/bin/env bash
# Build the HAPI FHIR test server + validator (target/hapi-test-server.jar, target/lib/).
# Idempotent: does nothing when the jar is newer than pom.xml and every file under src/.
# CI runs it before pytest so the Maven download time shows on its own.
set -euo pipefail
cd "$(dirname "$0")"
command -v java >/dev/null || { echo "build.sh: java (17+) is not on PATH" >&2; exit 1; }
command -v mvn >/dev/null || { echo "build.sh: mvn (Maven 3.8+) is not on PATH" >&2; exit 1; }
jar=target/hapi-test-server.jar
exec 9>.build.lock
flock 9
if [[ -f $jar && -d target/lib ]] && [[ -z $(find pom.xml src -type f -newer "$jar" -print -quit) ]]; then
  echo "build.sh: $jar is up to date"
  exit 0
fi
start=$SECONDS
mvn -q -B package -DskipTests
touch "$jar"
echo "build.sh: built $jar in $((SECONDS - start)) s"
