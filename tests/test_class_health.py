"""Empty and look-alike classes: which class is re-seeded from which."""

from __future__ import annotations

import numpy as np
import torch

from cryotorch.engine.class_health import plan_reseed, split_posteriors

PRIOR = torch.tensor([0.2, 0.5, 0.25, 0.05])  # class 1 (0-based) is the largest


def test_an_empty_class_is_reseeded_from_the_largest():
    assert plan_reseed(PRIOR, empty=[3], pairs=[]) == (1, 3)
    assert plan_reseed(PRIOR, empty=[], pairs=[]) is None


def test_of_a_look_alike_pair_the_class_that_is_not_the_source_is_reseeded():
    assert plan_reseed(PRIOR, [], [(0, 2, 0.995)]) == (1, 2)
    # The largest class is in the pair: its partner is re-seeded, not the largest itself.
    assert plan_reseed(PRIOR, [], [(0, 1, 0.995)]) == (1, 0)


def test_the_halves_of_a_class_just_split_get_a_pass_to_part():
    # Class 1 was split into 1 and 2 in this iteration: alike by construction.
    assert plan_reseed(PRIOR, [], [(1, 2, 0.995)], just_split=[(1, 2)]) is None
    assert plan_reseed(PRIOR, [], [(1, 2, 0.995)], just_split=[(2, 1)]) is None
    # Another pair that is alike is still acted on, and an empty class always is.
    assert plan_reseed(PRIOR, [], [(1, 2, 0.995), (0, 3, 0.996)], [(1, 2)]) == (1, 3)
    assert plan_reseed(PRIOR, [2], [(1, 2, 0.995)], just_split=[(1, 2)]) == (1, 2)


def test_split_moves_a_random_half_of_the_source_weight_to_the_target():
    rows = np.arange(2000)
    gamma = torch.tensor([[0.1, 0.9, 0.0]]).repeat(2000, 1)
    split = split_posteriors(gamma, rows, [(1, 2)], seed=7)
    torch.testing.assert_close(split.sum(1), gamma.sum(1))  # still normalised
    moved = split[:, 2] > 0
    assert 0.45 < moved.float().mean() < 0.55
    assert torch.all(split[moved, 1] == 0) and torch.all(split[~moved, 2] == 0)
    # The same half for the same rows and seed (every batch, and after a resume).
    torch.testing.assert_close(split_posteriors(gamma[:10], rows[:10], [(1, 2)], 7), split[:10])
