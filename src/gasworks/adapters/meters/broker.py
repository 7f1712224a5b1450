"""A closed Mosquitto 2 broker for gasworks: password file, ACL and configuration, written by us.

Who may do what (one ACL for every meter, through Mosquitto's `%u` patterns):

    a meter (username = its 14-digit serial)   write <prefix>/<serial>/up, read <prefix>/<serial>/down
    `worker` (every gasworks worker)           read <prefix>/+/up (as the shared subscription
                                               $share/<group>/<prefix>/+/up, the group derived
                                               from the worker's password), write <prefix>/+/down
    `fleet` (the simulator's meter gateway)    write <prefix>/+/up, read <prefix>/+/down: ONE connection
                                               speaking for many simulated meters, as a carrier
                                               platform would; it is not a meter and never goes to one
    anybody else                               refused at CONNECT (allow_anonymous false)

Passwords are never stored: each is derived from the site secret with HMAC-SHA256, so the same
secret re-issues the same password (a meter's password can be printed again for its installer) and
the password file holds only Mosquitto's PBKDF2-SHA512 hashes (`$7$`, as `mosquitto_passwd` writes).
"""

import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from gasworks.adapters.meters.transport import share_group_for
from gasworks.domain.errors import InvalidInput

WORKER_USER = "worker"
FLEET_USER = "fleet"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd uses; Mosquitto reads the count from each line
PBKDF2_SALT_BYTES = 12
PASSWORD_CHARS = 24  # of url-safe base64: 144 bits
SITE_SECRET_BYTES = 32
SERIAL = re.compile(r"^\d{14}$")
PREFIX = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def check_prefix(prefix: str) -> str:
    """A topic prefix we can write ACL lines for: plain levels, no wildcards, no `$`, no `%`."""
    if not PREFIX.fullmatch(prefix):
        raise InvalidInput(f"topic prefix must be plain topic levels like gasworks/meters, got {prefix!r}", code="INVALID_TOPIC_PREFIX")
    return prefix


def check_serial(serial: str) -> str:
    if not SERIAL.fullmatch(serial):
        raise InvalidInput(f"a meter serial is 14 digits (its CJ/T 188 address), got {serial!r}", code="INVALID_METER_SERIAL")
    return serial


def new_site_secret() -> bytes:
    return secrets.token_bytes(SITE_SECRET_BYTES)


def password_for(site_secret: bytes, username: str) -> str:
    """The broker password of `username` (a meter's serial, `worker` or `fleet`), derived, never stored."""
    digest = hmac.new(site_secret, b"gasworks-mqtt-password\x00" + username.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:PASSWORD_CHARS]


