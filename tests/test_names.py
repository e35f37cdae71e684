"""The one horizon parser and the one study-name grammar (schemas/names.py)."""

import math

import pytest

from schemas.config import StudySpec
from schemas.names import horizon_or_none, parse_horizon, study_in_text


@pytest.mark.parametrize("value, horizon", [("h1", 1), ("H3", 3), (" h5 ", 5), (5, 5), ("3", 3)])
def test_every_spelling_of_a_horizon_reads_the_same(value, horizon):
    assert parse_horizon(value) == horizon


@pytest.mark.parametrize("value", ["h2", "x", "", "h", -1, "1.5"])
def test_an_unknown_horizon_names_the_choices(value):
    with pytest.raises(ValueError, match="choose one of h1, h3, h5"):
        parse_horizon(value)


@pytest.mark.parametrize("value", [None, math.nan, "h7", "n/a"])
def test_a_missing_or_foreign_horizon_cell_is_none(value):
    assert horizon_or_none(value) is None


def test_a_study_is_found_inside_a_file_name_but_not_inside_a_longer_token():
    assert study_in_text("phase6a_2M_h1_threshold_1pct_all_trials.json") == ("2M", "1")
    assert study_in_text("logs/20M_h5.log") == ("20M", "5")
    assert study_in_text("x20M_h5") is None


def test_the_config_and_the_names_module_share_one_grammar():
    spec = StudySpec.parse("smoke-20M_h1_v2")
    assert (spec.budget, spec.horizon, spec.version, spec.smoke_of) == ("smoke-20M", 1, 2, "20M")
    with pytest.raises(ValueError, match="unknown horizon 'h2'"):
        StudySpec(budget="20M", horizon="h2")
