"""Batch jobs as files: JSONL rows in, JSONL results out, restartable.

Input: one JSON object a line. Text rows ``{"id": ..., "prompt": "..."}``, image rows
``{"id": ..., "label": 3}``; ``id`` (a string or an integer, unique) defaults to the line number.
Output: one JSON object a line per finished row, written whole and flushed, so that a job
killed at any moment leaves complete lines only (a torn last line, possible only if the
machine itself dies mid-write, is cut off when the job restarts). A restarted job reads the ids
already in the output and does only the others.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Literal

from jacobix.core.sampling import SamplingConfig
from jacobix.tokens.decoding import Decoding

TEXT_METHODS = ("ar", "jacobi", "sjd", "sjd-coupled")
IMAGE_MODELS = ("fmnist-ar",)
IMAGE_CLASSES = 10  # the class labels of the image models above (Fashion-MNIST)
BAD_LINE_CHOICES = ("error", "skip")


def _jacobi() -> Decoding:
    return Decoding(method="jacobi", init="repeat")


@dataclass(frozen=True, kw_only=True)
class BatchSpec:
    """What every row of a batch job is generated with.

    Attributes:
        model: a text model name or folder (see :func:`jacobix.load_text_model`), or
            ``"fmnist-ar"`` (the bundled class-conditional image model: labels in, PNGs out).
        decoding: how rows are decoded (methods "ar", "jacobi", "sjd", "sjd-coupled"; image rows
            decode whole grids with the same spec).
        sampling: the target distribution (greedy by default; the sampling methods need a temperature).
        max_new_tokens: tokens per text row (image rows always decode a whole grid).
        seed: base seed; row ``id`` samples from a generator seeded by :func:`row_seed` ``(seed, id)``,
            so a row's output never depends on the batch, actor or node it lands on.
        batch_size: rows decoded together by one model.
        cfg_scale: images: classifier-free guidance scale (None disables it).
        image_dir: images: where the PNG files go (created).
        device: text: torch device of the model and of the row generators (e.g. "cuda"); a GPU
            draws other random numbers than the CPU, so outputs match across backends and batch
            sizes on one device type, not across device types.
    """

    model: str = "shakespeare"
    decoding: Decoding = field(default_factory=_jacobi)
    sampling: SamplingConfig = SamplingConfig()
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 8
    cfg_scale: float | None = 1.5
    image_dir: str | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not isinstance(self.decoding, Decoding) or not isinstance(self.sampling, SamplingConfig):
            raise ValueError("BatchSpec takes decoding=Decoding(...) and sampling=SamplingConfig(...)")
        if self.decoding.method not in TEXT_METHODS:
            raise ValueError(f"method {self.decoding.method!r} does not run in batch jobs; use one of {', '.join(TEXT_METHODS)}")
        self.decoding.check(self.sampling)
        self.decoding.record()  # refuses what a settings record cannot hold (your own proposer, policy, rule)
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BatchSpec.{name} must be an int >= 1, got {value!r}")
        if self.images and self.device != "cpu":
            raise ValueError("image rows run on the CPU (the bundled image model is tiny); drop the device")
        if self.images and self.image_dir is None:
            raise ValueError(f"model {self.model!r} makes images: give image_dir, the folder for the PNG files")

    @property
    def images(self) -> bool:
        """True for the image model (rows carry class labels)."""
        return self.model in IMAGE_MODELS

    def record(self) -> dict:
        """The settings as plain JSON values (the decoding and sampling specs as nested objects)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["decoding"], out["sampling"] = self.decoding.record(), asdict(self.sampling)
        return out

    @classmethod
    def from_record(cls, record: dict) -> BatchSpec:
        """The spec that :meth:`record` wrote."""
        record = dict(record)
        decoding, sampling = Decoding.from_record(record.pop("decoding")), SamplingConfig(**record.pop("sampling"))
        return cls(**record, decoding=decoding, sampling=sampling)


