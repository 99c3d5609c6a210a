#!/usr/bin/env python3
"""The AXP federation kit: two orgs (acme, globex; `up --orgs acme,globex,initech` adds a third),
each with its own Synapse homeserver and AXP node, federating over Matrix on loopback, plus a
signed registry of exactly those orgs.

Run it through the wrappers next to this file (federation/up, down, start-homeserver, ...), which
pick the interpreter: commands that generate or start a homeserver need the kit's venv
(federation/setup); the others run with any Python >= 3.11. See federation/README.md.

Only the standard library is imported at module level; `cryptography` and `signedjson` (both
Synapse dependencies) are imported where a homeserver data dir is created.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KIT_DIR = REPO / "federation"
TEMPLATES = KIT_DIR / "templates"
DEFAULT_DIR = REPO / ".federation"
# The orgs a kit can run (those of `axp registry init-demo`), in port order: an org's ports do not
# depend on which other orgs the kit runs.
KNOWN_ORGS = ("acme", "globex", "initech")
DEFAULT_ORGS = ("acme", "globex")
# Without --base-port: the ports of the demo registry (`axp registry init-demo`).
DEFAULT_PORTS = {
    "acme": {"client": 8008, "federation": 8481, "node": 7401},
    "globex": {"client": 8009, "federation": 8482, "node": 7402},
    "initech": {"client": 8010, "federation": 8483, "node": 7403},
}
KIT_FILE = "kit.json"  # marks a kit dir; pins its orgs and ports (server names cannot change later)
STATE_FILE = "federation.json"
ADMIN_LOCALPART = "kit-admin"
ADMIN_DEVICE = "KITADMIN"
OBSERVER_LOCALPART = "observer"
SMOKE_LOCALPART = "kit-smoke"
SMOKE_DEVICE = "KITSMOKE"
HOMESERVER_READY_TIMEOUT = float(os.environ.get("AXP_KIT_HOMESERVER_TIMEOUT", "90"))
NODE_READY_TIMEOUT = float(os.environ.get("AXP_KIT_NODE_TIMEOUT", "60"))
STOP_TIMEOUT = float(os.environ.get("AXP_KIT_STOP_TIMEOUT", "15"))
LOGIN_TIMEOUT = float(os.environ.get("AXP_KIT_LOGIN_TIMEOUT", "120"))
LISTENING_RE = re.compile(r"axp node listening on (http://\S+)")

T0 = time.monotonic()
PROG = "federation"


class KitError(Exception):
    pass


def say(message: str) -> None:
    print(f"{PROG}: [{time.monotonic() - T0:6.2f}s] {message}", file=sys.stderr, flush=True)


def die(message: str) -> None:
    raise KitError(message)


def venv_dir() -> Path:
    return Path(os.environ.get("AXP_FEDERATION_VENV", REPO / ".federation-venv"))


def venv_python() -> Path:
    python = venv_dir() / "bin" / "python"
    if not python.exists():
        die(f"no kit venv at {venv_dir()}: run federation/setup")
    return python


def parse_orgs(value: str) -> tuple[str, ...]:
    """`--orgs acme,globex,initech`: known orgs, at least two, no repeats; returned in KNOWN_ORGS
    order so that the same set always reads the same."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN_ORGS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown org {unknown[0]!r} (known: {', '.join(KNOWN_ORGS)})")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"an org is named twice in {value!r}")
    if len(names) < 2:
        raise argparse.ArgumentTypeError(f"a federation kit needs at least two orgs, got {value!r}")
    return tuple(org for org in KNOWN_ORGS if org in names)


