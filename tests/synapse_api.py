#!/usr/bin/env python3
"""A small Matrix client for the real-Synapse tests (tests/common/synapse.rs), stdlib only.

Each subcommand prints one JSON object on stdout. An HTTP error from Synapse prints
{"status": N, "errcode": ..., "error": ...} and exits 2; anything else that goes wrong exits 1
with a traceback on stderr. A 429 is retried after the delay Synapse asks for (bounded).

    synapse_api.py register BASE SHARED_SECRET USER PASSWORD [--admin]
    synapse_api.py login BASE USER PASSWORD
    synapse_api.py whoami BASE TOKEN
    synapse_api.py create-room BASE TOKEN [NAME]
    synapse_api.py send BASE TOKEN ROOM BODY...
    synapse_api.py messages BASE TOKEN ROOM LIMIT
    synapse_api.py png OUT SEED [WIDTH HEIGHT]
    synapse_api.py upload BASE TOKEN FILE CONTENT_TYPE [FILENAME]
    synapse_api.py download BASE TOKEN MXC [OUT]
    synapse_api.py thumbnail BASE TOKEN MXC WIDTH HEIGHT METHOD [OUT]
    synapse_api.py server-key BASE
    synapse_api.py populate BASE SHARED_SECRET USER PASSWORD MESSAGES MEDIA

BASE is the listener's URL (http://127.0.0.1:PORT); MXC is mxc://server/media_id.
"""

import hashlib
import hmac
import json
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib

TIMEOUT = 60


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:500]!r}")
        self.status = status
        self.body = body

    def as_json(self):
        out = {"status": self.status}
        try:
            err = json.loads(self.body)
            out["errcode"] = err.get("errcode")
            out["error"] = err.get("error")
        except ValueError:
            out["error"] = self.body[:500].decode("utf-8", "replace")
        return out


def request(method, url, token=None, body=None, content_type=None, raw=False):
    """The response body (parsed JSON, or bytes with raw) and its headers."""
    data = None
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers["Content-Type"] = content_type or "application/octet-stream"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    for attempt in range(20):
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
                payload = resp.read()
                return (payload if raw else json.loads(payload or b"{}")), resp.headers
        except urllib.error.HTTPError as e:
            payload = e.read()
            if e.code == 429 and attempt < 19:
                try:
                    wait = json.loads(payload).get("retry_after_ms", 500) / 1000
                except ValueError:
                    wait = 0.5
                time.sleep(min(max(wait, 0.05), 5))
                continue
            raise HttpError(e.code, payload) from None
    raise AssertionError("unreachable")


def q(s):
    return urllib.parse.quote(s, safe="")


def register(base, secret, user, password, admin=False):
    """Shared-secret registration (the admin API): nonce, then HMAC-SHA1 over the fields."""
    nonce = request("GET", f"{base}/_synapse/admin/v1/register")[0]["nonce"]
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, user, password):
        mac.update(part.encode())
        mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    body = {
        "nonce": nonce,
        "username": user,
        "password": password,
        "admin": admin,
        "mac": mac.hexdigest(),
    }
    r = request("POST", f"{base}/_synapse/admin/v1/register", body=body)[0]
    return {"user_id": r["user_id"], "access_token": r["access_token"], "device_id": r.get("device_id")}


def login(base, user, password):
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
    }
    r = request("POST", f"{base}/_matrix/client/v3/login", body=body)[0]
    return {"user_id": r["user_id"], "access_token": r["access_token"], "device_id": r.get("device_id")}


def whoami(base, token):
    return request("GET", f"{base}/_matrix/client/v3/account/whoami", token=token)[0]


def create_room(base, token, name=None):
    body = {"preset": "private_chat"}
    if name:
        body["name"] = name
    r = request("POST", f"{base}/_matrix/client/v3/createRoom", token=token, body=body)[0]
    return {"room_id": r["room_id"]}


def send(base, token, room, bodies):
    ids = []
    for text in bodies:
        txn = uuid.uuid4().hex
        url = f"{base}/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}"
        r = request("PUT", url, token=token, body={"msgtype": "m.text", "body": text})[0]
        ids.append(r["event_id"])
    return {"event_ids": ids}


def messages(base, token, room, limit):
    """The room's m.room.message bodies, oldest first (read newest first, dir=b)."""
    url = f"{base}/_matrix/client/v3/rooms/{q(room)}/messages?dir=b&limit={int(limit)}"
    r = request("GET", url, token=token)[0]
    chunk = [e for e in r.get("chunk", []) if e.get("type") == "m.room.message"]
    chunk.reverse()
    return {
        "bodies": [e["content"].get("body") for e in chunk],
        "event_ids": [e["event_id"] for e in chunk],
    }


