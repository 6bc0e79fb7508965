"""Tables and pages from a run folder: ``summary.csv``, ``report.md``, ``report.tex`` and ``report.html``.

Everything is rebuilt from ``results.jsonl`` and ``run.json`` (`write_reports`), so a report
can be regenerated at any time (``seminft-bench report DIR``). The columns are the paper's
(Tables 1, 2, 4, 5): each judge's mean score, the Reward, the success ratio, and with
targets PSNR / SSIM / DISTS / LPIPS, each a mean over samples with a percentile-bootstrap
95% interval. A column that could not be computed says "not computed" — never 0. The best
method per column is in bold; the bounds (identity, reference, oracle) are shown for
context and not ranked.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from seminft_bench.bench.results import read_records
from seminft_bench.bench.stats import Estimate, bootstrap_mean, spearman
from seminft_bench.fileio import atomic_write_text

BOUNDS = ("identity", "reference", "oracle")
NOT_COMPUTED = "not computed"
MAX_GRID_SAMPLES = 50


@dataclass(frozen=True)
class Column:
    """One table column: where its value sits in a record and which direction is better."""

    key: str
    label: str
    higher_is_better: bool
    value: Callable[[dict], float | None]
    not_computed_as: str  # the run.json "not_computed" entry that explains its absence


def columns(info: dict) -> list[Column]:
    """The run's columns in the paper's order."""
    cols = [
        Column(judge, judge, True, lambda r, j=judge: r["scores"].get(j), f"judge {judge}")
        for judge in info.get("judges", [])
    ]
    cols.append(Column("reward", "Reward", True, lambda r: r.get("reward"), "judge reward"))
    cols.append(Column("success", "Success", True, lambda r: _as_float(r["metrics"].get("dino_success")), "metric dino"))
    for key, label, higher in (("psnr", "PSNR", True), ("ssim", "SSIM", True), ("dists", "DISTS", False), ("lpips", "LPIPS", False)):
        cols.append(Column(key, label, higher, lambda r, k=key: r["metrics"].get(k), f"metric {key}"))
    return cols


@dataclass
class Table:
    """Per method and column the estimate (None: not computed), failed cells, and the best method per column."""

    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, str], Estimate | None]
    failed: dict[str, int]
    best: dict[str, str]
    samples: dict[str, int]


def build_table(records: dict, info: dict) -> Table:
    methods = _ordered_methods(records, info)
    cols = columns(info)
    cells, failed, samples = {}, {}, {}
    for method in methods:
        rows = [r for (_, m), r in sorted(records.items()) if m == method]
        samples[method] = len(rows)
        failed[method] = sum(len(r["errors"]) for r in rows)
        for col in cols:
            cells[method, col.key] = bootstrap_mean([v for r in rows if (v := col.value(r)) is not None])
    best = {}
    for col in cols:
        ranked = [(cells[m, col.key].mean, m) for m in methods if m not in BOUNDS and cells[m, col.key] is not None]
        if len(ranked) > 1:
            best[col.key] = (max if col.higher_is_better else min)(ranked)[1]
    shown = [c for c in cols if any(cells[m, c.key] is not None for m in methods) or c.not_computed_as in info.get("not_computed", {})]
    return Table(methods, shown, cells, failed, best, samples)


def _ordered_methods(records: dict, info: dict) -> list[str]:
    """The run's methods in the order they were asked for, then any others found in the results."""
    return list(dict.fromkeys([*info.get("methods", []), *(method for _, method in records)]))


def judge_agreement(records: dict, info: dict) -> dict[tuple[str, str], tuple[float | None, int]]:
    """Spearman ρ between every two judges (and the reward) over the (sample, method) cells both scored."""
    scorers = {judge: (lambda r, j=judge: r["scores"].get(j)) for judge in info.get("judges", [])}
    scorers["reward"] = lambda r: r.get("reward")
    agreement = {}
    for a, b in combinations(scorers, 2):
        both = [(scorers[a](r), scorers[b](r)) for r in records.values()]
        both = [(x, y) for x, y in both if x is not None and y is not None]
        if both:
            agreement[a, b] = (spearman([x for x, _ in both], [y for _, y in both]), len(both))
    return agreement


