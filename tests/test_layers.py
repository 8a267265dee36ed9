"""The import rules `make lint` enforces (scheduler/devtools/layers.py): the real tree passes, and each rule
catches a synthetic violation."""

from pathlib import Path

from scheduler.devtools import layers

ROOT = Path(__file__).resolve().parents[1]


def src(**modules):
    return {name.replace("__", "."): (text, False) for name, text in modules.items()}


def test_the_tree_has_one_way_imports_and_no_cycles():
    assert layers.check(layers.load(ROOT)) == []


def test_an_upward_import_fails():
    problems = layers.check(src(scheduler__core__job="from scheduler.node.daemon import Node\n",
                                scheduler__node__daemon="x = 1\n"))
    assert len(problems) == 1 and "scheduler.node.daemon" in problems[0] and "must not depend" in problems[0]


def test_mesh_and_worker_must_not_import_scheduler():
    problems = layers.check(src(mesh__gossip="import scheduler.core.job\n", worker__kinds="from scheduler import core\n",
                                scheduler__core__job="", scheduler="", scheduler__core=""))
    assert sum("must not depend" in p for p in problems) == 2


def test_production_code_must_not_use_devtools():
    problems = layers.check(src(scheduler__cli__main="from scheduler.devtools import sim\n", scheduler__devtools__sim=""))
    assert any("devtools are used by nothing" in p for p in problems)


def test_a_cycle_fails_but_a_type_checking_import_does_not_count():
    cyc = layers.check(src(worker__a="from worker import b\n", worker__b="import worker.a\n", worker=""))
    assert any(p.startswith("import cycle: worker.a <-> worker.b") for p in cyc)
    ok = layers.check(src(worker__a="from worker import b\n",
                          worker__b="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import worker.a\n", worker=""))
    assert ok == []


def test_an_import_inside_a_function_needs_a_reason():
    bad = layers.check(src(worker__a="def f():\n    import json\n    return json\n"))
    assert len(bad) == 1 and "inside a function" in bad[0]
    ok = layers.check(src(worker__a="def f():\n    # optional: numba may be absent\n    import numba\n"))
    assert ok == []
