"""Star groups: every member is a duplicate of its keeper; chains of near-duplicates are not joined."""

from simengine.dedup.groups import Candidate, group_duplicates


def candidates(*specs):
    return [Candidate(i, pixels, size, mtime) for i, (pixels, size, mtime) in enumerate(specs)]


def test_a_chain_is_not_joined_through_its_middle():
    # A≈B, B≈C, A≉C: with A the best copy, C is not grouped with A.
    items = candidates((100, 10, 0), (50, 10, 0), (10, 10, 0))
    [group] = group_duplicates(items, [(0, 1, 0.9), (1, 2, 0.9)])
    assert group.members == [0, 1]
    # With B the best copy, both are B's duplicates, in keeper order.
    items = candidates((50, 10, 0), (100, 10, 0), (10, 10, 0))
    [group] = group_duplicates(items, [(0, 1, 0.9), (1, 2, 0.8)])
    assert group.keeper == 1 and group.duplicates == [0, 2] and group.similarity == {0: 0.9, 2: 0.8}


def test_keeper_order_resolution_then_file_size_then_age():
    items = candidates((100, 5, 3.0), (100, 9, 3.0), (100, 9, 1.0))
    [group] = group_duplicates(items, [(0, 1, 0.95), (1, 2, 0.95), (0, 2, 0.95)])
    assert group.keeper == 2 and group.duplicates == [1, 0]


def test_images_without_duplicates_are_in_no_group_and_self_pairs_are_ignored():
    items = candidates((1, 1, 0), (1, 1, 0), (1, 1, 0), (1, 1, 0))
    groups = group_duplicates(items, [(0, 0, 1.0), (2, 3, 0.99)])
    assert [g.members for g in groups] == [[2, 3]]


def test_exact_groups_by_content_hash():
    from simengine.dedup.groups import exact_groups

    items = candidates((10, 1, 0), (20, 1, 0), (10, 1, 0), (5, 1, 0))
    [group] = exact_groups(items, {0: "a", 1: "a", 2: "b", 3: "a"})
    assert group.keeper == 1 and group.duplicates == [0, 3] and set(group.similarity.values()) == {1.0}


def test_a_member_joins_the_keeper_it_is_most_similar_to():
    # X is a weak match of the larger K1 (a wrong link) and a strong one of K2 (its original): it goes to K2, and K1,
    # left alone, is in no group.
    items = candidates((400, 10, 0), (200, 10, 0), (100, 10, 0))  # K1, K2, X
    [group] = group_duplicates(items, [(0, 2, 0.70), (1, 2, 0.99)])
    assert group.keeper == 1 and group.duplicates == [2] and group.similarity == {2: 0.99}


def test_keep_rules_choose_the_keeper():
    from simengine.dedup.groups import KEEP_RULES, exact_groups

    items = [Candidate(0, 100, 500, 30.0, original=False),  # a large PNG, newest
             Candidate(1, 50, 300, 10.0),                     # a small JPEG, oldest
             Candidate(2, 80, 900, 20.0)]                     # a mid JPEG, the largest file
    same = {0: "h", 1: "h", 2: "h"}
    keepers = {keep: exact_groups(items, same, keep)[0].keeper for keep in KEEP_RULES}
    assert keepers == {"largest": 0, "oldest": 1, "newest": 0, "first": 0, "original": 2}
    near = {keep: group_duplicates(items, [(0, 1, 0.9), (1, 2, 0.9), (0, 2, 0.9)], keep)[0].keeper for keep in KEEP_RULES}
    assert near == keepers
