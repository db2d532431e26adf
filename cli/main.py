"""`autochunk-onnx`: a thin click layer over autochunk_onnx.api (installed as autochunk_onnx.cli).

Exit codes: 0 ok, 1 internal error, 2 bad input or usage, 3 budget unreachable, 4 verification
failed, 5 a gate failed (outputs match). Errors are one line on stderr (a traceback only with
--debug); with --json every outcome, failures included, prints one JSON document on stdout
(docs/json-schema.md), and --report FILE writes the same document to FILE.
"""
from __future__ import annotations

import json
import re
import sys
import traceback
from pathlib import Path

import click

from autochunk_onnx import api
from autochunk_onnx import notes as notes_mod
from autochunk_onnx.budget import parse_budget
from autochunk_onnx.errors import (EXIT_BAD_INPUT, EXIT_INTERNAL, AutochunkError, BadInputError, BudgetUnreachableError, GateError,
                                   VerificationError)
from autochunk_onnx.bounds import text as bounds_text
from autochunk_onnx.loader import parse_input_shapes
from autochunk_onnx.paths import check_writable_file
from autochunk_onnx.report import (envelope, estimate_json, estimate_text, fmt_bytes, gates_json, notes_json,
                                   plan_json, plan_text, verify_json, verify_text)

PROG = "autochunk-onnx"
EXIT_CODES = """\b
Exit codes:
  0  success
  1  internal error (a bug: please report it with --debug output)
  2  bad input or usage (unreadable model, unknown input name, unparsable budget, unknown or
     inactive provider, ...)
  3  budget unreachable (nothing written; --best-effort writes the best plan)
  4  verification failed (outputs differ; nothing written unless --keep-failed)
  5  a gate failed (--max-mem-ratio, --max-latency-ratio, --max-peak): outputs match, the model
     is written, the failing gate and its measured figure are on stderr
"""
TOLERANCE = ("Outputs match when |a-b| <= atol + rtol*|a| element-wise (a = original); defaults: fp32 atol 1e-4 "
             "rtol 1e-3, fp16/bf16 1e-2/1e-2, integers exact.")
BUDGET_HELP = ("Activation-memory budget: 4GB (10^9-based), 4GiB or 4G (2^30-based), 512MiB, 1e9B, or a "
               "percentage of the original estimated peak (20%).")
SHAPE_FLAGS = ("--input-shape", "--input-shapes", "-s")
_DIMS_TAIL = re.compile(r"^(\[[^\]]*\]|\([^)]*\)|[0-9]+(\.\.[0-9]+)?([xX*,][0-9]+(\.\.[0-9]+)?)*)$")


# ----------------------------------------------------------------------------- option groups
def input_shape_opt(f):
    return click.option(
        "--input-shape", "--input-shapes", "-s", "input_shapes", multiple=True, metavar="NAME:DIMS",
        help="Pin input dims: NAME:1x4096, NAME:[1,4096] or NAME:1,4096 (name split on the last colon); "
             "several after one flag or repeat the flag. `inspect` prints a ready line. A dim written LO..HI "
             "(input_ids:1x512..32768) is a length range: planned at HI, rows per iteration computed at run time.")(f)


def provider_opts(f):
    f = click.option("--allow-fallback", is_flag=True,
                     help="Accept running on other providers when a requested one is missing or not really active.")(f)
    return click.option("--providers", "providers", multiple=True, metavar="LIST",
                        help="ORT providers, comma-separated or repeated: cpu, cuda, trt (tensorrt), rocm, dml, "
                             "coreml, openvino, or full names (CUDAExecutionProvider). Default: CUDA if really "
                             "active, else CPU. A requested provider that is missing or not really used: exit 2.")(f)


def tolerance_opts(f):
    f = click.option("--rtol", type=float, default=None, help="Relative tolerance.")(f)
    return click.option("--atol", type=float, default=None, help="Absolute tolerance. " + TOLERANCE)(f)


def latency_opts(f):
    f = click.option("--latency-time", "latency_time", type=float, default=None, metavar="SECONDS",
                     help="Time both models for about this long (at least --iterations rounds, 3 if not given).")(f)
    return click.option("--iterations", type=int, default=None, metavar="N",
                        help="Interleaved latency rounds (one run of each model per round, after a warm-up run; "
                             "default 10).")(f)


