"""ptychodus ``ReconstructInput`` ⇄ engine ``Scan``, and engine results → ptychodus ``Product``.

Frames. ptychodus maps probe positions (metres) to object pixels with
``ObjectGeometry.map_probe_positions_to_object_{x,y}_px`` under its centred-pixel convention: the
probe array's geometric centre, pixel (N-1)/2, sits at the mapped position. The engine puts the
probe's pixel N//2 at the position. The same physical placement therefore needs
``engine_px = ptychodus_px + N//2 - (N-1)/2`` (+0.5 px for the even N the engine supports;
``engine.data.ptychodus_position_offset_px``); without it every reconstruction would sit half a
pixel off the truth.

The output product keeps the input's metadata, positions, probes and the input object's geometry
(shape, pixel size, centre), so ptychodus overlays it on the truth and on other reconstructions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ptychodus.api.io import StandardFileLayout
from ptychodus.api.object import Object
from ptychodus.api.probe import ProbeSequence
from ptychodus.api.product import LossValue, Product
from ptychodus.api.reconstruct import ReconstructInput

logger = logging.getLogger(__name__)

PIXEL_SIZE_RTOL = 1e-3


class ConversionError(ValueError):
    """The ptychodus data cannot be handed to the engine; the message says what to change."""


def positions_to_engine_px(parameters: ReconstructInput) -> np.ndarray:
    """(M, 2) probe centres (row y, column x) in engine object pixels."""
    from ptychodus_pinn.engine.data import ptychodus_position_offset_px

    geometry = parameters.product.object_.get_geometry()
    positions = parameters.product.probe_positions
    offset_px = ptychodus_position_offset_px(int(parameters.diffraction_patterns.shape[-1]))
    y_px = geometry.map_probe_positions_to_object_y_px(positions) + offset_px
    x_px = geometry.map_probe_positions_to_object_x_px(positions) + offset_px
    return np.stack([y_px, x_px], axis=1).astype(np.float64)


def _probe_modes(parameters: ReconstructInput) -> np.ndarray:
    probes = parameters.product.probes
    if probes.get_opr_weights_or_none() is not None and probes.num_coherent_modes > 1:
        raise ConversionError(
            f"the probe has {probes.num_coherent_modes} OPR (position-dependent) modes, which PtychoPINN "
            "does not model; reduce it to one coherent mode in the Probe panel (or reconstruct with pty-chi)"
        )
    return np.asarray(probes.get_probe_no_opr().get_array(), dtype=np.complex64)  # (P, N, N)


def _check_pixel_sizes(parameters: ReconstructInput) -> None:
    object_pixel = parameters.product.object_.get_pixel_geometry()
    probe_pixel = parameters.product.probes.get_pixel_geometry()
    for axis, a_m, b_m in (
        ("width", object_pixel.width_m, probe_pixel.width_m),
        ("height", object_pixel.height_m, probe_pixel.height_m),
    ):
        if not (math.isfinite(a_m) and math.isfinite(b_m)) or abs(a_m - b_m) > PIXEL_SIZE_RTOL * abs(b_m):
            raise ConversionError(
                f"object pixel {axis} {a_m:.4g} m differs from the probe pixel {axis} {b_m:.4g} m; "
                "PtychoPINN needs them equal: rebuild the object guess at the probe's pixel size"
            )


def reconstruct_input_to_scan(parameters: ReconstructInput) -> Any:
    """Build an engine ``Scan`` from what ptychodus hands a reconstructor.

    Raises :class:`ConversionError` (a ValueError) with the fix when the data do not fit.
    """
    from ptychodus_pinn.engine.data import Scan, ScanError

    patterns = np.asarray(parameters.diffraction_patterns)
    if patterns.ndim != 3 or patterns.shape[-1] != patterns.shape[-2]:
        raise ConversionError(f"diffraction patterns have shape {patterns.shape}; PtychoPINN needs a (M, N, N) stack")
    count = patterns.shape[0]
    if len(parameters.product.probe_positions) != count:
        raise ConversionError(f"{count} diffraction patterns but {len(parameters.product.probe_positions)} probe positions")
    if parameters.product.metadata.far_field is False:
        raise ConversionError("the product declares near-field propagation; PtychoPINN models far-field data only")
    _check_pixel_sizes(parameters)
    probe = _probe_modes(parameters)
    obj = parameters.product.object_
    if obj.num_layers > 1:
        logger.warning("the object has %d layers; PtychoPINN reconstructs a single (projected) layer", obj.num_layers)
    bad_pixels = np.asarray(parameters.bad_pixels, dtype=bool)
    if bad_pixels.shape != patterns.shape[-2:] or not bad_pixels.any():
        bad_pixels = None  # type: ignore[assignment]
    metadata = {
        "source": "ptychodus",
        "name": parameters.product.metadata.name,
        "photon_energy_eV": float(parameters.product.metadata.photon_energy_eV),
        "detector_distance_m": float(parameters.product.metadata.detector_distance_m),
        "object_pixel_width_m": float(obj.get_pixel_geometry().width_m),
    }
    try:
        return Scan(
            patterns=patterns,
            positions_yx_px=positions_to_engine_px(parameters),
            probe=probe,
            object_shape=(obj.height_px, obj.width_px),
            bad_pixels=bad_pixels,
            metadata=metadata,
        )
    except ScanError as error:
        message = str(error)
        if "off the" in message:
            message += " (in ptychodus: enlarge the object, e.g. regenerate it from the current positions)"
        raise ConversionError(message) from error


def is_workflow_directory(path: Path) -> bool:
    """A ptychodus standard workflow directory (what ``ptychodus -b`` reads): diffraction.h5 and product.h5."""
    return all((Path(path) / name).is_file() for name in (StandardFileLayout.DIFFRACTION, StandardFileLayout.PRODUCT))


def workflow_directory_scan(directory: Path, *, with_object: bool = False) -> Any:
    """The scan of a workflow directory, paired as ptychodus pairs it; ``with_object``: the product's object
    as the scan's object (the target of supervised training)."""
    from ptychodus.api.io import load_diffraction_data, load_product
    from ptychodus.api.reconstruct import prepare_reconstruct_input

    directory = Path(directory)
    diffraction = load_diffraction_data(directory / StandardFileLayout.DIFFRACTION)
    parameters = prepare_reconstruct_input(diffraction, load_product(directory / StandardFileLayout.PRODUCT))
    scan = reconstruct_input_to_scan(parameters)
    if with_object:
        scan = dataclasses.replace(scan, object_guess=parameters.product.object_.get_layer(0))
    logger.info("Read %d patterns (N=%d) from the workflow directory %s", scan.count, scan.size_px, directory)
    return scan


