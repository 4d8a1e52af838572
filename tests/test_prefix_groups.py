"""Grouping token rows by the prefix they share: what the transformers backend runs once."""

from cai.generators.backends.engine_utils import prefix_groups


def _as_sets(groups):
    return sorted((g.shared, sorted(g.rows)) for g in groups)


def test_rows_group_by_their_longest_worthwhile_prefix():
    conv_a, conv_b = list(range(100, 160)), list(range(200, 240))
    rows = [
        conv_a + [1, 2, 3],
        conv_b + [7, 8],
        conv_a + [1, 2, 4, 5],
        conv_a + [9],
        conv_b + [7, 9, 9],
    ]
    groups = prefix_groups(rows)
    assert _as_sets(groups) == [(41, [1, 4]), (60, [0, 2, 3])]
    for g in groups:  # every row keeps at least its last token outside the prefix
        assert all(len(rows[k]) > g.shared for k in g.rows)
        assert all(rows[k][: g.shared] == rows[g.rows[0]][: g.shared] for k in g.rows)


def test_a_row_that_starts_another_keeps_its_last_token():
    rows = [list(range(50)), list(range(50)) + [7, 8], list(range(50))]
    groups = prefix_groups(rows)
    assert _as_sets(groups) == [(49, [0, 1, 2])]


def test_short_shared_prefixes_are_not_worth_a_pass():
    rows = [[1, 2, 10, 11, 12], [1, 2, 20, 21], [30, 31]]
    assert all(g.shared == 0 for g in prefix_groups(rows, overhead=16))
    assert sorted(k for g in prefix_groups(rows) for k in g.rows) == [0, 1, 2]
    assert prefix_groups([]) == []


def test_a_long_shared_prefix_is_not_diluted_by_a_short_one():
    """Three rows share 60 tokens and a fourth shares only 20 with them: the fourth stays out."""
    head = list(range(20))
    rows = [head + list(range(100, 140)) + [k] for k in range(3)] + [head + [999] * 5]
    assert _as_sets(prefix_groups(rows)) == [(0, [3]), (60, [0, 1, 2])]
