"""Duplicate groups (connected components of the near-duplicate pairs) and the clip kept per group."""

import numpy as np

from viclip.curation.dedup import duplicate_groups, kept_per_group


def test_groups_and_keepers_match_a_plain_graph_search():
    """The vectorised union-find and keeper choice against breadth-first search on random pair graphs (long
    chains included, where pointer jumping needs several rounds)."""
    rng = np.random.default_rng(0)
    for n, m in ((300, 200), (300, 299), (1000, 50)):
        pairs = np.sort(rng.integers(0, n, (m, 2)), axis=1)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        if m == 299:  # one chain through every row, in shuffled order
            order = rng.permutation(n)
            pairs = np.sort(np.stack([order[:-1], order[1:]], axis=1), axis=1)
        neighbours = {i: set() for i in range(n)}
        for i, j in pairs.tolist():
            neighbours[i].add(j)
            neighbours[j].add(i)
        expected = np.full(n, -1)
        for start in range(n):
            if expected[start] < 0:
                seen, todo = {start}, [start]
                while todo:
                    todo += [k for k in neighbours[todo.pop()] if k not in seen and not seen.add(k)]
                expected[list(seen)] = min(seen)
        groups = duplicate_groups(n, pairs)
        assert np.array_equal(groups, expected)
        score = rng.uniform(0, 1, n)
        score[rng.random(n) < 0.2] = np.nan
        keeper = kept_per_group(groups, score)
        for g in np.unique(groups):
            rows = np.flatnonzero(groups == g)
            best = rows[np.argmax(np.nan_to_num(score[rows], nan=-np.inf))]  # first of the highest; NaN lowest
            assert (keeper[rows] == best).all()
