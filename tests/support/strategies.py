"""hypothesis strategies for the parameters an operation declares."""

from __future__ import annotations

from hypothesis import strategies as st

from pixmill.imaging.ops import Operation, Param


def param_strategy(param: Param, *, cap: int | None = None) -> st.SearchStrategy:
    """Values allowed for a declared parameter; cap bounds large integer ranges to keep images small."""
    if param.kind == "choice":
        values = st.sampled_from(param.choices)
    elif param.kind == "bool":
        values = st.booleans()
    elif param.kind == "int":
        high = int(param.max) if cap is None else int(min(param.max, max(param.min, cap)))
        values = st.integers(int(param.min), high)
        if param.odd:
            values = values.map(lambda v: v if v % 2 else (v + 1 if v + 1 <= high else v - 1))
    else:
        values = st.floats(param.min, param.max, allow_nan=False, allow_infinity=False)
    return st.none() | values if param.nullable else values


def params_strategy(op: Operation, *, cap: int | None = None) -> st.SearchStrategy:
    """Dicts of random values, within the declared ranges, for some or all of an operation's parameters."""
    return st.fixed_dictionaries({}, optional={p.name: param_strategy(p, cap=cap) for p in op.params})
