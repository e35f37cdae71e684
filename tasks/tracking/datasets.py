"""The prepared dataset as an MLflow dataset input of every trial and baseline run.

MLflow's UI shows a run's inputs (name, digest, source, schema, profile) on the run page and lets
the runs table be filtered by dataset. What a run read is: the standardised 25 features of each
sample's last day and its label, per split (`mlflow.data.from_numpy` with one array per split, so
the profile gives the split sizes), identified by the same fingerprint that names the prepared
file in the cache (`tasks.data.dataset.dataset_fingerprint`): the data config, the horizon, the
feature list and the source file's content.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import mlflow.data
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from schemas.config import DataConfig
from tasks.data.dataset import BUNDLED, dataset_fingerprint
from tasks.data.prepared import SPLITS, PreparedData

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for how a run used the dataset
BUNDLED_SOURCE = "arch.data.sp500 + arch.data.nasdaq (daily OHLCV 1999-2018, shipped by the arch package)"


def dataset_name(data: DataConfig, horizon: int) -> str:
    """`bundled-h1-w60`, or the file's name for a user's file: `prices.csv-h1-w60`."""
    source = BUNDLED if data.source == BUNDLED else Path(data.source).name
    return f"{source}-h{horizon}-w{data.window}"


def dataset_entity(prepared: PreparedData, data: DataConfig) -> Dataset:
    """The MLflow dataset of a prepared dataset (values only: nothing is logged here)."""
    last_day = {split: prepared.features[prepared.anchors[split]] for split in SPLITS}  # (n, 25) each
    if data.source == BUNDLED:
        source = CodeDatasetSource(tags={"mlflow.source.name": BUNDLED_SOURCE})
    else:
        source = str(Path(data.source).expanduser().resolve())  # a path: MLflow records it as a local file
    with warnings.catch_warnings():
        # MLflow registers the local-file source under two schemes ("" and "file") and warns that
        # a path matches both; they are the same class.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_numpy(
            features=last_day,
            targets={split: prepared.labels[split] for split in SPLITS},
            source=source,
            name=dataset_name(data, prepared.horizon),
            digest=dataset_fingerprint(data, prepared.horizon),
        )
    return Dataset(**dataset.to_dict())


# One entity per prepared file and process: a study logs it on every trial run.
_ENTITIES: dict[tuple[Path, DataConfig], Dataset] = {}
_LOCK = threading.Lock()


def prepared_dataset_entity(path: Path, data: DataConfig) -> Dataset:
    """`dataset_entity` of the prepared file at `path`, built once per process."""
    with _LOCK:
        if (path, data) not in _ENTITIES:
            _ENTITIES[path, data] = dataset_entity(PreparedData.load(path), data)
        return _ENTITIES[path, data]


def log_dataset_input(client: MlflowClient, run_id: str, dataset: Dataset, context: str = "training") -> None:
    """The dataset as an input of the run (context `training`: the run fitted on its train split,
    chose on val and, for baselines and a study's best trial, reported test)."""
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=[InputTag(CONTEXT_TAG, context)])])
