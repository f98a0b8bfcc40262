"""Back up and restore the fleet's durable state (issue 19, disaster recovery).

Everything zapfleet must not lose lives in JetStream: KV buckets are streams ``KV_<bucket>``
and object stores are streams ``OBJ_<bucket>``. A backup is therefore one mechanism for
all of them: each stream's **configuration and every message it holds** (subject, headers,
data, in order), written to one ``.tar.gz``. A restore creates each stream with its saved
configuration in an empty NATS and publishes the messages again in order, which rebuilds
KV revisions' history (deletes included) and object stores (chunks and metadata) exactly.

What is in it (docs/provisioning.md, "Disaster recovery"):

- every KV bucket — tenants and key hashes, session specs and assignments, webhook
  configuration, node placement, the outbox of accepted sends, neonize device jids, the
  sim network — except the two whose content is only true *now*: ``zf_nodes``
  (heartbeats, TTL) and ``zf_leases`` (leadership, TTL); processes write them afresh;
- every object store — the SQLite device stores (no re-pairing after a restore) and
  queued outbox media;
- the webhook dead letters, redrive requests and per-destination backlogs of deliveries
  waiting for a receiver to come back (``ZF_DLQ``, ``ZF_WEBHOOK_REDRIVE``,
  ``ZF_WEBHOOK_BACKLOG``);
- the events stream ``ZF_EVENTS`` only with ``--events`` (it can be large, and
  receivers have had it).

Messages keep their content, not their server timestamps: per-bucket TTLs (the outbox's)
count again from the restore.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from contract.protocol import (
    DLQ_STREAM,
    EVENTS_STREAM,
    LEASES_BUCKET,
    NODES_BUCKET,
    REDRIVE_STREAM,
)
from control_plane.webhooks.backlog import BACKLOG_STREAM
from zapfleet import __version__
from zapfleet.natsjs import ensure_stream

FORMAT = 1
SKIPPED_BUCKETS = frozenset({NODES_BUCKET, LEASES_BUCKET})
FETCH_BATCH = 500


class BackupError(RuntimeError):
    """A backup or restore that cannot go on, with the reason for the operator."""


@dataclass
class Summary:
    streams: dict[str, int] = field(default_factory=dict)  # stream -> messages

    @property
    def messages(self) -> int:
        return sum(self.streams.values())


def wanted(stream: str, *, events: bool) -> bool:
    """Whether ``stream`` belongs in a backup."""
    if stream.startswith("KV_"):
        return stream.removeprefix("KV_") not in SKIPPED_BUCKETS
    if stream.startswith("OBJ_"):
        return True
    if stream == EVENTS_STREAM:
        return events
    return stream in (DLQ_STREAM, REDRIVE_STREAM, BACKLOG_STREAM)


async def _stream_names(nc: NATS) -> list[str]:
    infos = await nc.jetstream().streams_info()
    return sorted(info.config.name for info in infos if info.config.name)


async def _messages(nc: NATS, stream: str) -> Iterable[dict[str, Any]]:
    """Every message of ``stream`` in order, through a pull consumer deleted afterwards."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    consumer = await js.add_consumer(
        stream,
        ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            inactive_threshold=30.0,
            headers_only=False,
        ),
    )
    assert consumer.name is not None
    found: list[dict[str, Any]] = []
    try:
        sub = await js.pull_subscribe_bind(consumer.name, stream)
        try:
            while True:
                msgs = await sub.fetch(FETCH_BATCH, timeout=5)
                pending = 0
                for msg in msgs:
                    found.append(
                        {
                            "subject": msg.subject,
                            "headers": dict(msg.headers or {}),
                            "data": base64.b64encode(msg.data).decode(),
                        }
                    )
                    pending = msg.metadata.num_pending
                if not msgs or pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(stream, consumer.name)
    return found


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mtime = int(time.time())
    archive.addfile(member, io.BytesIO(data))


