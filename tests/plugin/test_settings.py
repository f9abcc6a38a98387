"""Settings ⇄ RunConfig: one mapping, every field covered, persisted through ptychodus's .ini."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ptychodus.api.settings import SettingsRegistry

from ptychodus_pinn.engine.config import (
    Accelerator,
    AmplitudeActivation,
    CheckpointMode,
    ExecutionConfig,
    LoggerKind,
    LossKind,
    ModelConfig,
    NoiseModel,
    Precision,
    RefinementConfig,
    RefinementStart,
    RunConfig,
    Scheduler,
    TrainingConfig,
    TrainingMode,
)
from ptychodus_pinn.plugin.settings import (
    FIELDS,
    FIELDS_BY_KEY,
    NOT_SETTINGS,
    PluginSettings,
    Section,
    accelerator_from_choice,
    run_config_to_settings,
    settings_to_run_config,
)


def _settings() -> tuple[SettingsRegistry, PluginSettings]:
    registry = SettingsRegistry()
    return registry, PluginSettings(registry)


def test_every_config_field_is_a_setting_or_explained() -> None:
    mapped = {f"{field.config}.{field.config_attribute}" for field in FIELDS if field.config}
    for section in ("model", "training", "execution", "refinement"):
        for config_field in dataclasses.fields(getattr(RunConfig(), section)):
            key = f"{section}.{config_field.name}"
            assert key in mapped or key in NOT_SETTINGS, f"{key} has no setting"


def test_every_field_has_a_tool_tip_and_distinct_group() -> None:
    for field in FIELDS:
        assert len(field.tool_tip) > 10, field.key
    assert all(section.group_name.startswith("PINNTorchPlugin") for section in Section)


def test_defaults_map_to_engine_defaults_except_gui_choices() -> None:
    _, values = _settings()
    config = settings_to_run_config(values, N=64)
    # the network width is the shipped pretrained model's for the device, 1 on this CPU-only machine (see
    # test_defaults_agree_with_the_shipped_model and test_network_width_0_is_the_devices_shipped_width)
    assert values["n_filters_scale"].get_value() == 0
    assert config.model == dataclasses.replace(ModelConfig(N=64), n_filters_scale=1)
    assert config.training == TrainingConfig()
    assert config.refinement == RefinementConfig()  # every reconstruction refines by default
    assert values["train_first"].get_value() is False  # one click: network + refinement, no training
    # the GUI writes no log files and prints no progress bar unless asked to
    assert config.execution == dataclasses.replace(ExecutionConfig(), logger=LoggerKind.NONE, enable_progress_bar=False)


run_configs = st.builds(
    lambda gridsize, extra_k, width, act, loss, flags, epochs, batch, vfrac, groups, acc, devices, prec, det, lr, sched, warm, clip, accum, topk, monitor, mode, patience, logger, ibs, trim, pad, seed, workers, strategy, nodes: (  # noqa: E501
        RunConfig(
            model=ModelConfig(
                N=64,
                gridsize=gridsize,
                neighbor_count=gridsize**2 - 1 + extra_k,
                n_filters_scale=width,
                amp_activation=act,
                loss=loss,
                object_big=flags[0],
                probe_big=flags[1],
                probe_trainable=flags[2],
                intensity_scale_trainable=flags[3],
            ),
            training=TrainingConfig(
                epochs=epochs,
                batch_size=batch,
                validation_fraction=vfrac,
                n_groups=groups,
                learning_rate=lr,
                scheduler=sched,
                warmup_epochs=warm,
                gradient_clip_val=clip,
                accumulate_grad_batches=accum,
                checkpoint_save_top_k=topk,
                checkpoint_monitor=monitor,
                checkpoint_mode=mode,
                early_stop_patience=patience,
            ),
            execution=ExecutionConfig(
                accelerator=acc,
                devices=devices,
                strategy=strategy,
                num_nodes=nodes,
                precision=prec,
                deterministic=det,
                num_workers=workers,
                pin_memory=flags[4],
                persistent_workers=flags[5] and workers > 0,
                prefetch_factor=2 if workers > 0 and flags[6] else None,
                logger=logger,
                inference_batch_size=ibs,
                middle_trim=trim,
                pad_eval=pad,
                seed=seed,
                enable_progress_bar=flags[7],
            ),
        )
    ),
    st.integers(1, 4),
    st.integers(0, 5),
    st.integers(1, 16),
    st.sampled_from(list(AmplitudeActivation)),
    st.sampled_from(list(LossKind)),
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.integers(1, 500),
    st.integers(1, 512),
    st.sampled_from([0.0, 0.1, 0.25, 0.4]),
    st.one_of(st.none(), st.integers(1, 10_000)),
    st.sampled_from(list(Accelerator)),
    st.one_of(st.just("auto"), st.integers(1, 8)),
    st.sampled_from(list(Precision)),
    st.booleans(),
    st.sampled_from([1e-4, 2e-3, 0.5, 1.0]),
    st.sampled_from(list(Scheduler)),
    st.integers(0, 10),
    st.one_of(st.none(), st.sampled_from([0.5, 1.0, 10.0])),
    st.integers(1, 8),
    st.integers(-1, 5),
    st.sampled_from([None, "val_loss", "train_loss"]),
    st.sampled_from(list(CheckpointMode)),
    st.one_of(st.none(), st.integers(1, 50)),
    st.sampled_from(list(LoggerKind)),
    st.one_of(st.none(), st.integers(1, 1024)),
    st.integers(0, 16),
    st.booleans(),
    st.integers(0, 2**31),
    st.integers(0, 8),
    st.sampled_from(["auto", "ddp", "ddp_spawn"]),
    st.integers(1, 4),
)


refinement_configs = st.builds(
    RefinementConfig,
    epochs=st.integers(0, 500),
    batch_size=st.integers(1, 4096),
    refine_probe=st.booleans(),
    start=st.sampled_from(list(RefinementStart)),
    noise_model=st.sampled_from(list(NoiseModel)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=run_configs, mode=st.sampled_from(list(TrainingMode)), refinement=refinement_configs)
def test_round_trip_every_field(config: RunConfig, mode: TrainingMode, refinement: RefinementConfig) -> None:
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, mode=mode), refinement=refinement)
    _, values = _settings()
    run_config_to_settings(config, values)
    assert settings_to_run_config(values, N=64, mode=mode) == config


@pytest.mark.parametrize("size_px", [64, 128])
def test_defaults_agree_with_the_shipped_model(size_px: int) -> None:
    """Default settings warm-start from the shipped models (no "Warm start skipped ... another architecture")."""
    from ptychodus_pinn.engine.model import warm_start_mismatches
    from ptychodus_pinn.engine.persistence import load_pretrained
    from ptychodus_pinn.plugin.settings import architecture_changes

    shipped = load_pretrained(size_px)
    _, values = _settings()
    config = settings_to_run_config(values, N=size_px)
    assert not warm_start_mismatches(shipped.config, config.model), architecture_changes(shipped.config, config.model)
    wider = settings_to_run_config({**values.values(), "n_filters_scale": 2}, N=size_px)
    assert architecture_changes(shipped.config, wider.model) == ["Network Width (n_filters_scale) to 1"]


def test_network_width_0_is_the_devices_shipped_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """Network Width 0: 4 where the run is on a GPU and a width-4 model ships (N = 64), else 1; a number is kept."""
    from ptychodus_pinn.engine import device

    _, values = _settings()
    defaults = values.values()
    monkeypatch.setattr(device, "visible_devices", lambda: device.VisibleDevices(cuda_available=True, cuda_count=1))
    assert settings_to_run_config(defaults, N=64).model.n_filters_scale == 4  # accelerator auto: the GPU
    assert settings_to_run_config({**defaults, "accelerator": "cuda:0"}, N=64).model.n_filters_scale == 4
    assert settings_to_run_config(defaults, N=128).model.n_filters_scale == 1  # no width-4 model for N = 128
    assert settings_to_run_config({**defaults, "accelerator": "cpu"}, N=64).model.n_filters_scale == 1
    assert settings_to_run_config({**defaults, "n_filters_scale": 2}, N=64).model.n_filters_scale == 2
    # the panel's validity check on the GUI thread asks torch nothing: 0 stands as 1 there
    assert settings_to_run_config(defaults, N=64, device_width=False).model.n_filters_scale == 1
    monkeypatch.setattr(device, "visible_devices", lambda: device.VisibleDevices())
    assert settings_to_run_config(defaults, N=64).model.n_filters_scale == 1  # auto on a CPU-only machine
    # a GPU asked for and absent: width 1 here, and the run itself says the GPU is missing
    assert settings_to_run_config({**defaults, "accelerator": "gpu"}, N=64).model.n_filters_scale == 1
    assert "0 = the shipped pretrained model's width" in FIELDS_BY_KEY["n_filters_scale"].tool_tip


def test_refinement_group() -> None:
    _, values = _settings()
    refinement = [field for field in FIELDS if field.section is Section.REFINEMENT]
    assert [field.key for field in refinement] == [
        "refine_epochs",
        "refine_half_resolution_epochs",
        "refine_probe",
        "refine_batch_size",
        "refine_start",
        "refine_noise_model",
    ]
    assert {field.config for field in refinement} == {"refinement"}
    assert Section.REFINEMENT.group_name == "PINNTorchPluginRefinement"
    assert "0 = network only" in FIELDS_BY_KEY["refine_epochs"].tool_tip
    assert "real data" in FIELDS_BY_KEY["refine_probe"].tool_tip
    assert FIELDS_BY_KEY["refine_start"].choices == ("auto", "network", "flat")
    assert FIELDS_BY_KEY["train_first"].section is Section.PLUGIN and FIELDS_BY_KEY["train_first"].config is None
    values["refine_epochs"].set_value(0)
    values["refine_probe"].set_value(True)
    values["refine_batch_size"].set_value(8)
    values["refine_start"].set_value("flat")
    values["refine_noise_model"].set_value("gaussian")
    assert settings_to_run_config(values, N=32).refinement == RefinementConfig(
        epochs=0, refine_probe=True, batch_size=8, start=RefinementStart.FLAT, noise_model=NoiseModel.GAUSSIAN
    )
    values["refine_start"].set_value("sideways")
    with pytest.raises(ValueError, match="start"):
        settings_to_run_config(values, N=32)


def test_round_trip_through_ptychodus_ini(tmp_path: Path) -> None:
    registry, values = _settings()
    values["accelerator"].set_value("cpu")
    values["batch_size"].set_value(7)
    values["learning_rate"].set_value(0.0125)
    values["early_stop_patience"].set_value(3)
    values["deterministic"].set_value(True)
    values["refine_epochs"].set_value(12)
    values["refine_probe"].set_value(True)
    values["refine_batch_size"].set_value(64)
    values["refine_start"].set_value("network")
    values["refine_noise_model"].set_value("gaussian")
    values["train_first"].set_value(True)
    expected = settings_to_run_config(values, N=32)
    path = tmp_path / "settings.ini"
    registry.save_settings(path)
    text = path.read_text()
    assert "[PINNTorchPluginExecution]" in text and "[PINNTorchPluginRefinement]" in text
    registry2, values2 = _settings()
    registry2.open_settings(path)
    assert settings_to_run_config(values2, N=32) == expected
    assert values2["train_first"].get_value() is True
    assert expected.training.early_stop_patience == 3 and expected.training.batch_size == 7
    assert expected.refinement == RefinementConfig(
        epochs=12, refine_probe=True, batch_size=64, start=RefinementStart.NETWORK, noise_model=NoiseModel.GAUSSIAN
    )


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("accelerator", "tpu", "accelerator"),
        ("devices", "many", "Devices"),
        ("scheduler", "linear", "scheduler"),
        ("strategy", "", "strategy"),
    ],
)
def test_invalid_values_name_the_field(key: str, value: object, named: str) -> None:
    _, values = _settings()
    values[key].set_value(value)
    with pytest.raises(ValueError, match=named):
        settings_to_run_config(values, N=64)


def test_invalid_combination_is_refused() -> None:
    _, values = _settings()
    values["persistent_workers"].set_value(True)  # needs workers > 0
    with pytest.raises(ValueError, match="persistent_workers"):
        settings_to_run_config(values, N=64)
    values["persistent_workers"].set_value(False)
    values["gridsize"].set_value(3)
    values["neighbor_count"].set_value(2)  # needs >= 8
    with pytest.raises(ValueError, match="neighbor_count"):
        settings_to_run_config(values, N=64)


def test_device_choice_with_index() -> None:
    assert accelerator_from_choice("cuda:1 (NVIDIA H200)") == ("cuda", 1)
    assert accelerator_from_choice("mps (Apple GPU)") == ("mps", None)
    assert accelerator_from_choice("auto") == ("auto", None)
