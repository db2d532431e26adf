"""One model for every length: a length range in `--input-shape` (`input_ids:1x512..32768`).

The plan is made at the top of the range (where memory is largest); then each loop's rows per
iteration become a function of the run-time length L, computed in the graph with standard ops
(`plan.Rows`: rows = max(1, K // L)) where the loop's per-row bytes grow with L, or a constant
where they do not. K (or the constant) comes from the estimate at several pinned lengths: at
each one the largest chunk that keeps the plan within the budget is found (the planner's own
step functions, on the graph pinned at that length), and K is the smallest chunk x length among
the lengths where the loop has to chunk at all; where the whole region fits, the loop runs once.
The rule is then checked by estimating the plan at lengths between the samples, and refitted
there when it does not hold.

Data flows one way: `split` (text -> ShapeRange) -> `check` (against the model's declared dims)
-> `fit` (plan at the top -> RangePlan with rows rules and the estimate at several lengths).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable

import onnx

from .errors import BadInputError
from .graph import Graph
from .peak import Estimate, estimate_graph, fusions
from .plan import Loop, Plan, Rows
from .schedule import body_peak_fn, estimate_plan, loop_step
from .select import MAX_ITERATIONS, largest_fitting

SAMPLES = 5  # pinned lengths the rows rules are fitted on (geometric, bottom and top included)
GROWS = 1.25  # per-row bytes at the top / at the bottom above this: the rows follow K // L
REFITS = 3  # rounds of checking the rules between samples and refitting where they do not hold

_RANGE = re.compile(r"^\s*(\S*?)\s*\.\.\s*(\S*?)\s*$")


@dataclass(frozen=True)
class DimRange:
    """One dim given as LO..HI: input name, dim index, bounds (inclusive)."""

    input: str
    dim: int
    lo: int
    hi: int

    def text(self) -> str:
        return f"{self.input} dim {self.dim} {self.lo}..{self.hi}"


@dataclass(frozen=True)
class ShapeRange:
    """Input shapes where some dims range over LO..HI together (one length L varies)."""

    fixed: dict  # input -> dims (ints; ranged dims hold HI)
    ranges: tuple[DimRange, ...]

    @property
    def lo(self) -> int:
        return self.ranges[0].lo

    @property
    def hi(self) -> int:
        return self.ranges[0].hi

    @property
    def middle(self) -> int:
        """The geometric middle (512..8192 -> 2048): memory grows as a power of L."""
        return int(round(math.sqrt(self.lo * self.hi)))

    def at(self, length: int) -> dict[str, list[int]]:
        """Every input's shape with the ranged dims at `length`."""
        out = {k: list(v) for k, v in self.fixed.items()}
        for r in self.ranges:
            out[r.input][r.dim] = length
        return out

    @property
    def top(self) -> dict[str, list[int]]:
        return self.at(self.hi)

    def lengths(self, n: int = SAMPLES) -> list[int]:
        """n lengths spaced geometrically from LO to HI (fewer when the range is narrow)."""
        if self.lo == self.hi or n <= 1:
            return [self.hi]
        vals = {int(round(self.lo * (self.hi / self.lo) ** (k / (n - 1)))) for k in range(n)}
        return sorted(vals | {self.lo, self.hi})

    def to_dict(self) -> dict:
        return {"ranges": [{"input": r.input, "dim": r.dim, "lo": r.lo, "hi": r.hi} for r in self.ranges],
                "bottom": self.lo, "middle": self.middle, "top": self.hi}


def has_range(specs) -> bool:
    """Whether any dim of the given shapes is written LO..HI (or given as a (lo, hi) pair)."""
    if specs is None:
        return False
    if isinstance(specs, dict):
        return any(isinstance(d, tuple) or (isinstance(d, str) and ".." in d)
                   for v in specs.values() for d in (v if isinstance(v, (list, tuple)) else [v]))
    if isinstance(specs, str):
        specs = [specs]
    return any(isinstance(s, str) and ".." in s for s in specs)


