"""The capacity model (pyengine/ops/capacity.py) and `matchctl capacity`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyengine.ops import capacity
from pyengine.ops.capacity import CapacityError, Constants, plan
from pyengine.ops.cli import main


def test_one_partition_carries_a_small_load() -> None:
    p = plan(1_000, 4, 10_000)
    assert (p.partitions, p.members, p.workers) == (1, 3, 3)
    assert p.limited_by == "order rate" and not p.warnings


def test_partitions_follow_the_rate_at_the_headroom() -> None:
    c = Constants()
    per = c.bulk_orders_per_s_per_partition * 0.5
    assert plan(per, 100, 0).partitions == 1
    assert plan(per + 1, 100, 0).partitions == 2
    assert plan(per + 1, 100, 0, headroom=1.0).partitions == 1
    # one command per order costs more: more partitions and cores for the same rate
    bulk, single = plan(20_000, 100, 0), plan(20_000, 100, 0, api="single")
    assert single.partitions > bulk.partitions and single.cores > bulk.cores


def test_resting_orders_add_partitions_for_the_recovery_target_and_memory() -> None:
    small, big = plan(1_000, 100, 100_000), plan(1_000, 100, 5_000_000)
    assert big.partitions == 5 and big.limited_by == "recovery time of the resting orders"
    assert big.recovery_s <= 10.0 and big.memory_bytes > small.memory_bytes


def test_symbols_cap_the_partitions_with_a_warning() -> None:
    p = plan(200_000, 2, 0)
    assert p.partitions == 2 and "only 2 symbols" in p.warnings[0]


def test_workers_are_bounded_by_one_python_interpreter_each() -> None:
    p = plan(200_000, 500, 0, cores_per_worker=64)
    c = Constants()
    assert p.workers >= 200_000 * 3 * c.bulk_member_cpu_us_per_order / 1e6 * c.service_thread_share / 0.5


@pytest.mark.parametrize("kw", [{"orders_per_s": 0}, {"symbols": 0}, {"resting_orders": -1}, {"api": "fast"},
                                {"headroom": 1.5}, {"cores_per_worker": 0}])
def test_bad_input_is_a_clear_error(kw: dict) -> None:
    args = {"orders_per_s": 1000, "symbols": 4, "resting_orders": 0} | kw
    with pytest.raises(CapacityError):
        plan(args.pop("orders_per_s"), args.pop("symbols"), args.pop("resting_orders"), **args)


def test_constants_file_overrides_and_is_checked(tmp_path: Path) -> None:
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"bulk_orders_per_s_per_partition": 1_000}))
    assert plan(1_000, 10, 0, constants=Constants.load(good)).partitions == 2
    for bad in ({"nope": 1}, {"resting_order_bytes": -5}, [1]):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(CapacityError):
            Constants.load(path)


def test_matchctl_capacity_prints_the_plan(capsys) -> None:
    assert main(["capacity", "--orders-per-s", "50000", "--symbols", "100", "--resting-orders", "1000000"]) == 0
    out = capsys.readouterr().out
    assert "partitions      2" in out and "workers" in out and "GiB" in out
    assert main(["capacity", "--orders-per-s", "1000", "--symbols", "4", "--resting-orders", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["plan"]["partitions"] == 1 and doc["constants"] == capacity.constants_doc(Constants())
    assert main(["capacity", "--orders-per-s", "-3", "--symbols", "4", "--resting-orders", "1"]) == 1
    assert "--orders-per-s must be > 0" in capsys.readouterr().err
