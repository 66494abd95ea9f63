#!/usr/bin/env python3
"""An independent Certify client: Python grpcio + `cryptography`, nothing from our Rust code.

The gRPC stubs are generated when this runs, with grpc_tools.protoc, from the identity.proto
shipped in the `linkerd2-proxy-api` crate (--proto-dir is that crate's `proto/` directory).
The key and the DER CSR come from `cryptography` (ECDSA P-256, DNS SAN = the identity).

Cases, all through the same generated stub:
  ok             a good request; the leaf must chain to --trust-anchor-pem (signatures, CA
                 flags, validity; plus cryptography's own path validation from 42 on), carry
                 the DNS SAN and our public key, and valid_until must be in the future
                 (= NotAfter)
  bad_token      the given token with its MAC altered          -> UNAUTHENTICATED
  garbage_csr    bytes that are not a PKCS#10 CSR              -> INVALID_ARGUMENT
  name_mismatch  CN = the identity, but the DNS SAN another name -> INVALID_ARGUMENT

Prints one JSON object with what it saw. Every check also runs here; if any fails, the
object has them in "failures" and the exit status is 1. Needs: grpc, grpc_tools, cryptography.
"""

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
import types

import grpc
import grpc_tools
from grpc_tools import protoc
import cryptography
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def install_generated(out, proto):
    """Makes the module generated from `proto` (a path like a/b/c.proto) importable as a.b.c_pb2.

    Real packages on the way (google, google.protobuf) are imported; a missing one is made
    a package of the generated directory. So is one that exists as a plain module:
    protobuf >= 5 has google/protobuf/timestamp.py, helpers that import the well-known
    google/protobuf/timestamp.proto, whose google.protobuf.Timestamp the vendored file would
    then define a second time (upb refuses that). Shadowing it here is local to this process.
    """
    parts = proto[: -len(".proto")].split("/")
    parent = None
    for i in range(1, len(parts)):
        pkg = ".".join(parts[:i])
        mod = sys.modules.get(pkg)
        if mod is None:
            spec = importlib.util.find_spec(pkg)
            if spec is not None and spec.submodule_search_locations is not None:
                mod = importlib.import_module(pkg)
            else:
                mod = types.ModuleType(pkg)
                mod.__path__ = [os.path.join(out, *parts[:i])]
                sys.modules[pkg] = mod
                if parent is not None:
                    setattr(parent, parts[i - 1], mod)
        elif not hasattr(mod, "__path__"):
            raise SystemExit(f"{pkg} is already loaded as a module; cannot install {proto}")
        parent = mod
    name = ".".join(parts) + "_pb2"
    path = os.path.join(out, *parts[:-1], parts[-1] + "_pb2.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    if parent is not None:
        setattr(parent, parts[-1] + "_pb2", mod)


def generate_stubs(proto_dir, out):
    """Runs protoc on identity.proto and on the imports the crate vendors beside it.

    The crate ships Timestamp as google/protobuf/timestamp/timestamp.proto (not the usual
    google/protobuf/timestamp.proto), so that file is generated and installed too. The
    generated modules are imported before anything loads the usual well-known Timestamp.
    """
    main = os.path.join(proto_dir, "identity.proto")
    with open(main, encoding="utf-8") as f:
        imports = re.findall(r'^\s*import\s+"([^"]+)"\s*;', f.read(), re.M)
    vendored = [i for i in imports if os.path.isfile(os.path.join(proto_dir, i))]
    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["grpc_tools.protoc", "-I" + proto_dir]
    if os.path.isdir(wkt):
        args.append("-I" + wkt)
    args += ["--python_out=" + out, "--grpc_python_out=" + out, main]
    args += [os.path.join(proto_dir, i) for i in vendored]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"grpc_tools.protoc failed ({rc}): {args}")

    for proto in vendored:
        install_generated(out, proto)
    sys.path.insert(0, out)
    pb2 = importlib.import_module("identity_pb2")
    pb2_grpc = importlib.import_module("identity_pb2_grpc")
    return pb2, pb2_grpc, vendored


