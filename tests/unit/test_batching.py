from collections import Counter

from dcl_dist.data.batch_plan import BatchPlan
from dcl_dist.data.batching import class_aware_order, epoch_order, even_shard, length_grouped


def global_steps(plan: BatchPlan, order, start=0):
    """The examples of every optimiser step, over all ranks."""
    per_rank = [list(plan.micro_batches(order, r, start)) for r in range(plan.world)]
    steps = []
    for s in range(len(per_rank[0]) // plan.accumulation):
        items = []
        for r in range(plan.world):
            for a in range(plan.accumulation):
                items += per_rank[r][s * plan.accumulation + a]
        steps.append(sorted(items))
    return steps


def test_epoch_order_depends_on_seed_and_epoch():
    assert epoch_order(50, 1, 0) == epoch_order(50, 1, 0)
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1)
    assert sorted(epoch_order(50, 1, 3)) == list(range(50))


def test_same_global_batches_on_any_world_size():
    order = epoch_order(103, 7, 0)
    one = global_steps(BatchPlan(micro=12, world=1, accumulation=2), order)
    two = global_steps(BatchPlan(micro=6, world=2, accumulation=2), order)
    three = global_steps(BatchPlan(micro=8, world=3, accumulation=1), order)
    assert one == two == three
    assert len(one) == 5
    seen = Counter(i for step in one for i in step)
    assert set(seen) == set(range(103))  # every example, the last batch filled from the start
    assert sum(seen.values()) == 5 * 24


def test_resume_at_a_step_yields_the_tail():
    plan = BatchPlan(micro=4, world=2, accumulation=1)
    order = epoch_order(40, 0, 0)
    assert global_steps(plan, order, start=3) == global_steps(plan, order)[3:]


def test_even_shard_gives_every_rank_the_same_count():
    shards = [even_shard(10, r, 3) for r in range(3)]
    assert [len(s) for s, _ in shards] == [4, 4, 4]
    assert sorted(i for s, real in shards for i in s[:real]) == list(range(10))


def test_class_aware_order_groups_same_class():
    labels = [0] * 10 + [1] * 7 + [2] * 4
    order = class_aware_order(labels, 2, seed=0, epoch=0)
    assert sorted(order) == list(range(21))
    pairs = [order[i : i + 2] for i in range(0, 20, 2)]
    same = sum(labels[a] == labels[b] for a, b in pairs)
    assert same >= 8


def test_length_grouping_keeps_every_item_and_groups_lengths():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(1000)]
    order = epoch_order(1000, 3, 0)
    grouped = length_grouped(order, lengths, 16, 3, 0)
    assert sorted(grouped) == list(range(1000))
    assert grouped == length_grouped(order, lengths, 16, 3, 0) != length_grouped(order, lengths, 16, 3, 1)

    def padded(o):
        return sum(max(lengths[i] for i in o[s : s + 16]) * len(o[s : s + 16]) for s in range(0, len(o), 16))

    assert padded(grouped) < 0.8 * padded(order)
    batch_means = [sum(lengths[i] for i in grouped[s : s + 16]) / 16 for s in range(0, 992, 16)]
    assert batch_means != sorted(batch_means)  # the batches themselves come in random order