async def backup(nc: NATS, path: Path, *, events: bool = False) -> Summary:
    """Write the fleet's durable state to ``path`` (a .tar.gz). Returns what it holds."""
    js = nc.jetstream()
    summary = Summary()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "zapfleet": __version__,
        "created_at": time.time(),
        "streams": {},
    }
    tmp = path.with_name(path.name + ".partial")
    with tarfile.open(tmp, "w:gz") as archive:
        for stream in await _stream_names(nc):
            if not wanted(stream, events=events):
                continue
            info = await js.stream_info(stream)
            messages = list(await _messages(nc, stream))
            body = "".join(json.dumps(m, separators=(",", ":")) + "\n" for m in messages)
            _add(archive, f"streams/{stream}.jsonl", body.encode())
            manifest["streams"][stream] = {
                "config": info.config.as_dict(),
                "messages": len(messages),
            }
            summary.streams[stream] = len(messages)
        _add(archive, "manifest.json", json.dumps(manifest, indent=2).encode())
    tmp.replace(path)  # a backup is either whole or absent
    return summary


def _replayable(headers: dict[str, str]) -> dict[str, str] | None:
    """A stored message's headers without the publish preconditions it was written with
    (``Nats-Expected-*``: a CAS against the old stream's sequences, which mean nothing in
    the new one)."""
    kept = {k: v for k, v in headers.items() if not k.startswith("Nats-Expected-")}
    return kept or None


def archive_path(target: Path, now: float | None = None) -> Path:
    """``target`` itself, or a new ``zapfleet-<UTC time>.tar.gz`` in it if it is a
    directory (what the scheduled backups write)."""
    if not target.is_dir():
        return target
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now or time.time()))
    return target / f"zapfleet-{stamp}.tar.gz"


def prune(directory: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` scheduled backups in ``directory`` (by name,
    which sorts by time). Returns what was deleted."""
    if keep < 1:
        raise BackupError("keep at least one backup")
    archives = sorted(directory.glob("zapfleet-*.tar.gz"))
    gone = archives[:-keep]
    for path in gone:
        path.unlink()
    return gone


def _config(saved: dict[str, Any]) -> StreamConfig:
    config: StreamConfig = StreamConfig.from_response(dict(saved))
    config.sealed = False
    return config


async def restore(nc: NATS, path: Path, *, replicas: int | None = None) -> Summary:
    """Load a backup into a NATS whose streams are absent or empty. Refuses (before
    writing anything) if any stream of the backup already holds messages."""
    js = nc.jetstream()
    try:
        archive = tarfile.open(path, "r:gz")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{path}: not a zapfleet backup ({exc})") from None
    with archive:
        try:
            manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError) as exc:
            raise BackupError(f"{path}: no readable manifest.json ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{path}: backup format {manifest.get('format')} is not {FORMAT}")
        streams: dict[str, Any] = manifest["streams"]
        existing = set(await _stream_names(nc))
        for stream in streams:
            if stream in existing and (await js.stream_info(stream)).state.messages:
                raise BackupError(
                    f"stream {stream} already holds messages: restore into an empty NATS "
                    "(or delete that stream first)"
                )
        summary = Summary()
        for stream, saved in streams.items():
            config = _config(saved["config"])
            # the one place streams are made (zapfleet.natsjs): saved replicas unless told
            await ensure_stream(js, config, replicas or config.num_replicas or 1)
            member = archive.extractfile(f"streams/{stream}.jsonl")
            count = 0
            for line in member or []:
                message = json.loads(line)
                await js.publish(
                    message["subject"],
                    base64.b64decode(message["data"]),
                    stream=stream,
                    headers=_replayable(message["headers"]),
                )
                count += 1
            if count != saved["messages"]:
                raise BackupError(f"{stream}: {count} messages in the archive, expected {saved}")
            summary.streams[stream] = count
    return summary