def split(specs) -> ShapeRange | None:
    """Parse shapes with ranges; None when no dim is a range (the pinned path stays as it is).

    Strings as `parse_input_shapes` takes them, a dim written LO..HI; a dict's dims may be
    (lo, hi) pairs or 'LO..HI' strings. Raises BadInputError naming the input and dim."""
    if not has_range(specs):
        return None
    from .loader import _split_specs, parse_input_shapes

    items: list[tuple[str, list]] = []
    if isinstance(specs, dict):
        for name, dims in specs.items():
            items.append((str(name), list(dims) if isinstance(dims, (list, tuple)) else _dim_words(str(name), str(dims))))
    else:
        for spec in [specs] if isinstance(specs, str) else list(specs):
            if not isinstance(spec, str):
                raise BadInputError(f"--input-shape {spec!r}: expected a string like NAME:1x512..4096")
            for item in _split_specs(spec):
                name, sep, dims = item.rpartition(":")
                if not sep or not name.strip():
                    raise BadInputError(f"--input-shape {item!r}: expected NAME:DIMS, as in input_ids:1x512..4096")
                items.append((name.strip(), _dim_words(name.strip(), dims)))
    fixed: dict[str, list] = {}
    ranges: list[DimRange] = []
    for name, dims in items:
        vals = []
        for k, d in enumerate(dims):
            lohi = _range_of(name, k, d)
            if lohi is None:
                vals.append(d if isinstance(d, int) else _int(name, k, d))
                continue
            lo, hi = lohi
            if lo == hi:
                vals.append(lo)
            else:
                ranges.append(DimRange(name, k, lo, hi))
                vals.append(hi)
        fixed[name] = vals
    fixed = parse_input_shapes(fixed)  # positive integers everywhere else, one-line errors
    if not ranges:
        return None
    return ShapeRange(fixed, tuple(ranges))


def _dim_words(name: str, dims: str) -> list:
    body = dims.strip()
    if body[:1] in "[(" and body[-1:] in "])":
        body = body[1:-1]
    if not body.strip():
        return []
    return [p.strip() for p in re.split(r"[xX*,]", body)]


def _int(name: str, k: int, word) -> int:
    try:
        return int(str(word).strip())
    except ValueError:
        raise BadInputError(f"--input-shape {name}: dim {k} is {word!r}: expected a positive integer or LO..HI") from None


def _range_of(name: str, k: int, d) -> tuple[int, int] | None:
    """(lo, hi) when dim `d` is a range; bad ranges raise naming the input and dim."""
    if isinstance(d, tuple):
        if len(d) != 2:
            raise BadInputError(f"--input-shape {name}: dim {k} range {d!r}: expected (lo, hi)")
        lo, hi = d
    elif isinstance(d, str) and ".." in d:
        m = _RANGE.match(d)
        if not m or not m.group(1).isdigit() or not m.group(2).isdigit():
            raise BadInputError(f"--input-shape {name}: dim {k} range {d.strip()!r}: expected LO..HI with integers, "
                                f"as in 512..32768")
        lo, hi = int(m.group(1)), int(m.group(2))
    else:
        return None
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)):
        raise BadInputError(f"--input-shape {name}: dim {k} range {lo}..{hi}: bounds must be integers")
    if lo <= 0 or hi <= 0:
        raise BadInputError(f"--input-shape {name}: dim {k} range {lo}..{hi}: bounds must be positive (zero-length inputs "
                            f"are not planned)")
    if lo > hi:
        raise BadInputError(f"--input-shape {name}: dim {k} range {lo}..{hi}: LO is larger than HI")
    return lo, hi


