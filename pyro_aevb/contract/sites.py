"""The sites of a pair (rules 3 and 4 of :mod:`pyro_aevb.contract`): which are latent,
and whether the guide samples every latent site of the model with the same name, shape
and ``event_dim``."""

from __future__ import annotations

import math

from pyro.poutine.util import site_is_subsample


def frames(site) -> list:
    """The vectorized plates around ``site``, outermost first as Pyro records them."""
    return [f for f in site["cond_indep_stack"] if f.vectorized]


def is_latent_site(site) -> bool:
    """A sample site that is neither observed, a plate subsample nor auxiliary."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def param_names(trace) -> list[str]:
    """The Pyro parameters a trace used, in order of first use."""
    return [n for n, s in trace.nodes.items() if s["type"] == "param"]


def enumerated_model_sites(model_latents: dict, guide_latents: dict) -> list[str]:
    """Model latents marked for enumeration that the guide leaves out."""
    return [
        n
        for n, s in model_latents.items()
        if n not in guide_latents and s["infer"].get("enumerate")
    ]


def site_problems(traces, enumerated: list[str], allow_model_enumeration: bool) -> list[str]:
    """Missing, extra and misshaped latent sites of the guide, and a model that observes
    nothing, one line per kind of problem."""
    model_latents, guide_latents = traces.model_latents, traces.guide_latents
    problems = []
    missing = [n for n in model_latents if n not in guide_latents and n not in enumerated]
    if enumerated and not allow_model_enumeration:
        missing += enumerated
    if missing:
        problems.append(
            f"the guide does not sample the model's latent site(s) {missing}; "
            "add pyro.sample(<same name>, ...) to the guide"
        )
    extra = [n for n in guide_latents if n not in model_latents]
    if extra:
        problems.append(
            f"the guide samples site(s) {extra} that the model does not have "
            "(or observes); rename them to match the model's latent sites"
        )
    for name in [n for n in model_latents if n in guide_latents]:
        m_fn, g_site = model_latents[name]["fn"], guide_latents[name]
        value_shape = tuple(g_site["value"].shape)
        if m_fn.event_dim != g_site["fn"].event_dim:
            problems.append(
                f"site '{name}' has event_dim {g_site['fn'].event_dim} in the guide but "
                f"{m_fn.event_dim} in the model; use .to_event(...) to make them agree"
            )
        elif tuple(m_fn.shape()) != value_shape:
            problems.append(
                f"site '{name}' has shape {value_shape} in the guide but the model's "
                f"distribution has shape {tuple(m_fn.shape())}"
            )
    if not traces.observed:
        problems.append("the model observes no site; pass the data with obs=")
    return problems


def enumerated_guide_sites(guide_latents: dict) -> dict[str, int]:
    """Guide sites marked for parallel enumeration -> the number of values each takes."""
    return {
        n: s["fn"].enumerate_support(expand=False).shape[0]
        for n, s in guide_latents.items()
        if s["infer"].get("enumerate") == "parallel"
    }


def max_plate_nesting(traces) -> int:
    """How many plates deep the pair's sample sites go (Pyro's ``max_plate_nesting``)."""
    nodes = list(traces.model_trace.nodes.values()) + list(traces.guide_trace.nodes.values())
    dims = [f.dim for s in nodes if s["type"] == "sample" for f in frames(s)]
    return -min(dims) if dims else 0


def enumeration_size(sizes: dict[str, int]) -> int:
    """The number of joint values of the enumerated guide sites."""
    return math.prod(sizes.values())
