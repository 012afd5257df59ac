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


_INTEGER = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT = frozenset({"FP16", "FP32", "FP64"})
_NUMBER = (int, float)


def check_json_data(tensor) -> None:
    """A 400 for a JSON input holding a value not of its datatype. Read through ``as_numpy``, numpy casts: an
    INT64 ``1.7`` or ``true`` became customer 1 (scored with a 200), a count of ``2.9`` became 2, an FP64 ``"1"``
    became 1.0, where V1 refuses them all. A binary input's bytes are its datatype already."""
    data = tensor.data
    if not isinstance(data, list):
        return
    datatype = tensor.datatype
    if datatype in _INTEGER:
        fits = lambda v: type(v) is int  # noqa: E731 - bool is an int subclass; type() keeps it out
    elif datatype in _FLOAT:
        fits = lambda v: type(v) in _NUMBER  # noqa: E731
    elif datatype == "BOOL":
        fits = lambda v: type(v) is bool  # noqa: E731
    elif datatype == "BYTES":
        fits = lambda v: isinstance(v, (str, bytes))  # noqa: E731
    else:
        return
    stack = [data]
    while stack:
        for value in stack.pop():
            if isinstance(value, list):
                stack.append(value)
            elif not fits(value):
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
                raise InvalidInput(f"input '{tensor.name}' is {datatype}, but holds {shown}")
