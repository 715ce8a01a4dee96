#!/usr/bin/env bash
# e2e.config: every program reads TOML by the same rules (core/config_file.h). For each program: a config
# file with an unknown key and one with a wrong type are refused with exit 2, the file and line named;
# a secret given as a flag is refused with exit 2, its value never echoed; a good file is read.
set -euo pipefail
work=${1:?work dir}
bin=${LINE_BIN:?LINE_BIN}
rm -rf "$work" && mkdir -p "$work"
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok: $*"; }

# expect_refused NAME WANT... -- COMMAND...: exit 2 and every WANT in its output.
expect_refused() {
  local name=$1 rc=0 want=()
  shift
  while [ "$1" != "--" ]; do want+=("$1"); shift; done
  shift
  "$@" >"$work/$name.out" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] || { cat "$work/$name.out"; fail "$name: exit $rc, not 2"; return; }
  for w in "${want[@]}"; do
    grep -qF -- "$w" "$work/$name.out" || { cat "$work/$name.out"; fail "$name: no \"$w\" in the refusal"; return; }
  done
  ok "$name refused: $(head -1 "$work/$name.out")"
}

# program | section ("" for the top) | the arguments of a command | a text option | an integer option or -
programs=(
  "keyline-backupdb|serve|serve|listen|threads"
  "keyline-kps|serve|serve|listen|threads"
  "keyline-service|serve|serve|listen|threads"
  "keyline-recovery|restore|restore|trust|card-wait"
  "keyline-ceremony||log show|dir|-"
  "keyline-device|serve|serve|dir|max-connections"
)
for row in "${programs[@]}"; do
  IFS='|' read -r prog section cmd text_key int_key <<<"$row"
  exe=$bin/$prog
  [ -x "$exe" ] || { fail "$prog not built"; continue; }
  header=""
  [ -z "$section" ] || header="[$section]"
  # shellcheck disable=SC2086
  {
    printf '# a good file\n%s\n%s = "x"\n' "$header" "$text_key" >"$work/$prog-good.toml"
    "$exe" --config "$work/$prog-good.toml" $cmd --help >"$work/$prog-good.out" 2>&1 ||
      { cat "$work/$prog-good.out"; fail "$prog: a good file is not read"; }
    printf '# unknown\n%s\n%s = "x"\nno-such-key = 1\n' "$header" "$text_key" >"$work/$prog-unknown.toml"
    expect_refused "$prog-unknown" "$work/$prog-unknown.toml:4:" 'unknown key "no-such-key"' -- \
      "$exe" --config "$work/$prog-unknown.toml" $cmd
    printf '%s\n\n%s = 5\n' "$header" "$text_key" >"$work/$prog-type.toml"
    expect_refused "$prog-type" "$work/$prog-type.toml:3:" "\"$text_key\"" "must be a string, not an integer" -- \
      "$exe" --config "$work/$prog-type.toml" $cmd
    if [ "$int_key" != - ]; then
      printf '%s\n%s = "many"\n' "$header" "$int_key" >"$work/$prog-int.toml"
      expect_refused "$prog-int" "$work/$prog-int.toml:2:" "must be an integer, not a string" -- \
        "$exe" --config "$work/$prog-int.toml" $cmd
    fi
    printf '[nosuch]\n%s = "x"\n' "$text_key" >"$work/$prog-section.toml"
    expect_refused "$prog-section" "$work/$prog-section.toml:2:" "unknown section [nosuch]" -- \
      "$exe" --config "$work/$prog-section.toml" $cmd
    printf '%s\n%s = "unterminated\n' "$header" "$text_key" >"$work/$prog-syntax.toml"
    expect_refused "$prog-syntax" "$work/$prog-syntax.toml:" -- "$exe" --config "$work/$prog-syntax.toml" $cmd
    for flag in --pin --db-password --sign-pin --log-token-pin; do
      expect_refused "$prog$flag" "$flag takes a password, PIN or key only from a file" "$flag-file" "LoadCredential=" -- \
        "$exe" $cmd "$flag" s3cret-value
      ! grep -q s3cret-value "$work/$prog$flag.out" || fail "$prog$flag: the refusal echoes the secret"
    done
    expect_refused "$prog--pin=" "--pin takes a password" -- "$exe" $cmd --pin=s3cret-value
  }
