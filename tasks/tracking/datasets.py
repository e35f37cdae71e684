"""The prepared dataset as an MLflow dataset input of every trial and baseline run.

MLflow's UI shows a run's inputs (name, digest, source, schema, profile) on the run page and lets
the runs table be filtered by dataset. What a run read is: the standardised 25 features of each
sample's last day and its label, per split (`mlflow.data.from_numpy` with one array per split, so
the profile gives the split sizes), identified by the same fingerprint that names the prepared
file in the cache (`tasks.data.dataset.dataset_fingerprint`): the data config, the horizon, the
feature list and the source file's content. The profile also names the F feature columns and the
label, and every run given the input logs them as params (num_features, features, label).

`pin_dataset` pins a study's dataset on its study run (tags dataset_fingerprint and dataset): the
first run of a study records it, every later one (a resume, a joining worker, a supplemental or
retrain run) is refused on other data, with both fingerprints and what differs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from pathlib import Path

import mlflow.data
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

from schemas import tracking as T
from schemas.config import DataConfig
from tasks.data.dataset import BUNDLED, DatasetMismatch, dataset_fingerprint, feature_names, mismatch_message
from tasks.data.prepared import SPLITS, PreparedData
from tasks.tracking.runs import log_batch, once_more_on_an_insert_race, set_tag

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag for how a run used the dataset
BUNDLED_SOURCE = "arch.data.sp500 + arch.data.nasdaq (daily OHLCV 1999-2018, shipped by the arch package)"


def dataset_name(data: DataConfig, horizon: int) -> str:
    """`bundled-h1-w60`, or the file's name for a user's file: `prices.csv-h1-w60`."""
    source = BUNDLED if data.source == BUNDLED else Path(data.source).name
    return f"{source}-h{horizon}-w{data.window}"


def dataset_entity(prepared: PreparedData, data: DataConfig) -> Dataset:
    """The MLflow dataset of a prepared dataset (values only: nothing is logged here)."""
    last_day = {split: prepared.features[prepared.anchors[split]] for split in SPLITS}  # (n, F) each
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
    entity = dataset.to_dict()
    profile = json.loads(entity["profile"])
    names = prepared.feature_names or feature_names(data)
    profile.update({T.PARAM_NUM_FEATURES: prepared.num_features, T.PARAM_FEATURES: features_param(names),
                    T.PARAM_LABEL: data.label})
    entity["profile"] = json.dumps(profile)
    return Dataset(**entity)


MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def features_param(names: tuple[str, ...] | list[str]) -> str:
    """The feature columns comma-joined; a list too long for a param is cut and ends with its hash."""
    joined = ",".join(names)
    if len(joined) <= MAX_PARAM_CHARS:
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:16]
    tail = f",... ({len(names)} columns, sha256 {digest})"
    return joined[: MAX_PARAM_CHARS - len(tail)].rsplit(",", 1)[0] + tail


def data_params(dataset: Dataset) -> dict[str, str]:
    """F, the feature columns and the label of a dataset entity (what its runs log as params)."""
    profile = json.loads(dataset.profile or "{}")
    return {k: str(profile[k]) for k in (T.PARAM_NUM_FEATURES, T.PARAM_FEATURES, T.PARAM_LABEL) if k in profile}


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
    inputs = [DatasetInput(dataset=dataset, tags=[InputTag(CONTEXT_TAG, context)])]
    once_more_on_an_insert_race(lambda: client.log_inputs(run_id, datasets=inputs))  # two workers, one new dataset
    log_batch(client, run_id, params=data_params(dataset))


MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value


def pin_dataset(client: MlflowClient, study_run_id: str, study: str, record: dict) -> None:
    """Record the study's dataset on its study run, or refuse other data than the one recorded
    (DatasetMismatch: both fingerprints and what differs). Nothing is written on a refusal."""
    tags = client.get_run(study_run_id).data.tags
    recorded = tags.get(T.TAG_DATASET_FINGERPRINT)
    if recorded is None:
        kept = dict(record)
        if len(json.dumps(kept)) > MAX_TAG_CHARS:  # a very wide panel: its column list by count and hash
            kept["features"] = features_param(record["features"])[-80:]
        set_tag(client, study_run_id, T.TAG_DATASET, json.dumps(kept))
        set_tag(client, study_run_id, T.TAG_DATASET_FINGERPRINT, record["fingerprint"])
        return
    if recorded != record["fingerprint"]:
        try:
            before = json.loads(tags.get(T.TAG_DATASET, "{}"))
        except ValueError:
            before = {}
        raise DatasetMismatch(mismatch_message(f"study {study}", {**before, "fingerprint": recorded}, record))