def make_csr(key, cn, san):
    """A DER PKCS#10 CSR with subject CN=`cn` and one DNS SAN, `san`."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def load_pem_bundle(path):
    with open(path, "rb") as f:
        data = f.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S
    )
    return [x509.load_pem_x509_certificate(b) for b in blocks]


def utc(dt):
    """Works with both naive-UTC (cryptography < 42) and aware datetimes."""
    return dt if dt.tzinfo else dt.replace(tzinfo=datetime.timezone.utc)


def not_before(cert):
    return utc(getattr(cert, "not_valid_before_utc", None) or cert.not_valid_before)


def not_after(cert):
    return utc(getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after)


def signed_by(child, parent):
    """Raises unless `parent`'s key signed `child`."""
    if child.issuer != parent.subject:
        raise ValueError(f"issuer {child.issuer.rfc4514_string()} != "
                         f"subject {parent.subject.rfc4514_string()}")
    key = parent.public_key()
    tbs, sig, alg = child.tbs_certificate_bytes, child.signature, child.signature_hash_algorithm
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(sig, tbs, ec.ECDSA(alg))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(sig, tbs, padding.PKCS1v15(), alg)
    elif isinstance(key, ed25519.Ed25519PublicKey):
        key.verify(sig, tbs)
    else:
        raise ValueError(f"unsupported issuer key {type(key).__name__}")


def is_ca(cert):
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def verify_chain(leaf, intermediates, anchors, now):
    """Builds leaf -> intermediates... -> anchor by signatures, checking CA flags and times.

    Returns the list of subjects walked, ending with the anchor's."""
    pool = list(intermediates)
    path = [leaf]
    for _ in range(len(intermediates) + 1):
        cur = path[-1]
        if not (not_before(cur) <= now <= not_after(cur)):
            raise ValueError(f"{cur.subject.rfc4514_string()} not valid now")
        for anchor in anchors:
            try:
                signed_by(cur, anchor)
            except Exception:
                continue
            if not is_ca(anchor):
                raise ValueError("the anchor is not a CA")
            path.append(anchor)
            return [c.subject.rfc4514_string() for c in path]
        nxt = None
        for cand in pool:
            try:
                signed_by(cur, cand)
                nxt = cand
                break
            except Exception:
                continue
        if nxt is None:
            raise ValueError(f"no issuer for {cur.subject.rfc4514_string()}")
        if not is_ca(nxt):
            raise ValueError(f"{nxt.subject.rfc4514_string()} is not a CA")
        pool.remove(nxt)
        path.append(nxt)
    raise ValueError("the chain does not reach a trust anchor")


def path_validation(leaf, intermediates, anchors, identity, failures):
    """A second opinion where it exists: cryptography >= 42's RFC 5280 path validation
    (server profile, with the DNS name; client profile from 43). Returns what ran."""
    try:
        from cryptography.x509.verification import PolicyBuilder, Store
    except ImportError:
        return f"unavailable in cryptography {cryptography.__version__}"
    builder = PolicyBuilder().store(Store(anchors))
    ran = {}
    try:
        chain = builder.build_server_verifier(x509.DNSName(identity)).verify(leaf, intermediates)
        ran["server"] = len(chain)
    except Exception as e:
        failures.append(f"ok: server path validation: {e}")
    if hasattr(builder, "build_client_verifier"):
        try:
            chain = builder.build_client_verifier().verify(leaf, intermediates).chain
            ran["client"] = len(chain)
        except Exception as e:
            failures.append(f"ok: client path validation: {e}")
    return ran