done

# The station: its own settings file (docs/operations.md, "Configuration"), TOML or the JSON of before.
st=$bin/keyline-station
if [ -x "$st" ]; then
  printf 'station_id = "line1"\n\ndbx = "host=/run"\n' >"$work/station-unknown.toml"
  expect_refused station-unknown "$work/station-unknown.toml:3:" 'unknown key "dbx"' -- \
    "$st" --config "$work/station-unknown.toml" status
  printf 'station_id = "line1"\ndb = 5\n' >"$work/station-type.toml"
  expect_refused station-type "$work/station-type.toml:2:" '"db" must be a string, not an integer' -- \
    "$st" --config "$work/station-type.toml" status
  printf '[db]\nhost = "x"\n' >"$work/station-section"
  expect_refused station-section "$work/station-section:2:" "unknown section [db]" -- \
    "$st" --config "$work/station-section" status
  printf '{"station_id": "line1", "dbx": "x"}\n' >"$work/station-unknown.json"
  expect_refused station-json-unknown "$work/station-unknown.json" 'unknown key "dbx"' -- \
    "$st" --config "$work/station-unknown.json" status
  printf '{"db": true}\n' >"$work/station-type-json"
  expect_refused station-json-type '"db" must be a string' -- "$st" --config "$work/station-type-json" status
  for flag in --pin --db-password --hsm-pin; do
    expect_refused "station$flag" "$flag takes a password, PIN or key only from a file" -- "$st" "$flag" s3cret-value status
    ! grep -q s3cret-value "$work/station$flag.out" || fail "station$flag: the refusal echoes the secret"
  done
else
  fail "keyline-station not built"
fi

# A password inside a conninfo on the command line (docs/operations.md, "Secrets on the command line"):
# refused with exit 2 before any connection, the option and the way instead named, the value never
# printed. 127.0.0.1:9 (discard) answers no PostgreSQL, so a refusal that did not happen shows as
# another exit code.
expect_refused service--db-password "--db holds a password" "--db-password-file" -- \
  "$bin/keyline-service" migrate --db "host=127.0.0.1 port=9 dbname=keyline_service password=hunter2 connect_timeout=1"
! grep -q hunter2 "$work/service--db-password.out" || fail "service--db-password: the refusal echoes the password"
expect_refused backupdb--replica-password "--replica holds a password" "--db-password-file" -- \
  "$bin/keyline-backupdb" serve --db "host=127.0.0.1 port=9 dbname=keyline_backupdb connect_timeout=1" \
  --trust "$work/no-such-root.pem" --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --plain-http \
  --replica "host=127.0.0.1 port=9 dbname=keyline_backupdb password=x-replica-secret connect_timeout=1"
! grep -q x-replica-secret "$work/backupdb--replica-password.out" || fail "backupdb--replica-password: the refusal echoes the password"

# The shipped example configs (packaging/config/) are read by their programs as they are.
src=${KEYLINE_SOURCE_DIR:?}/packaging/config
for pair in "keyline-backupdb backupdb.toml serve" "keyline-backupdb witness.toml witness" "keyline-kps kps.toml serve" \
  "keyline-service service.toml serve"; do
  read -r prog file cmd <<<"$pair"
  [ -f "$src/$file" ] || continue
  "$bin/$prog" --config "$src/$file" "$cmd" --help >"$work/shipped-$file.out" 2>&1 ||
    { cat "$work/shipped-$file.out"; fail "$file not read by $prog"; }
done
ok "the shipped example configs are read"

[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "e2e.config: all passed"