def mosquitto_hash(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2's password-file hash: $7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>."""
    salt = salt if salt is not None else os.urandom(PBKDF2_SALT_BYTES)
    derived = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def verify_mosquitto_hash(password: str, line_hash: str) -> bool:
    _, kind, iterations, salt, derived = line_hash.split("$")
    if kind != "7":
        return False
    again = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
    return hmac.compare_digest(again, base64.b64decode(derived))


def acl_text(prefix: str, worker_password: str) -> str:
    prefix = check_prefix(prefix)
    return f"""# gasworks broker ACL, written by `gasworks broker provision`. Anything not allowed here is refused.

# Every gasworks worker: hears every meter's uplink (shared: each uplink goes to one worker), sends downlinks.
user {WORKER_USER}
topic read {prefix}/+/up
topic read $share/{share_group_for(worker_password)}/{prefix}/+/up
topic write {prefix}/+/down

# The simulator's meter gateway (sim/fleet.py): one connection for many SIMULATED meters. Not a meter;
# never give these credentials to a device.
user {FLEET_USER}
topic write {prefix}/+/up
topic read {prefix}/+/down

# Every meter, username = its serial: its own up topic to write, its own down topic to read, nothing else.
pattern write {prefix}/%u/up
pattern read {prefix}/%u/down
"""


MQTT_PACKET_BYTES_MAX = 4096


def mosquitto_conf_text(directory: Path, *, port: int, bind: str, persistence: bool) -> str:
    lines = [
        "# gasworks broker, written by `gasworks broker provision`; start with: mosquitto -c <this file>",
        "per_listener_settings false",
        f"listener {port} {bind}",
        "allow_anonymous false",
        f"password_file {directory / 'passwd'}",
        f"acl_file {directory / 'acl'}",
        # A sealed meter frame is well under 100 bytes: anything near this bound is not a meter talking.
        f"max_packet_size {MQTT_PACKET_BYTES_MAX}",
    ]
    if persistence:
        lines += ["persistence true", f"persistence_location {directory}/"]
    else:
        lines.append("persistence false")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Provisioned:
    directory: Path
    prefix: str
    port: int
    worker_password: str
    fleet_password: str
    meters: int

    def url(self, username: str, password: str, host: str = "127.0.0.1") -> str:
        return f"mqtt://{username}:{password}@{host}:{self.port}"


def read_or_create_site_secret(path: Path) -> bytes:
    """The site secret every broker password is derived from: created once (mode 0600), then reused."""
    if path.exists():
        secret = bytes.fromhex(path.read_text().strip())
        if len(secret) < 16:
            raise InvalidInput(f"site secret in {path} is too short", code="INVALID_SITE_SECRET")
        return secret
    secret = new_site_secret()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    return secret


def read_site_secret(path: Path) -> bytes:
    if not path.exists():
        raise InvalidInput(f"no site secret at {path}: run `gasworks broker provision --out DIR` first", code="NO_SITE_SECRET")
    return read_or_create_site_secret(path)


def _write_whole(path: Path, text: str) -> None:
    """Written whole then renamed, so a broker reloading (SIGHUP) never reads half a file."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    temporary.chmod(0o644)  # mosquitto may drop to its own user before reading it; it holds hashes only
    temporary.replace(path)


def passwd_lines(site_secret: bytes, serials: list[str]) -> list[str]:
    users = [WORKER_USER, FLEET_USER, *sorted({check_serial(s) for s in serials})]
    return [f"{user}:{mosquitto_hash(password_for(site_secret, user))}" for user in users]


def provision(directory: Path, *, prefix: str, serials: list[str], port: int, bind: str = "0.0.0.0", persistence: bool = False) -> Provisioned:
    """Write `passwd`, `acl` and `mosquitto.conf` into `directory` (the site secret too, the first time)."""
    check_prefix(prefix)
    if not 0 < port < 65536:
        raise InvalidInput(f"port must be 1-65535, got {port}", code="INVALID_PORT")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    secret = read_or_create_site_secret(directory / "site-secret")
    _write_whole(directory / "passwd", "\n".join(passwd_lines(secret, serials)) + "\n")
    _write_whole(directory / "acl", acl_text(prefix, password_for(secret, WORKER_USER)))
    _write_whole(directory / "mosquitto.conf", mosquitto_conf_text(directory, port=port, bind=bind, persistence=persistence))
    return Provisioned(directory, prefix, port, password_for(secret, WORKER_USER), password_for(secret, FLEET_USER), len(set(serials)))


def provisioned_port(directory: Path, default: int = 1883) -> int:
    """The listener's port in the provisioned mosquitto.conf (the default if there is none)."""
    conf = directory / "mosquitto.conf"
    for line in conf.read_text().splitlines() if conf.exists() else []:
        words = line.split()
        if len(words) >= 2 and words[0] == "listener" and words[1].isdigit():
            return int(words[1])
    return default


def add_meter(directory: Path, serial: str) -> str:
    """One more meter in an existing password file (the broker reads it again on SIGHUP); its password."""
    check_serial(serial)
    secret = read_site_secret(directory / "site-secret")
    passwd = directory / "passwd"
    lines = [line for line in (passwd.read_text().splitlines() if passwd.exists() else []) if line and not line.startswith(f"{serial}:")]
    password = password_for(secret, serial)
    _write_whole(passwd, "\n".join([*lines, f"{serial}:{mosquitto_hash(password)}"]) + "\n")
    return password
