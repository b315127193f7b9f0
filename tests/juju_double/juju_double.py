#!/usr/bin/env python3
"""A test double for Juju's hook tools, for running a charm's dispatch without Juju.

One script, run under the name of the tool it plays (the test harness makes `action-get`,
`relation-set`, ... symlinks to it in a directory put first on PATH). Every tool reads and writes
one JSON state file (path in JUJU_DOUBLE_STATE): config, leadership, relations with both sides'
databags, secrets, the running action, the status and its history, debug-log lines, and a record
of every call (argv, stdin, exit code, stdout, stderr).

Juju's behaviour, as its hook tools document it:
- argument grammar: flags may come before or after positionals, `--flag=value` or `--flag value`,
  `--` ends the flags; an undefined flag or a bad argument exits 2, a command that ran and failed
  exits 1, both with `ERROR <message>` on stderr;
- transactional writes (relation-set, state-set) go to a pending list, visible to this hook's own
  reads, and are applied only when the harness commits with the dispatch's exit status 0
  (`juju_double.py --commit STATE EXIT_CODE`); status-set, juju-log, action-* take effect at once;
- leadership rules: reading or writing our own app databag, and `status-set --application`, need
  leadership; relation-set is refused in the relation's `-relation-broken` hook.
"""

import fcntl
import json
import os
import re
import sys

