"""Expert UID patterns: a huge grid is refused by count, before any UID is built."""

from __future__ import annotations

import pytest

from hivemind_core.moe.uid import MAX_PATTERN_EXPERTS, expand_pattern, pattern_size


def test_a_huge_grid_is_refused_with_its_size_instead_of_filling_memory() -> None:
    pattern = "ffn.[0:100000].[0:100000]"
    assert pattern_size(pattern) == 10**10
    with pytest.raises(ValueError, match=r"names 10,000,000,000 experts, more than the limit of 65,536"):
        expand_pattern(pattern)
    # a digit typo in a coordinate range is refused just as fast
    with pytest.raises(ValueError, match="more than the limit"):
        expand_pattern("ffn.[0:" + "9" * 60 + "]")


def test_the_limit_is_inclusive_and_callers_can_choose_it() -> None:
    assert len(expand_pattern(f"ffn.[0:{MAX_PATTERN_EXPERTS}]")) == MAX_PATTERN_EXPERTS
    assert expand_pattern("ffn.[0:2].3", limit=2) == ["ffn.0.3", "ffn.1.3"]
    with pytest.raises(ValueError, match="names 4 experts, more than the limit of 3"):
        expand_pattern("ffn.[0:2].[0:2]", limit=3)
    assert pattern_size("ffn.7") == 1
    with pytest.raises(ValueError, match="invalid expert pattern"):
        pattern_size("ffn.[3:1]")
