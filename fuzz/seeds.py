#!/usr/bin/env python3
"""Writes the committed seed inputs of each fuzz target into fuzz/seeds/<target>/: valid and
nearly valid inputs the fuzzer starts from (it finds the rest by coverage). Run from anywhere;
the seeds are committed, so run it again only when a target's input format changes."""

import hashlib
import json
import pathlib
import struct
import uuid

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def write(target, inputs):
    out = SEEDS / target
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    for data in inputs:
        if isinstance(data, str):
            data = data.encode()
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)


# Protobuf, by hand: enough for the messages below.
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, float):
        return varint(number << 3 | 1) + struct.pack("<d", value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def delimited(message):
    return varint(len(message)) + message


def reading(seq, name="temperature", number=21.5):
    metric = field(1, name) + field(2, number) + field(5, "Cel")
    device_time = field(1, 1_700_000_000 + seq)
    return field(1, seq) + field(2, device_time) + field(3, metric)


hello = field(1, field(1, "0.1.0") + field(3, 8))
batch = lambda *seqs: field(2, b"".join(field(1, reading(s)) for s in seqs))
ack = field(3, field(1, field(1, str(uuid.UUID(int=7)))) + field(2, 1))
goodbye = field(4, b"")
write(
    "session_frames",
    [
        b"\x00\x00" + delimited(hello) + delimited(batch(1, 2, 3)) + delimited(goodbye),
        b"\x02\x00" + delimited(hello) + delimited(batch(1, 2, 3)) + delimited(batch(4)),
        b"\x00\x00" + delimited(hello) + delimited(ack) + delimited(batch(5, 4)),
        b"\x00\x00" + delimited(batch(1)),
    ],
)

cases = json.loads((ROOT / "testdata" / "rule-conditions.json").read_text())
write(
    "rule_condition",
    [c["text"] for c in cases["valid"]] + cases["invalid"],
)

minimal = """[server]
plaintext = true
[database]
url = "sqlite::memory:"
[auth]
jwks_url = "http://127.0.0.1:7400/.well-known/jwks.json"
"""
write(
    "config_toml",
    [
        minimal,
        minimal + "[collect]\nmax_batch_readings = 100\nburst_readings = 400\n",
        minimal + '[queue]\nbrokers = ["kafka-0:9093"]\nreplication_factor = 3\n',
        (ROOT / "edge" / "config.example.toml").read_text(),
    ],
)

write(
    "oauth_http",
    [
        b"\x00\x00grant_type=password&username=alice&password=secret&scope=things%3Aread",
        b"\x00Basic c2lwbWJhLWNvbnRyb2w6c2VjcmV0\x00grant_type=client_credentials",
        b"\x00\x00grant_type=refresh_token&refresh_token=abc",
        b"\x00\x00grant_type=authorization_code&code=x&client_id=sipmba-console"
        b"&redirect_uri=http%3A%2F%2F127.0.0.1%3A9%2F&code_verifier=" + b"a" * 43,
        b"\x01Bearer abc\x00token=abc",
        b"\x02\x00token=abc&token_type_hint=refresh_token",
        b"\x04\x00response_type=code&client_id=sipmba-console&redirect_uri=http%3A%2F%2F127.0.0.1%2F"
        b"&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=s",
        b"\x03\x00username=alice&password=x&client_id=sipmba-console&state=s",
    ],
)

header = json.dumps({"typ": "JWT", "alg": "EdDSA", "kid": "fuzz-key"})
claims = json.dumps(
    {
        "iss": "https://sso.sipmba.test",
        "sub": str(uuid.UUID(int=1)),
        "aud": "sipmba",
        "exp": 4_000_000_000,
        "iat": 1_700_000_000,
        "jti": "j",
        "kind": "thing",
        "scope": "telemetry:write",
    }
)
write(
    "jwt",
    [
        b"\x00eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",
        b"\x01" + header.encode(),
        b"\x01" + json.dumps({"alg": "none", "kid": "fuzz-key"}).encode(),
        b"\x01" + json.dumps({"alg": "HS256", "kid": "fuzz-key"}).encode(),
        b"\x02" + claims.encode(),
    ],
)

platform = yaml.safe_load((ROOT / "charts" / "sipmba" / "examples" / "sipmba.yaml").read_text())
exposed = yaml.safe_load((ROOT / "charts" / "sipmba" / "examples" / "sipmba-exposed.yaml").read_text())
write("operator_spec", [json.dumps(platform["spec"]), json.dumps(exposed["spec"]), "{}"])

thing = field(1, str(uuid.UUID(int=3)))
request = (
    field(2, thing)
    + field(3, "eyJ.token.sig")
    + field(4, field(1, 4_000_000_000))
    + field(5, "https://collect.sipmba.test:7400")
    + field(7, "thing-client")
)
write(
    "edge_provision",
    [
        b"\x01" + request,
        b"\x00" + field(1, "hmac-sha256:AAAA") + request,
        b"\x01" + request + field(6, "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n"),
        b"\x01" + request + field(8, "secret") + field(9, "https://sso.sipmba.test:7400/oauth2/token"),
    ],
)
