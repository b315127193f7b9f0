#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/: the starting corpora of the fuzz targets (docs/fuzzing.md).

usage: fuzz/make_seeds.py BINARY     (BINARY: a built synapse-backup; xtask makes the fixture tree)

The seeds are committed; this script is how they were made. Real backups of a tiny fixture server
(encrypted, decrypted, gunzipped), hand-made hostile archives (every refusal the restore knows),
and the configs and relation data the tool reads.
"""
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

PASSPHRASE = "fuzzing passphrase"  # fuzz_harness::PASSPHRASE
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SEEDS = os.path.join(HERE, "seeds")


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def gpg(args, data):
    with tempfile.TemporaryDirectory() as home:
        r, w = os.pipe()
        os.write(w, PASSPHRASE.encode())
        os.close(w)
        out = subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--quiet", "--pinentry-mode", "loopback",
             "--passphrase-fd", str(r)] + args,
            input=data, stdout=subprocess.PIPE, check=True, pass_fds=(r,))
        os.close(r)
        return out.stdout


def real_backup(binary):
    with tempfile.TemporaryDirectory() as tmp:
        data, store = os.path.join(tmp, "data"), os.path.join(tmp, "store")
        subprocess.run(["cargo", "xtask", "fixture", "make", data, "--size", "16K", "--profile", "small", "--events", "20"],
                       cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        env = dict(os.environ, SYNAPSE_BACKUP_PASSPHRASE=PASSPHRASE)
        subprocess.run([binary, "--synapse-config", os.path.join(data, "homeserver.yaml"), "--store", store, "create"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        (name,) = [n for n in os.listdir(store) if n.startswith("backup-") and "." not in n]
        with open(os.path.join(store, name), "rb") as f:
            return f.read()


def tar_of(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            extra = dict(extra)
            body = extra.pop("body", b"")
            for k, v in extra.items():
                setattr(info, k, v)
            if kind == tarfile.REGTYPE:
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
            else:
                t.addfile(info)
    return buf.getvalue()


def hostile():
    d = "srv/data"
    m = d + "/media_store/local_content"
    key = (d + "/example.com.signing.key", tarfile.REGTYPE, {"body": b"ed25519 a_new newkey\n"})
    media = (m + "/ab/cd/efgh", tarfile.REGTYPE, {"body": b"new media"})
    cases = {
        "reference_layout": [key, (m + "/ab", tarfile.DIRTYPE, {}), media],
        "dotdot_name": [key, (m + "/../../../../outside/file", tarfile.REGTYPE, {"body": b"x"})],
        "absolute_name": [key, ("/tmp/outside-file", tarfile.REGTYPE, {"body": b"x"})],
        "symlink_up": [key, (m + "/ab", tarfile.SYMTYPE, {"linkname": "../../../../outside"}),
                       (m + "/ab/file", tarfile.REGTYPE, {"body": b"x"})],
        "symlink_chain": [key, (m + "/up", tarfile.SYMTYPE, {"linkname": ".."}),
                          (m + "/u1", tarfile.SYMTYPE, {"linkname": "up/.."}),
                          (m + "/u2", tarfile.SYMTYPE, {"linkname": "u1/.."}),
                          (m + "/u2/outside/file", tarfile.REGTYPE, {"body": b"x"})],
        "symlink_absolute": [key, (m + "/ab", tarfile.SYMTYPE, {"linkname": "/"}),
                             (m + "/ab/tmp/x", tarfile.REGTYPE, {"body": b"x"})],
        "key_is_symlink": [(d + "/example.com.signing.key", tarfile.SYMTYPE, {"linkname": "/etc/shadow"})],
        "hardlink_out": [key, (m + "/ab", tarfile.LNKTYPE, {"linkname": "etc/shadow"})],
        "hardlink_through_link": [key, (m + "/l", tarfile.SYMTYPE, {"linkname": "x"}),
                                  (m + "/h", tarfile.LNKTYPE, {"linkname": m + "/l/y"})],
        "char_device": [key, (m + "/dev", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3})],
        "fifo": [key, (m + "/fifo", tarfile.FIFOTYPE, {})],
        "long_gnu_name": [key, (m + "/" + "n" * 300, tarfile.REGTYPE, {"body": b"x"})],
        "huge_mtime": [key, (m + "/ab/cd/old", tarfile.REGTYPE, {"body": b"x", "mtime": 8 ** 11 - 1})],
    }
    for name, entries in cases.items():
        yield name + ".tar", tar_of(entries)
    yield "pax_header.tar", tar_of([key, (m + "/" + "p" * 200, tarfile.REGTYPE,
                                         {"body": b"x", "pax_headers": {"comment": "c" * 1000}})],
                                   tarfile.PAX_FORMAT)
    yield "reference_layout.tar.gz", gzip.compress(tar_of(cases["reference_layout"]))


def main():
    binary = sys.argv[1]
    obj = real_backup(binary)
    plain = gpg(["--decrypt"], obj)
    put("restore", "real_backup.tar.gz", plain)
    raw = gzip.decompress(plain)
    put("restore", "real_backup.tar", raw)
    for name, data in hostile():
        put("restore", name, data)

    put("decrypt", "real_backup.gpg", obj)
    put("decrypt", "gpg_symmetric.gpg", gpg(["--symmetric", "--cipher-algo", "AES256"], b"hello\n" * 100))
    put("decrypt", "gpg_aead.gpg", gpg(["--symmetric", "--rfc4880"], b"hello\n"))
    put("decrypt", "truncated.gpg", obj[: len(obj) // 2])

    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        for member in t.getmembers():
            base = os.path.basename(member.name)
            if member.isfile() and base.endswith(".json"):
                put("manifest", base, t.extractfile(member).read())

    yaml = ("server_name: example.com\nsigning_key_path: /data/example.com.signing.key\n"
            "media_store_path: /data/media_store\ndatabase:\n  name: sqlite3\n  args:\n"
            "    database: /data/homeserver.db\nlisteners:\n  - port: 8008\n    type: http\n"
            "    bind_addresses: ['127.0.0.1']\n    resources:\n      - names: [client, federation]\n")
    put("homeserver_yaml", "sqlite.yaml", yaml.encode())
    put("homeserver_yaml", "conf_d.yaml", (yaml + "\n---8<---\nserver_name: other.org\n").encode())
    put("homeserver_yaml", "postgres.yaml", b"server_name: x\ndatabase:\n  name: psycopg2\n  args: {user: s}\n")

    v1 = {"access-key": "AK", "secret-key": "SK", "bucket": "b", "endpoint": "http://127.0.0.1:9000",
          "path": "synapse", "region": "us-east-1", "s3-uri-style": "path", "s3-api-version": "4",
          "tls-ca-chain": json.dumps(["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"]),
          "attributes": "x-amz-storage-class=STANDARD"}
    put("relation", "v1.json", json.dumps(v1).encode())
    v2 = {"access-key": "AK", "secret-key": "SK", "bucket": "b", "endpoint": "https://s3.example.com",
          "storage-class": "GLACIER", "delete-older-than-days": "30", "lib-version": "1.1"}
    put("relation", "v2.json", json.dumps(v2).encode())


if __name__ == "__main__":
    main()
