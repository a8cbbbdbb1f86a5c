"""What the emulated upload service remembers: STS grants, stored objects, generated images.

Plain data, no aiohttp (QWEN_IMAGES.md §6). ``getstsToken`` (``files.py``) mints a
:class:`StsGrant` per call: one file id, one object key ``<user_id>/<file_id>_<name>``
and a fresh key pair, as the service does (§1.2). The OSS stand-in (``oss.py``)
looks the grant up by access key id, and stores the PUT body as a
:class:`StoredObject`. A completion (``images.py``) resolves each ``files[]`` id
through the grant to the object, so a file is usable only by the user it was
issued to and only once its bytes arrived.

A *user* is what the chat host authenticates: an emulator login (by its email,
so a refreshed token is still the same user) or, for a plain test token, the
token itself. :func:`user_id_for` turns that into the uuid the paths carry.

``UploadKnobs`` are the switches of §6 that no request can carry (the STS call and
the PUT hold no message for a ``#emulator`` line); tests set them with
``POST /_emulator/files`` (``files_control.py``). Secrets (the STS secret and
token, object bytes) stay out of every ``to_json``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "BUCKET",
    "FILETYPES",
    "REGION",
    "TEST_ENDPOINT",
    "ArmedOssFault",
    "ChatTurn",
    "FileBook",
    "GeneratedImage",
    "StoredObject",
    "StsGrant",
    "UploadKnobs",
    "user_id_for",
]

# §1.2 [H]: the bucket and region every STS answer names.
BUCKET = "qwen-webui-prod"
REGION = "oss-ap-southeast-1"
# §6.1: a name that never resolves; the relay's oss_base_url maps it to the OSS stand-in.
TEST_ENDPOINT = "oss-accelerate.emu.invalid"
# §1.2 (A, measured): the web app's getFileType classes.
FILETYPES = ("image", "video", "audio", "file")
_USER_NAMESPACE = uuid.UUID("6c1d8a52-0f3e-4a57-9a53-1d2e0b6f7c11")
# Bounds, so an emulator serving ``--upstream emulator`` for days keeps a bounded memory
# (the oldest entries go first); a test uses a handful. Objects are bounded by bytes too:
# 256 MiB is a dozen 20 MB images (§1.7), or thousands of screenshots.
MAX_ENTRIES = 10_000
MAX_CHATS_REMEMBERED = 1_000
MAX_STORED_BYTES = 256 * 1024 * 1024


def _cap(table: dict[Any, Any], limit: int) -> None:
    """Drop the oldest entries of an insertion-ordered table past ``limit``."""
    while len(table) > limit:
        del table[next(iter(table))]


def user_id_for(account: str) -> str:
    """The stable user id of an account key (``login:<email>`` or ``token:<token>``)."""
    return str(uuid.uuid5(_USER_NAMESPACE, account))


@dataclass(slots=True)
class UploadKnobs:
    """The §6 switches of the upload path; defaults behave like the 2026 service."""

    # "flat": the pre-2026-08 body without {success, data} (§1.2, §4.4).
    sts_envelope: Literal["wrapped", "flat"] = "wrapped"
    # "omit": no endpoint field (I-01); "loopback": the OSS stand-in's URL, "http://127.0.0.1:PORT".
    endpoint: Literal["test_host", "omit", "loopback"] = "test_host"
    # "cdn": the 2025 ``<chat origin>/cdn/<file_path>?key=<JWT>`` form instead of a V4 query-signed URL.
    file_url: Literal["presigned", "cdn"] = "presigned"
    # Refuse a filetype outside image/video/audio/file (a missing one is always refused).
    filetype_enum: bool = False
    # [I] STS credential lifetime; the service's is not captured.
    sts_ttl_s: float = 900.0
    # "reject": a V4 scope with region "oss-ap-southeast-1" is a bad signature (§1.3, measured
    # on the accelerate endpoint); "accept": verify it with that region.
    oss_region_prefix: Literal["reject", "accept"] = "reject"
    # The PUT must carry the declared filesize and a Content-Type of the declared family.
    enforce_declared: bool = True
    # "accept": also read v1-style content-array images ({type:"image", image:url}) (§6.1.3).
    content_array: Literal["ignore", "accept"] = "ignore"
    # What files/parse/status ends with (§1.4).
    parse_result: Literal["success", "failed"] = "success"
    # [I] Lifetime of the ?key= JWT of generated images and cdn file URLs.
    output_ttl_s: float = 3600.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(slots=True)
class StsGrant:
    """One ``getstsToken`` answer: who may write which key, with which credentials, until when."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str = field(repr=False)
    user_id: str = ""
    file_id: str = ""
    bucket: str = BUCKET
    key: str = ""
    filename: str = ""
    filesize: int = 0
    filetype: str = ""
    issued_at: float = 0.0
    expires_at: float = 0.0

    def is_expired(self, now: float) -> bool:
        return now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """Render for ``GET /_emulator/files``: no secret, no token."""
        return {"access_key_id": self.access_key_id, "user_id": self.user_id, "file_id": self.file_id,
                "bucket": self.bucket, "key": self.key, "filename": self.filename, "filesize": self.filesize,
                "filetype": self.filetype, "issued_at": self.issued_at, "expires_at": self.expires_at}


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Bytes a PUT stored, with what a test checks them by."""

    bucket: str
    key: str
    data: bytes = field(repr=False)
    content_type: str
    file_id: str
    user_id: str
    signature_version: str
    stored_at: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)

    def to_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "size": self.size, "sha256": self.sha256,
                "content_type": self.content_type, "file_id": self.file_id, "user_id": self.user_id,
                "signature_version": self.signature_version, "stored_at": self.stored_at}


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    """An image a t2i or image_edit stream linked: a solid PNG rendered on request (``png.py``)."""

    path: str  # /output/<user_id>/<kind>/<chat_id>/<id>.png
    image_id: str
    user_id: str
    chat_id: str
    height: int
    width: int
    rgb: tuple[int, int, int]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "image_id": self.image_id, "user_id": self.user_id, "chat_id": self.chat_id,
                "height": self.height, "width": self.width}


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One exchange of a chat, for ``GET /api/v2/chats/<id>`` (§6.1.5)."""

    user_fid: str
    content: str
    files: tuple[Any, ...]
    response_id: str
    phase: str
    urls: tuple[str, ...]
    hw: tuple[int, int] | None
    answer: str