STATE = os.environ.get("JUJU_DOUBLE_STATE", "")
RESULT_KEY = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
RESERVED = {"stdout", "stderr", "stdout-encoding", "stderr-encoding"}
STATUSES = ["maintenance", "blocked", "waiting", "active"]
LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ToolExit(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def usage(message):
    return ToolExit(2, message)


def failed(message):
    return ToolExit(1, message)


# --- argument grammar ---------------------------------------------------------------------------

def parse(argv, flags):
    """flags: {name: takes_value}; names are given without dashes ('r', 'relation', 'app').
    Returns (options, positionals)."""
    opts, pos = {}, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            pos.extend(argv[i + 1:])
            break
        if a.startswith("-") and a != "-":
            name, _, inline = a.lstrip("-").partition("=")
            if name not in flags:
                raise usage(f"flag provided but not defined: {a.split('=')[0]}")
            if flags[name]:
                if inline or "=" in a:
                    value = inline
                else:
                    i += 1
                    if i >= len(argv):
                        raise usage(f"flag needs an argument: {a}")
                    value = argv[i]
                opts[name] = value
            else:
                if "=" in a:
                    opts[name] = inline.lower() not in ("false", "0")
                else:
                    opts[name] = True
            i += 1
            continue
        pos.append(a)
        i += 1
    return opts, pos


def output_format(opts, allowed=("json", "yaml", "smart")):
    fmt = opts.get("format", "smart")
    if fmt not in allowed:
        raise usage(f'invalid value "{fmt}" for option --format: unknown format "{fmt}"')
    return fmt


def render(value, fmt):
    # JSON is a subset of YAML; "smart" prints plain strings bare, as Juju does.
    if fmt == "smart" and isinstance(value, str):
        return value + "\n"
    if fmt == "smart" and value is None:
        return ""
    return json.dumps(value) + "\n"


# --- the state ----------------------------------------------------------------------------------

def env(name):
    return os.environ.get(name) or None


def hook_name():
    path = env("JUJU_DISPATCH_PATH") or ""
    return path[len("hooks/"):] if path.startswith("hooks/") else None


def local_app(state):
    return state["unit"].split("/")[0]


def relation(state, opts):
    rid = opts.get("r") or opts.get("relation") or env("JUJU_RELATION_ID")
    if not rid:
        raise usage("no relation id specified")
    if rid not in state.get("relations", {}):
        # Juju accepts the bare number too
        matches = [k for k in state.get("relations", {}) if k.rsplit(":", 1)[-1] == rid]
        if not matches:
            raise usage(f'invalid value "{rid}" for option -r: relation not found')
        rid = matches[0]
    return rid, state["relations"][rid]


def pending_data(state, rid, bag, owner):
    """A databag (`app_data` or `unit_data`) with this run's uncommitted relation-set writes applied."""
    data = dict(state["relations"][rid].get(bag, {}).get(owner, {}))
    for op in state.get("pending", []):
        if op["op"] == "relation-set" and op["relation"] == rid and op["owner"] == owner:
            for k, v in op["data"].items():
                if v == "":
                    data.pop(k, None)
                else:
                    data[k] = v
    return data


def pending_app_data(state, rid, app):
    return pending_data(state, rid, "app_data", app)


def pending_unit_data(state, rid, unit):
    return pending_data(state, rid, "unit_data", unit)


def read_settings_file(path, stdin):
    text = stdin if path == "-" else open(path).read()
    text = text.strip()
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        data = {}
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if ":" not in line:
                raise usage(f"cannot parse settings file: {line!r}")
            k, _, v = line.partition(":")
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
                v = v[1:-1]
            data[k.strip()] = v
    if not isinstance(data, dict):
        raise usage("settings file is not a map")
    return {str(k): ("" if v is None else str(v)) for k, v in data.items()}


def key_values(args, what):
    out = {}
    for a in args:
        if "=" not in a:
            raise usage(f'expected "key=value", got "{a}"')
        k, _, v = a.partition("=")
        if not k:
            raise usage(f'expected "key=value", got "{a}"')
        if k in out:
            raise usage(f'duplicate key "{k}" in {what}')
        out[k] = v
    return out


def get_path(data, dotted):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


# --- the tools ----------------------------------------------------------------------------------

def need_action(state):
    if not state.get("action") or not env("JUJU_ACTION_NAME"):
        raise failed("not running an action")
    return state["action"]


def action_get(state, argv, stdin):
    opts, pos = parse(argv, {"format": True})
    fmt = output_format(opts)
    action = need_action(state)
    params = action.get("params", {})
    if len(pos) > 1:
        raise usage(f"unrecognized args: {pos[1:]}")
    return render(get_path(params, pos[0]) if pos else params, fmt)


def action_set(state, argv, stdin):
    _, pos = parse(argv, {})
    action = need_action(state)
    if not pos:
        raise usage("no action results specified")
    updates = []
    for a in pos:
        if "=" not in a:
            raise usage(f'argument "{a}" must be of the form key...=value')
        key, _, value = a.partition("=")
        for seg in key.split("."):
            if not RESULT_KEY.match(seg):
                raise usage(
                    f'key "{seg}" must start and end with lowercase alphanumeric, '
                    "and contain only lowercase alphanumeric and hyphens"
                )
            if seg in RESERVED:
                raise usage(f'cannot set reserved action key "{seg}"')
        updates.append((key.split("."), value))
    results = action.setdefault("results", {})
    for path, value in updates:
        node = results
        for seg in path[:-1]:
            if not isinstance(node.get(seg), dict):
                node[seg] = {}
            node = node[seg]
        node[path[-1]] = value
    return ""


def action_fail(state, argv, stdin):
    _, pos = parse(argv, {})
    action = need_action(state)
    action["failed"] = " ".join(pos) if pos else "action failed without reason given."
    return ""


def action_log(state, argv, stdin):
    _, pos = parse(argv, {})
    action = need_action(state)
    if not pos:
        raise usage("no message specified")
    action.setdefault("logs", []).append(" ".join(pos))
    return ""


def relation_ids(state, argv, stdin):
    opts, pos = parse(argv, {"format": True})
    fmt = output_format(opts)
    name = pos[0] if pos else env("JUJU_RELATION")
    if not name:
        raise usage("no endpoint name specified")
    if len(pos) > 1:
        raise usage(f"unrecognized args: {pos[1:]}")
    ids = [rid for rid, r in state.get("relations", {}).items() if r["endpoint"] == name]
    return render(ids, fmt) if fmt != "smart" else "".join(i + "\n" for i in ids)


def relation_list(state, argv, stdin):
    opts, pos = parse(argv, {"format": True, "r": True, "relation": True, "app": False})
    fmt = output_format(opts)
    if pos:
        raise usage(f"unrecognized args: {pos}")
    _, rel = relation(state, opts)
    if opts.get("app"):
        return render(rel.get("remote_app"), fmt)
    return render(list(rel.get("remote_units", [])), fmt)


def relation_get(state, argv, stdin):
    opts, pos = parse(argv, {"format": True, "r": True, "relation": True, "app": False})
    fmt = output_format(opts)
    rid, rel = relation(state, opts)
    key = pos[0] if pos else "-"
    if len(pos) > 2:
        raise usage(f"unrecognized args: {pos[2:]}")
    me = local_app(state)
    if opts.get("app"):
        owner = pos[1] if len(pos) > 1 else rel.get("remote_app")
        if not owner:
            raise usage("no unit or application specified")
        if owner == me:
            if not state.get("leader"):
                raise failed("permission denied")
        elif owner != rel.get("remote_app"):
            raise failed(f'application "{owner}" is not part of relation {rid}')
        if owner != me and rel.get("remote_unreadable"):
            raise failed(f"cannot read settings for application \"{owner}\" in relation {rid}")
        data = pending_app_data(state, rid, owner)
    else:
        owner = pos[1] if len(pos) > 1 else env("JUJU_REMOTE_UNIT")
        if not owner:
            raise usage("no unit id specified")
        data = pending_unit_data(state, rid, owner)
    value = data if key == "-" else data.get(key)
    return render(value, fmt)


def relation_set(state, argv, stdin):
    opts, pos = parse(argv, {"r": True, "relation": True, "app": False, "file": True, "format": True})
    rid, rel = relation(state, opts)
    data = {}
    if "file" in opts:
        data = read_settings_file(opts["file"], stdin)
    for k, v in key_values(pos, "relation-set").items():
        if k in data:
            raise usage(f'duplicate key "{k}" in --file and arguments')
        data[k] = v
    if hook_name() == f"{rel['endpoint']}-relation-broken" and env("JUJU_RELATION_ID") == rid:
        raise failed(f"cannot write relation settings: relation {rid} is being removed")
    if opts.get("app"):
        if not state.get("leader"):
            raise failed("cannot write relation settings")
        owner = local_app(state)
    else:
        owner = state["unit"]
    state.setdefault("pending", []).append({"op": "relation-set", "relation": rid, "owner": owner, "data": data})
    return ""


def config_get(state, argv, stdin):
    opts, pos = parse(argv, {"format": True, "all": False, "a": False})
    fmt = output_format(opts)
    # as Juju: the charm's config.yaml defaults under what was set, empty values left out
    config = {k: v for k, v in {**state.get("config_defaults", {}), **state.get("config", {})}.items()
              if v is not None and v != ""}
    if len(pos) > 1:
        raise usage(f"unrecognized args: {pos[1:]}")
    return render(config.get(pos[0]) if pos else config, fmt)


def is_leader(state, argv, stdin):
    opts, pos = parse(argv, {"format": True})
    fmt = output_format(opts)
    if pos:
        raise usage(f"unrecognized args: {pos}")
    return render(bool(state.get("leader")), "json" if fmt == "smart" else fmt)


def status_set(state, argv, stdin):
    opts, pos = parse(argv, {"application": False})
    if not pos:
        raise usage("invalid args, require <status> [message] [data]")
    if pos[0] not in STATUSES:
        raise usage(f'invalid status "{pos[0]}", expected one of [{" ".join(STATUSES)}]')
    if opts.get("application") and not state.get("leader"):
        raise failed("this unit is not the leader")
    entry = {"status": pos[0], "message": " ".join(pos[1:])}
    target = "app_status" if opts.get("application") else "status"
    state[target] = entry
    state.setdefault("status_history", []).append(dict(entry, application=bool(opts.get("application"))))
    return ""


def application_version_set(state, argv, stdin):
    opts, pos = parse(argv, {})
    if len(pos) != 1:
        raise usage("invalid args, require <version>")
    state["workload_version"] = pos[0]
    return ""


def status_get(state, argv, stdin):
    opts, pos = parse(argv, {"format": True, "include-data": False, "application": False})
    fmt = output_format(opts)
    current = state.get("app_status" if opts.get("application") else "status") or {"status": "unknown", "message": ""}
    if opts.get("include-data"):
        return render({"message": current["message"], "status": current["status"], "status-data": {}}, fmt)
    return render(current["status"], fmt)


def juju_log(state, argv, stdin):
    opts, pos = parse(argv, {"l": True, "log-level": True, "debug": False, "format": True})
    level = (opts.get("l") or opts.get("log-level") or ("DEBUG" if opts.get("debug") else "INFO")).upper()
    if level not in LOG_LEVELS:
        raise usage(f'invalid log level "{level}"')
    if not pos:
        raise usage("no message specified")
    state.setdefault("logs", []).append({"level": level, "message": " ".join(pos)})
    return ""


def secret_get(state, argv, stdin):
    opts, pos = parse(argv, {"format": True, "peek": False, "refresh": False, "label": True})
    fmt = output_format(opts, allowed=("json", "yaml"))
    if not pos and not opts.get("label"):
        raise usage("require either a secret URI or label")
    if len(pos) > 2:
        raise usage(f"unrecognized args: {pos[2:]}")
    uri = pos[0] if pos else None
    secrets = state.get("secrets", {})
    if uri is None:
        matches = [u for u, s in secrets.items() if s.get("label") == opts["label"]]
        if not matches:
            raise failed(f'secret with label "{opts["label"]}" not found')
        uri = matches[0]
    if not uri.startswith("secret:") and not re.match(r"^[0-9a-v]{20}$", uri):
        raise usage(f'invalid secret URI "{uri}"')
    sid = uri.split(":", 1)[-1].split("/")[-1]
    secret = next((s for u, s in secrets.items() if u.split(":", 1)[-1].split("/")[-1] == sid), None)
    if secret is None:
        raise failed(f'secret "{sid}" not found')
    if not secret.get("granted", True):
        raise failed("permission denied")
    content = secret.get("content", {})
    if len(pos) > 1:
        return render(content.get(pos[1]), fmt)
    return render(content, fmt)


def state_get(state, argv, stdin):
    opts, pos = parse(argv, {"format": True, "strict": False})
    fmt = output_format(opts)
    data = dict(state.get("unit_state", {}))
    for op in state.get("pending", []):
        if op["op"] == "state-set":
            for k, v in op["data"].items():
                if v == "":
                    data.pop(k, None)
                else:
                    data[k] = v
    return render(data.get(pos[0]) if pos else data, fmt)


def state_set(state, argv, stdin):
    opts, pos = parse(argv, {"file": True})
    data = read_settings_file(opts["file"], stdin) if "file" in opts else {}
    for k, v in key_values(pos, "state-set").items():
        data[k] = v
    state.setdefault("pending", []).append({"op": "state-set", "data": data})
    return ""


TOOLS = {
    "action-get": action_get,
    "action-set": action_set,
    "action-fail": action_fail,
    "action-log": action_log,
    "relation-ids": relation_ids,
    "relation-list": relation_list,
    "relation-get": relation_get,
    "relation-set": relation_set,
    "config-get": config_get,
    "is-leader": is_leader,
    "status-set": status_set,
    "status-get": status_get,
    "application-version-set": application_version_set,
    "juju-log": juju_log,
    "secret-get": secret_get,
    "state-get": state_get,
    "state-set": state_set,
}


# --- plumbing -----------------------------------------------------------------------------------

def save_state(state):
    tmp = STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(tmp, STATE)


class Locked:
    """The state file, read and written under an exclusive lock."""

    def __enter__(self):
        self.lock = open(STATE + ".lock", "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        with open(STATE) as f:
            self.state = json.load(f)
        return self.state

    def __exit__(self, *exc):
        self.lock.close()


def commit(exit_code):
    """What the unit agent does when dispatch ends: apply the pending writes on exit 0."""
    with Locked() as state:
        pending = state.pop("pending", [])
        if exit_code == 0:
            for op in pending:
                if op["op"] == "relation-set":
                    rel = state["relations"][op["relation"]]
                    bag_kind = "unit_data" if "/" in op["owner"] else "app_data"
                    bag = rel.setdefault(bag_kind, {}).setdefault(op["owner"], {})
                    for k, v in op["data"].items():
                        if v == "":
                            bag.pop(k, None)
                        else:
                            bag[k] = v
                elif op["op"] == "state-set":
                    bag = state.setdefault("unit_state", {})
                    for k, v in op["data"].items():
                        if v == "":
                            bag.pop(k, None)
                        else:
                            bag[k] = v
        state.setdefault("commits", []).append({"exit": exit_code, "applied": exit_code == 0, "ops": pending})
        save_state(state)


def main():
    global STATE
    if len(sys.argv) >= 4 and sys.argv[1] == "--commit":
        STATE = sys.argv[2]
        commit(int(sys.argv[3]))
        return 0
    tool = os.path.basename(sys.argv[0])
    argv = sys.argv[1:]
    if tool not in TOOLS:
        sys.stderr.write(f"ERROR {tool} is not a hook tool this double knows\n")
        return 2
    if not STATE or not os.path.exists(STATE):
        sys.stderr.write("ERROR JUJU_DOUBLE_STATE is not set to the state file\n")
        return 1
    if not env("JUJU_CONTEXT_ID"):
        sys.stderr.write("ERROR JUJU_CONTEXT_ID not set\n")
        return 2
    stdin = sys.stdin.read() if not sys.stdin.isatty() else ""
    with Locked() as state:
        try:
            if tool in state.get("broken_tools", {}):
                # a test asked this tool to fail, as Juju's would when the controller is unreachable
                raise failed(state["broken_tools"][tool])
            stdout, stderr, code = TOOLS[tool](state, argv, stdin), "", 0
        except ToolExit as e:
            stdout, stderr, code = "", f"ERROR {e.message}\n", e.code
        state.setdefault("calls", []).append(
            {"tool": tool, "argv": argv, "stdin": stdin, "exit": code, "stdout": stdout, "stderr": stderr}
        )
        save_state(state)
    sys.stdout.write(stdout)
    sys.stderr.write(stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
