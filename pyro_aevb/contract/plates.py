"""The data plate of a pair (rule 2 of :mod:`pyro_aevb.contract`): one outermost plate over
the batch around every per-data-point site, the same in the guide, and what per-data-point
evaluation needs of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..plate import DATA_PLATE, find_data_plate, plate_scale
from .errors import ContractError
from .sites import frames


def _grouped(problems: dict[str, list[str]]) -> list[str]:
    """One line per kind of problem, naming every site it concerns."""
    return [template.format(names=names) for template, names in problems.items()]


def data_plate_of(traces) -> tuple[str, list[str]]:
    """The name of the data plate (the observed sites' outermost plate; ``"data"`` if
    none is found) and the problems that finding it met."""
    observed = traces.observed
    plate = find_data_plate(traces.model_trace) if observed else None
    problems = []
    if observed and plate is None:
        unplated = [n for n, s in observed.items() if not frames(s)]
        if unplated:
            problems.append(
                f"observed site(s) {unplated} are not inside a plate over the data points "
                f"(e.g. pyro.plate('{DATA_PLATE}', ...)); wrap per-data-point sites in "
                "pyro_aevb.data_plate(x) or a pyro.plate of the batch"
            )
        else:
            outer = sorted({frames(s)[0].name for s in observed.values()})
            problems.append(
                f"the observed sites lie in different outermost plates {outer}; put every "
                "per-data-point site inside one plate over the data points"
            )
    return plate or DATA_PLATE, problems


@dataclass
class PlateLayout:
    """Where the data plate sits in the model: the dims it takes, the latent sites
    outside it (global latents) and the problems of its placement."""

    data_dims: set[int] = field(default_factory=set)
    global_latents: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plate_layout(traces, plate: str, batch_size: int) -> PlateLayout:
    """The data plate must be outermost, of the batch's size, at one dim, and the guide's
    per-data-point latents inside the same plate with the same scale."""
    layout = PlateLayout()
    misplaced: dict[str, list[str]] = {}
    for name, site in list(traces.observed.items()) + list(traces.model_latents.items()):
        site_frames = frames(site)
        data_frames = [f for f in site_frames if f.name == plate]
        if not data_frames:
            if name not in traces.observed:
                layout.global_latents.append(name)
            continue
        frame = data_frames[0]
        if site_frames[0].name != plate:
            misplaced.setdefault(
                f"site(s) {{names}}: the '{plate}' plate must be the outermost plate, but "
                f"'{site_frames[0].name}' encloses it",
                [],
            ).append(name)
        # a plate without a size (pyro.plate("data")) has size -1 and takes the batch's
        if int(frame.size) > 0 and frame.size != batch_size:
            misplaced.setdefault(
                f"site(s) {{names}}: the '{plate}' plate has {frame.size} elements but the "
                f"batch has {batch_size} data points",
                [],
            ).append(name)
        layout.data_dims.add(frame.dim)
        layout.problems += _event_problems(name, site, frame, plate)
    layout.problems += _grouped(misplaced)
    if len(layout.data_dims) > 1:
        layout.problems.append(
            f"the '{plate}' plate appears at several dims {sorted(layout.data_dims)}"
        )
    layout.problems += _guide_plate_problems(traces.model_latents, traces.guide_latents, plate)
    return layout


def _event_problems(name: str, site, frame, plate: str) -> list[str]:
    """A site inside the data plate whose event takes in the data points' dim: its value
    has too few dims left of the event for the plate, so each data point's log-density
    would be the sum over the whole batch (Pyro broadcasts it without a word)."""
    value, event_dim = site["value"], site["fn"].event_dim
    if value.dim() - event_dim >= -frame.dim:
        return []
    return [
        f"site '{name}' has value shape {tuple(value.shape)} and event_dim {event_dim}, so "
        f"its event takes in dim {frame.dim} of the data plate '{plate}' (the data points) "
        "and each data point would get the whole batch's log-density; declare only one "
        f"data point's dims as its event: .to_event({max(0, value.dim() + frame.dim)}) at most"
    ]


def _guide_plate_problems(model_latents, guide_latents, plate: str) -> list[str]:
    """The guide's data plate must be the model's: the same name, and the same scale for
    each per-data-point latent (else the ELBO's log q and log p terms would weigh a data
    point differently)."""
    outside: list[str] = []
    scaled: list[str] = []
    for name, m_site in model_latents.items():
        g_site = guide_latents.get(name)
        if g_site is None or not any(f.name == plate for f in frames(m_site)):
            continue
        g_frame = next((f for f in frames(g_site) if f.name == plate), None)
        if g_frame is None:
            names = [f.name for f in frames(g_site)]
            outside.append(f"'{name}' (guide plates: {names or 'none'})")
            continue
        m_frame = next(f for f in frames(m_site) if f.name == plate)
        m_scale = _as_float(m_site["scale"]) / plate_scale(m_frame)
        g_scale = _as_float(g_site["scale"]) / plate_scale(g_frame)
        if (
            m_scale is not None
            and g_scale is not None
            and abs(m_scale - g_scale) > 1e-6 * max(abs(m_scale), abs(g_scale))
        ):
            scaled.append(f"'{name}' (model {m_scale:.4g}, guide {g_scale:.4g})")
    out = []
    if outside:
        out.append(
            f"the guide samples the per-data-point latent site(s) {', '.join(outside)} "
            f"outside the model's data plate '{plate}'; sample them inside "
            f"pyro.plate('{plate}', ...) in the guide too"
        )
    if scaled:
        out.append(
            f"the guide scales latent site(s) {', '.join(scaled)} differently from the model "
            "(beyond the data plate's own subsample scale); use the same plate and no extra "
            "poutine.scale in the guide"
        )
    return out


def _as_float(scale) -> float | None:
    if isinstance(scale, torch.Tensor):
        return float(scale) if scale.numel() == 1 else None
    return float(scale)


def require_per_datapoint(summary) -> None:
    """Raise :class:`ContractError` (a ``ValueError``) if the pair has latent sites outside
    the data plate, which per-data-point evaluation (test ELBO, log-likelihood) cannot
    handle. :func:`fit` with test data calls it after the check, before the first step."""
    if summary.global_latent_sites:
        raise ContractError(
            f"per-data-point evaluation needs every latent site inside the data plate, but "
            f"{summary.global_latent_sites} are global; evaluate such models with a "
            "joint (whole-batch) estimator instead, or fit without test data"
        )


def check_test_evaluation(summary) -> None:
    """Refuse, before the first step, a test set that ``fit`` could not evaluate: its
    per-epoch test ELBO is per data point, which a latent site outside the data plate (a
    global latent) makes impossible. ``fit`` calls it when it is given test data."""
    if summary.global_latent_sites:
        raise ContractError(
            f"fit evaluates the test set after every epoch (the per-data-point test ELBO), "
            f"but latent site(s) {summary.global_latent_sites} are global (outside the data "
            f"plate '{summary.data_plate}'), so no data point has an ELBO of its own; fit "
            "without test data (test=None), or move the site(s) into the data plate "
            "(pyro_aevb.data_plate(x)) or make them parameters (pyro.param)"
        )
