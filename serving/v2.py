"""KServe V2 requests read one way by every storeflow model: what a request may ask of the answer."""

from __future__ import annotations

from collections.abc import Iterable

from kserve.errors import InvalidInput


def check_outputs(request, offered: Iterable[str]) -> None:
    """A 400 for an ``outputs`` entry naming no output of this answer, or one named twice, raised before the
    model's answer is logged or counted. KServe's ``to_rest`` refuses an unknown name only after postprocess had
    logged every row and observed every score: a refused request left prediction-log rows behind (twice on the
    flat V2 path, which replays a failed request through the stack), and a repeated name made the answer that
    many times larger."""
    wanted = [output.name for output in (getattr(request, "request_outputs", None) or [])]
    if not wanted:
        return
    offered = list(offered)
    unknown = sorted({name for name in wanted if name not in offered}, key=str)
    if unknown:
        raise InvalidInput(f"unknown output(s) {', '.join(map(repr, unknown))}; outputs are {', '.join(offered)}")
    if len(set(wanted)) != len(wanted):
        twice = sorted({name for name in wanted if wanted.count(name) > 1})
        raise InvalidInput(f"output(s) {', '.join(map(repr, twice))} requested more than once")
