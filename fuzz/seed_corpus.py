#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the real vendor data in tests/data/attest (see
PROVENANCE.md there): the attestation objects, their certInfo and pubArea, the TPM
structures of go-attestation, and the certificate chains. Standard library only.

    python3 fuzz/seed_corpus.py          # from the repository root or from fuzz/
"""
import base64
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "attest"
CORPUS = ROOT / "fuzz" / "corpus"


def cbor_item(b, o):
    """One definite-length CBOR data item at offset o (RFC 8949 §3): (value, next offset)."""
    head = b[o]
    major, info = head >> 5, head & 0x1F
    o += 1
    if info < 24:
        arg = info
    elif info <= 27:
        n = 1 << (info - 24)
        arg = int.from_bytes(b[o : o + n], "big")
        o += n
    else:
        raise ValueError("indefinite lengths are not in the real data")
    if major == 0:
        return arg, o
    if major == 1:
        return -1 - arg, o
    if major in (2, 3):
        raw = b[o : o + arg]
        return (raw if major == 2 else raw.decode()), o + arg
    if major == 4:
        items = []
        for _ in range(arg):
            v, o = cbor_item(b, o)
            items.append(v)
        return items, o
    if major == 5:
        m = {}
        for _ in range(arg):
            k, o = cbor_item(b, o)
            v, o = cbor_item(b, o)
            m[k] = v
        return m, o
    raise ValueError(f"major type {major} is not in the real data")


def put(target, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main():
    for cbor_path in sorted(DATA.glob("tpm/*/attestationObject.cbor")):
        raw = cbor_path.read_bytes()
        att, _ = cbor_item(raw, 0)
        put("attobj", raw)
        put("inspect", raw)
        put("inspect", (cbor_path.parent / "attestationObject.b64url").read_bytes())
        put("tpm_cert_info", att["attStmt"]["certInfo"])
        put("tpm_pub_area", att["attStmt"]["pubArea"])
    ga = json.loads((DATA / "tpm/go-attestation/windows_gcp_shielded_vm.json").read_text())
    put("tpm_pub_area", base64.b64decode(ga["AK"]["Public"]))
    put("tpm_cert_info", base64.b64decode(ga["AK"]["CreateAttestation"]))
    put("tpm_cert_info", base64.b64decode(ga["Quote"]["Quote"]))
    for pem in sorted(list(DATA.glob("apple/*.pem")) + list(DATA.glob("yubikey/*"))):
        put("inspect", pem.read_bytes())
    print("corpus:", {d.name: len(list(d.iterdir())) for d in sorted(CORPUS.iterdir())})


if __name__ == "__main__":
    main()
