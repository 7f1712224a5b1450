"""OneNET (China Mobile) HTTP push: verified by the token both sides configured; parsed into CarrierPush.

OneNET's data push (数据推送, as its receiver samples in Java, C# and Node read it):

    POST <our URL>  {"msg": <one message, JSON>, "nonce": "<8 characters>", "msg_signature": "<sig>"}
    sig = Base64(MD5(token + nonce + msg)), msg being the message's JSON text as pushed
    (a configuration with encryption sends "enc_msg", AES under a key the platform gave: not taken here)

Before the first push the platform verifies the URL: `GET <our URL>?msg=<m>&nonce=<n>&signature=<s>`
with `s` = the same signature over `m`; the receiver answers with `m` itself.

Messages: type 1, a data point `{"type": 1, "dev_id", "ds_id", "at": ms, "value", "imei"?}` (an
NB-IoT meter's bytes as hex in `value`); type 2, the device's connection `{"type": 2, "dev_id",
"status": 1 online | 0 offline, "login_type", "at"}`. The token is the only proof a push came from
the platform, so a push whose signature does not verify is refused before anything in it is read.

Not implemented: OneNET's command API (commands cached with an explicit expiry), so a meter cannot
be sent to through OneNET yet; see the README.
"""

import base64
import hashlib
import hmac
import json

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.carriers.ctwing import MalformedPush, read_pushed_frame
from gasworks.domain.carriers import DEVICE_ID_CHARS_MAX, CarrierPlatform, CarrierPush, PushKind
from gasworks.domain.errors import GasworksError

NONCE_CHARS = 8
TOKEN_CHARS_MIN = 16
MSG_CHARS_MAX = 4 * 1024


class PushNotSigned(GasworksError):
    """The push's signature does not verify under our token: not from the platform."""

    code = "PUSH_SIGNATURE_INVALID"
    http_status = 403


def signature(token: str, nonce: str, msg: str) -> str:
    return base64.b64encode(hashlib.md5((token + nonce + msg).encode(), usedforsecurity=False).digest()).decode()


def signature_valid(token: str, nonce: str, msg: str, given: str) -> bool:
    if len(token) < TOKEN_CHARS_MIN or len(nonce) != NONCE_CHARS or len(msg) > MSG_CHARS_MAX:
        return False  # an unset token verifies nothing
    # A '+' in the signature may arrive as a space when it came in a query string.
    return hmac.compare_digest(signature(token, nonce, msg).encode(), given.replace(" ", "+").encode())


def verify_url(token: str, *, msg: str, nonce: str, given: str) -> str:
    """The platform's URL check: the `msg` to answer with, or PushNotSigned."""
    if not signature_valid(token, nonce, msg, given):
        raise PushNotSigned("OneNET URL verification does not verify under our token")
    return msg


def parse_push(body: bytes, token: str) -> CarrierPush:
    """One verified OneNET push; PushNotSigned before anything is believed, MalformedPush for other shapes."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedPush("a OneNET push is one JSON object") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nonce"), str) or not isinstance(doc.get("msg_signature"), str):
        raise MalformedPush("a OneNET push has msg, nonce and msg_signature")
    if "msg" not in doc:
        raise MalformedPush("encrypted OneNET pushes (enc_msg) are not taken: configure the push without encryption over HTTPS")
    raw = doc["msg"]
    msg_text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
    if not signature_valid(token, doc["nonce"], msg_text, doc["msg_signature"]):
        raise PushNotSigned("OneNET push signature does not verify under our token")
    try:
        msg = json.loads(msg_text) if isinstance(raw, str) else raw
    except ValueError:
        raise MalformedPush("msg is not JSON") from None
    if not isinstance(msg, dict):
        raise MalformedPush("one message per push is taken")
    dev_id, at, kind_no = msg.get("dev_id"), msg.get("at"), msg.get("type")
    if isinstance(dev_id, bool) or not isinstance(dev_id, (int, str)) or not str(dev_id) or len(str(dev_id)) > DEVICE_ID_CHARS_MAX:
        raise MalformedPush("dev_id is the platform's device id")
    if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < 10**14:
        raise MalformedPush("at is milliseconds since 1970")
    fields: dict = {}
    if kind_no == 1:
        value = msg.get("value")
        if not isinstance(value, str) or len(value) > 2 * cjt188.FRAME_BYTES_MAX:
            raise MalformedPush("a data point's value is the meter frame in hex")
        try:
            frame = bytes.fromhex(value)
        except ValueError:
            raise MalformedPush("a data point's value is the meter frame in hex") from None
        kind, fields = PushKind.DATA_REPORT, {"frame": frame, **read_pushed_frame(frame)}
    elif kind_no == 2 and msg.get("status") in (0, 1):
        kind, fields = PushKind.ONLINE_OFFLINE, {"online": msg["status"] == 1}
    else:
        kind = PushKind.OTHER
    digest = hashlib.sha256(f"onenet\n{msg_text}".encode()).hexdigest()  # a retry repeats the message exactly
    return CarrierPush(CarrierPlatform.ONENET, kind, f"type{kind_no}"[:40], str(dev_id), "-", at, digest, **fields)
