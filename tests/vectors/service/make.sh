#!/bin/sh
# Regenerates derivation_v2.txt with openssl and sha256sum only (an implementation independent of
# keyline's C++ code): derivation version 2 of docs/service.md "Key derivation" and the three
# static SCP03 keys from the communication key. Run from this folder: sh make.sh > derivation_v2.txt
set -eu
master=000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F
chip=4090612312345678ABCD
ecb() { # key-hex data-hex -> upper-case hex of AES-256-ECB without padding
  printf '%s' "$2" | xxd -r -p | openssl enc -aes-256-ecb -nopad -K "$1" | xxd -p -c 256 | tr a-f A-F
}
data=$( { printf 'keyline/comm/v2'; printf '%s' "$chip" | xxd -r -p; } | sha256sum | cut -c1-64 | tr a-f A-F)
comm=$(ecb "$master" "$data")
hexof() { printf '%s' "$1" | xxd -p -c 256 | tr a-f A-F; }
echo "# Source: computed for keyline by tests/vectors/service/make.sh (openssl $(openssl version | cut -d' ' -f2) enc -aes-256-ecb -nopad, sha256sum), not by keyline's code; public domain test values"
echo "# Derivation version 2 (docs/service.md): comm = AES-256-ECB(master v2, SHA-256(\"keyline/comm/v2\" || chip ID)),"
echo "# K-ENC/K-MAC/K-DEK = AES-256-ECB(comm, 16-byte diversifier) (AES-128 keys)."
echo "master = $master"
echo "chip_id = $chip"
echo "derivation_data = $data"
echo "comm = $comm"
for k in enc mac dek; do
  echo "diversifier.$k = $(hexof "keyline/scp03$k")"
  echo "static.$k = $(ecb "$comm" "$(hexof "keyline/scp03$k")")"
done
