#!/usr/bin/env python3
"""The attacker's KLKE envelope (core/kps_envelope.h), for kps_transfer_test.sh.

Builds the exact wire form a source would, for a transfer the attacker chooses (id, label, source and
target chips), with the attacker's own 32-byte key sealed (RFC 9180 base mode, DHKEM(X25519,
HKDF-SHA256), HKDF-SHA256, AES-128-GCM, info "keyline/kps/v2", aad = the header) to the target's real,
public transport key, and the source's genuine certificates (public, from its record) — but signed with
a key the attacker holds (ECDSA P-256), since it cannot sign with the source's identity key.
Usage: forge_klke.py ID LABEL SOURCE_CHIP TARGET_CHIP TRANSPORT_CERT_PEM SOURCE_CHAIN_PEM OUT KEY_OUT
"""
import hashlib
import hmac
import struct
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

tid, label, source, target, transport_pem, chain_pem, out, key_out = sys.argv[1:9]


def extract(salt, ikm):
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def expand(prk, info, length):
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + t, i + 1
    return out[:length]


KEM = b"KEM" + struct.pack(">H", 0x20)
HPKE = b"HPKE" + struct.pack(">HHH", 0x20, 1, 1)


def labeled_extract(suite, salt, label_, ikm):
    return extract(salt, b"HPKE-v1" + suite + label_ + ikm)


def labeled_expand(suite, prk, label_, info, length):
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label_ + info, length)


def seal(pk_r, info, aad, pt):  # RFC 9180 sections 4.1, 5.1, 6.1 (base mode)
    sk_e = x25519.X25519PrivateKey.generate()
    enc = sk_e.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    dh = sk_e.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    eae_prk = labeled_extract(KEM, b"", b"eae_prk", dh)
    shared = labeled_expand(KEM, eae_prk, b"shared_secret", enc + pk_r, 32)
    ctx = b"\0" + labeled_extract(HPKE, b"", b"psk_id_hash", b"") + labeled_extract(HPKE, b"", b"info_hash", info)
    secret = labeled_extract(HPKE, shared, b"secret", b"")
    key = labeled_expand(HPKE, secret, b"key", ctx, 16)
    nonce = labeled_expand(HPKE, secret, b"base_nonce", ctx, 12)
    return enc + AESGCM(key).encrypt(nonce, pt, aad)


transport = x509.load_pem_x509_certificate(open(transport_pem, "rb").read())
pk_r = transport.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
chain = x509.load_pem_x509_certificates(open(chain_pem, "rb").read())
header = b"KLKE\x01" + struct.pack(">H", len(tid)) + tid.encode() + bytes([len(label)]) + label.encode() \
    + bytes.fromhex(source) + bytes.fromhex(target)
attacker_key = bytes(range(0x40, 0x60))
sealed = seal(pk_r, b"keyline/kps/v2", header, attacker_key)
body = header + struct.pack(">I", len(sealed)) + sealed + struct.pack(">H", len(chain))
for c in chain:
    der = c.public_bytes(serialization.Encoding.DER)
    body += struct.pack(">I", len(der)) + der
sig = ec.generate_private_key(ec.SECP256R1()).sign(body, ec.ECDSA(hashes.SHA256()))
open(out, "wb").write(body + struct.pack(">H", len(sig)) + sig)
open(key_out, "w").write(attacker_key.hex() + "\n")