SMALLEST_SHOWN_LOSS = 1e-9


def shown_loss(value: float, floor: float = 0.0) -> float:
    """A loss as ptychodus plots it: less its floor (``engine.physics.loss_floor``), positive for its log axis."""
    return max(float(value) - floor, SMALLEST_SHOWN_LOSS) if math.isfinite(value) else float(value)


def losses_from_history(history: Sequence[Any], floor: float = 0.0) -> list[LossValue]:
    """Training losses per epoch in ptychodus's form (shown in its loss plot), less ``floor``."""
    return [LossValue(epoch=int(report.epoch), value=shown_loss(report.train_loss, floor)) for report in history]


def output_product(
    parameters: ReconstructInput,
    object_array: np.ndarray | None,
    *,
    illuminated: np.ndarray | None = None,
    losses: Sequence[LossValue] = (),
    fill_with_input: bool = True,
    probe: np.ndarray | None = None,
) -> Product:
    """A Product with the reconstruction on the input object's grid (geometry kept), or the input object.

    ``probe`` (incoherent modes, (P, N, N) or (N, N)) replaces the input probe, e.g. a refined one;
    the input probe's pixel geometry is kept.
    """
    product = parameters.product
    probes = product.probes
    if probe is not None:
        modes = np.asarray(probe)
        modes = modes[np.newaxis] if modes.ndim == 2 else modes
        source_probe = probes.get_probe_no_opr().get_array()
        if modes.shape[-2:] != source_probe.shape[-2:]:
            raise ConversionError(f"refined probe has shape {modes.shape}, the input probe {source_probe.shape}")
        dtype = source_probe.dtype if np.issubdtype(source_probe.dtype, np.complexfloating) else np.complex64
        probes = ProbeSequence(modes.astype(dtype), None, probes.get_pixel_geometry().copy())
    source = product.object_
    if object_array is None:
        obj = source
    else:
        array = np.asarray(object_array)
        if array.shape != (source.height_px, source.width_px):
            raise ConversionError(
                f"reconstruction has shape {array.shape}, the input object {source.height_px}x{source.width_px}"
            )
        array = array.astype(source.dtype if np.issubdtype(source.dtype, np.complexfloating) else np.complex64)
        if illuminated is not None:
            fill = source.get_layers_flattened() if fill_with_input else np.zeros_like(array)
            array = np.where(np.asarray(illuminated, dtype=bool), array, fill).astype(array.dtype)
        obj = Object(
            array=array[np.newaxis, ...],
            pixel_geometry=source.get_pixel_geometry().copy(),
            center=source.get_center().copy(),
            layer_spacing_m=[],
        )
    return Product(
        metadata=product.metadata,
        probe_positions=product.probe_positions,
        probes=probes,
        object_=obj,
        losses=list(losses),
    )
