"""Metric records: JSON lines in the workdir, plus TensorBoard when tensorboardX is installed."""

import json
import time
from pathlib import Path

__all__ = ["MetricWriter", "read_metrics"]


class MetricWriter:
    """Appends ``{"step", "split", "time", **metrics}`` lines to ``workdir/metrics.jsonl``.

    With ``workdir=None`` nothing is written. TensorBoard scalars go to ``workdir/tb`` when
    the optional ``tensorboardX`` package is importable.
    """

    def __init__(self, workdir: str | Path | None):
        self._file = None
        self._tb = None
        if workdir is None:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(workdir / "metrics.jsonl", "a")  # closed in close()
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return
        self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, split: str, metrics: dict) -> None:
        if self._file is not None:
            record = {"step": int(step), "split": split, "time": time.time(), **metrics}
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(f"{split}/{k}", v, step)

    def log_text(self, text: str) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"event": text, "time": time.time()}) + "\n")
            self._file.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` (optionally of one split)."""
    records = []
    for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "split" in record and (split is None or record["split"] == split):
            records.append(record)
    return records
