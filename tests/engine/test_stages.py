"""``inference.reconstruct_stages``: the network-then-refinement events and the rules every caller shares."""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import numpy as np
import pytest

import ptychodus_pinn.engine.refinement as refinement_module
from ptychodus_pinn.engine.config import ExecutionConfig, RefinementConfig
from ptychodus_pinn.engine.inference import FinalResult, NetworkStage, RefinementEpoch, reconstruct, reconstruct_stages

CPU = ExecutionConfig(accelerator="cpu")


def test_events_in_order_and_the_model_left_as_it_was(
    small_scan: Any, trained_small: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptychodus_pinn")
    model = trained_small.model.train()
    events = list(reconstruct_stages(model, small_scan, execution=CPU, refinement=RefinementConfig(epochs=20)))
    assert isinstance(events[0], NetworkStage) and isinstance(events[-1], FinalResult)
    epochs = events[1:-1]
    assert [event.report.epoch for event in epochs] == list(range(1, 61))  # 40 half-resolution, then 20 full
    assert all(isinstance(event, RefinementEpoch) for event in epochs)
    assert [event.report.half_resolution for event in epochs] == [True] * 40 + [False] * 20
    assert all(event.report.nll >= event.nll_floor for event in epochs[40:])
    final = events[-1]
    assert final.fallback is None and final.reconstruction.stages == ("network", "refinement")
    assert np.array_equal(final.reconstruction.network_object, events[0].reconstruction.object)
    # confidence maps once, for the result: not for the network's object that refinement replaces
    assert events[0].reconstruction.phase_std_rad is None and final.reconstruction.phase_std_rad is not None
    assert model.training and {parameter.device.type for parameter in model.parameters()} == {"cpu"}
    progress = [record.getMessage() for record in caplog.records if record.getMessage().startswith("Refinement epoch ")]
    expected = [f"Refinement epoch {epoch}/60" + (" (half resolution)" if epoch <= 40 else "") for epoch in range(6, 61, 6)]
    assert [message.split(":")[0] for message in progress] == expected  # every 10 % of the 60 epochs


def test_refinement_off_stop_after_the_network_and_no_model(small_scan: Any, trained_small: Any) -> None:
    model = trained_small.model
    (only,) = reconstruct_stages(model, small_scan, execution=CPU, refinement=RefinementConfig(epochs=0))
    assert isinstance(only, FinalResult) and only.reconstruction.stages == ("network",)
    assert only.reconstruction.phase_std_rad is not None

    events = list(reconstruct_stages(model, small_scan, execution=CPU, should_stop=lambda: True))
    assert [type(event) for event in events] == [NetworkStage, FinalResult]
    assert events[1].fallback == "stopped after the network stage"
    assert events[1].reconstruction.phase_std_rad is not None  # the network's object became the result: its maps

    flat = list(reconstruct_stages(None, small_scan, execution=CPU, refinement=RefinementConfig(epochs=2)))
    assert not any(isinstance(event, NetworkStage) for event in flat)
    assert flat[-1].reconstruction.stages == ("refinement",)
    with pytest.raises(ValueError, match="nothing to reconstruct with"):
        list(reconstruct_stages(None, small_scan, execution=CPU, refinement=RefinementConfig(epochs=0)))


def test_a_refinement_failure_leaves_the_network_object(
    small_scan: Any, trained_small: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
        yield

    monkeypatch.setattr(refinement_module, "refine_steps", out_of_memory)
    caplog.set_level(logging.INFO, logger="ptychodus_pinn")
    result = reconstruct(trained_small.model, small_scan, execution=CPU)  # the CLI's path: the same rule
    assert result.stages == ("network",) and result.refinement is None
    assert result.phase_std_rad is not None and result.amplitude_std is not None
    assert "Refinement failed (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)" in caplog.text
    with pytest.raises(RuntimeError, match="out of memory"):  # nothing to fall back to without a network
        reconstruct(None, small_scan, execution=CPU)


def test_the_alternative_models_object_competes_by_the_scans_likelihood(caplog: pytest.LogCaptureFixture) -> None:
    """With start auto the likelier of two networks' objects is the network stage's (and refinement's start);
    start network keeps the model in use's. The shipped N = 64 model against one with untrained weights."""
    from ptychodus_pinn.engine.config import RefinementStart
    from ptychodus_pinn.engine.inference import MODEL_IN_USE
    from ptychodus_pinn.engine.network import PinnGenerator
    from ptychodus_pinn.engine.persistence import find_pretrained
    from ptychodus_pinn.engine.simulate import simulate_scan

    caplog.set_level(logging.INFO, logger="ptychodus_pinn")
    scan = simulate_scan("siemens", photons=1e5, n_positions=144, N=64, seed=5)
    shipped = find_pretrained(64)
    assert shipped is not None
    untrained = copy.deepcopy(shipped)  # its weights as initialised: a flat object
    untrained.generator.load_state_dict(PinnGenerator(shipped.config).state_dict())
    off = RefinementConfig(epochs=0)
    shipped_alone = list(reconstruct_stages(shipped, scan, execution=CPU, refinement=off))[-1].reconstruction
    untrained_alone = list(reconstruct_stages(untrained, scan, execution=CPU, refinement=off))[-1].reconstruction
    assert shipped_alone.network_choice is None

    chosen = list(reconstruct_stages(untrained, scan, execution=CPU, refinement=off, alternative=("the shipped model", shipped)))
    result = chosen[-1].reconstruction
    assert result.network_choice is not None and set(result.network_choice) == {MODEL_IN_USE, "the shipped model"}
    assert result.network_choice["the shipped model"] < result.network_choice[MODEL_IN_USE]
    assert np.array_equal(result.object, shipped_alone.object) and result.phase_std_rad is not None
    assert "Network: the shipped model's object fits this scan better" in caplog.text

    kept = list(reconstruct_stages(shipped, scan, execution=CPU, refinement=off, alternative=("an untrained model", untrained)))
    assert np.array_equal(kept[-1].reconstruction.object, shipped_alone.object)
    assert "keeping the model in use's" in caplog.text

    forced = RefinementConfig(epochs=0, start=RefinementStart.NETWORK)
    as_asked = list(reconstruct_stages(untrained, scan, execution=CPU, refinement=forced, alternative=("shipped", shipped)))
    assert np.array_equal(as_asked[-1].reconstruction.object, untrained_alone.object)
    assert as_asked[-1].reconstruction.network_choice is None

    # the same weights (the shipped model loaded by hand, here a copy): not run, nothing to weigh
    caplog.clear()
    same = list(reconstruct_stages(shipped, scan, execution=CPU, refinement=off, alternative=("a copy", copy.deepcopy(shipped))))
    assert same[-1].reconstruction.network_choice is None and "a copy's object" not in caplog.text
    assert shipped.has_generator_of(copy.deepcopy(shipped)) and not shipped.has_generator_of(untrained)

    # a failing alternative (here: a model for N = 32 patterns) leaves the model in use's object, with a warning
    small = find_pretrained(64)
    assert small is not None
    small.config = dataclasses.replace(small.config, N=32)
    failed = list(reconstruct_stages(shipped, scan, execution=CPU, refinement=off, alternative=("a model for N=32", small)))
    assert np.array_equal(failed[-1].reconstruction.object, shipped_alone.object)
    assert failed[-1].reconstruction.network_choice is None
    assert "a model for N=32's object could not be weighed against the model in use's (ScanError" in caplog.text

    # with refinement on, the choice goes with the result and refinement starts from the chosen object
    refined = list(
        reconstruct_stages(
            untrained, scan, execution=CPU, refinement=RefinementConfig(epochs=1, half_resolution_epochs=0),
            alternative=("the shipped model", shipped),
        )
    )  # fmt: skip
    assert np.array_equal(refined[0].reconstruction.object, shipped_alone.object)
    final = refined[-1].reconstruction
    assert final.network_choice == result.network_choice and final.refinement is not None
    assert final.refinement.start is RefinementStart.NETWORK