@dataclass(slots=True)
class ArmedOssFault:
    """An OSS fault waiting for the next PUTs (``POST /_emulator/oss/arm``)."""

    fault: str
    times: int | None
    delay_ms: float = 0.0


@dataclass(slots=True)
class FileBook:
    """Grants, objects, generated images and knobs of one emulator (``EmulatorState.files``)."""

    knobs: UploadKnobs = field(default_factory=UploadKnobs)
    # Where the OSS stand-in listens ("http://127.0.0.1:PORT"); set when it starts, kept by reset().
    oss_url: str | None = None
    grants: dict[str, StsGrant] = field(default_factory=dict)  # by access key id
    by_file_id: dict[str, StsGrant] = field(default_factory=dict)
    objects: dict[tuple[str, str], StoredObject] = field(default_factory=dict)  # by (bucket, key)
    generated: dict[str, GeneratedImage] = field(default_factory=dict)  # by URL path
    history: dict[str, list[ChatTurn]] = field(default_factory=dict)  # by chat id
    parse_polls: dict[str, int] = field(default_factory=dict)  # by file id
    oss_faults: list[ArmedOssFault] = field(default_factory=list)
    # Links (?key= JWTs) minted before this epoch time are refused (``POST /_emulator/files/expire``).
    links_not_before: float = 0.0
    # Signs the ?key= JWTs and the pre-signed file URLs: a per-process secret, kept by reset().
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # The emulator service's own key pair for the pre-signed file_url (not an STS grant).
    service_key_id: str = field(default_factory=lambda: "LTAI5t" + secrets.token_hex(9))
    service_key_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    def reset(self) -> None:
        """Forget grants, objects, images, history, faults and knob changes (tests run apart)."""
        self.knobs = UploadKnobs()
        self.links_not_before = 0.0
        for table in (self.grants, self.by_file_id, self.objects, self.generated, self.history, self.parse_polls):
            table.clear()
        self.oss_faults.clear()

    def issue(self, user_id: str, filename: str, filesize: int, filetype: str) -> StsGrant:
        """Mint a grant for one file of ``user_id`` (§6.1.1): fresh ids, keys and token."""
        now = time.time()
        file_id = str(uuid.uuid4())
        grant = StsGrant(
            access_key_id="STS.NT" + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y"),
            access_key_secret=secrets.token_urlsafe(30),
            security_token="CAIS" + secrets.token_urlsafe(120),
            user_id=user_id,
            file_id=file_id,
            key=f"{user_id}/{file_id}_{filename}",
            filename=filename,
            filesize=filesize,
            filetype=filetype,
            issued_at=now,
            expires_at=now + self.knobs.sts_ttl_s,
        )
        self.grants[grant.access_key_id] = grant
        self.by_file_id[file_id] = grant
        _cap(self.grants, MAX_ENTRIES)
        _cap(self.by_file_id, MAX_ENTRIES)
        return grant

    def expire_all(self) -> int:
        """End every grant now (§6.2 knob: the token expires between STS and PUT); how many were live."""
        now = time.time()
        live = [grant for grant in self.grants.values() if not grant.is_expired(now)]
        for grant in live:
            grant.expires_at = now
        return len(live)

    def store(self, grant: StsGrant, data: bytes, content_type: str, signature_version: str) -> StoredObject:
        stored = StoredObject(grant.bucket, grant.key, data, content_type, grant.file_id, grant.user_id,
                              signature_version, time.time())
        self.objects.pop((grant.bucket, grant.key), None)  # a re-PUT is the newest object
        self.objects[(grant.bucket, grant.key)] = stored
        _cap(self.objects, MAX_ENTRIES)
        total = sum(item.size for item in self.objects.values())
        while total > MAX_STORED_BYTES and len(self.objects) > 1:
            total -= self.objects.pop(next(iter(self.objects))).size
        return stored

    def remember_image(self, image: GeneratedImage) -> None:
        self.generated[image.path] = image
        _cap(self.generated, MAX_ENTRIES)

    def remember_turn(self, chat_id: str, turn: ChatTurn) -> None:
        turns = self.history.pop(chat_id, [])  # re-inserted: the chat is the newest
        self.history[chat_id] = [*turns[-(MAX_ENTRIES - 1):], turn]
        _cap(self.history, MAX_CHATS_REMEMBERED)

    def count_parse_poll(self, file_id: str) -> int:
        polls = self.parse_polls[file_id] = self.parse_polls.pop(file_id, 0) + 1
        _cap(self.parse_polls, MAX_ENTRIES)
        return polls

    def object_of_file(self, file_id: str) -> tuple[StsGrant | None, StoredObject | None]:
        """The grant of a file id and its stored object (None where missing)."""
        grant = self.by_file_id.get(file_id)
        if grant is None:
            return None, None
        return grant, self.objects.get((grant.bucket, grant.key))

    def take_oss_fault(self) -> ArmedOssFault | None:
        """Use up one application of the oldest armed OSS fault."""
        if not self.oss_faults:
            return None
        armed = self.oss_faults[0]
        if armed.times is not None:
            armed.times -= 1
            if armed.times <= 0:
                self.oss_faults.pop(0)
        return armed

    def to_json(self) -> dict[str, Any]:
        """Render for ``GET /_emulator/files``: no secret, no bytes."""
        return {
            "oss_url": self.oss_url,
            "knobs": self.knobs.to_json(),
            "grants": [grant.to_json() for grant in self.grants.values()],
            "objects": [stored.to_json() for stored in self.objects.values()],
            "generated": [image.to_json() for image in self.generated.values()],
            "oss_faults": [{"fault": f.fault, "times": f.times, "delay_ms": f.delay_ms} for f in self.oss_faults],
        }
