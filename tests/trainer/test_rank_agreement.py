"""Every random decision that changes which collectives run is the same on every rank.

2 real ranks under ZeRO-3 with the Jacobian regulariser drawn with probability 0.5: the run
finishes (a disagreement is a hang or a crash in ZeRO-3's collective backward) and both ranks
record the same draw for every training forward (``MDEQ_SAMPLE_LOG``'s ``.draws`` files).
"""

from __future__ import annotations

import json

import pytest

from tests.trainer import mdeq_runs as runs

STEPS = 20


def test_the_draw_is_a_pure_function_of_seed_and_index_with_the_given_probability():
    from mdeq.deq.jacobian import jac_reg_drawn

    draws = [jac_reg_drawn(0.5, 7, i) for i in range(2000)]
    assert draws == [jac_reg_drawn(0.5, 7, i) for i in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert draws != [jac_reg_drawn(0.5, 8, i) for i in range(2000)]  # another seed, another sequence
    assert all(jac_reg_drawn(1.0, 7, i) for i in range(50)) and not any(jac_reg_drawn(0.0, 7, i) for i in range(50))


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_two_zero3_ranks_agree_on_every_jacobian_regularisation_draw(tmp_path):
    data = runs.make_data(tmp_path / "data")
    config = runs.write_config(tmp_path / "run", data, tmp_path / "ckpt", train__max_steps=STEPS,
                               train__seed=3, deepspeed__zero_stage=3, checkpoint__every_steps=0,
                               deq__pretrain_steps=0, deq__jac_reg_weight=0.1, deq__jac_reg_prob=0.5)
    codes, out = runs.train(config, tmp_path / "run" / "train", world=2, timeout=600,
                            MDEQ_SAMPLE_LOG=str(tmp_path / "samples"))
    assert codes == [0, 0], out[-4000:]
    draws = []
    for rank in range(2):
        lines = (tmp_path / f"samples.rank{rank}.draws").read_text().splitlines()
        draws.append([(d["step"], d["micro"], d["jac_reg"]) for d in map(json.loads, lines)])
    assert len(draws[0]) == STEPS and [d[:2] for d in draws[0]] == [(s, 0) for s in range(STEPS)]
    assert draws[0] == draws[1]
    drawn = sum(d[2] for d in draws[0])
    assert 0 < drawn < STEPS  # both outcomes occurred, so agreement is not trivial
