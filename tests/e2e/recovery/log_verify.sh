#!/usr/bin/env bash
# `keyline-recovery log verify-inclusion|verify-consistency --proof FILE` (issue #18) over every
# transparency-dev probe in tests/vectors/merkle: the exit code must be 0 where the file says
# "wantErr": false and 3 where it says true. Then the files that are not proofs: malformed (3),
# missing (2), the other kind's file (3), and usage (2). Offline: no line, no server.
# Usage: log_verify.sh WORKDIR   (LINE_BIN = directory holding the keyline-* programs)
set -euo pipefail

work=${1:?usage: log_verify.sh WORKDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../../.." && pwd)
vectors="$top/tests/vectors/merkle"
REC="$LINE_BIN/keyline-recovery"
rm -rf "$work"
mkdir -p "$work"

failures=0
pass() { printf 'PASS %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*"; failures=$((failures + 1)); }

# run NAME WANT_RC ARGS...: runs the tool, keeps its output in $work/NAME.{out,err}.
run() {
  local name=$1 want=$2 rc=0
  shift 2
  "$REC" "$@" >"$work/$name.out" 2>"$work/$name.err" || rc=$?
  if [[ $rc == "$want" ]]; then return 0; fi
  fail "$name: exit $rc, want $want ($*)"
  sed 's/^/    /' "$work/$name.err" "$work/$name.out" | head -20
  return 1
}

probes=0 valid=0
for kind in inclusion consistency; do
  while IFS= read -r -d '' f; do
    probes=$((probes + 1))
    if grep -Eq '"wantErr": *false' "$f"; then want=0; valid=$((valid + 1));
    elif grep -Eq '"wantErr": *true' "$f"; then want=3;
    else fail "$f has no wantErr"; continue; fi
    name="probe-$probes"
    run "$name" "$want" log "verify-$kind" --proof "$f" || continue
    # It says what it checked and the verdict; an invalid proof says why.
    if ! grep -q "^$kind proof (RFC 9162" "$work/$name.out"; then fail "$f: no '$kind proof' line"; continue; fi
    if [[ $want == 0 ]]; then
      grep -qx 'valid' "$work/$name.out" || fail "$f: no 'valid' line"
    else
      grep -Eq '^INVALID: .+' "$work/$name.out" || fail "$f: no 'INVALID: reason' line"
    fi
  done < <(find "$vectors/$kind" -name '*.json' -type f -print0 | sort -z)
done
# Not vacuous: the pack has 170 probes, 11 of them valid (tests/vectors/merkle/README.md).
if [[ $probes == 170 && $valid == 11 ]]; then pass "all $probes probes give their wantErr ($valid valid)";
else fail "checked $probes probes ($valid valid), want 170 (11 valid)"; fi

happy_incl="$vectors/inclusion/1/happy-path.json"
happy_cons="$vectors/consistency/2/happy-path.json"

# expect NAME RC PATTERN WHAT ARGS...: exit RC and PATTERN in its stderr and stdout.
expect() {
  local name=$1 want=$2 pattern=$3 what=$4
  shift 4
  run "$name" "$want" "$@" || return 0
  if cat "$work/$name.err" "$work/$name.out" | grep -q -- "$pattern"; then pass "$what ($want)";
  else fail "$name: no '$pattern' in its output"; fi
}

printf '{"leafIdx": 0, "treeSize": 8, "root": "AA==", "leafHash": "AA==", "proof": [' >"$work/truncated.json"
expect malformed 3 'error 1180: proof file: not JSON' "a truncated file is malformed" \
  log verify-inclusion --proof "$work/truncated.json"
sed 's/"treeSize": 8/"treeSize": 18446744073709551616/' "$happy_incl" >"$work/overflow.json"
expect overflow 3 'above 2^64-1' "treeSize 2^64 is refused, not wrapped to 0" \
  log verify-inclusion --proof "$work/overflow.json"
sed 's/"leafIdx": 0,/"leafIdx": 0, "leafIdx": 1,/' "$happy_incl" >"$work/dup.json"
expect duplicate 3 'appears twice' "a repeated key is refused" log verify-inclusion --proof "$work/dup.json"
expect missing 2 'cannot read proof file' "a missing file is a usage error" \
  log verify-inclusion --proof "$work/no-such-file.json"
expect wrong-kind 3 'unknown field' "a consistency file is not read as an inclusion proof" \
  log verify-inclusion --proof "$happy_cons"
expect no-proof-flag 2 'proof is required' "--proof is required" log verify-consistency
expect no-subcommand 2 'subcommand is required' "log needs a subcommand" log
expect help 0 'Exit codes: 0 the proof verifies' "log --help shows the form and the exit codes" log --help
expect help-form 0 '"leafIdx": 0, "treeSize": 8' "log --help shows the inclusion form" log --help

if ((failures)); then printf '%d failure(s); outputs in %s\n' "$failures" "$work"; exit 1; fi
echo "log verify: all passed"
