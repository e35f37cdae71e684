"""A run's scores on a split as data: the `predictions/<split>.npz` artifact.

One small file per run and split: the scores (float32, in the split's window order), the labels
(packed bits), the sha256 of the labels and a digest of the split's windows (anchor rows, first
and last anchor dates, window length and horizon). The report pairs two runs' scores only when
both digests agree: scores of different windows are refused, never compared.

`encode` / `decode` are pure (bytes in, bytes out); `log_predictions` / `download_predictions` are
the MLflow edge and take a client.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.tracking import PREDICTIONS_DIR, predictions_artifact, predictions_tag

FORMAT_VERSION = 1
log = logging.getLogger(__name__)


class WindowMismatch(ValueError):
    """Two runs' predictions are not on the same windows (or a file's labels do not match its digest)."""


def labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(labels).astype(np.uint8).tobytes()).hexdigest()


def windows_digest(anchors: np.ndarray, dates: tuple[str, str], window: int, horizon: int) -> str:
    """sha256 of a split's windows: the anchor rows in order, the split's first and last anchor
    dates, the window length and the horizon."""
    h = hashlib.sha256(np.ascontiguousarray(anchors, dtype=np.int64).tobytes())
    h.update(f"|{dates[0]}|{dates[1]}|window={window}|h={horizon}".encode())
    return h.hexdigest()


def split_digest(data, split: str) -> str:
    """The windows digest of a `tasks.data.dataset.PreparedData` split."""
    return windows_digest(data.anchors[split], tuple(data.split_dates[split]), data.window, data.horizon)


@dataclass(frozen=True)
class Predictions:
    split: str
    scores: np.ndarray  # (n,) float32, the split's window order
    labels: np.ndarray  # (n,) bool
    labels_sha256: str
    windows_sha256: str

    def same_windows(self, other: Predictions) -> None:
        """Raise WindowMismatch unless both are scores of the same windows with the same labels."""
        if (self.split, self.windows_sha256, self.labels_sha256) != (other.split, other.windows_sha256, other.labels_sha256):
            raise WindowMismatch(
                f"predictions on different windows: {self.split} windows {self.windows_sha256[:12]} labels "
                f"{self.labels_sha256[:12]} against {other.split} windows {other.windows_sha256[:12]} labels "
                f"{other.labels_sha256[:12]}; re-run the evaluation of both on the same prepared data"
            )


def encode(split: str, scores: np.ndarray, labels: np.ndarray, windows_sha256: str) -> bytes:
    """The artifact's bytes (a compressed .npz)."""
    scores = np.asarray(scores, dtype=np.float32).ravel()
    labels = np.asarray(labels).ravel()
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise ValueError("predictions must be finite")
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, version=np.int64(FORMAT_VERSION), split=np.array(split), scores=scores,
        labels=np.packbits(labels.astype(bool)), n=np.int64(len(labels)),
        labels_sha256=np.array(labels_digest(labels.astype(bool))), windows_sha256=np.array(windows_sha256),
    )  # fmt: skip
    return buffer.getvalue()


def decode(data: bytes | Path) -> Predictions:
    """Read an artifact back; raises WindowMismatch when its labels do not match their digest."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(source) as archive:
        n = int(archive["n"])
        labels = np.unpackbits(archive["labels"])[:n].astype(bool)
        found = Predictions(str(archive["split"]), archive["scores"], labels, str(archive["labels_sha256"]),
                            str(archive["windows_sha256"]))  # fmt: skip
    if labels_digest(labels) != found.labels_sha256 or len(found.scores) != n:
        raise WindowMismatch(f"a {found.split} predictions file whose labels do not match its digest (corrupt)")
    return found


def scores_path(checkpoint: Path, split: str) -> Path:
    """Where the trial process leaves a split's encoded scores for the driver: `trial_7.val.npz`
    beside `trial_7.pt`."""
    return checkpoint.with_name(f"{checkpoint.stem}.{split}.npz")


def log_encoded(client, run_id: str, payload: bytes) -> None:
    """An encoded artifact on the run as `predictions/<split>.npz`, with its tag `predictions_<split>`."""
    found = decode(payload)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{found.split}.npz"
        path.write_bytes(payload)
        client.log_artifact(run_id, str(path), artifact_path=PREDICTIONS_DIR)
    client.set_tag(run_id, predictions_tag(found.split), found.windows_sha256)


def log_predictions(client, run_id: str, split: str, scores: np.ndarray, labels: np.ndarray, windows_sha256: str) -> None:
    """The artifact `predictions/<split>.npz` on the run, and its tag `predictions_<split>`."""
    log_encoded(client, run_id, encode(split, scores, labels, windows_sha256))


def log_scores_file(client, run_id: str | None, path: Path) -> bool:
    """Log the scores the trial process wrote at `path` on the run and delete the file; False (with
    a warning) when there is none or logging fails: a trial's outcome never depends on it."""
    if not run_id or not path.exists():
        log.warning("no scores to log at %s (run %s)", path, run_id)
        return False
    try:
        log_encoded(client, run_id, path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - the report says "undetermined" for a run without scores
        log.warning("scores %s not logged on run %s: %s", path, run_id, exc)
        return False
    path.unlink(missing_ok=True)
    return True


def download_predictions(client, run_id: str, split: str) -> Predictions:
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run_id, predictions_artifact(split), folder)
        return decode(Path(local).read_bytes())
