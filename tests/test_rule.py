"""The one statistical rule (bn_lenet/sweeps/rule.py) on small hand-made cases with known answers."""

import math

import pytest

from bn_lenet.sweeps import rule


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_the_t_quantile_matches_the_printed_tables(df, expected):
    assert rule.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_same_seeds_are_paired_and_the_interval_is_students_t_on_the_differences():
    # differences 0.5, 0.9, 0.5, 1.2, 0.9: mean 0.8, sd 0.3, se 0.3 / sqrt(5), t(0.975, 4) = 2.7764
    a = {0: 1.0, 1: 2.0, 2: 3.5, 3: 2.2, 4: 2.9}
    b = {0: 0.5, 1: 1.1, 2: 3.0, 3: 1.0, 4: 2.0}
    c = rule.compare(a, b, margin=0.1)
    half = 2.776445 * 0.3 / math.sqrt(5)
    assert c["paired"] and c["n"] == 5
    assert c["diff"] == pytest.approx(0.8)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((0.8 - half, 0.8 + half), abs=1e-6)
    assert c["p"] == pytest.approx(2 / 32)  # every difference positive: 2 of the 32 sign patterns are as extreme


def test_pairing_sees_a_consistent_per_seed_difference_that_the_spread_over_seeds_hides():
    # the seeds spread by 0.1 but every seed gains 0.01: unpaired cannot tell, paired can
    a = {s: 0.70 + 0.05 * s + 0.01 for s in range(5)}
    b = {s: 0.70 + 0.05 * s for s in range(5)}
    paired = rule.verdicts([rule.compare(a, b, margin=0.001)])[0]
    unpaired = rule.verdicts([rule.compare(a, {s + 10: v for s, v in b.items()}, margin=0.001)])[0]
    assert paired["paired"] and paired["verdict"] == "higher"
    assert not unpaired["paired"] and unpaired["n"] == "5+5" and unpaired["verdict"] == "inconclusive"


def test_unpaired_uses_welch_and_every_split_of_the_pooled_values():
    a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {7: 4.0, 8: 5.0, 9: 6.0}
    c = rule.compare(a, b)
    # equal variances (1) and sizes: se = sqrt(1/3 + 1/3), df = 4
    half = 2.776445 * math.sqrt(2 / 3)
    assert c["diff"] == pytest.approx(-3.0) and c["df"] == pytest.approx(4.0)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((-3 - half, -3 + half), abs=1e-6)
    assert c["p"] == pytest.approx(2 / 20)  # C(6, 3) = 20 splits; the observed one and its mirror are the extremes


def test_holm_adjusts_in_order_and_keeps_the_input_order():
    assert rule.holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])


def test_the_four_verdicts():
    up = rule.compare({s: 0.9 + 0.001 * s for s in range(5)}, {s: 0.8 for s in range(5)}, margin=0.01)
    down = rule.compare({s: 0.8 for s in range(5)}, {s: 0.9 + 0.001 * s for s in range(5)}, margin=0.01)
    same = rule.compare({s: 0.8 + 0.001 * (s % 2) for s in range(5)}, {s: 0.8 for s in range(5)}, margin=0.01)
    noisy = rule.compare({0: 0.9, 1: 0.7, 2: 0.85}, {0: 0.8, 1: 0.8, 2: 0.8}, margin=0.01)
    verdicts = [c["verdict"] for c in rule.verdicts([up, down, same, noisy])]
    assert verdicts == ["higher", "lower", "equivalent", "inconclusive"]


def test_holm_can_turn_a_lone_difference_into_an_inconclusive_one():
    a = {0: 0.81, 1: 0.84, 2: 0.82, 3: 0.86, 4: 0.83}
    b = {s: 0.80 for s in range(5)}
    alone = rule.verdicts([rule.compare(a, b)])[0]
    assert alone["ci_low"] > 0 and alone["verdict"] == "higher" and 0.005 < alone["p_t"] < 0.05
    crowd = rule.verdicts([rule.compare(a, b)] + [rule.compare({s: 0.5 + s % 2 for s in range(5)}, b)] * 5)[0]
    assert crowd["p_holm"] == pytest.approx(6 * alone["p_t"]) and crowd["verdict"] == "inconclusive"


def test_inconclusive_says_how_many_seeds_would_settle_it_at_the_observed_spread():
    c = rule.verdicts([rule.compare({0: 0.9, 1: 0.7, 2: 0.85}, {0: 0.8, 1: 0.8, 2: 0.8}, margin=0.01)])[0]
    n, d, sd = c["seeds_needed"], abs(c["diff"]), c["sd"]
    assert c["verdict"] == "inconclusive" and n > 3

    def half(k):
        return rule.t_quantile(0.975, k - 1) * sd / math.sqrt(k)
    assert half(n) < d <= half(n - 1)


def test_one_value_a_side_gives_a_difference_without_an_interval():
    c = rule.verdicts([rule.compare({0: 0.9}, {1: 0.8})])[0]
    assert c["diff"] == pytest.approx(0.1) and c["ci_low"] is None and c["verdict"] == "inconclusive"


def test_a_run_gives_its_value_after_a_given_epoch():
    from bn_lenet.sweeps.stats import value
    run = {"rows": [{"epoch": e, "test_acc": 0.5 + 0.1 * e} for e in (1, 2, 3)]}
    assert value(run, "test_acc", "epoch2") == pytest.approx(0.7) and value(run, "test_acc", "epoch9") is None
