"""What pollama learnt about one llama.cpp build on one CPU, kept on disk.

One small JSON file per (build key, CPU identity) under
``<state dir>/engine/``. A rebuilt or upgraded engine, or a different CPU
(the VM moved), has another key, so it is probed afresh. A file that cannot be
read is as good as none; one that cannot be written leaves the verdict in
memory only.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pollama.engine.info import EngineInfo

log = logging.getLogger(__name__)


class ExtraPath(StrEnum):
    WORKS = "works"
    """The plain path and the extra buffer types both ran."""
    TRAPS = "traps"
    """The plain path ran; the extra buffer types killed the process."""
    ENGINE_CRASHES = "engine-crashes"
    """Even the plain path killed the process: this build cannot run on this CPU."""


@dataclass(frozen=True)
class Verdict:
    extra_path: ExtraPath
    reason: str
    """Why, in words: what ran or what died, and where (the probe, a runner)."""
    info: EngineInfo | None = None
    at: str = ""
    """When it was found (ISO 8601, UTC)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "extra_path": self.extra_path.value,
            "reason": self.reason,
            "info": self.info.to_json() if self.info else None,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Verdict:
        info = body.get("info")
        return cls(
            extra_path=ExtraPath(body["extra_path"]),
            reason=str(body.get("reason", "")),
            info=EngineInfo.from_json(info) if info else None,
            at=str(body.get("at", "")),
        )


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class VerdictStore:
    """The verdict file for one (build, CPU)."""

    def __init__(self, state_dir: Path, build_key: str, cpu_identity: str) -> None:
        self.path = state_dir / "engine" / f"{build_key}-{cpu_identity}.json"

    def load(self) -> Verdict | None:
        try:
            return Verdict.from_json(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable engine verdict path=%s error=%s", self.path, exc)
            return None

    def save(self, verdict: Verdict) -> None:
        """Atomically: a reader sees the old verdict or the new one, never half of one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".verdict-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(verdict.to_json(), out, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot keep the engine verdict path=%s error=%s", self.path, exc)
