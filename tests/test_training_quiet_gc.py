"""Training runs without cyclic-GC pauses: the heap frozen, automatic collection off, young
generations collected between steps, and the interpreter's GC restored however training ends."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest

from runner.train.quiet_gc import COLLECT_EVERY, collect_callback, quiet_gc


class _Trainer:
    """The two methods of transformers.Trainer that quiet_gc uses."""

    def __init__(self):
        self.callbacks = []

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def remove_callback(self, callback):
        self.callbacks.remove(callback)


def test_training_runs_with_the_heap_frozen_and_gc_restored_however_it_ends():
    pytest.importorskip("transformers")
    trainer = _Trainer()
    assert gc.isenabled()
    with pytest.raises(ValueError), quiet_gc(trainer):
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        assert len(trainer.callbacks) == 1
        raise ValueError("a step failed")
    assert gc.isenabled() and gc.get_freeze_count() == 0 and trainer.callbacks == []
    gc.disable()
    try:
        with quiet_gc(trainer):
            pass
        assert not gc.isenabled()                        # it was off before: it stays off
    finally:
        gc.enable()


def test_cycles_made_by_steps_are_collected_every_few_steps():
    pytest.importorskip("transformers")
    callback = collect_callback()

    class Cycle:
        def __init__(self):
            self.me = self

    with quiet_gc(_Trainer()):
        Cycle()
        assert any(type(o) is Cycle for o in gc.get_objects())
        callback.on_step_end(None, SimpleNamespace(global_step=COLLECT_EVERY - 1), None)
        assert any(type(o) is Cycle for o in gc.get_objects())     # not yet: between steps
        callback.on_step_end(None, SimpleNamespace(global_step=COLLECT_EVERY), None)
        assert not any(type(o) is Cycle for o in gc.get_objects())
