"""The hard families' data are what their names say, and merged accuracy scores extra classes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryotorch.evaluation import classification_accuracy, merged_accuracy
from cryotorch.simulate.families import (
    FAMILIES,
    OPEN_CLOSED_CA_RMSD,
    ca_rmsd,
    family_maps,
)


def test_the_open_closed_rmsd_constant_is_the_models():
    assert ca_rmsd(0.0, 1.0) == pytest.approx(OPEN_CLOSED_CA_RMSD, abs=0.001)


@pytest.mark.parametrize(
    ("name", "angstrom"), [("conformation_1.5A", 1.5), ("conformation_2.6A", 2.6)]
)
def test_a_conformation_family_is_its_rmsd_from_open(name: str, angstrom: float):
    states = FAMILIES[name].states
    assert ca_rmsd(states[0], states[1]) == pytest.approx(angstrom, abs=0.01)


def test_the_ligand_is_its_share_of_the_mass_and_only_where_it_binds(tmp_path: Path):
    maps = family_maps(FAMILIES["ligand_3pct"], tmp_path).astype(np.float64)
    assert maps[1].sum() / maps[0].sum() - 1 == pytest.approx(0.03, rel=1e-4)
    difference = maps[1] - maps[0]
    box = maps.shape[-1]
    # All of the difference lies on the +x side of the centre (where the ligand sits).
    assert difference[..., box // 2 :].sum() > 0.999 * difference.sum()


def test_the_ladder_steps_are_even(tmp_path: Path):
    states = FAMILIES["ladder_5"].states
    steps = [ca_rmsd(a, b) for a, b in itertools.pairwise(states)]
    assert np.allclose(steps, OPEN_CLOSED_CA_RMSD / 4, atol=1e-6)
    assert FAMILIES["overclassed_3_of_2"].classes_asked == 3


@settings(max_examples=200, deadline=None)
@given(
    truth=st.lists(st.integers(0, 1), min_size=1, max_size=40),
    data=st.data(),
)
def test_merged_accuracy_is_at_least_the_matched_one(truth: list[int], data: st.DataObject):
    t = np.array(truth)
    predicted = np.array(data.draw(st.lists(st.integers(0, 2), min_size=len(t), max_size=len(t))))
    merged = merged_accuracy(predicted, t)
    assert classification_accuracy(predicted, t, 3) <= merged + 1e-12
    assert 0 <= merged <= 1


def test_merged_accuracy_of_pure_classes_is_one_and_of_mixed_ones_their_majority():
    truth = np.array([0, 0, 0, 1, 1, 1])
    assert merged_accuracy(np.array([0, 2, 0, 1, 1, 1]), truth) == 1.0  # class 2 is pure
    assert merged_accuracy(np.array([0, 0, 1, 1, 1, 1]), truth) == pytest.approx(5 / 6)