def gate_opts(f):
    f = click.option("--max-peak", default=None, metavar="BYTES",
                     help="Gate: fail (exit 5) when the measured chunked peak exceeds BYTES (4GB, 512MiB, 1e9B).")(f)
    f = click.option("--max-latency-ratio", type=float, default=None, metavar="R",
                     help="Gate: fail (exit 5) when median chunked / median original latency exceeds R.")(f)
    return click.option("--max-mem-ratio", type=float, default=None, metavar="R",
                        help="Gate: fail (exit 5) when measured chunked / original peak memory exceeds R.")(f)


def output_opts(f):
    f = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")(f)
    f = click.option("--verbose", "-v", is_flag=True, help="Also print informational notes and the time of each phase.")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")(f)
    f = click.option("--report", type=click.Path(dir_okay=False), default=None,
                     help="Write the JSON document to this file (as well as --json's stdout copy).")(f)
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout, whatever the outcome (docs/json-schema.md).")(f)


# ----------------------------------------------------------------------------- one run of a command
class Run:
    """One subcommand's outcome: collects the JSON fields, prints the one error line, exits."""

    def __init__(self, command: str, as_json: bool, report: str | None, quiet: bool, verbose: bool, debug: bool):
        self.command, self.as_json, self.report = command, as_json, report
        self.quiet, self.verbose, self.debug = quiet, verbose, debug
        self.fields: dict = {}
        self.notes: list = []
        self._inline = False
        self.tty = sys.stderr.isatty() and not quiet

    def check_paths(self, **paths) -> None:
        """Refuse bad --report/--plot/--save-inputs paths before any work (exit 2); a bad --report
        is never written to, not even with the error document."""
        for flag, path in paths.items():
            if path is None:
                continue
            flag = "--" + flag.replace("_", "-")
            try:
                check_writable_file(path, flag)
            except BadInputError as e:
                if flag == "--report":
                    self.report = None
                self.fail(e)

    def progress(self, msg: str) -> None:
        """Long steps on a terminal: one line a phase; latency rounds update one line in place."""
        if msg.startswith("latency: round"):
            click.echo(f"\r\033[K... {msg}", err=True, nl=False)
            self._inline = True
            return
        if self._inline:
            click.echo("", err=True)
            self._inline = False
        click.echo(f"... {msg}", err=True)

    def progress_fn(self):
        return self.progress if self.tty else None

    def call(self, fn, on_error=None):
        """fn() inside a notes collector; any error ends the run with its exit code."""
        with notes_mod.collect() as sink:
            try:
                return fn()
            except SystemExit:
                raise
            except KeyboardInterrupt:
                self._keep(sink)
                self.finish(130, "interrupted")
            except BaseException as e:  # noqa: BLE001 - every error becomes one line and an exit code
                self._keep(sink)
                if on_error is not None and isinstance(e, AutochunkError):
                    try:
                        on_error(e)
                    except Exception:  # noqa: BLE001 - a report of a failure must not hide it
                        pass
                self.fail(e)
            finally:
                self._keep(sink)

    def _keep(self, sink) -> None:
        self.notes += [n for n in sink if n not in self.notes]

    def fail(self, e: BaseException) -> None:
        if self.debug:
            traceback.print_exception(type(e), e, e.__traceback__)
        if isinstance(e, AutochunkError):
            self.finish(e.exit_code, _one_line(str(e)))
        first = str(e).splitlines()[0] if str(e) else ""
        self.finish(EXIT_INTERNAL, f"internal error: {type(e).__name__}: {first}", internal=True)

    def print_notes(self) -> None:
        if self.quiet:
            return
        for n in self.notes:
            if getattr(n, "kind", None) == notes_mod.INFO and not self.verbose:
                continue
            click.echo(f"{PROG}: note: {n}", err=True)

    def print_timings(self, timings: dict) -> None:
        if self.verbose and not self.quiet and timings:
            click.echo(f"{PROG}: timings: " + ", ".join(f"{k[:-2] if k.endswith('_s') else k} {v:.2f} s"
                                                        for k, v in timings.items()), err=True)

    def finish(self, code: int, error: str | None = None, status: str | None = None, internal: bool = False):
        if self._inline:
            click.echo("", err=True)
            self._inline = False
        self.print_notes()
        if self.as_json or self.report:
            doc = envelope(self.command, code, status=status, error=error, notes=notes_json(self.notes), **self.fields)
            text = json.dumps(doc, indent=2, default=_json_default)
            if self.report:
                try:
                    Path(self.report).write_text(text + "\n")
                except OSError as e:
                    click.echo(f"{PROG}: error: cannot write --report {self.report}: {e.strerror or e}", err=True)
                    code = EXIT_BAD_INPUT
            if self.as_json:
                click.echo(text)
        if error is not None:
            hint = " (run with --debug for the traceback)" if internal and not self.debug else ""
            prefix = f"{PROG}: " if internal else f"{PROG}: error: "
            click.echo(f"{prefix}{error}{hint}", err=True)
        sys.exit(code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def _shapes_field(specs) -> dict | None:
    try:
        return parse_input_shapes(list(specs)) or None
    except AutochunkError:
        return None


def _budget_field(text: str, nbytes: int | None = None) -> dict:
    return {"text": text, "bytes": nbytes, "percent": str(text).strip().endswith("%")}


# ----------------------------------------------------------------------------- the group
class Group(click.Group):
    """Usage errors in one line (exit 2, a JSON document with --json); shapes after one flag."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        args = expand_shape_args(args)
        try:
            rv = super().main(args, prog_name=prog_name or PROG, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click.UsageError as e:
            cmd = e.ctx.command.name if e.ctx is not None and e.ctx.command is not self else None
            msg = _one_line(e.format_message())
            where = f"{PROG} {cmd}" if cmd else PROG
            if "--json" in args:
                click.echo(json.dumps(envelope(cmd or "", EXIT_BAD_INPUT, status="usage_error", error=msg), indent=2))
            click.echo(f"{PROG}: error: {where}: {msg} (see {where} --help)", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except click.Abort:
            click.echo(f"{PROG}: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def expand_shape_args(args: list[str]) -> list[str]:
    """`--input-shapes a:1x2 b:1x3` -> `--input-shapes a:1x2 --input-shapes b:1x3` (Polygraphy's form):
    after a shape flag, following words that look like NAME:DIMS are more shapes."""
    out: list[str] = []
    i = 0
    in_shapes = False
    while i < len(args):
        a = args[i]
        if a == "--":
            out.extend(args[i:])
            break
        if a in SHAPE_FLAGS and i + 1 < len(args):
            out += [a, args[i + 1]]
            flag = a
            i += 2
            in_shapes = True
            continue
        if any(a.startswith(f + "=") for f in SHAPE_FLAGS if f.startswith("--")):
            out.append(a)
            flag = a.split("=", 1)[0]
            i += 1
            in_shapes = True
            continue
        if in_shapes and not a.startswith("-") and _looks_like_shape(a):
            out += [flag, a]
            i += 1
            continue
        in_shapes = False
        out.append(a)
        i += 1
    return out


def _looks_like_shape(word: str) -> bool:
    name, sep, dims = word.rpartition(":")
    return bool(sep and name and _DIMS_TAIL.match(dims.strip()))


@click.group(cls=Group, epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autochunk-onnx", prog_name=PROG)
def main() -> None:
    """Cut the activation memory of long-sequence ONNX models by computing their largest
    intermediates chunk by chunk inside standard ONNX Loops (AutoChunk, ICLR 2024)."""


# ----------------------------------------------------------------------------- optimize
@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--budget", "-b", required=True, help=BUDGET_HELP)
@input_shape_opt
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--best-effort", is_flag=True, help="If the budget is unreachable, write the best plan anyway (exit 0, with a warning).")
@click.option("--no-verify", is_flag=True, help="Skip running both models in ONNX Runtime.")
@click.option("--force", is_flag=True, help="Allow OUTPUT to be the input model (replaced only after success).")
@click.option("--keep-failed", is_flag=True, help="On verification failure keep the model as OUTPUT.failed.onnx.")
@provider_opts
@tolerance_opts
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--load-inputs", "inputs_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Verify on inputs from an .npz file.")
@click.option("--save-inputs", type=click.Path(dir_okay=False), default=None, help="Save the verification inputs to an .npz file (replay with --load-inputs).")
@latency_opts
@gate_opts
@output_opts
def optimize(model, output, budget, input_shapes, dry_run, best_effort, no_verify, force, keep_failed, providers,
             allow_fallback, atol, rtol, seed, inputs_path, save_inputs, iterations, latency_time, max_mem_ratio, max_latency_ratio,
             max_peak, as_json, report, quiet, verbose, debug):
    """Rewrite MODEL so its estimated activation peak fits --budget; write OUTPUT and verify it."""
    run = Run("optimize", as_json, report, quiet, verbose, debug)
    run.check_paths(report=report, save_inputs=save_inputs)
    run.fields.update(model=str(model), output=None if dry_run else str(output), input_shapes=_shapes_field(input_shapes),
                      budget=_budget_field(budget))

    def on_error(e):
        res = getattr(e, "result", None)
        if isinstance(e, BudgetUnreachableError) and e.best_plan is not None:
            run.fields["plan"] = plan_json(e.best_plan)
            if not quiet and dry_run and not as_json:
                click.echo(plan_text(e.best_plan))
            elif not quiet and not as_json:  # what bounds the plan, model or tool (stdout: stderr keeps one line)
                click.echo("\n".join(bounds_text(e.best_plan.bounds)))
        if isinstance(e, VerificationError) and e.report is not None:
            run.fields["verify"] = verify_json(e.report)
            if not quiet and not as_json:
                click.echo(verify_text(e.report), err=True)
        if res is not None and hasattr(res, "plan"):
            _fill_optimize(run, res, dry_run)
            if isinstance(e, GateError) and not quiet and not as_json:
                _print_optimize(res, dry_run)

    res = run.call(lambda: api.optimize(
        model, output, budget, list(input_shapes), verify_output=not no_verify, best_effort=best_effort,
        dry_run=dry_run, force=force, keep_failed=keep_failed, providers=list(providers) or None,
        allow_fallback=allow_fallback, atol=atol, rtol=rtol, seed=seed, inputs_path=inputs_path, iterations=iterations,
        latency_time_s=latency_time, max_mem_ratio=max_mem_ratio, max_latency_ratio=max_latency_ratio,
        max_peak=max_peak, progress=run.progress_fn(), save_inputs=save_inputs), on_error)
    _fill_optimize(run, res, dry_run)
    p = res.plan
    if not p.fits:
        click.echo(f"{PROG}: warning: budget {fmt_bytes(res.budget)} not reached: best plan reaches "
                   f"{fmt_bytes(p.final.peak_bytes)} (peak at node {p.final.peak_node}, {p.final.peak_op})", err=True)
    if not quiet and not as_json:
        _print_optimize(res, dry_run)
    run.print_timings(res.timings)
    run.finish(0, status="ok" if p.fits else "over_budget")


def _fill_optimize(run: Run, res, dry_run: bool) -> None:
    run.fields.update(written=[str(w) for w in res.written], plan=plan_json(res.plan), timings_s=res.timings,
                      input_shapes=res.input_shapes or run.fields.get("input_shapes"),
                      budget=_budget_field(res.budget_text, res.budget),
                      verify=verify_json(res.verify) if res.verify else None,
                      gates=gates_json(res.gates))
    _fill_range(run, getattr(res, "range", None), getattr(res, "range_checks", None))


def _fill_range(run: Run, rp, checks) -> None:
    """A length range: plan.range (rules, estimate at bottom/middle/top), verify.range (per length)."""
    if rp is not None and run.fields.get("plan") is not None:
        run.fields["plan"]["range"] = rp.to_dict()
    if checks and run.fields.get("verify") is not None:
        run.fields["verify"]["range"] = [c.to_dict() for c in checks]


def _range_checks_text(checks) -> str:
    lines = [f"{'length':>8}  {'outputs':9} {'original peak':>14} {'chunked peak':>13}  latency ratio"]
    for c in checks:
        rep = c.report
        if rep is None:
            lines.append(f"{c.length:>8}  {'not run':9} {'-':>14} {fmt_bytes(c.chunked.peak_bytes):>13}  -  "
                         f"(original not run: {c.why_not_compared})")
        else:
            lines.append(f"{c.length:>8}  {'match' if rep.ok else 'DIFFER':9} {fmt_bytes(rep.original.peak_bytes):>14} "
                         f"{fmt_bytes(rep.chunked.peak_bytes):>13}  {rep.latency_ratio:.3f}")
    return "\n".join(lines)


def _print_optimize(res, dry_run: bool) -> None:
    click.echo(plan_text(res.plan, show_bounds=True if dry_run else None))
    if getattr(res, "range", None) is not None:
        click.echo(res.range.text())
    if res.verify:
        click.echo(verify_text(res.verify))
        if getattr(res, "range_checks", None):
            click.echo(_range_checks_text(res.range_checks))
        if res.verify.over_budget:
            click.echo(f"{PROG}: warning: measured chunked peak {fmt_bytes(res.verify.chunked.peak_bytes)} is over the "
                       f"budget {fmt_bytes(res.budget)} (the budget bounds the estimate, "
                       f"{fmt_bytes(res.plan.final.peak_bytes)}); --max-peak fails the run on it", err=True)
    if not dry_run and res.written:
        click.echo(f"wrote {', '.join(str(w) for w in res.written)}")


# ----------------------------------------------------------------------------- estimate
@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_opt
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Draw live bytes over the node order to a PNG (needs matplotlib).")
@click.option("--top", type=int, default=8, show_default=True, help="Live tensors to list.")
@click.option("--sweep", type=int, default=None, metavar="N",
              help="With a length range (-s input_ids:1x512..8192): estimate at N lengths across it (default 5 when a "
                   "range is given); --plot then draws peak against length.")
@click.option("--chunked", type=click.Path(path_type=Path), default=None,
              help="With a range: also sweep this chunked model (written by optimize from MODEL).")
@output_opts
def estimate(model, input_shapes, plot, top, sweep, chunked, as_json, report, quiet, verbose, debug):
    """Estimate MODEL's peak activation memory in ONNX Runtime, and what is live at the peak."""
    run = Run("estimate", as_json, report, quiet, verbose, debug)
    run.check_paths(report=report, plot=plot)
    run.fields.update(model=str(model), input_shapes=_shapes_field(input_shapes))
    if sweep is not None or chunked is not None or _has_range(input_shapes):
        _estimate_sweep(run, model, input_shapes, plot, sweep, chunked, quiet, as_json)
    loaded, est = run.call(lambda: api.estimate(model, list(input_shapes)))
    run.fields.update(estimate=estimate_json(est), input_shapes={k: list(v) for k, v in loaded.shapes.items()})
    if plot:
        run.call(lambda: _plot(est, plot, model.name))
    if not quiet and not as_json:
        click.echo(estimate_text(est, top))
    run.finish(0)


def _has_range(input_shapes) -> bool:
    from autochunk_onnx.ranges import has_range

    return has_range(list(input_shapes))


def _estimate_sweep(run: Run, model, input_shapes, plot, points, chunked, quiet, as_json) -> None:
    """estimate over a length range: a table (and a PNG) of estimated peak against length."""
    sw = run.call(lambda: api.sweep(model, list(input_shapes), chunked, points if points is not None else 5))
    run.fields.update(estimate={"sweep": sw.to_dict()}, input_shapes=sw.range.top)
    if plot:
        run.call(lambda: _plot_sweep(sw, plot, model.name))
    if not quiet and not as_json:
        head = f"{'length':>8}  {'original est':>13}" + (f"  {'chunked est':>12}  {'ratio':>6}" if sw.chunked else "")
        click.echo(head)
        for k, (L, o) in enumerate(zip(sw.lengths, sw.original)):
            row = f"{L:>8}  {fmt_bytes(o):>13}"
            if sw.chunked:
                row += f"  {fmt_bytes(sw.chunked[k]):>12}  {sw.chunked[k] / o if o else float('nan'):>6.3f}"
            click.echo(row)
    run.finish(0)


def _plot_sweep(sw, path: str, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(sw.lengths, [b / 2**20 for b in sw.original], marker="o", label="original (estimated)")
    if sw.chunked:
        ax.plot(sw.lengths, [b / 2**20 for b in sw.chunked], marker="s", label="chunked (estimated)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("length")
    ax.set_ylabel("peak activation MiB")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from autochunk_onnx.errors import BadInputError
        raise BadInputError("--plot needs matplotlib: pip install 'autochunk-onnx[plot]'") from None
    return plt


def _plot(est, path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from autochunk_onnx.errors import BadInputError
        raise BadInputError("--plot needs matplotlib: pip install 'autochunk-onnx[plot]'") from None
    xs = [p.index for p in est.timeline]
    ys = [p.live_bytes / 2**20 for p in est.timeline]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(xs, ys, lw=1)
    ax.axvline(est.peak_index, color="r", lw=0.8, ls="--", label=f"peak {est.peak_bytes / 2**20:.1f} MiB at {est.peak_node}")
    ax.set_xlabel("node (execution order)")
    ax.set_ylabel("live activation MiB")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- verify
@main.command(epilog=EXIT_CODES)
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("chunked", type=click.Path(path_type=Path))
@input_shape_opt
@provider_opts
@tolerance_opts
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--load-inputs", "inputs_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Inputs from an .npz file.")
@click.option("--save-inputs", type=click.Path(dir_okay=False), default=None, help="Save the verification inputs to an .npz file (replay with --load-inputs).")
@latency_opts
@gate_opts
@output_opts
def verify(original, chunked, input_shapes, providers, allow_fallback, atol, rtol, seed, inputs_path, save_inputs, iterations,
           latency_time, max_mem_ratio, max_latency_ratio, max_peak, as_json, report, quiet, verbose, debug):
    """Run ORIGINAL and CHUNKED in ONNX Runtime on the same inputs; compare outputs, memory, latency."""
    run = Run("verify", as_json, report, quiet, verbose, debug)
    run.check_paths(report=report, save_inputs=save_inputs)
    run.fields.update(original=str(original), chunked=str(chunked), model=str(original),
                      input_shapes=_shapes_field(input_shapes))

    def go():
        for p in (original, chunked):
            api.load_model(p)  # one-line errors for unreadable files before any child process runs
        if max_peak is not None:
            parse_budget(max_peak, flag="--max-peak")
        return api.verify(original, chunked, list(input_shapes), inputs_path=inputs_path,
                          providers=list(providers) or None, allow_fallback=allow_fallback, atol=atol, rtol=rtol,
                          seed=seed, iterations=iterations, latency_time_s=latency_time, max_mem_ratio=max_mem_ratio,
                          max_latency_ratio=max_latency_ratio, max_peak=max_peak, progress=run.progress_fn(),
                          save_inputs=save_inputs)

    def on_error(e):
        if isinstance(e, GateError) and e.result is not None:
            run.fields.update(verify=verify_json(e.result), gates=gates_json(e.result.gates))
            if not quiet and not as_json:
                click.echo(verify_text(e.result))

    rep = run.call(go, on_error)
    run.fields.update(verify=verify_json(rep), gates=gates_json(rep.gates))
    _fill_range(run, None, rep.range_checks)
    if not quiet and not as_json:
        click.echo(verify_text(rep))
        if rep.range_checks:
            click.echo(_range_checks_text(rep.range_checks))
    if not rep.ok:
        bad = next(d for d in rep.diffs if not d.ok)
        where = next((f" at length {c.length}" for c in rep.range_checks if not c.ok), "")
        run.finish(4, f"verification failed: output {bad.name!r} differs{where}")
    run.finish(0)


# ----------------------------------------------------------------------------- inspect
@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--dim", "dims", multiple=True, metavar="SYMBOL=VALUE",
              help="Fill a symbolic dim in the printed --input-shape line (repeatable).")
@output_opts
def inspect(model, dims, as_json, report, quiet, verbose, debug):
    """List MODEL's inputs and outputs with their symbolic dims, and print a --input-shape line.

    Batch-like symbols (batch, batch_size, N, B) are filled with 1; the others are left in capitals
    for you to replace, unless given with --dim seq=4096.
    """
    run = Run("inspect", as_json, report, quiet, verbose, debug)
    run.check_paths(report=report)
    run.fields.update(model=str(model))

    def go():
        values = {}
        for d in dims:
            sym, sep, val = d.rpartition("=")
            if not sep or not sym or not val.strip().isdigit() or int(val) <= 0:
                from autochunk_onnx.errors import BadInputError
                raise BadInputError(f"--dim {d!r}: expected SYMBOL=VALUE with a positive integer, as in seq=4096")
            values[sym] = int(val)
        return api.inspect(model), values

    info, values = run.call(go)
    line = info.input_shape_line(values)

    def rows(items):
        return [{"name": n, "dtype": t, "dims": d} for n, t, d in items]

    run.fields["inspect"] = {"inputs": rows(info.inputs), "outputs": rows(info.outputs), "symbols": info.symbols,
                             "input_shape_line": line}
    if not quiet and not as_json:
        width = max([len(n) for n, _, _ in info.inputs + info.outputs] + [4])
        for title, items in (("inputs", info.inputs), ("outputs", info.outputs)):
            click.echo(f"{title}:")
            for n, t, d in items:
                shown = ", ".join("?" if x is None else str(x) for x in d)
                click.echo(f"  {n:{width}}  {t:8} [{shown}]")
        click.echo(f"symbolic dims: {', '.join(info.symbols) or 'none'}")
        click.echo(line)
    run.finish(0)


if __name__ == "__main__":
    main()
