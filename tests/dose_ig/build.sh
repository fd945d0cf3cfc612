#!/usr/bin/env bash
# Compile the HL7 Radiation Dose Summary IG (../shared/spec/dose-ig, FSH) with SUSHI, offline:
#   build/compiled/definitions/  StructureDefinition/ValueSet/CodeSystem JSON (the validator's --ig)
#   build/compiled/examples/     the IG's FSH example instances
# Idempotent: does nothing when a hash of every input matches the last good build. See README.md.
# Needs node + npm (SUSHI), Java 17 + Maven (tests/hapi_server), the project's .venv (pydicom).
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
source_dir=$repo/../shared/spec/dose-ig
build=$PWD/build
python=$repo/.venv/bin/python
core_name='hl7.fhir.r4.core#4.0.1'
core_dir=$build/fhir-home/.fhir/packages/$core_name

if [[ ! -d $source_dir ]]; then
  if [[ ${SR2FHIR_REQUIRE_SHARED:-} == 1 ]]; then
    echo "dose_ig/build.sh: SR2FHIR_REQUIRE_SHARED=1 but $source_dir is absent" >&2
    exit 1
  fi
  echo "dose_ig/build.sh: $source_dir is absent (../shared is not beside this clone): nothing to compile"
  exit 0
fi
for program in node npm java; do
  command -v $program >/dev/null || { echo "dose_ig/build.sh: $program is not on PATH" >&2; exit 1; }
done
[[ -x $python ]] || { echo "dose_ig/build.sh: $python is missing: run scripts/bootstrap.sh test" >&2; exit 1; }

mkdir -p "$build"
exec 9>"$build/.lock"
flock 9

# Runs "$@" with its output in $build/$log; on failure prints the log's tail and exits.
run_logged() {
  local log=$1 limit=$2
  shift 2
  if ! timeout "$limit" "$@" >"$build/$log" 2>&1; then
    echo "dose_ig/build.sh: failed (or over $limit s): $*; the end of $build/$log:" >&2
    tail -n 40 "$build/$log" >&2
    exit 1
  fi
}

../hapi_server/build.sh >/dev/null
validation_jar=$(ls ../hapi_server/target/lib/hapi-fhir-validation-resources-r4-*.jar)
inputs=$(
  cd "$source_dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum
  cd "$OLDPWD" && sha256sum build.sh prepare_ig.py dicom_stand_in.py R4CorePackage.java package-lock.json
  echo "$validation_jar"
  "$python" -c 'import pydicom; print("pydicom", pydicom.__version__)'
)
inputs_hash=$(sha256sum <<<"$inputs" | cut -d' ' -f1)
if [[ -f $build/compiled/.inputs && $(<"$build/compiled/.inputs") == "$inputs_hash" ]]; then
  echo "dose_ig/build.sh: build/compiled is up to date"
  exit 0
fi
start=$SECONDS

if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
  run_logged npm-ci.log 600 npm ci --no-audit --no-fund
fi

# hl7.fhir.r4.core 4.0.1 is not on the npm registry: write it from HAPI's validation-resources jar.
core_key=$(cat R4CorePackage.java <(echo "$validation_jar") | sha256sum | cut -d' ' -f1)
if [[ ! -f $core_dir/.key || $(<"$core_dir/.key") != "$core_key" ]]; then
  rm -rf "$core_dir" "$core_dir.tmp"
  run_logged r4-core.log 300 java -Xmx1g -XX:TieredStopAtLevel=1 -cp '../hapi_server/target/lib/*' \
    R4CorePackage.java "$core_dir.tmp"
  echo "$core_key" >"$core_dir.tmp/.key"
  mv "$core_dir.tmp" "$core_dir"
fi

run_logged prepare.log 60 "$python" prepare_ig.py copy "$source_dir" "$build/ig"
# A private FHIR package cache (HOME), and a registry that refuses at once (FPL_REGISTRY): SUSHI's
# automatic dependencies (hl7.fhir.uv.tools.r4, hl7.terminology.r4, hl7.fhir.uv.extensions.r4) are
# not on the npm registry; without them SUSHI warns, and this IG needs none of them.
HOME=$build/fhir-home FPL_REGISTRY=http://127.0.0.1:9 \
  run_logged sushi.log 300 node_modules/.bin/sushi build "$build/ig"
if ! grep -qE '[^0-9]0 Errors' "$build/sushi.log"; then
  echo "dose_ig/build.sh: SUSHI reported errors:" >&2
  grep -E '^error' -A3 "$build/sushi.log" | tail -n 40 >&2
  exit 1
fi

rm -rf "$build/compiled.tmp"
run_logged publish.log 60 "$python" prepare_ig.py publish "$build/ig/fsh-generated/resources" "$build/compiled.tmp"
run_logged stand-in.log 60 "$python" dicom_stand_in.py "$build/compiled.tmp/definitions"
echo "$inputs_hash" >"$build/compiled.tmp/.inputs"
rm -rf "$build/compiled"
mv "$build/compiled.tmp" "$build/compiled"
echo "dose_ig/build.sh: compiled the dose IG into build/compiled in $((SECONDS - start)) s ($(cat "$build/publish.log"))"