def png_bytes(seed, width=320, height=240):
    """An RGB PNG made by hand (zlib, no Pillow): smooth gradients plus a seeded pattern, so
    every seed gives different bytes and Synapse has a real image to thumbnail."""
    rows = bytearray()
    state = (seed * 2654435761 + 1) & 0xFFFFFFFF
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            state = (state * 1103515245 + 12345) & 0xFFFFFFFF
            noise = (state >> 16) & 0x1F
            rows += bytes(
                (
                    (x * 255 // max(width - 1, 1) + noise) & 0xFF,
                    (y * 255 // max(height - 1, 1) + seed * 37) & 0xFF,
                    ((x ^ y) + seed * 91 + noise) & 0xFF,
                )
            )

    def chunk(kind, data):
        c = kind + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def upload(base, token, data, content_type, filename=None):
    url = f"{base}/_matrix/media/v3/upload"
    if filename:
        url += "?filename=" + q(filename)
    r = request("POST", url, token=token, body=data, content_type=content_type)[0]
    return {"content_uri": r["content_uri"], "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def split_mxc(mxc):
    if not mxc.startswith("mxc://"):
        raise ValueError(f"not an mxc URI: {mxc}")
    server, media_id = mxc[len("mxc://"):].split("/", 1)
    return server, media_id


def fetched(data, headers, out=None):
    if out:
        with open(out, "wb") as f:
            f.write(data)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "content_type": headers.get("Content-Type"),
    }


def download(base, token, mxc, out=None):
    """Authenticated media (MSC3916): new media is not served on /_matrix/media/v3/download."""
    server, media_id = split_mxc(mxc)
    url = f"{base}/_matrix/client/v1/media/download/{q(server)}/{q(media_id)}"
    data, headers = request("GET", url, token=token, raw=True)
    return fetched(data, headers, out)


def thumbnail(base, token, mxc, width, height, method, out=None):
    server, media_id = split_mxc(mxc)
    url = (
        f"{base}/_matrix/client/v1/media/thumbnail/{q(server)}/{q(media_id)}"
        f"?width={int(width)}&height={int(height)}&method={q(method)}"
    )
    data, headers = request("GET", url, token=token, raw=True)
    return fetched(data, headers, out)


def server_key(base):
    r = request("GET", f"{base}/_matrix/key/v2/server")[0]
    return {
        "server_name": r["server_name"],
        "verify_keys": {k: v["key"] for k, v in r["verify_keys"].items()},
    }


def populate(base, secret, user, password, n_messages, n_media):
    """A user, a private room, N messages, M PNG uploads with a thumbnail fetched for each:
    everything a test checks after a restore."""
    account = register(base, secret, user, password)
    token = account["access_token"]
    room = create_room(base, token, "backup test room")["room_id"]
    bodies = [f"message {i} from {user}" for i in range(int(n_messages))]
    send(base, token, room, bodies)
    media = []
    for i in range(int(n_media)):
        data = png_bytes(i + 1)
        up = upload(base, token, data, "image/png", f"image-{i}.png")
        thumb = thumbnail(base, token, up["content_uri"], 32, 32, "crop")
        media.append(
            {
                "mxc": up["content_uri"],
                "sha256": up["sha256"],
                "size": up["size"],
                "thumbnail_sha256": thumb["sha256"],
                "thumbnail_content_type": thumb["content_type"],
            }
        )
    return {
        "user_id": account["user_id"],
        "user": user,
        "password": password,
        "access_token": token,
        "room_id": room,
        "messages": bodies,
        "media": media,
        "verify_keys": server_key(base)["verify_keys"],
    }


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd, args = argv[0], argv[1:]
    if cmd == "register":
        admin = "--admin" in args
        args = [a for a in args if a != "--admin"]
        out = register(*args, admin=admin)
    elif cmd == "login":
        out = login(*args)
    elif cmd == "whoami":
        out = whoami(*args)
    elif cmd == "create-room":
        out = create_room(*args)
    elif cmd == "send":
        out = send(args[0], args[1], args[2], args[3:])
    elif cmd == "messages":
        out = messages(*args)
    elif cmd == "png":
        dims = [int(a) for a in args[2:4]]
        data = png_bytes(int(args[1]), *dims)
        with open(args[0], "wb") as f:
            f.write(data)
        out = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    elif cmd == "upload":
        with open(args[2], "rb") as f:
            data = f.read()
        out = upload(args[0], args[1], data, *args[3:])
    elif cmd == "download":
        out = download(*args)
    elif cmd == "thumbnail":
        out = thumbnail(*args)
    elif cmd == "server-key":
        out = server_key(*args)
    elif cmd == "populate":
        out = populate(*args)
    else:
        raise SystemExit(f"unknown subcommand {cmd}\n{__doc__}")
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except HttpError as e:
        json.dump(e.as_json(), sys.stdout)
        sys.stdout.write("\n")
        sys.exit(2)
