"""Reads an offline W&B run back: the ``.wandb`` file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks
of chunks, each ``crc32 u32 | length u16 | type u8`` + payload; type 1 full, 2 first, 3 middle, 4 last) of
``wandb_internal_pb2.Record`` messages. Written from the format, for tests."""

from __future__ import annotations

import json
import struct
import time
from collections import defaultdict
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32768


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B log"
    pos, pending, out = HEADER.size, b"", []
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:
            pos += left
            continue
        _, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0:
            pos += left
            continue
        if pos + CHUNK.size + length > len(data):
            break
        payload = data[pos + CHUNK.size : pos + CHUNK.size + length]
        pos += CHUNK.size + length
        pending = payload if kind in (1, 2) else pending + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def finished_records(path: Path, timeout: float = 30.0) -> list[pb.Record]:
    """The records once the exit record is on disk: wandb's service may write it just after ``finish`` returns."""
    deadline = time.monotonic() + timeout
    while True:
        found = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


class OfflineRun:
    """The run header (group, job type, config), history rows by step, and file records of one offline run."""

    def __init__(self, run_dir: Path) -> None:
        (log,) = Path(run_dir).glob("*.wandb")
        self.history: dict[int, dict] = defaultdict(dict)
        self.files: list[str] = []
        self.summary: dict = {}
        self.exit_code = None
        for r in finished_records(log):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                self.group, self.job_type, self.name = r.run.run_group, r.run.job_type, r.run.display_name
                self.config = {u.key: json.loads(u.value_json) for u in r.run.config.update}
                self.tags = list(r.run.tags)
            elif kind == "config":
                self.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
                self.history[int(row["_step"])].update(row)
            elif kind == "files":
                self.files += [f.path for f in r.files.files]
            elif kind == "summary":
                self.summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                     for i in r.summary.update})
            elif kind == "exit":
                self.exit_code = r.exit.exit_code

    def keys(self) -> set[str]:
        return {k for row in self.history.values() for k in row}