def ports_for(base_port: int | None, orgs: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Ports of the kit's orgs; with a base port N, org number i of KNOWN_ORGS gets client N+i,
    federation N+10+i, node N+20+i."""
    if base_port is None:
        return {org: dict(DEFAULT_PORTS[org]) for org in orgs}
    top = 20 + max(KNOWN_ORGS.index(org) for org in orgs)
    if not 1024 <= base_port <= 65535 - top:
        die(f"--base-port {base_port} is out of range (1024..{65535 - top})")
    return {
        org: {"client": base_port + i, "federation": base_port + 10 + i, "node": base_port + 20 + i}
        for i, org in enumerate(KNOWN_ORGS)
        if org in orgs
    }


def write_private(path: Path, text: str) -> None:
    """Creates `path` with mode 0600 (never readable by others, not even for an instant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: Path, value, private: bool = False) -> None:
    text = json.dumps(value, indent=2) + "\n"
    if private:
        write_private(path, text)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(f"    {line}" for line in text[-lines:])


# ---------------------------------------------------------------------------------------------
# HTTP (Matrix client-server and Synapse admin APIs)


def http(method: str, url: str, body=None, token: str | None = None, timeout: float = 30):
    """Returns (status, parsed JSON or None). Never raises for an HTTP error status."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, {"raw": raw.decode(errors="replace")}


def http_ok(method: str, url: str, body=None, token: str | None = None, what: str = ""):
    status, answer = http(method, url, body, token)
    if status != 200:
        die(f"{what or method + ' ' + url}: HTTP {status} {json.dumps(answer)}")
    return answer


def q(user_id: str) -> str:
    return urllib.parse.quote(user_id, safe="")


# ---------------------------------------------------------------------------------------------
# Processes: pid files, liveness (guarded against pid reuse), start, stop


def pid_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs and its command line contains `marker` (a config path), not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and marker in cmdline


def running_pid(pid_file: Path, marker: str) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if pid_alive(pid, marker) else None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def spawn(argv: list[str], cwd: Path, log: Path, pid_file: Path, env=None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} federation kit starts: {' '.join(argv)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    pid_file.write_text(f"{process.pid}\n")
    return process


def stop_processes(targets: list[tuple[str, Path, str]], sig: int = signal.SIGTERM) -> None:
    """Stops each (label, pid file, marker) by pid: `sig`, then SIGKILL after STOP_TIMEOUT."""
    pending = []
    for label, pid_file, marker in targets:
        pid = running_pid(pid_file, marker)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        say(f"stopping {label} (pid {pid}, {signal.Signals(sig).name})")
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        pending.append((label, pid_file, marker, pid))

    def still_running(entries):
        alive = []
        for entry in entries:
            if pid_alive(entry[3], entry[2]):
                alive.append(entry)
            else:
                entry[1].unlink(missing_ok=True)
        return alive

    deadline = time.monotonic() + STOP_TIMEOUT
    while (pending := still_running(pending)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not pending:
        return
    for label, _, _, pid in pending:
        say(f"{label} (pid {pid}) still running after {STOP_TIMEOUT:.0f}s: SIGKILL")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while (pending := still_running(pending)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pending:
        die(f"cannot stop {', '.join(p[0] for p in pending)}")


# ---------------------------------------------------------------------------------------------
# The kit dir


class Kit:
    def __init__(
        self, root: Path, base_port: int | None = None, orgs: tuple[str, ...] | None = None, create: bool = False
    ):
        self.root = root.resolve()
        meta_path = self.root / KIT_FILE
        meta = read_json(meta_path)
        if meta is None:
            if not create:
                die(f"{self.root} is not a federation kit dir (no {KIT_FILE}); run federation/up first")
            if self.root.exists() and any(self.root.iterdir()):
                die(f"{self.root} exists, is not empty and is not a kit dir (no {KIT_FILE}); pick another --dir")
            orgs = orgs or DEFAULT_ORGS
            ports = ports_for(base_port, orgs)
            self.root.mkdir(parents=True, exist_ok=True)
            meta = {"kit": "axp-federation", "version": 1, "base_port": base_port, "orgs": list(orgs), "ports": ports}
            write_json(meta_path, meta)
        elif base_port is not None and meta.get("base_port") != base_port:
            die(
                f"{self.root} was created with --base-port {meta.get('base_port')}; its server names pin the "
                f"ports, so it cannot move to --base-port {base_port} (use another --dir, or down --wipe)"
            )
        # A kit dir from before --orgs has no "orgs": it runs the two default orgs.
        pinned = tuple(meta.get("orgs", DEFAULT_ORGS))
        if orgs is not None and orgs != pinned:
            die(
                f"{self.root} was created with --orgs {','.join(pinned)}; its registry and homeservers are for "
                f"those orgs, so it cannot run --orgs {','.join(orgs)} (omit --orgs, use another --dir, or down --wipe)"
            )
        self.meta = meta
        self.orgs: tuple[str, ...] = pinned
        self.ports: dict[str, dict[str, int]] = meta["ports"]
        self._lock = None

    def check_org(self, org: str) -> None:
        if org not in self.orgs:
            die(f"{org} is not one of this kit's orgs ({', '.join(self.orgs)}); the kit in {self.root} has no {org}")

    def lock(self) -> Kit:
        """Serialises the commands that change the kit dir (up, down, start-/stop-...)."""
        import fcntl

        self._lock = open(self.root / "kit.lock", "w")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another federation command on {self.root}")
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        return self

    # paths
    def org_dir(self, org: str) -> Path:
        return self.root / org

    def hs_dir(self, org: str) -> Path:
        return self.root / org / "synapse"

    def hs_config(self, org: str) -> Path:
        return self.hs_dir(org) / "homeserver.yaml"

    def hs_pid_file(self, org: str) -> Path:
        return self.root / org / "homeserver.pid"

    def hs_log(self, org: str) -> Path:
        return self.hs_dir(org) / "homeserver.log"

    def hs_stdout(self, org: str) -> Path:
        return self.hs_dir(org) / "stdout.log"

    def node_dir(self, org: str) -> Path:
        return self.root / org / "node"

    def node_config(self, org: str) -> Path:
        return self.node_dir(org) / "axp.toml"

    def node_pid_file(self, org: str) -> Path:
        return self.root / org / "node.pid"

    def node_log(self, org: str) -> Path:
        return self.root / org / "node.log"

    def accounts_file(self, org: str) -> Path:
        return self.root / org / "accounts.json"

    def login_file(self, org: str) -> Path:
        return self.root / org / "matrix-login.json"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def registry_keys_dir(self) -> Path:
        return self.root / "registry-keys"

    # names and URLs
    def server_name(self, org: str) -> str:
        return f"localhost:{self.ports[org]['federation']}"

    def client_url(self, org: str) -> str:
        return f"http://127.0.0.1:{self.ports[org]['client']}"

    def node_url(self, org: str) -> str:
        return f"http://127.0.0.1:{self.ports[org]['node']}"

    def user_id(self, org: str, localpart: str) -> str:
        return f"@{localpart}:{self.server_name(org)}"

    def node_user_id(self, org: str) -> str:
        return self.user_id(org, f"axp-{org}")

    # liveness
    def hs_pid(self, org: str) -> int | None:
        return running_pid(self.hs_pid_file(org), str(self.hs_config(org)))

    def node_pid(self, org: str) -> int | None:
        return running_pid(self.node_pid_file(org), str(self.node_config(org)))


# ---------------------------------------------------------------------------------------------
# Homeservers


def generate_tls(hs_dir: Path) -> None:
    """A self-signed certificate for localhost / 127.0.0.1 (CA:TRUE, so it can also serve as a CA
    in federation_custom_ca_list)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(
        hs_dir / "tls.key",
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode(),
    )
    (hs_dir / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def prepare_homeserver(kit: Kit, org: str) -> None:
    """Creates the homeserver's data dir once: keys, certificate, log config, homeserver.yaml
    (written last: its presence means the dir is complete)."""
    config = kit.hs_config(org)
    if config.exists():
        return
    from signedjson.key import generate_signing_key, write_signing_keys

    hs_dir = kit.hs_dir(org)
    hs_dir.mkdir(parents=True, exist_ok=True)
    generate_tls(hs_dir)
    signing_key_path = hs_dir / "signing.key"
    with open(signing_key_path, "w") as f:
        write_signing_keys(f, [generate_signing_key("a_" + secrets.token_hex(2))])
    os.chmod(signing_key_path, 0o600)
    log_config = hs_dir / "log.yaml"

    def fill(template: str, values: dict) -> str:  # strings become YAML double-quoted scalars
        quoted = {k: (json.dumps(v) if isinstance(v, str) else v) for k, v in values.items()}
        return string.Template((TEMPLATES / template).read_text()).substitute(quoted)

    log_config.write_text(fill("log.yaml", {"log_path": str(kit.hs_log(org))}))
    (hs_dir / "media_store").mkdir(exist_ok=True)
    text = fill(
        "homeserver.yaml",
        {
            "org": org,
            "server_name": kit.server_name(org),
            "client_port": kit.ports[org]["client"],
            "federation_port": kit.ports[org]["federation"],
            "tls_certificate_path": str(hs_dir / "tls.crt"),
            "tls_private_key_path": str(hs_dir / "tls.key"),
            "database_path": str(hs_dir / "homeserver.db"),
            "log_config_path": str(log_config),
            "media_store_path": str(hs_dir / "media_store"),
            "signing_key_path": str(signing_key_path),
            "registration_shared_secret": secrets.token_urlsafe(32),
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
        },
    )
    write_private(config, text)
    say(f"{org}: generated homeserver {kit.server_name(org)} in {hs_dir}")


def launch_homeserver(kit: Kit, org: str) -> subprocess.Popen | None:
    """Starts the homeserver unless it runs; returns the new process (None when it was running)."""
    if kit.hs_pid(org) is not None:
        return None
    for kind in ("client", "federation"):
        port = kit.ports[org][kind]
        if not port_free(port):
            die(
                f"{org}: {kind} port {port} is in use by another process (a kit in another dir? "
                f"run federation/down --dir THAT_DIR, or use --base-port)"
            )
    argv = [str(venv_python()), "-m", "synapse.app.homeserver", "--config-path", str(kit.hs_config(org))]
    process = spawn(argv, kit.hs_dir(org), kit.hs_stdout(org), kit.hs_pid_file(org))
    say(f"{org}: homeserver starting (pid {process.pid})")
    return process


def wait_homeserver(kit: Kit, org: str, process: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + HOMESERVER_READY_TIMEOUT
    url = kit.client_url(org) + "/_matrix/client/versions"
    while True:
        try:
            status, _ = http("GET", url, timeout=2)
            if status == 200:
                break
        except (OSError, urllib.error.URLError):
            pass
        if process is not None and process.poll() is not None:
            kit.hs_pid_file(org).unlink(missing_ok=True)
            die(
                f"{org}: the homeserver exited with code {process.returncode} during start-up\n"
                f"  {kit.hs_stdout(org)}:\n{tail(kit.hs_stdout(org))}\n  {kit.hs_log(org)}:\n{tail(kit.hs_log(org))}"
            )
        if time.monotonic() > deadline:
            die(
                f"{org}: the homeserver did not answer {url} within {HOMESERVER_READY_TIMEOUT:.0f}s; see {kit.hs_log(org)}"
            )
        time.sleep(0.1)
    say(f"{org}: homeserver ready at {kit.client_url(org)} (server name {kit.server_name(org)})")


def start_homeservers(kit: Kit, orgs) -> None:
    for org in orgs:
        prepare_homeserver(kit, org)
    launched = {org: launch_homeserver(kit, org) for org in orgs}
    for org in orgs:
        wait_homeserver(kit, org, launched[org])


# ---------------------------------------------------------------------------------------------
# Accounts: kit admin, the node's account (rate-limit exempt), observer


def shared_secret(kit: Kit, org: str) -> str:
    match = re.search(r"^registration_shared_secret:\s*(\S+)\s*$", kit.hs_config(org).read_text(), re.MULTILINE)
    if not match:
        die(f"{org}: no registration_shared_secret in {kit.hs_config(org)}")
    return json.loads(match.group(1))


def register_with_shared_secret(kit: Kit, org: str, localpart: str, password: str, admin: bool) -> dict:
    """The API `register_new_matrix_user` uses (POST /_synapse/admin/v1/register with an HMAC of
    the shared secret), called directly: no extra Python process, and it returns a token."""
    base = kit.client_url(org) + "/_synapse/admin/v1/register"
    nonce = http_ok("GET", base, what=f"{org}: registration nonce")["nonce"]
    mac = hmac.new(shared_secret(kit, org).encode(), digestmod=hashlib.sha1)
    for part in (nonce, localpart, password):
        mac.update(part.encode() + b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    body = {"nonce": nonce, "username": localpart, "password": password, "admin": admin, "mac": mac.hexdigest()}
    return http_ok("POST", base, body, what=f"{org}: register {localpart}")


def password_login(kit: Kit, org: str, user_id: str, password: str, device_id: str) -> str:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user_id},
        "password": password,
        "device_id": device_id,
        "initial_device_display_name": "federation kit",
    }
    return http_ok("POST", kit.client_url(org) + "/_matrix/client/v3/login", body, what=f"{org}: login {user_id}")[
        "access_token"
    ]


def ensure_admin(kit: Kit, org: str, accounts: dict) -> str:
    """The kit admin: created once with the shared secret; its token is cached and checked."""
    admin = accounts.get("admin")
    user_id = kit.user_id(org, ADMIN_LOCALPART)
    if admin is None:
        password = secrets.token_urlsafe(18)
        answer = register_with_shared_secret(kit, org, ADMIN_LOCALPART, password, admin=True)
        admin = {"user_id": answer["user_id"], "password": password, "access_token": answer["access_token"]}
        accounts["admin"] = admin
        say(f"{org}: created admin user {user_id}")
    else:
        status, _ = http("GET", kit.client_url(org) + "/_matrix/client/v3/account/whoami", token=admin["access_token"])
        if status != 200:
            admin["access_token"] = password_login(kit, org, user_id, admin["password"], ADMIN_DEVICE)
    return admin["access_token"]


def ensure_user(
    kit: Kit, org: str, token: str, user_id: str, password: str, known_hash: str | None, displayname: str
) -> str:
    """Creates `user_id` with `password` unless it exists; when the password differs from the one
    the kit set before (known_hash), resets it without logging out devices. Returns the hash."""
    url = kit.client_url(org) + "/_synapse/admin/v2/users/" + q(user_id)
    digest = hashlib.sha256(password.encode()).hexdigest()
    status, answer = http("GET", url, token=token)
    if status == 404:
        body = {"password": password, "admin": False, "displayname": displayname}
        status, answer = http("PUT", url, body, token=token)
        if status not in (200, 201):
            die(f"{org}: cannot create {user_id}: HTTP {status} {json.dumps(answer)}")
        say(f"{org}: created user {user_id}")
    elif status == 200:
        if answer.get("deactivated"):
            die(f"{org}: {user_id} is deactivated; reset the kit (federation/down --wipe)")
        if known_hash != digest:
            body = {"password": password, "logout_devices": False}
            http_ok("PUT", url, body, token=token, what=f"{org}: set the password of {user_id}")
            say(f"{org}: set the password of {user_id} (devices kept)")
    else:
        die(f"{org}: cannot look up {user_id}: HTTP {status} {json.dumps(answer)}")
    return digest


def ensure_unlimited(kit: Kit, org: str, token: str, user_id: str) -> None:
    """Exempts user_id from the homeserver's message rate limits; verified by reading it back."""
    url = kit.client_url(org) + f"/_synapse/admin/v1/users/{q(user_id)}/override_ratelimit"
    wanted = {"messages_per_second": 0, "burst_count": 0}
    if http_ok("GET", url, token=token, what=f"{org}: read the rate-limit override of {user_id}") == wanted:
        return
    http_ok("POST", url, wanted, token=token, what=f"{org}: override the rate limit of {user_id}")
    got = http_ok("GET", url, token=token, what=f"{org}: read the rate-limit override of {user_id}")
    if got != wanted:
        die(f"{org}: rate-limit override of {user_id} reads back as {json.dumps(got)}, expected {json.dumps(wanted)}")
    say(f"{org}: {user_id} is exempt from rate limits")


def ensure_accounts(kit: Kit, org: str) -> None:
    accounts = read_json(kit.accounts_file(org), {})
    try:
        token = ensure_admin(kit, org, accounts)
        node_password = (kit.node_dir(org) / "matrix.password").read_text().strip()
        node_user = kit.node_user_id(org)
        accounts["node_password_sha256"] = ensure_user(
            kit, org, token, node_user, node_password, accounts.get("node_password_sha256"), f"AXP node ({org})"
        )
        ensure_unlimited(kit, org, token, node_user)
        observer = accounts.setdefault(
            "observer", {"user_id": kit.user_id(org, OBSERVER_LOCALPART), "password": secrets.token_urlsafe(18)}
        )
        observer["password_sha256"] = ensure_user(
            kit, org, token, observer["user_id"], observer["password"], observer.get("password_sha256"), "observer"
        )
    finally:
        if accounts:
            write_json(kit.accounts_file(org), accounts, private=True)


# ---------------------------------------------------------------------------------------------
# Nodes


def axp_bin() -> Path:
    explicit = os.environ.get("AXP_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "debug" / "axp"
    if not path.exists():
        if explicit:
            die(f"AXP_BIN={explicit} does not exist")
        say(f"{path} is missing: cargo build")
        if subprocess.run(["cargo", "build", "--locked"], cwd=REPO, check=False).returncode != 0 or not path.exists():
            die("cargo build failed")
    return path.resolve()


def run_axp(argv: list[str], what: str, timeout: float = 60, hint: str = "") -> subprocess.CompletedProcess:
    command = [str(axp_bin()), *argv]
    try:
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        die(f"{what}: `{' '.join(command)}` did not finish within {timeout:.0f}s")
    if result.returncode != 0:
        die(
            f"{what}: `{' '.join(command)}` exited with {result.returncode}\n"
            f"{(result.stdout + result.stderr).strip()}" + (f"\n{hint}" if hint else "")
        )
    return result


def ensure_secret_file(path: Path) -> None:
    if not path.exists():
        write_private(path, secrets.token_urlsafe(24))


def append_section(config: Path, name: str, body: str) -> None:
    text = config.read_text()
    if re.search(rf"^\[{re.escape(name)}\]\s*$", text, re.MULTILINE):
        return
    with open(config, "a") as f:
        f.write(("" if text.endswith("\n") else "\n") + f"\n[{name}]\n{body}")


def ensure_node_dir(kit: Kit, org: str) -> None:
    """`axp node init` once; the Matrix secrets; the [matrix] and [registry] sections."""
    node_dir = kit.node_dir(org)
    config = kit.node_config(org)
    if not config.exists():
        listen = f"127.0.0.1:{kit.ports[org]['node']}"
        run_axp(["node", "init", "--data-dir", str(node_dir), "--listen", listen, "--org", org], f"{org}: node init")
        say(f"{org}: node data dir created in {node_dir}")
    ensure_secret_file(node_dir / "matrix.password")
    ensure_secret_file(node_dir / "matrix.passphrase")
    append_section(
        config,
        "matrix",
        f"homeserver_url = {json.dumps(kit.client_url(org))}\n"
        f"user_id = {json.dumps(kit.node_user_id(org))}\n"
        'password_file = "matrix.password"\n'
        'store_passphrase_file = "matrix.passphrase"\n',
    )
    append_section(config, "registry", f"dir = {json.dumps(str(kit.registry_dir))}\n")


def skip_login() -> bool:
    return os.environ.get("AXP_KIT_SKIP_LOGIN", "") not in ("", "0")


def matrix_login(kit: Kit, org: str) -> dict | None:
    """The node's Matrix identity: {"user_id", "device_id", "ed25519_key"} from
    `axp matrix login --config ...` (logs in once, creating the node's one device; restores the
    session when run again). Skipped (None) with AXP_KIT_SKIP_LOGIN=1. Never run while the node
    runs (two processes must not share its Matrix store): then the answer cached in
    DIR/<org>/matrix-login.json is used."""
    cache_path = kit.login_file(org)
    cached = read_json(cache_path)
    if skip_login():
        say(
            f"{org}: AXP_KIT_SKIP_LOGIN set: not running `axp matrix login`; the registry keeps placeholder device keys"
        )
        return None
    if kit.node_pid(org) is not None:
        if cached is None:
            die(f"{org}: the node runs but {cache_path} is missing; stop it (federation/stop-node {org}) and re-run up")
        return cached
    result = run_axp(
        ["matrix", "login", "--config", str(kit.node_config(org))],
        f"{org}: matrix login",
        LOGIN_TIMEOUT,
        hint="(an axp without `matrix login`? AXP_KIT_SKIP_LOGIN=1 or --skip-login skips this step)",
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    try:
        login = json.loads(lines[-1])
        login = {k: login[k] for k in ("user_id", "device_id", "ed25519_key")}
    except (IndexError, ValueError, KeyError, TypeError):
        die(f"{org}: `axp matrix login` printed no JSON line with user_id, device_id, ed25519_key:\n{result.stdout}")
    if login["user_id"] != kit.node_user_id(org):
        die(f"{org}: `axp matrix login` logged in as {login['user_id']}, expected {kit.node_user_id(org)}")
    if cached is not None and cached != login:
        say(f"{org}: WARNING: the node's Matrix device changed: {cached} -> {login} (the registry is re-signed)")
    write_json(cache_path, login)
    return login


def strip_signature(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("signature", "serial")}


def ensure_registry(kit: Kit, logins: dict[str, dict | None]) -> None:
    reg, keys = kit.registry_dir, kit.registry_keys_dir
    if not (reg / "root.json").exists():
        if keys.exists() and any(keys.iterdir()):
            die(f"{keys} holds keys but {reg}/root.json is missing; reset the kit (federation/down --wipe)")
        argv = ["registry", "init-demo", "--dir", str(reg), "--keys-dir", str(keys)]
        if kit.orgs != DEFAULT_ORGS:  # init-demo's default; an axp from before --orgs still works
            argv += ["--orgs", ",".join(kit.orgs)]
        run_axp(argv, "registry init-demo")
        say(f"registry created in {reg} (keys in {keys}) for {', '.join(kit.orgs)}")
    for org in kit.orgs:
        path = reg / "orgs" / f"{org}.json"
        record = read_json(path)
        if record is None:
            die(f"{path} is missing")
        node_id = f"{org}-node-1"
        old_node = next((n for n in record.get("nodes", []) if n.get("id") == node_id), None) or {}
        login = logins.get(org)
        node = {
            "id": node_id,
            "matrix_user_id": kit.node_user_id(org),
            "device_id": login["device_id"] if login else old_node.get("device_id", "AXPNODE1"),
            "device_ed25519_key": login["ed25519_key"] if login else old_node["device_ed25519_key"],
            "homeserver_url": kit.client_url(org),
            "http_url": kit.node_url(org),
        }
        routes = [{"prefix": r["prefix"], "node": node_id} for r in record.get("routes", [])]
        wanted = dict(record, nodes=[node], routes=routes, default_node=node_id)
        if strip_signature(wanted) == strip_signature(record) and "signature" in record:
            continue
        wanted.pop("signature", None)
        write_json(path, wanted)
        run_axp(
            ["registry", "sign", "--org-key", str(keys / f"{org}.key"), "--record", str(path)], f"{org}: registry sign"
        )
        say(f"{org}: registry record re-signed (serial {read_json(path)['serial']})")
    run_axp(["registry", "verify", str(reg)], "registry verify")


def launch_node(kit: Kit, org: str) -> tuple[subprocess.Popen, int] | None:
    if kit.node_pid(org) is not None:
        return None
    port = kit.ports[org]["node"]
    if not port_free(port):
        die(f"{org}: node port {port} is in use by another process (use --base-port, or stop it)")
    log = kit.node_log(org)
    offset = log.stat().st_size if log.exists() else 0
    argv = [str(axp_bin()), "node", "run", "--config", str(kit.node_config(org))]
    process = spawn(argv, kit.node_dir(org), log, kit.node_pid_file(org))
    say(f"{org}: node starting (pid {process.pid})")
    return process, offset


def wait_node(kit: Kit, org: str, launched: tuple[subprocess.Popen, int] | None) -> None:
    if launched is None:
        return
    process, offset = launched
    log = kit.node_log(org)
    deadline = time.monotonic() + NODE_READY_TIMEOUT
    while True:
        with open(log, "rb") as f:
            f.seek(offset)
            match = LISTENING_RE.search(f.read().decode(errors="replace"))
        if match:
            say(f"{org}: node listening on {match.group(1)}")
            return
        if process.poll() is not None:
            kit.node_pid_file(org).unlink(missing_ok=True)
            die(f"{org}: the node exited with code {process.returncode} during start-up; {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            die(f"{org}: the node did not print 'axp node listening on' within {NODE_READY_TIMEOUT:.0f}s; see {log}")
        time.sleep(0.05)


def start_nodes(kit: Kit, orgs) -> None:
    launched = {org: launch_node(kit, org) for org in orgs}
    for org in orgs:
        wait_node(kit, org, launched[org])


# ---------------------------------------------------------------------------------------------
# federation.json and the summary


def describe(kit: Kit) -> dict:
    homeservers, nodes = {}, {}
    for org in kit.orgs:
        accounts = read_json(kit.accounts_file(org), {})
        admin = accounts.get("admin") or {}
        observer = accounts.get("observer") or {}
        homeservers[org] = {
            "org": org,
            "server_name": kit.server_name(org),
            "client_url": kit.client_url(org),
            "federation_port": kit.ports[org]["federation"],
            "federation_url": f"https://127.0.0.1:{kit.ports[org]['federation']}",
            "pid": kit.hs_pid(org),
            "data_dir": str(kit.hs_dir(org)),
            "config": str(kit.hs_config(org)),
            "log": str(kit.hs_log(org)),
            "admin": {
                "user_id": admin.get("user_id"),
                "password": admin.get("password"),
                "access_token": admin.get("access_token"),
            },
            "observer": {"user_id": observer.get("user_id"), "password": observer.get("password")},
        }
        admin_key_file = kit.node_dir(org) / "admin.key"
        login = read_json(kit.login_file(org))
        nodes[org] = {
            "org": org,
            "id": f"{org}-node-1",
            "url": kit.node_url(org),
            "port": kit.ports[org]["node"],
            "admin_key": admin_key_file.read_text().strip() if admin_key_file.exists() else None,
            "config": str(kit.node_config(org)),
            "data_dir": str(kit.node_dir(org)),
            "log": str(kit.node_log(org)),
            "matrix_user_id": kit.node_user_id(org),
            "matrix_password_file": str(kit.node_dir(org) / "matrix.password"),
            "device_id": login["device_id"] if login else None,
            "device_ed25519_key": login["ed25519_key"] if login else None,
            "pid": kit.node_pid(org),
        }
    return {
        "kit": "axp-federation",
        "version": 1,
        "dir": str(kit.root),
        "base_port": kit.meta.get("base_port"),
        "orgs": list(kit.orgs),
        "matrix_login": "done" if all(nodes[org]["device_id"] for org in kit.orgs) else "skipped",
        "registry_dir": str(kit.registry_dir),
        "registry_keys_dir": str(kit.registry_keys_dir),
        "homeservers": homeservers,
        "nodes": nodes,
    }


def write_state(kit: Kit) -> dict:
    state = describe(kit)
    write_json(kit.root / STATE_FILE, state, private=True)
    return state


def summary(state: dict) -> str:
    lines = [f"federation kit in {state['dir']} (described in {state['dir']}/{STATE_FILE})"]
    for org in state["orgs"]:
        hs, node = state["homeservers"][org], state["nodes"][org]
        hs_state = f"pid {hs['pid']}" if hs["pid"] else "stopped"
        node_state = f"pid {node['pid']}" if node["pid"] else "not running"
        lines += [
            f"  {org}:",
            f"    homeserver {hs['server_name']}  client {hs['client_url']}  ({hs_state})",
            (
                f"      admin {hs['admin']['user_id']} / {hs['admin']['password']}"
                f"   observer {hs['observer']['user_id']} / {hs['observer']['password']}"
            ),
            (
                f"    node {node['url']}  ({node_state})  matrix {node['matrix_user_id']}"
                f"  device {node['device_id'] or '(login skipped)'}"
            ),
            f"      admin key {node['admin_key']}",
            f"      config {node['config']}",
        ]
    lines.append(f"  registry {state['registry_dir']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Commands


def cmd_up(args) -> None:
    kit = Kit(args.dir, args.base_port, args.orgs, create=True).lock()
    say(f"kit dir {kit.root} (orgs {', '.join(kit.orgs)})")
    venv_python()
    start_homeservers(kit, kit.orgs)
    for org in kit.orgs:
        ensure_node_dir(kit, org)
        ensure_accounts(kit, org)
    say("accounts ready (admin, node account without rate limits, observer)")
    with concurrent.futures.ThreadPoolExecutor(len(kit.orgs)) as pool:
        logins = dict(zip(kit.orgs, pool.map(lambda org: matrix_login(kit, org), kit.orgs)))
    if not skip_login():
        for org, login in logins.items():
            say(f"{org}: matrix device {login['device_id']} key {login['ed25519_key']}")
    ensure_registry(kit, logins)
    say(f"registry verified ({kit.registry_dir})")
    if not args.no_nodes:
        start_nodes(kit, kit.orgs)
    state = write_state(kit)
    print(summary(state))
    say("up: done")


def cmd_down(args) -> None:
    root = args.dir.resolve()
    if not root.exists():
        say(f"{root} does not exist; nothing to stop")
        return
    kit = Kit(root).lock()
    stop_processes([(f"{org} node", kit.node_pid_file(org), str(kit.node_config(org))) for org in kit.orgs])
    stop_processes([(f"{org} homeserver", kit.hs_pid_file(org), str(kit.hs_config(org))) for org in kit.orgs])
    if args.wipe:
        shutil.rmtree(root)
        say(f"removed {root}")
    else:
        write_state(kit)
    say("down: done")


def org_arg(value: str) -> str:
    if value not in KNOWN_ORGS:
        raise argparse.ArgumentTypeError(f"unknown org {value!r} (one of {', '.join(KNOWN_ORGS)})")
    return value


def cmd_stop_homeserver(args) -> None:
    kit = Kit(args.dir).lock()
    kit.check_org(args.org)
    sig = signal.SIGKILL if args.kill else signal.SIGTERM
    stop_processes([(f"{args.org} homeserver", kit.hs_pid_file(args.org), str(kit.hs_config(args.org)))], sig)
    write_state(kit)
    say(f"{args.org}: homeserver stopped")


def cmd_start_homeserver(args) -> None:
    kit = Kit(args.dir).lock()
    kit.check_org(args.org)
    if not kit.hs_config(args.org).exists():
        die(f"{args.org}: no homeserver in {kit.root}; run federation/up first")
    start_homeservers(kit, [args.org])
    write_state(kit)


def cmd_stop_node(args) -> None:
    kit = Kit(args.dir).lock()
    kit.check_org(args.org)
    sig = signal.SIGKILL if args.kill else signal.SIGTERM
    stop_processes([(f"{args.org} node", kit.node_pid_file(args.org), str(kit.node_config(args.org)))], sig)
    write_state(kit)
    say(f"{args.org}: node stopped")


def cmd_start_node(args) -> None:
    kit = Kit(args.dir).lock()
    kit.check_org(args.org)
    if not kit.node_config(args.org).exists():
        die(f"{args.org}: no node in {kit.root}; run federation/up first")
    start_nodes(kit, [args.org])
    write_state(kit)


def cmd_status(args) -> None:
    kit = Kit(args.dir)
    state = write_state(kit)
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        print(summary(state))


def cmd_smoke(args) -> None:
    """Federation smoke test over the client-server API only (no AXP node involved): a user on the
    kit's first org (acme) creates a private room inviting a user on each other org, who join; each
    sends an `axp.test` event; every event must show up in every server's /messages (with three
    orgs, events from globex and initech reach each other's servers directly)."""
    kit = Kit(args.dir)
    first, *others = kit.orgs
    users = {}
    for org in kit.orgs:
        if kit.hs_pid(org) is None:
            die(f"{org}: the homeserver is not running (federation/up or start-homeserver {org})")
        accounts = read_json(kit.accounts_file(org), {})
        token = ensure_admin(kit, org, accounts)
        write_json(kit.accounts_file(org), accounts, private=True)
        smoke = accounts.get("smoke") or {"password": secrets.token_urlsafe(18)}
        user_id = kit.user_id(org, SMOKE_LOCALPART)
        smoke["password_sha256"] = ensure_user(
            kit, org, token, user_id, smoke["password"], smoke.get("password_sha256"), "kit smoke test"
        )
        accounts["smoke"] = smoke
        write_json(kit.accounts_file(org), accounts, private=True)
        users[org] = (user_id, password_login(kit, org, user_id, smoke["password"], SMOKE_DEVICE))

    def api(org: str) -> str:
        return kit.client_url(org) + "/_matrix/client/v3"

    first_user, first_token = users[first]
    invitees = [users[org][0] for org in others]

    t = time.monotonic()
    room = http_ok(
        "POST",
        api(first) + "/createRoom",
        {"preset": "private_chat", "invite": invitees, "name": "kit smoke test"},
        first_token,
        what=f"{first}: createRoom inviting {', '.join(invitees)}",
    )["room_id"]
    say(f"smoke: {first_user} created {room} inviting {', '.join(invitees)} ({(time.monotonic() - t) * 1000:.0f} ms)")

    for org in others:
        user, token = users[org]
        t = time.monotonic()
        deadline = t + 20
        while True:  # the invite travels over federation; join as soon as the invitee's server knows it
            status, answer = http("POST", api(org) + f"/join/{q(room)}", {}, token)
            if status == 200:
                break
            if time.monotonic() > deadline:
                die(f"{org}: {user} cannot join {room}: HTTP {status} {json.dumps(answer)}")
            time.sleep(0.1)
        say(f"smoke: {user} joined over federation ({(time.monotonic() - t) * 1000:.0f} ms)")

    nonce = secrets.token_hex(4)
    sent = {}
    for org, (user, token) in users.items():
        body = {"from": org, "nonce": nonce}
        txn = f"kit-smoke-{nonce}-{org}"
        sent[org] = http_ok(
            "PUT", api(org) + f"/rooms/{q(room)}/send/axp.test/{txn}", body, token, what=f"{org}: send axp.test"
        )["event_id"]

    expected = {org: user for org, (user, _) in users.items()}
    t = time.monotonic()
    deadline = t + 20
    for org, (user, token) in users.items():
        while True:
            answer = http_ok(
                "GET", api(org) + f"/rooms/{q(room)}/messages?dir=b&limit=50", token=token, what=f"{org}: /messages"
            )
            seen = {
                e["content"].get("from"): e["sender"]
                for e in answer.get("chunk", [])
                if e.get("type") == "axp.test" and e.get("content", {}).get("nonce") == nonce
            }
            if seen == expected:
                break
            if time.monotonic() > deadline:
                die(f"smoke: {org}'s /messages shows {seen}, expected all {len(expected)} axp.test events ({sent})")
            time.sleep(0.1)
        say(f"smoke: {org}'s /messages shows all {len(expected)} axp.test events with the right senders")
    say(f"smoke: events crossed federation in {(time.monotonic() - t) * 1000:.0f} ms")
    for org, (user, token) in users.items():
        http("POST", api(org) + f"/rooms/{q(room)}/leave", {}, token)
    print(f"federation smoke test passed: room {room}, {' <-> '.join(expected.values())}")


def main(argv: list[str]) -> int:
    global PROG
    parser = argparse.ArgumentParser(prog="federation", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"kit dir (default {DEFAULT_DIR})")
        p.set_defaults(func=func)
        return p

    p = command("up", cmd_up, "create (once) and start the kit's homeservers and nodes; idempotent")
    p.add_argument(
        "--orgs",
        type=parse_orgs,
        help=(
            f"comma-separated orgs among {', '.join(KNOWN_ORGS)} (default {','.join(DEFAULT_ORGS)}); pinned in "
            "the kit dir at creation, so later commands need not repeat it"
        ),
    )
    p.add_argument(
        "--base-port", type=int, help="org i (acme 0, globex 1, initech 2): client N+i, federation N+10+i, node N+20+i"
    )
    p.add_argument("--no-nodes", action="store_true", help="prepare the nodes but do not start them")
    p.add_argument("--skip-login", action="store_true", help="same as AXP_KIT_SKIP_LOGIN=1")
    p = command("down", cmd_down, "stop everything the kit started (nodes first)")
    p.add_argument("--wipe", action="store_true", help="also delete the kit dir")
    for name, func, what in (
        ("stop-homeserver", cmd_stop_homeserver, "stop one org's homeserver"),
        ("start-homeserver", cmd_start_homeserver, "start one org's homeserver and wait until it answers"),
        ("stop-node", cmd_stop_node, "stop one org's node"),
        ("start-node", cmd_start_node, "start one org's node and wait until it listens"),
    ):
        p = command(name, func, what)
        p.add_argument("org", type=org_arg, help=f"one of the kit's orgs ({', '.join(KNOWN_ORGS)})")
        if name.startswith("stop"):
            p.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM (a crash)")
    p = command("status", cmd_status, "refresh federation.json from the pid files and print a summary")
    p.add_argument("--json", action="store_true", help="print federation.json instead")
    command("smoke-test", cmd_smoke, "check that the kit's homeservers federate (client-server API only)")

    args = parser.parse_args(argv)
    PROG = f"federation/{args.command}"
    if getattr(args, "skip_login", False):
        os.environ["AXP_KIT_SKIP_LOGIN"] = "1"
    try:
        args.func(args)
    except KitError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