def call(stub, pb2, identity, token, csr):
    try:
        rsp = stub.Certify(
            pb2.CertifyRequest(identity=identity, token=token, certificate_signing_request=csr),
            timeout=10,
        )
        return rsp, None
    except grpc.RpcError as e:
        return None, {"code": e.code().name, "details": e.details()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--addr", required=True, help="host:port of the plaintext gRPC server")
    ap.add_argument("--proto-dir", required=True, help="the linkerd2-proxy-api crate's proto/")
    ap.add_argument("--identity", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--trust-anchor-pem", required=True, help="PEM bundle of the roots")
    args = ap.parse_args()

    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
        return cond

    with tempfile.TemporaryDirectory(prefix="certify-stubs-") as out:
        pb2, pb2_grpc, vendored = generate_stubs(args.proto_dir, out)
        from google.protobuf import __version__ as protobuf_version

        result = {
            "versions": {
                "python": sys.version.split()[0],
                "grpcio": grpc.__version__,
                "protobuf": protobuf_version,
                "cryptography": cryptography.__version__,
            },
            "proto": os.path.join(args.proto_dir, "identity.proto"),
            "vendored_imports": vendored,
        }
        anchors = load_pem_bundle(args.trust_anchor_pem)
        check(anchors, "no certificate in --trust-anchor-pem")
        token = args.token.encode()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = make_csr(key, args.identity, args.identity)

        channel = grpc.insecure_channel(args.addr)
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = pb2_grpc.IdentityStub(channel)

        # ok
        rsp, err = call(stub, pb2, args.identity, token, csr)
        ok = {"error": err}
        if check(err is None, f"ok: Certify failed: {err}"):
            now = datetime.datetime.now(datetime.timezone.utc)
            leaf = x509.load_der_x509_certificate(rsp.leaf_certificate)
            inters = [x509.load_der_x509_certificate(d) for d in rsp.intermediate_certificates]
            try:
                ok["chain"] = verify_chain(leaf, inters, anchors, now)
                ok["chain_verified"] = True
            except Exception as e:  # reported, not raised: the JSON still prints
                ok["chain_verified"] = False
                failures.append(f"ok: chain: {e}")
            ok["path_validation"] = path_validation(leaf, inters, anchors, args.identity, failures)
            try:
                san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                ok["dns_sans"] = san.get_values_for_type(x509.DNSName)
                ok["uri_sans"] = san.get_values_for_type(x509.UniformResourceIdentifier)
            except x509.ExtensionNotFound:
                ok["dns_sans"] = []
            check(ok["dns_sans"] == [args.identity], f"ok: DNS SANs {ok['dns_sans']}")
            spki = serialization.PublicFormat.SubjectPublicKeyInfo
            der = serialization.Encoding.DER
            ok["leaf_key_is_ours"] = leaf.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
            check(ok["leaf_key_is_ours"], "ok: the leaf's key is not the CSR's")
            eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            ok["eku"] = sorted(o.dotted_string for o in eku)
            check(
                ExtendedKeyUsageOID.SERVER_AUTH in eku and ExtendedKeyUsageOID.CLIENT_AUTH in eku,
                f"ok: EKU {ok['eku']}",
            )
            check(not is_ca(leaf), "ok: the leaf is a CA")
            ok["intermediates"] = len(inters)
            ok["valid_until"] = rsp.valid_until.seconds
            ok["not_after"] = int(not_after(leaf).timestamp())
            ok["now"] = int(time.time())
            check(rsp.HasField("valid_until"), "ok: no valid_until")
            check(ok["valid_until"] > ok["now"], "ok: valid_until is not in the future")
            check(ok["valid_until"] == ok["not_after"], "ok: valid_until != the leaf's NotAfter")
            ok["leaf_pem"] = leaf.public_bytes(serialization.Encoding.PEM).decode()
        result["ok"] = ok

        # Refusals: each must fail with the expected code.
        last = token[-1:]
        forged = token[:-1] + (b"0" if last != b"0" else b"1")
        # CN is the identity, but the one DNS SAN names something else.
        mismatch = make_csr(key, args.identity, "not-" + args.identity)
        cases = [
            ("bad_token", args.identity, forged, csr, "UNAUTHENTICATED"),
            ("garbage_csr", args.identity, token, b"this is not a PKCS#10 CSR", "INVALID_ARGUMENT"),
            ("name_mismatch", args.identity, token, mismatch, "INVALID_ARGUMENT"),
        ]
        for name, ident, tok, req_csr, want in cases:
            rsp, err = call(stub, pb2, ident, tok, req_csr)
            got = err["code"] if err else "OK"
            result[name] = err or {"code": "OK"}
            check(got == want, f"{name}: got {got}, want {want}")
        channel.close()

    result["failures"] = failures
    print(json.dumps(result, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