def check(model: onnx.ModelProto, sr: ShapeRange) -> None:
    """Ranges only on dims the model lets vary: refuse a range on a fixed dim, or on a symbol another
    input pins to a number (one line naming the input and dim, exit 2)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = {vi.name: vi for vi in model.graph.input if vi.name not in inits}
    ranged_syms: dict[str, DimRange] = {}
    for r in sr.ranges:
        vi = inputs.get(r.input)
        if vi is None or not vi.type.HasField("tensor_type"):
            continue  # pinning names the unknown input in its own error
        dims = vi.type.tensor_type.shape.dim
        if r.dim >= len(dims):
            continue  # pinning reports the rank
        d = dims[r.dim]
        if d.HasField("dim_value"):
            if not r.lo <= d.dim_value <= r.hi:
                raise BadInputError(f"--input-shape {r.input}: dim {r.dim} range {r.lo}..{r.hi} contradicts the model, "
                                    f"which fixes that dim to {d.dim_value}")
            raise BadInputError(f"--input-shape {r.input}: dim {r.dim} cannot range over {r.lo}..{r.hi}: the model fixes "
                                f"it to {d.dim_value} (give {d.dim_value})")
        if d.dim_param:
            ranged_syms[d.dim_param] = r
    first = sr.ranges[0]
    for r in sr.ranges[1:]:
        if (r.lo, r.hi) != (first.lo, first.hi):
            raise BadInputError(f"--input-shape {r.input}: dim {r.dim} ranges over {r.lo}..{r.hi} but {first.input} dim "
                                f"{first.dim} over {first.lo}..{first.hi}: ranged dims vary together as one length, "
                                f"give them the same LO..HI")
    for name, vi in inputs.items():
        if name not in sr.fixed or not vi.type.HasField("tensor_type"):
            continue
        ranged_here = {r.dim for r in sr.ranges if r.input == name}
        for k, d in enumerate(vi.type.tensor_type.shape.dim):
            r = ranged_syms.get(d.dim_param) if d.dim_param else None
            if r is not None and k not in ranged_here and k < len(sr.fixed[name]):
                raise BadInputError(f"--input-shape {r.input}: dim {r.dim} ({d.dim_param}) ranges over {r.lo}..{r.hi}, "
                                    f"but {name} dim {k} pins {d.dim_param}={sr.fixed[name][k]}: give it the same range")


def check_lengths(model: onnx.ModelProto, sr: ShapeRange) -> None:
    """Refuse a range the model does not let vary: onnx's strict shape inference (data propagated)
    holds at the top but fails at the bottom or middle (a Reshape to a constant size, a fixed
    table). Where strict inference fails at the top too, it cannot judge the model: nothing said."""
    from .loader import pin_input_shapes
    from .shapes import skeleton

    sk, _ = skeleton(model)

    def error_at(length: int) -> str | None:
        m = onnx.ModelProto()
        m.CopyFrom(sk)
        try:
            pin_input_shapes(m, sr.at(length))
            inferred = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
        except Exception as e:  # noqa: BLE001 - inference errors come in many kinds
            return " ".join(str(e).split())[:200] or type(e).__name__
        return _reshape_mismatch(inferred)

    if error_at(sr.hi) is not None:
        return
    for length in sorted({sr.lo, sr.middle}):
        why = error_at(length)
        if why is not None:
            r = sr.ranges[0]
            raise BadInputError(f"--input-shape {r.input}: dim {r.dim} cannot range over {r.lo}..{r.hi}: the model does "
                                f"not take length {length} ({why})")


def _reshape_mismatch(model: onnx.ModelProto) -> str | None:
    """A Reshape whose input and output sizes are both known and differ (onnx's inference lets it by)."""
    shapes = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is not None and tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = [d.dim_value for d in tt.shape.dim]
    for n in model.graph.node:
        if n.op_type == "Reshape" and n.input[0] in shapes and n.output[0] in shapes:
            a, b = math.prod(shapes[n.input[0]]), math.prod(shapes[n.output[0]])
            if a != b:
                return f"Reshape {n.name or n.output[0]} of {shapes[n.input[0]]} to {shapes[n.output[0]]}"
    return None


def prepare_at(prepare: Callable, sr: ShapeRange, length: int):
    """The model pinned with the ranged dims at `length`; a model that cannot take that length
    (shape inference or pinning fails) is a bad range naming the input and dim."""
    from .errors import AutochunkError

    try:
        return prepare(sr.at(length))
    except AutochunkError as e:
        r = sr.ranges[0]
        raise BadInputError(f"--input-shape {r.input}: dim {r.dim} cannot range over {r.lo}..{r.hi}: at {length} the "
                            f"model does not hold ({' '.join(str(e).split())[:300]})") from None
    except Exception as e:  # noqa: BLE001 - shape inference raises many kinds
        r = sr.ranges[0]
        raise BadInputError(f"--input-shape {r.input}: dim {r.dim} cannot range over {r.lo}..{r.hi}: at {length} shape "
                            f"inference fails ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


# ----------------------------------------------------------------------------- fitting the rows
@dataclass(frozen=True)
class Point:
    """The estimate at one length: original, chunked (rows as the rules give them), loops' chunks."""

    length: int
    original_peak: int
    chunked_peak: int
    chunks: tuple[int, ...]  # rows per iteration of each loop at this length
    iterations: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"length": self.length, "original_peak_bytes": self.original_peak, "predicted_peak_bytes": self.chunked_peak,
                "chunk_sizes": list(self.chunks), "chunks": list(self.iterations)}


@dataclass(frozen=True)
class Rule:
    """How one loop's rows follow the length: 'inverse' (max(1, K // L)) or 'constant'."""

    kind: str
    k: int  # K for inverse, the rows for constant
    per_row: tuple[tuple[int, int], ...]  # (length, bytes per row of the loop's step) at the samples
    largest: tuple[tuple[int, int, int], ...]  # (length, largest chunk within budget, units) at the samples

    @property
    def power(self) -> int:
        return {"inverse": 1, "inverse_square": 2}.get(self.kind, 0)

    def rows(self, length: int) -> int:
        return max(1, self.k // length ** self.power) if self.power else self.k

    def text(self) -> str:
        lo, hi = self.per_row[0], self.per_row[-1]
        grow = f"per-row bytes {_fmt(lo[1])} at {lo[0]} -> {_fmt(hi[1])} at {hi[0]}"
        if self.power:
            return f"rows = max(1, {self.k} // L{'' if self.power == 1 else '^2'}) ({grow})"
        return f"rows = {self.k} ({grow})"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "k": self.k,
                "per_row_bytes": [{"length": L, "bytes": b} for L, b in self.per_row],
                "largest_chunk": [{"length": L, "chunk": c, "units": u} for L, c, u in self.largest]}


@dataclass(frozen=True)
class RangePlan:
    """A plan for a length range: the top's plan with rows rules on its loops, and the estimate at
    the bottom, middle and top (and every length the rules were checked at)."""

    range: ShapeRange
    plan: Plan
    rules: tuple[Rule, ...]
    points: tuple[Point, ...]  # bottom, middle, top
    checked: tuple[Point, ...] = field(default=())  # every length estimated while fitting
    fits: bool = True

    def to_dict(self) -> dict:
        return {**self.range.to_dict(), "budget_bytes": self.plan.budget, "fits": self.fits,
                "points": [p.to_dict() for p in self.points],
                "checked": [p.to_dict() for p in self.checked],
                "rules": [r.to_dict() for r in self.rules]}

    def text(self) -> str:
        r0 = self.range.ranges[0]
        lines = [f"range: {', '.join(r.text() for r in self.range.ranges)} (planned at {self.range.hi}); rows per "
                 f"iteration computed in the graph from L = {r0.input} dim {r0.dim}",
                 f"  {'length':>8}  {'original est':>13}  {'chunked est':>12}  {'budget':>10}  chunks (rows x iterations)"]
        for p in self.points:
            mark = "" if p.chunked_peak <= self.plan.budget else "  OVER BUDGET"
            loops = ", ".join(f"{c}x{n}" for c, n in zip(p.chunks, p.iterations))
            lines.append(f"  {p.length:>8}  {_fmt(p.original_peak):>13}  {_fmt(p.chunked_peak):>12}  "
                         f"{_fmt(self.plan.budget):>10}  {loops}{mark}")
        for k, rule in enumerate(self.rules):
            lines.append(f"  [{k}] {rule.text()}")
        return "\n".join(lines)


def _fmt(n: int) -> str:
    from .report import fmt_bytes

    return fmt_bytes(n)


def remap(region, graph_top: Graph, graph: Graph):
    """The region (traced at the top) on the graph pinned at another length: same nodes and cuts,
    its units scaled with the length of the cut."""
    end, axis = region.end, region.cuts[region.end].axis
    a, b = graph_top.shape(end)[axis], graph.shape(end)[axis]
    units = Fraction(region.units) * Fraction(b, a)
    if units.denominator != 1 or units < 1:
        raise BadInputError(f"the chunked dim of {end} is {b} at this length: not a whole number of units "
                            f"({region.units} at the top)")
    return replace(region, units=int(units))


@dataclass
class _At:
    """The plan's loops on the graph pinned at one length."""

    length: int
    graph: Graph
    fused: dict
    loops: list[Loop]
    original: Estimate

    def estimate(self, chunks: list[int]) -> Estimate:
        loops = [Loop(lp.region, max(1, min(c, lp.region.units))) for lp, c in zip(self.loops, chunks)]
        return estimate_plan(self.graph, loops, self.fused)[0]


def _at(prepare: Callable, sr: ShapeRange, length: int, graph_top: Graph, loops: tuple[Loop, ...]) -> _At:
    m = prepare_at(prepare, sr, length)
    g = m.graph
    g.session.dynamic = graph_top.session.dynamic
    remapped = [Loop(remap(lp.region, graph_top, g), 1) for lp in loops]
    return _At(length, g, fusions(g), remapped, estimate_graph(g))


def _largest(at: _At, limit: int) -> tuple[list[int], list[int]]:
    """Per loop at this length: the largest chunk (up to the whole region) keeping its step within
    `limit` with the other loops at their smallest, and its bytes per row."""
    mins = [max(1, -(-lp.region.units // MAX_ITERATIONS)) for lp in at.loops]
    loops = [Loop(lp.region, c) for lp, c in zip(at.loops, mins)]
    est, order = estimate_plan(at.graph, loops, at.fused)
    pos = {id(it): k for k, it in enumerate(order)}
    best, per_row = [], []
    for lp, c0 in zip(loops, mins):
        r = lp.region
        step = est.timeline[pos[id(lp)]].live_bytes
        fixed = step - loop_step(at.graph, lp, at.fused).extra_bytes
        out_total = sum(at.graph.nbytes(t) for t in r.outputs)
        bp = body_peak_fn(at.graph, r, at.fused)

        def f(c, fixed=fixed, bp=bp, out_total=out_total):
            return fixed + max(bp(c), out_total)

        c = largest_fitting(f, c0, r.units, limit)
        best.append(c if c is not None else c0)
        c1, c2 = max(1, r.units // 4), max(1, r.units // 2)
        per_row.append(int((bp(c2) - bp(c1)) / (c2 - c1)) if c2 > c1 else bp(c2))
    return best, per_row


def _rule(samples: list[tuple[int, int, int, int]]) -> Rule:
    """The rows rule from (length, largest chunk, units, per-row bytes) at the sampled lengths."""
    samples = sorted(samples)
    per_row = tuple((L, b) for L, _, _, b in samples)
    largest = tuple((L, c, u) for L, c, u, _ in samples)
    binding = [(L, c) for L, c, u, _ in samples if c < u]
    (lo_L, lo_b), (hi_L, hi_b) = per_row[0], per_row[-1]
    if not binding:  # the whole region fits at every sampled length: one iteration everywhere
        top_units = max(u for _, _, u, _ in samples)
        return Rule("constant", top_units, per_row, largest)
    # Every candidate holds at every sample (rows <= the largest chunk wherever the loop must chunk);
    # the one with the fewest iterations over the samples wins, ties to what the per-row bytes say:
    # constant where they do not grow, K // L where they grow as L, K // L^2 as L^2 (a pair's
    # triangle attention). A constant rule would chunk mid-range lengths where the whole fits.
    cands = [Rule("constant", min(c for _, c in binding), per_row, largest),
             Rule("inverse", min(c * L for L, c in binding), per_row, largest),
             Rule("inverse_square", min(c * L * L for L, c in binding), per_row, largest)]
    grows = hi_b > GROWS * max(lo_b, 1) and hi_L != lo_L
    p = math.log(hi_b / max(lo_b, 1)) / math.log(hi_L / lo_L) if grows else 0.0
    preferred = 0 if not grows else (2 if p >= 1.5 else 1)

    def iterations(rule: Rule) -> int:
        return sum(-(-u // min(rule.rows(L), u)) for L, _, u, _ in samples)

    return min(cands, key=lambda r: (iterations(r), cands.index(r) != preferred, cands.index(r)))


def fit(m_top, plan_top: Plan, sr: ShapeRange, prepare: Callable, limit: int | None = None) -> RangePlan:
    """Rows rules for every loop of `plan_top` (made at the range's top) so the estimated peak stays
    within `limit` (default: the plan's budget, or its peak when it does not fit) at every length.

    `prepare(shapes)` pins and shape-infers the model (api._prepare)."""
    graph_top = m_top.graph
    if limit is None:
        limit = plan_top.budget if plan_top.fits else plan_top.final.peak_bytes
    if not plan_top.loops:
        pts = []
        for L in sorted({sr.lo, sr.middle, sr.hi}):
            at = _at(prepare, sr, L, graph_top, ())
            pts.append(Point(L, at.original.peak_bytes, at.original.peak_bytes, (), ()))
        return RangePlan(sr, plan_top, (), tuple(pts), tuple(pts), all(p.chunked_peak <= limit for p in pts))
    cache: dict[int, _At] = {}

    def at(L: int) -> _At:
        if L not in cache:
            cache[L] = _at(prepare if L != sr.hi else (lambda _shapes: m_top), sr, L, graph_top, plan_top.loops)
        return cache[L]

    samples: dict[int, tuple[list[int], list[int]]] = {}
    for L in sr.lengths():
        samples[L] = _largest(at(L), limit)
    checked: dict[int, Point] = {}
    for _round in range(REFITS + 1):
        rules = tuple(_rule([(L, best[i], at(L).loops[i].region.units, per[i]) for L, (best, per) in samples.items()])
                      for i in range(len(plan_top.loops)))
        check_at = sorted(set(samples) | set(_between(sorted(samples))) | {sr.middle})
        bad = []
        for L in check_at:
            a = at(L)
            chunks = [min(r.rows(L), lp.region.units) for r, lp in zip(rules, a.loops)]
            est = a.estimate(chunks)
            iters = [-(-lp.region.units // c) for lp, c in zip(a.loops, chunks)]
            checked[L] = Point(L, a.original.peak_bytes, est.peak_bytes, tuple(chunks), tuple(iters))
            if est.peak_bytes > limit and L not in samples:
                bad.append(L)
        if not bad:
            break
        for L in bad:
            samples[L] = _largest(at(L), limit)
    top = at(sr.hi)
    chunks_top = [min(r.rows(sr.hi), lp.region.units) for r, lp in zip(rules, plan_top.loops)]
    loops = []
    for lp, r, c in zip(plan_top.loops, rules, chunks_top):
        rows = Rows(r.k, sr.ranges[0].input, sr.ranges[0].dim, r.power) if r.power else None
        loops.append(Loop(lp.region, c, rows))
    final, order = estimate_plan(graph_top, loops, top.fused)
    new_plan = replace(plan_top, loops=tuple(loops), final=final, order=tuple(order), fits=final.peak_bytes <= plan_top.budget)
    points = tuple(checked[L] for L in sorted({sr.lo, sr.middle, sr.hi}))
    ok = all(p.chunked_peak <= limit for p in checked.values())
    return RangePlan(sr, new_plan, rules, points, tuple(checked[L] for L in sorted(checked)), ok)


def _between(lengths: list[int]) -> list[int]:
    """Geometric midpoints of consecutive lengths (where a rule fitted at the samples is checked)."""
    return [int(round(math.sqrt(a * b))) for a, b in zip(lengths, lengths[1:]) if b - a > 1]