def row_seed(base_seed: int, row_id: str | int) -> int:
    """The sampling seed of a row: a hash of the base seed and the row's id (63 bits).

    Stable across processes, machines and Python versions (unlike ``hash``); ``7`` and ``"7"``
    are the same id.
    """
    digest = hashlib.sha256(f"{int(base_seed)}/{row_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class BadLine:
    """An input line that is not a usable row: its 1-based number and what is wrong."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Job:
    """An input file read against an output file.

    Attributes:
        rows: rows still to do, in input order (each a dict with ``id`` and ``prompt`` or ``label``).
        bad_lines: lines skipped (with ``on_bad_line="skip"``).
        finished: rows already in the output.
        cut: bytes of a torn last line removed from the output (0 normally).
    """

    rows: list[dict]
    bad_lines: list[BadLine] = field(default_factory=list)
    finished: int = 0
    cut: int = 0


def open_job(input_path: str | Path, output_path: str | Path, *, images: bool,
             on_bad_line: Literal["error", "skip"] = "error") -> Job:
    """Read the input rows and the finished ids of the output; returns what is left to do.

    Raises:
        ValueError: with ``on_bad_line="error"``, the bad lines (numbers and reasons); an input with
            no rows; an output file whose complete lines are not result rows (the line is named).
        FileNotFoundError: no input file.
    """
    if on_bad_line not in BAD_LINE_CHOICES:
        raise ValueError(f"on_bad_line must be 'error' or 'skip', got {on_bad_line!r}")
    rows, bad = read_rows(input_path, images=images)
    if not rows and not bad:
        raise ValueError(f"{input_path} holds no rows (an empty file, or blank lines only)")
    if bad and on_bad_line == "error":
        listed = "\n  ".join(str(b) for b in bad[:20]) + ("\n  ..." if len(bad) > 20 else "")
        raise ValueError(f"{input_path}: {len(bad)} bad line(s):\n  {listed}\n"
                         "fix them, or pass --on-bad-line skip to leave them out (each is reported)")
    done, cut = finished_ids(output_path)
    todo = [row for row in rows if str(row["id"]) not in done]
    return Job(rows=todo, bad_lines=bad, finished=len(rows) - len(todo), cut=cut)


def read_rows(path: str | Path, *, images: bool) -> tuple[list[dict], list[BadLine]]:
    """Parse a JSONL input file; returns the good rows and the bad lines (never drops one silently)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no input file {path}")
    field_name, kind = ("label", "an integer class label") if images else ("prompt", "a string")
    rows, bad, seen = [], [], set()
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            row, reason = _parse(line, number, field_name, kind, images)
            if reason is None and str(row["id"]) in seen:
                reason = f"duplicate id {row['id']!r}"
            if reason is not None:
                bad.append(BadLine(number, reason))
                continue
            seen.add(str(row["id"]))
            rows.append(row)
    return rows, bad


def _parse(line: str, number: int, field_name: str, kind: str, images: bool) -> tuple[dict, str | None]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return {}, f"not JSON ({error.msg} at column {error.colno})"
    if not isinstance(row, dict):
        return {}, f"a JSON {type(row).__name__}, not an object"
    row.setdefault("id", number)
    if isinstance(row["id"], bool) or not isinstance(row["id"], (str, int)):
        return {}, f"id must be a string or an integer, got {row['id']!r}"
    value = row.get(field_name)
    valid = (isinstance(value, int) and not isinstance(value, bool)) if images else isinstance(value, str)
    if not valid:
        return {}, f"needs {field_name!r}: {kind}" + ("" if value is None else f", got {value!r}")
    if images and not 0 <= value < IMAGE_CLASSES:
        return {}, f"label {value} is not a class (0 to {IMAGE_CLASSES - 1})"
    if not images and not value:
        return {}, "the prompt is empty"
    return {"id": row["id"], field_name: value}, None


def finished_ids(path: str | Path) -> tuple[set[str], int]:
    """Ids (as strings) of the complete result lines of ``path``; cuts a torn last line off.

    Returns:
        the ids and the number of bytes cut (0 when the file ends with a complete line).
    Raises:
        ValueError: a complete line that is not a result row (not this job's output file).
    """
    path = Path(path)
    if not path.exists():
        return set(), 0
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    cut = len(data) - complete
    if cut:
        with path.open("r+b") as file:
            file.truncate(complete)
    done = set()
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        try:
            done.add(str(json.loads(line.decode("utf-8"))["id"]))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError):
            raise ValueError(f"{path} line {number} is not a result row (damaged, or the output of another job); "
                             "repair or remove that line, or use a new --output path") from None
    return done, cut


def settings_path(output_path: str | Path) -> Path:
    """The file beside the output that records the settings its rows were made with."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".settings.json")


def check_settings(output_path: str | Path, spec: BatchSpec) -> None:
    """Record the output-determining settings beside a new output; refuse to extend an output
    made with other settings (a restart must not mix two jobs in one file).

    ``batch_size`` is left out: it does not change any row's result.
    """
    settings = {k: v for k, v in spec.record().items() if k != "batch_size"}
    path = settings_path(output_path)
    if path.exists() and Path(output_path).is_file() and Path(output_path).stat().st_size > 0:  # rows to keep
        try:
            recorded = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is damaged (not JSON); it records the settings of {output_path}: restore it, "
                             "or use a new --output") from None
        changed = sorted(k for k in set(settings) | set(recorded) if settings.get(k) != recorded.get(k))
        if changed:
            raise ValueError(f"{output_path} holds rows made with other settings ({', '.join(changed)} differ: "
                             f"{', '.join(f'{k}={recorded.get(k)!r}' for k in changed)}); "
                             "use the same settings to continue it, or a new --output")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1) + "\n")


class ResultWriter:
    """Appends result rows to a JSONL file, one whole line per ``write`` (flushed), as a context manager."""

    def __init__(self, path: str | Path, *, sync: bool = False) -> None:
        self.path, self.sync = Path(path), sync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None
        self.written = 0

    def __enter__(self) -> ResultWriter:
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def write(self, row: dict) -> None:
        """Write one row as a line and flush it (``sync=True`` also forces it to disk)."""
        assert self._file is not None, "use ResultWriter as a context manager"
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        if self.sync:
            os.fsync(self._file.fileno())
        self.written += 1

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


__all__ = ["BAD_LINE_CHOICES", "BadLine", "BatchSpec", "IMAGE_MODELS", "Job", "ResultWriter", "TEXT_METHODS",
           "check_settings", "finished_ids", "open_job", "read_rows", "row_seed", "settings_path"]
