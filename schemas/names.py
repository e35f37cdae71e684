"""One grammar for the names that travel between layers: horizons and study names.

A horizon is written `h1`, `H3` or `5` by users, logs and MLflow params; a study is
`BUDGET_hH[_vN]` (`20M_h5`, `20M_h1_v2`, `smoke-20M_h5`). Every module that reads either one calls
these functions, so a new spelling is taught in one place.
"""

from __future__ import annotations

import re

HORIZONS: tuple[int, ...] = (1, 3, 5)

# A whole study name: `20M_h5`, `20M_h1_v2`, `smoke-20M_h5`, `smoke_h1`.
STUDY_NAME = re.compile(r"^(?:smoke-(?P<smoke_of>[^_\s]+)_)?(?P<budget>[^_\s]+)?_?h(?P<horizon>\d+)(?:_v(?P<version>\d+))?$")
# A study named inside a longer name: `2M_h1.log`, `phase6a_2M_h1_threshold_1pct_all_trials.json`.
STUDY_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])(?P<budget>smoke|\d+[MB])_h(?P<horizon>\d+)(?![0-9])")


def parse_horizon(value: str | int) -> int:
    """'h1', 'H3', ' 5 ' or 5 -> 1, 3, 5; anything else is a ValueError naming the choices."""
    text = str(value).strip().lower().removeprefix("h")
    horizon = int(text) if text.isdigit() else None
    if horizon not in HORIZONS:
        raise ValueError(f"unknown horizon {value!r}; choose one of {', '.join(f'h{h}' for h in HORIZONS)}")
    return horizon


def horizon_or_none(value: object) -> int | None:
    """parse_horizon for tables whose horizon cell may be missing or foreign: None instead of an error."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    try:
        return parse_horizon(value)  # type: ignore[arg-type]
    except ValueError:
        return None


def study_in_text(text: str) -> tuple[str, str] | None:
    """('2M', '1') from '2M_h1.log' or 'phase6a_2M_h1_threshold_1pct_all_trials.json'; None if absent."""
    match = STUDY_IN_TEXT.search(text)
    return (match["budget"], match["horizon"]) if match else None
