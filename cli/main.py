"""`autochunk-onnx`: a thin click layer over autochunk_onnx.api.

Exit codes: 0 ok, 2 bad input or usage, 3 budget unreachable, 4 verification failed, 1 internal
error. Errors are one line on stderr; a traceback only with --debug.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import click

from autochunk_onnx import api
from autochunk_onnx.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, AutochunkError, BudgetUnreachableError, VerificationError
from autochunk_onnx.paths import check_writable_file
from autochunk_onnx.report import (estimate_json, estimate_text, fmt_bytes, plan_json, plan_text, verify_json,
                                   verify_text)

EXIT_CODES = """\b
Exit codes:
  0  success
  1  internal error (a bug: please report it with --debug output)
  2  bad input or usage (unreadable model, unknown input name, unparsable budget, ...)
  3  budget unreachable (nothing written; --best-effort writes the best plan)
  4  verification failed (outputs differ; nothing written unless --keep-failed)
"""
TOLERANCE = "Outputs match when |a-b| <= atol + rtol*|a| element-wise (a = original); defaults: fp32 atol 1e-4 rtol 1e-3, fp16/bf16 1e-2/1e-2, integers exact."

input_shape_opt = click.option("--input-shape", "-s", "input_shapes", multiple=True, metavar="NAME:DIMS",
                               help="Pin an input's dims: NAME:1x4096 or NAME:[1,4096]; repeat or separate with commas.")
debug_opt = click.option("--debug", is_flag=True, help="Show tracebacks on errors.")


def _say_notes(texts) -> None:
    for text in texts or ():
        click.echo(f"autochunk-onnx: note: {text}", err=True)


def _fail(e: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    _say_notes(getattr(e, "notes", None))
    if isinstance(e, AutochunkError):
        click.echo(f"autochunk-onnx: error: {e}", err=True)
        sys.exit(e.exit_code)
    click.echo(f"autochunk-onnx: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
               + ("" if debug else " (run with --debug for the traceback)"), err=True)
    sys.exit(EXIT_INTERNAL)


def _run(fn, debug: bool):
    try:
        return fn()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("autochunk-onnx: interrupted", err=True)
        sys.exit(130)
    except BaseException as e:  # noqa: BLE001 - every error becomes one line and an exit code
        _fail(e, debug)


def _emit_json(doc: dict, report: str | None) -> None:
    text = json.dumps(doc, indent=2, default=_json_default)
    if report:
        try:  # checked before any work; this only fails if the folder changed meanwhile
            Path(report).write_text(text + "\n")
        except OSError as e:
            click.echo(f"autochunk-onnx: error: cannot write --report {report}: {e.strerror or e}", err=True)
            sys.exit(EXIT_BAD_INPUT)
    else:
        click.echo(text)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    return str(o)


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autochunk-onnx")
def main() -> None:
    """Cut the activation memory of long-sequence ONNX models by computing their largest
    intermediates chunk by chunk inside standard ONNX Loops (AutoChunk, ICLR 2024)."""


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--budget", "-b", required=True, help="Activation-memory budget: 4GB, 512MiB, 1e9B, or a percentage of the original estimated peak (20%).")
@input_shape_opt
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option("--best-effort", is_flag=True, help="If the budget is unreachable, write the best plan anyway (exit 0, with a warning).")
@click.option("--no-verify", is_flag=True, help="Skip running both models in ONNX Runtime.")
@click.option("--force", is_flag=True, help="Allow OUTPUT to be the input model (replaced only after success).")
@click.option("--keep-failed", is_flag=True, help="On verification failure keep the model as OUTPUT.failed.onnx.")
@click.option("--providers", default=None, help="Comma-separated ORT providers for verification (default: CUDA if really active, else CPU).")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. " + TOLERANCE)
@click.option("--rtol", type=float, default=None, help="Relative tolerance.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated inputs.")
@click.option("--load-inputs", "inputs_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Verify on inputs from an .npz file.")
@click.option("--save-inputs", type=click.Path(dir_okay=False), default=None, help="Save the verification inputs to an .npz file (replay with --load-inputs).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@click.option("--report", type=click.Path(dir_okay=False), default=None, help="Write the JSON report to this file.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@debug_opt
def optimize(model, output, budget, input_shapes, dry_run, best_effort, no_verify, force, keep_failed, providers,
             atol, rtol, seed, inputs_path, save_inputs, as_json, report, quiet, debug):
    """Rewrite MODEL so its estimated activation peak fits --budget; write OUTPUT and verify it."""
    progress = None
    if not quiet and not as_json and sys.stderr.isatty():
        progress = lambda msg: click.echo(f"... {msg}", err=True)  # noqa: E731

    def go():
        if report:
            check_writable_file(report, "--report")
        try:
            return api.optimize(model, output, budget, list(input_shapes), verify_output=not no_verify,
                                best_effort=best_effort, dry_run=dry_run, force=force, keep_failed=keep_failed,
                                providers=providers.split(",") if providers else None, atol=atol, rtol=rtol,
                                seed=seed, inputs_path=inputs_path, save_inputs=save_inputs, progress=progress)
        except BudgetUnreachableError as e:
            if (as_json or report) and e.best_plan is not None:
                _emit_json({"status": "budget_unreachable", "error": str(e), "plan": plan_json(e.best_plan),
                            "notes": getattr(e, "notes", [])}, report)
            elif not quiet and e.best_plan is not None and dry_run:
                click.echo(plan_text(e.best_plan))
            raise
        except VerificationError as e:
            if e.report is not None and (as_json or report):
                _emit_json({"status": "verification_failed", "error": str(e), "verify": verify_json(e.report),
                            "notes": getattr(e, "notes", [])}, report)
            elif e.report is not None and not quiet:
                click.echo(verify_text(e.report), err=True)
            raise

    res = _run(go, debug)
    p = res.plan
    if not quiet:
        _say_notes(res.notes)
    if not p.fits:
        click.echo(f"autochunk-onnx: warning: budget {fmt_bytes(res.budget)} not reached: best plan reaches "
                   f"{fmt_bytes(p.final.peak_bytes)} (peak at node {p.final.peak_node}, {p.final.peak_op})", err=True)
    doc = {"status": "ok" if p.fits else "over_budget", "model": str(model), "output": None if dry_run else str(output),
           "written": [str(w) for w in res.written], "plan": plan_json(p), "timings": res.timings,
           "notes": res.notes, "verify": verify_json(res.verify) if res.verify else None}
    if as_json or report:
        _emit_json(doc, report)
        if report and not as_json and not quiet:
            click.echo(plan_text(p))
        return
    if quiet:
        return
    click.echo(plan_text(p))
    if res.verify:
        click.echo(verify_text(res.verify))
    if not dry_run:
        click.echo(f"wrote {', '.join(str(w) for w in res.written)}")


@main.command(epilog=EXIT_CODES)
@click.argument("model", type=click.Path(path_type=Path))
@input_shape_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON (peak_bytes, peak_node, weight_bytes, timeline, ...).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Draw live bytes over the node order to a PNG (needs matplotlib).")
@click.option("--top", type=int, default=8, show_default=True, help="Live tensors to list.")
@debug_opt
def estimate(model, input_shapes, as_json, plot, top, debug):
    """Estimate MODEL's peak activation memory in ONNX Runtime, and what is live at the peak."""
    if plot:
        _run(lambda: check_writable_file(plot, "--plot"), debug)
    m, est = _run(lambda: api.estimate(model, list(input_shapes)), debug)
    _say_notes(m.notes)
    if plot:
        _run(lambda: _plot(est, plot, model.name), debug)
    if as_json:
        click.echo(json.dumps(dict(estimate_json(est), notes=m.notes), indent=2))
    else:
        click.echo(estimate_text(est, top))


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