def write_reports(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Rebuild every report of ``run_dir`` from its results; returns the files by kind."""
    run_dir = Path(run_dir)
    info_path = run_dir / "run.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a benchmark run folder (no run.json); run `seminft-bench run` first")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    records = read_records(run_dir / "results.jsonl")
    table = build_table(records, info)
    agreement = judge_agreement(records, info)
    costs = _costs(run_dir)
    return {
        "csv": atomic_write_text(run_dir / "summary.csv", summary_csv(table)),
        "markdown": atomic_write_text(run_dir / "report.md", report_markdown(table, agreement, costs, info)),
        "latex": atomic_write_text(run_dir / "report.tex", report_latex(table, info)),
        "html": atomic_write_text(run_dir / "report.html", report_html(run_dir, table, agreement, costs, info, records)),
    }


# --------------------------------------------------------------------------- text formats


def summary_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "samples", "failed_cells"]
    for col in table.columns:
        header += [f"{col.key}_mean", f"{col.key}_ci_low", f"{col.key}_ci_high", f"{col.key}_n"]
    writer.writerow(header)
    for method in table.methods:
        row: list[object] = [method, table.samples[method], table.failed[method]]
        for col in table.columns:
            est = table.cells[method, col.key]
            row += [NOT_COMPUTED, "", "", 0] if est is None else [f"{est.mean:.6g}", f"{est.low:.6g}", f"{est.high:.6g}", est.n]
        writer.writerow(row)
    return buffer.getvalue()


def _cell_text(table: Table, method: str, col: Column, bold: Callable[[str], str]) -> str:
    est = table.cells[method, col.key]
    if est is None:
        return NOT_COMPUTED
    digits = 2 if col.key in ("psnr",) else 3
    text = f"{est.mean:.{digits}f} [{est.low:.{digits}f}, {est.high:.{digits}f}]"
    return bold(text) if table.best.get(col.key) == method else text


def _arrow(col: Column) -> str:
    return "↑" if col.higher_is_better else "↓"


def report_markdown(table: Table, agreement: dict, costs: dict, info: dict) -> str:
    lines = [
        f"# Benchmark: {info.get('dataset', '?')}",
        "",
        f"{len(info.get('samples', []))} samples. Mean over samples with a bootstrap 95% interval; best in bold "
        f"(bounds {', '.join(BOUNDS)} are not ranked). Success: DINO similarity to the source above "
        f"{info.get('dino_threshold')}.",
        "",
        "| Method | " + " | ".join(f"{c.label} {_arrow(c)}" for c in table.columns) + " | Failed cells |",
        "|---|" + "---|" * len(table.columns) + "---|",
    ]
    for method in table.methods:
        cells = [_cell_text(table, method, c, lambda t: f"**{t}**") for c in table.columns]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {table.failed[method]} |")
    not_computed = info.get("not_computed", {})
    if not_computed:
        lines += ["", "## Not computed", ""] + [f"- {what}: {why}" for what, why in not_computed.items()]
    if info.get("skipped"):
        lines += ["", "## Skipped samples", ""] + [f"- {s['name']}: {s['reason']}" for s in info["skipped"]]
    lines += ["", "## Inter-judge agreement (Spearman ρ over scored cells)", ""]
    if agreement:
        lines += ["| Judges | ρ | cells |", "|---|---|---|"]
        for (a, b), (rho, n) in agreement.items():
            lines.append(f"| {a} vs {b} | {'n/a' if rho is None else f'{rho:.3f}'} | {n} |")
    else:
        lines.append("Fewer than two judges scored this run.")
    lines += ["", "## API cost", "", _cost_line(costs), ""]
    return "\n".join(lines)


def report_latex(table: Table, info: dict) -> str:
    """A booktabs table for papers: means only, best in bold, "--" where not computed."""

    def cell(method: str, col: Column) -> str:
        est = table.cells[method, col.key]
        if est is None:
            return "--"
        text = f"{est.mean:.{2 if col.key == 'psnr' else 3}f}"
        return f"\\textbf{{{text}}}" if table.best.get(col.key) == method else text

    def escape(text: str) -> str:
        return text.replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")

    header = " & ".join(["Method"] + [f"{escape(c.label)} $\\{'uparrow' if c.higher_is_better else 'downarrow'}$" for c in table.columns])
    rows = [" & ".join([escape(m)] + [cell(m, c) for c in table.columns]) + " \\\\" for m in table.methods]
    return "\n".join(
        [
            "% requires \\usepackage{booktabs}",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{Quantitative comparison on {escape(str(info.get('dataset', '')))}. Best in bold.}}",
            "\\begin{tabular}{l" + "c" * len(table.columns) + "}",
            "\\toprule",
            header + " \\\\",
            "\\midrule",
            *rows,
            "\\bottomrule",
            "\\end{tabular}",
            "\\end{table}",
            "",
        ]
    )


def _costs(run_dir: Path) -> dict:
    found = {}
    for kind, name in (("all_runs", "costs.json"), ("last_run", "costs_last_run.json")):
        path = run_dir / name
        if path.exists():
            found[kind] = json.loads(path.read_text(encoding="utf-8"))
    return found


def _cost_line(costs: dict) -> str:
    if not costs:
        return "No API calls recorded."
    parts = []
    for kind, label in (("last_run", "last run"), ("all_runs", "all runs into this folder")):
        if kind in costs:
            ledger = costs[kind]
            calls = sum(entry["calls"] for entry in ledger["judges"].values())
            cached = sum(entry["cached"] for entry in ledger["judges"].values())
            parts.append(f"{label}: ${ledger['total_cost_usd']:.4f} ({calls} paid calls, {cached} from the cache)")
    return "; ".join(parts) + "."


# --------------------------------------------------------------------------- HTML


def report_html(run_dir: Path, table: Table, agreement: dict, costs: dict, info: dict, records: dict) -> str:
    """One page: the table, score distributions, and a grid per sample. Images are linked relatively."""
    esc = html.escape
    head = "".join(f"<th>{esc(c.label)} {_arrow(c)}</th>" for c in table.columns)
    body = "".join(
        f"<tr><th>{esc(m)}</th>"
        + "".join(f"<td>{_cell_text(table, m, c, lambda t: f'<b>{t}</b>')}</td>" for c in table.columns)
        + f"<td>{table.failed[m]}</td></tr>"
        for m in table.methods
    )
    not_computed = "".join(f"<li>{esc(w)}: {esc(r)}</li>" for w, r in info.get("not_computed", {}).items())
    agreement_rows = "".join(
        f"<tr><td>{esc(a)} vs {esc(b)}</td><td>{'n/a' if rho is None else f'{rho:.3f}'}</td><td>{n}</td></tr>"
        for (a, b), (rho, n) in agreement.items()
    )
    plots = "".join(
        f'<figure><img alt="{esc(c.label)} per method" src="data:image/png;base64,{png}"><figcaption>{esc(c.label)}</figcaption></figure>'
        for c in table.columns
        if (png := _distribution_plot(records, table.methods, c))
    )
    return _PAGE.format(
        title=esc(f"Benchmark: {info.get('dataset', '')}"),
        intro=esc(
            f"{len(info.get('samples', []))} samples; mean [bootstrap 95% interval]; best in bold "
            f"(bounds not ranked); success = DINO similarity to the source > {info.get('dino_threshold')}."
        ),
        head=head,
        body=body,
        not_computed=f"<h2>Not computed</h2><ul>{not_computed}</ul>" if not_computed else "",
        agreement=(
            f"<h2>Inter-judge agreement</h2><table><tr><th>judges</th><th>Spearman ρ</th><th>cells</th></tr>{agreement_rows}</table>"
            if agreement_rows
            else ""
        ),
        cost=esc(_cost_line(costs)),
        plots=f"<h2>Score distributions</h2><div class=plots>{plots}</div>" if plots else "",
        grids=_sample_grids(run_dir, table, info, records),
    )


def _distribution_plot(records: dict, methods: Sequence[str], col: Column) -> str | None:
    """A box plot of the column's per-sample values per method, as base64 PNG (None: nothing to show).

    Infinite values (the PSNR of an exact copy) cannot be drawn and are left out of the plot only.
    """
    values = {
        m: [v for (_, rm), r in records.items() if rm == m and (v := col.value(r)) is not None and math.isfinite(v)]
        for m in methods
    }
    values = {m: v for m, v in values.items() if v}
    if not values or col.key == "success":
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(1.2 + 0.9 * len(values), 3.2), dpi=100)
    axes.boxplot(list(values.values()), showmeans=True)
    axes.set_xticks(range(1, len(values) + 1), list(values), rotation=30, ha="right")
    axes.set_title(f"{col.label} ({'higher' if col.higher_is_better else 'lower'} is better)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _sample_grids(run_dir: Path, table: Table, info: dict, records: dict) -> str:
    esc = html.escape
    samples = info.get("samples", [])[:MAX_GRID_SAMPLES]
    sections = []
    for sample in samples:
        cells = [_figure(run_dir, f"inputs/reference/{sample}.png", "reference"), _figure(run_dir, f"inputs/source/{sample}.png", "source")]
        for method in table.methods:
            record = records.get((sample, method))
            if record is None:
                continue
            cells.append(_figure(run_dir, record.get("output") or "", method, _caption(record, table), _reasoning(record)))
        cells.append(_figure(run_dir, f"inputs/target/{sample}.png", "target"))
        sections.append(f"<section><h3>{esc(sample)}</h3><div class=grid>{''.join(c for c in cells if c)}</div></section>")
    more = len(info.get("samples", [])) - len(samples)
    tail = f"<p>{more} more samples are in results.jsonl.</p>" if more > 0 else ""
    return "<h2>Samples</h2>" + "".join(sections) + tail


def _figure(run_dir: Path, relative: str, label: str, caption: str = "", details: str = "") -> str:
    esc = html.escape
    if not relative or not (run_dir / relative).exists():
        return f'<figure class=missing><div class=placeholder>no image</div><figcaption><b>{esc(label)}</b> {caption}</figcaption></figure>' if caption else ""
    return (
        f'<figure><a href="{esc(relative)}"><img loading=lazy src="{esc(relative)}" alt="{esc(label)}"></a>'
        f"<figcaption><b>{esc(label)}</b> {caption}{details}</figcaption></figure>"
    )


def _caption(record: dict, table: Table) -> str:
    parts = []
    for col in table.columns:
        value = col.value(record)
        if value is not None:
            parts.append(f"{col.label} {value:.3g}")
    errors = "; ".join(f"{k}: {v}" for k, v in record["errors"].items())
    text = html.escape(" · ".join(parts))
    return text + (f'<br><span class=error>{html.escape(errors)}</span>' if errors else "")


def _reasoning(record: dict) -> str:
    items = "".join(f"<p><b>{html.escape(j)}</b>: {html.escape(t)}</p>" for j, t in record.get("reasoning", {}).items() if t)
    return f"<details><summary>judges' reasoning</summary>{items}</details>" if items else ""


def _as_float(value: object) -> float | None:
    return None if value is None else float(value)


_PAGE = """<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 12px 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child {{ text-align: left; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; width: 220px; }}
figure img {{ width: 220px; height: auto; display: block; }}
figcaption {{ font-size: 12px; }}
.plots figure {{ width: auto; }} .plots img {{ width: auto; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.error {{ color: #b00; }}
.placeholder {{ width: 220px; height: 140px; background: #eee; display: flex; align-items: center; justify-content: center; }}
</style></head><body>
<h1>{title}</h1>
<p>{intro}</p>
<table><tr><th>Method</th>{head}<th>Failed cells</th></tr>{body}</table>
{not_computed}
{agreement}
<p>API cost: {cost}</p>
{plots}
{grids}
</body></html>
"""
