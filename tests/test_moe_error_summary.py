"""When many experts fail for one reason, the DMoE layer's error says the reason once."""

from __future__ import annotations

import pytest
import torch

from hivemind_core.moe.client import ExpertsUnavailable, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.client.errors import describe_failures
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.uid import expand_pattern

HID = 8


@pytest.mark.asyncio
async def test_a_hidden_size_mismatch_is_reported_once_for_all_experts(world) -> None:
    uids = expand_pattern("ffn.[0:2].[0:3]")
    hosted = [ExpertBackend.create(uid, "ffn", HID, seed=i) for i, uid in enumerate(uids)]
    first = await world.expert_server(hosted[0::2])
    await world.expert_server(hosted[1::2], [first.endpoint])
    client = await world.moe_client([first.endpoint])
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID // 2, grid_size=(2, 3), uid_prefix="ffn", k_best=6, max_searches=1),
        client=client,
    )
    with pytest.raises(ExpertsUnavailable) as raised:
        await world.run_trainer(lambda: layer(torch.randn(4, HID // 2)))
    message = str(raised.value)
    assert message.count("must have shape") == 1, message
    assert "6 experts on 2 server(s) (ffn.0.0, ffn.0.1, ffn.0.2, ffn.1.0, ffn.1.1, ffn.1.2)" in message
    assert "input 0 of <expert> must have shape [batch, 8], got [4, 4]" in message


def test_distinct_reasons_stay_apart_and_long_lists_are_cut() -> None:
    assert describe_failures([]) == "none found"
    one = describe_failures([("ffn.1", "10.0.0.1:5", "RemoteError: ffn.1 at 10.0.0.1:5 broke")])
    assert one == "ffn.1: RemoteError: ffn.1 at 10.0.0.1:5 broke", "a lone failure is quoted as it came"
    failures = [(f"ffn.{i}", "127.0.0.1:1", f"input of ffn.{i} is wrong") for i in range(12)]
    failures.append(("ffn.1.0", "127.0.0.1:10", "no answer in time"))
    # a UID or address that merely starts another one is left alone
    failures.append(("ffn.1", "127.0.0.1:1", "ffn.10 and 127.0.0.1:10 disagree"))
    summary = describe_failures(failures, max_uids=3)
    assert summary.startswith(
        "12 experts on 1 server(s) (ffn.0, ffn.1, ffn.10 and 9 more): input of <expert> is wrong; "
    ), summary
    assert "ffn.1.0: no answer in time" in summary
    assert "ffn.1: ffn.10 and 127.0.0.1:10 disagree" in summary
    many = [(f"e.{i}", "127.0.0.1:1", f"reason {i}") for i in range(7)]
    assert describe_failures(many, max_reasons=4).endswith("; and 3 other reason(s)")