@main.command(epilog=EXIT_CODES)
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("chunked", type=click.Path(path_type=Path))
@input_shape_opt
@click.option("--providers", default=None, help="Comma-separated ORT providers (default: CUDA if really active, else CPU).")
@click.option("--atol", type=float, default=None, help="Absolute tolerance. " + TOLERANCE)
@click.option("--rtol", type=float, default=None, help="Relative tolerance.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--load-inputs", "inputs_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Inputs from an .npz file.")
@click.option("--save-inputs", type=click.Path(dir_okay=False), default=None, help="Save the inputs used to an .npz file.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
@debug_opt
def verify(original, chunked, input_shapes, providers, atol, rtol, seed, inputs_path, save_inputs, as_json, quiet, debug):
    """Run ORIGINAL and CHUNKED in ONNX Runtime on the same inputs; compare outputs, memory, latency."""
    def go():
        for p in (original, chunked):
            api.load_model(p)  # one-line errors for unreadable files before any child process runs
        return api.verify(original, chunked, list(input_shapes), inputs_path=inputs_path,
                          providers=providers.split(",") if providers else None, atol=atol, rtol=rtol, seed=seed,
                          save_inputs=save_inputs)
    rep = _run(go, debug)
    if not quiet:
        _say_notes(rep.notes)
    if as_json:
        click.echo(json.dumps(dict(verify_json(rep), notes=rep.notes), indent=2))
    elif not quiet:
        click.echo(verify_text(rep))
    if not rep.ok:
        bad = next(d for d in rep.diffs if not d.ok)
        click.echo(f"autochunk-onnx: error: verification failed: output {bad.name!r} differs", err=True)
        sys.exit(4)


if __name__ == "__main__":
    main()
