"""Tables and pages from a run folder: ``summary.csv``, ``report.md``, ``report.tex`` and ``report.html``.

Everything is rebuilt from ``results.jsonl`` and ``run.json`` (`write_reports`), so a report
can be regenerated at any time (``seminft-bench report DIR``). The columns are the paper's
(Tables 1, 2, 4, 5): each judge's mean score, the Reward (Eq. 4 on the paper's [0, 1] scale:
the raw 0–5 score / 5), then the metrics of the registry. Only values computed under the
settings of the current run.json count (their cell key must match), over the current run's
samples. Within a column every method is measured on the same samples: those that every
method with values in that column completed (the others are listed with the reason), with
paired-bootstrap 95% intervals. Bold marks the best method only where the paired interval
of its difference to the runner-up excludes 0; otherwise the methods not significantly worse
than the best are marked as tied. The bounds (identity, reference, oracle) are shown for
context and never ranked. A column without a value in any cell (a judge without an API key, a
metric without weights) is left out of the tables and listed under "Not computed" with the
reason, unless some of its cells failed; a cell without a value says "not computed", never 0.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from seminft_bench.bench.metrics import METRICS
from seminft_bench.bench.results import cell_key, read_records
from seminft_bench.bench.stats import Estimate, kendall, paired_bootstrap, paired_differences, spearman
from seminft_bench.fileio import atomic_write_text

BOUNDS = ("identity", "reference", "oracle")
NOT_COMPUTED = "not computed"
NOT_COMPUTED_YET = "no value under the current settings yet (run `seminft-bench run` on this folder again)"
"""Why a column is not computed when run.json gives no reason: the run stopped before it, or its settings changed."""
MAX_GRID_SAMPLES = 50
MAX_PLOTTED_DOTS = 2000
"""Dots per method in the transfer/preservation scatter (its crosses are the means of every sample): more hide
each other and cost seconds per 10,000."""
MIN_RANKED_SAMPLES = 10
"""Below this many common samples nothing is marked: a percentile bootstrap calls any difference that has
one sign on every sample significant, which on 2 or 5 samples is chance (a sign test gives p = 0.5, 0.06)."""
REWARD_SCALE = 5.0
"""Eq. 4 scores lie in 0–5; the paper's Reward column is on [0, 1] (Tables 1–5: 0.22–0.87)."""
RANK_RULE = (
    "Mean over the samples every method of the column completed, [paired-bootstrap 95% interval]. "
    "**Bold**: best, where the paired interval of its difference to the runner-up excludes 0; "
    "otherwise _italic_: the methods not significantly worse than the best (a tie). "
    "Bounds ({bounds}) are not ranked, nor is a column with fewer than {min_n} samples."
)


@dataclass(frozen=True)
class Column:
    """One table column: the results cell behind it, how to read its value, and which direction is better."""

    key: str
    label: str
    cell: str
    higher_is_better: bool
    value: Callable[[dict], float | None]
    not_computed_as: str  # the run.json "not_computed" entry that explains its absence
    scale: float = 1.0  # shown value = stored value / scale


def columns(info: dict) -> list[Column]:
    """The run's columns in the paper's order: judges, Reward, then the metrics in registry order."""
    cols = [
        Column(judge, judge, f"judge:{judge}", True, lambda r, j=judge: r["scores"].get(j), f"judge {judge}")
        for judge in info.get("judges", [])
    ]
    if info.get("reward"):
        cols.append(Column("reward", "Reward", "judge:reward", True, lambda r: r.get("reward"), "judge reward", REWARD_SCALE))
    for name in (n for n in METRICS if n in info.get("metrics", [])):
        metric = METRICS[name]
        cols.append(
            Column(name, metric.label, f"metric:{name}", metric.higher_is_better,
                   lambda r, n=name: _as_float(r["metrics"].get(n)), f"metric {name}")  # fmt: skip
        )
    return cols


@dataclass
class Table:
    """Per method and column the estimate (None: no value), the samples compared, and the marks."""

    methods: list[str]
    columns: list[Column]
    cells: dict[tuple[str, str], Estimate | None]
    failed: dict[str, int]
    best: dict[str, str] = field(default_factory=dict)  # column → the significantly best method
    tied: dict[str, list[str]] = field(default_factory=dict)  # column → methods not significantly worse than the best
    excluded: dict[str, dict[str, str]] = field(default_factory=dict)  # column → sample → why it is not compared
    not_computed: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # column → method → `current_values`


def current_values(records: dict, info: dict, method: str, col: Column) -> dict[str, float]:
    """Sample → value of ``col`` for ``method``, over the current samples, computed under the current settings."""
    keys = info.get("keys")
    wanted = cell_key(keys, method, col.cell) if keys else None
    values = {}
    for sample in info.get("samples", []):
        record = records.get((sample, method))
        if record is None or wanted is None or record.get("keys", {}).get(col.cell) != wanted:
            continue
        value = col.value(record)
        if value is not None:
            values[sample] = value / col.scale
    return values


def build_table(records: dict, info: dict) -> Table:
    """The table of the run's current values: only the columns with a value or a failure in some cell; the others
    go to ``not_computed`` (with run.json's reason: no API key, no weights…), so no row is a line of "not computed"."""
    methods = list(info.get("methods", []))
    failed = {m: _failed_cells(records, info, m) for m in methods}
    table = Table(methods, [], {}, failed, not_computed=dict(info.get("not_computed", {})))
    for col in columns(info):
        values = {m: current_values(records, info, m, col) for m in methods}
        compared = [m for m in methods if values[m]]
        if not compared:
            if any(_errors(records, info, m, col.cell) for m in methods):  # its failures stay in sight
                table.columns.append(col)
                table.values[col.key] = values
                table.cells.update({(m, col.key): None for m in methods})
            else:
                table.not_computed.setdefault(col.not_computed_as, NOT_COMPUTED_YET)
            continue
        table.columns.append(col)
        table.values[col.key] = values
        common = [s for s in info.get("samples", []) if all(s in values[m] for m in compared)]
        table.excluded[col.key] = _exclusions(records, info, values, compared, common, col)
        if not common:
            table.cells.update({(m, col.key): None for m in methods})
            continue
        matrix = np.array([[values[m][s] for s in common] for m in compared])
        estimates = dict(zip(compared, paired_bootstrap(matrix)))
        table.cells.update({(m, col.key): estimates.get(m) for m in methods})
        _mark(table, col, {m: matrix[i] for i, m in enumerate(compared) if m not in BOUNDS})
    return table


def _mark(table: Table, col: Column, rows: dict[str, np.ndarray]) -> None:
    """Bold the best when the paired interval of its lead over the runner-up excludes 0, else mark the tie.

    The best's lead over every other method comes from one bootstrap (one draw of the samples for all)."""
    if len(rows) < 2 or len(next(iter(rows.values()))) < MIN_RANKED_SAMPLES:
        return
    sign = 1.0 if col.higher_is_better else -1.0
    best, *others = sorted(rows, key=lambda m: sign * float(np.mean(rows[m])), reverse=True)
    leads = dict(zip(others, paired_differences(sign * rows[best], np.array([sign * rows[m] for m in others]))))
    if leads[others[0]].low > 0:
        table.best[col.key] = best
        return
    table.tied[col.key] = [best] + [m for m in others if leads[m].low <= 0]


def _exclusions(records, info, values, compared, common: list[str], col) -> dict[str, str]:
    """Why each current sample left out of the column's comparison (``common``) is missing, method by method."""
    common = set(common)  # membership in O(1): a column costs O(samples), not O(samples²)
    excluded = {}
    for sample in info.get("samples", []):
        if sample in common:
            continue
        reasons = []
        for method in compared:
            if sample not in values[method]:
                error = (records.get((sample, method)) or {}).get("errors", {})
                why = error.get(col.cell) or error.get("generate") or "not computed yet"
                reasons.append(f"{method}: {why}")
        excluded[sample] = "; ".join(reasons)
    return excluded


def _current_cells(info: dict) -> list[str]:
    return ["generate", *(c.cell for c in columns(info))]


def _errors(records: dict, info: dict, method: str, cell: str) -> int:
    return sum(cell in (records.get((s, method)) or {}).get("errors", {}) for s in info.get("samples", []))


def _failed_cells(records: dict, info: dict, method: str) -> int:
    """The method's failed cells under the current settings, in one pass over its records."""
    cells = _current_cells(info)
    failed = 0
    for sample in info.get("samples", []):
        errors = (records.get((sample, method)) or {}).get("errors")
        if errors:
            failed += sum(cell in errors for cell in cells)
    return failed


def judge_agreement(records: dict, info: dict) -> dict[tuple[str, str], tuple[float | None, float | None, int]]:
    """Spearman ρ and Kendall τ between every two judges (and the reward), with n, over the cells both
    scored under the current settings. Bounds are left out: they sit at both ends of every judge's
    scale and would inflate any agreement."""
    scorers = {c.key: c for c in columns(info) if c.cell.startswith("judge:")}
    ranked = [m for m in info.get("methods", []) if m not in BOUNDS]
    values = {(key, m): current_values(records, info, m, col) for key, col in scorers.items() for m in ranked}
    agreement = {}
    for a, b in combinations(scorers, 2):
        pairs = [(values[a, m][s], values[b, m][s]) for m in ranked for s in values[a, m] if s in values[b, m]]
        if pairs:
            x, y = [p[0] for p in pairs], [p[1] for p in pairs]
            agreement[a, b] = (spearman(x, y), kendall(x, y), len(pairs))
    return agreement


def judge_sanity(records: dict, info: dict) -> dict[str, dict[str, float]]:
    """Per judge, its mean score of ``identity`` (the untouched source) and ``reference`` where the run has them.

    A judge that rates the source as high as the reference is not measuring preset similarity.
    """
    sanity = {}
    for col in (c for c in columns(info) if c.cell.startswith("judge:")):
        means = {}
        for bound in ("identity", "reference"):
            if bound in info.get("methods", []) and (values := current_values(records, info, bound, col)):
                means[bound] = float(np.mean(list(values.values())))
        if means:
            sanity[col.label] = means
    return sanity


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
    sanity = judge_sanity(records, info)
    costs = _costs(run_dir)
    return {
        "csv": atomic_write_text(run_dir / "summary.csv", summary_csv(table)),
        "markdown": atomic_write_text(run_dir / "report.md", report_markdown(table, agreement, sanity, costs, info)),
        "latex": atomic_write_text(run_dir / "report.tex", report_latex(table, info)),
        "html": atomic_write_text(run_dir / "report.html", report_html(run_dir, table, agreement, sanity, costs, info, records)),
    }


# --------------------------------------------------------------------------- text formats


def summary_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "failed_cells"]
    for col in table.columns:
        header += [f"{col.key}_mean", f"{col.key}_ci_low", f"{col.key}_ci_high", f"{col.key}_n"]
    writer.writerow(header)
    for method in table.methods:
        row: list[object] = [method, table.failed[method]]
        for col in table.columns:
            est = table.cells[method, col.key]
            row += [NOT_COMPUTED, "", "", 0] if est is None else [f"{est.mean:.6g}", f"{est.low:.6g}", f"{est.high:.6g}", est.n]
        writer.writerow(row)
    return buffer.getvalue()


def _number(value: float, col: Column) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{2 if col.key == 'psnr' else 3}f}"


def _cell_text(table: Table, method: str, col: Column, bold: Callable[[str], str], tie: Callable[[str], str]) -> str:
    est = table.cells.get((method, col.key))
    if est is None:
        return NOT_COMPUTED
    text = f"{_number(est.mean, col)} [{_number(est.low, col)}, {_number(est.high, col)}]"
    if table.best.get(col.key) == method:
        return bold(text)
    return tie(text) if method in table.tied.get(col.key, ()) else text


def _arrow(col: Column) -> str:
    return "↑" if col.higher_is_better else "↓"


def _notes(table: Table, info: dict) -> list[str]:
    """The sentences under the table: the ranking rule, what each column means, n per column."""
    notes = [RANK_RULE.format(bounds=", ".join(BOUNDS), min_n=MIN_RANKED_SAMPLES)]
    for col in table.columns:
        if col.key == "reward":
            notes.append(f"Reward: {info.get('reward')} by Eq. 4, the raw 0–5 score / {REWARD_SCALE:g} (the paper's scale).")
        if col.key == "success":
            notes.append(f"Success: share of outputs whose DINO similarity to the source exceeds {info.get('dino_threshold')}.")
        if col.key == "color":
            notes.append("Color dist.: sliced Wasserstein distance to the reference's CIELAB colours (0: the same colours).")
        if col.key == "structure":
            notes.append("Structure: correlation of luminance gradients with the source (1: the source's edges exactly).")
    for method, settings in info.get("settings", {}).get("methods", {}).items():
        if str(settings.get("base", "")).startswith("tiny:"):
            notes.append(f"{method}: a tiny random-weight smoke model ({settings['base']}): it shows the flow runs, not the method's quality.")
    counts = [(c.label, next((e.n for m in table.methods if (e := table.cells.get((m, c.key)))), 0)) for c in table.columns]
    shown = ", ".join(f"{label} {n}" for label, n in counts if n)
    if shown:
        notes.append(f"Samples compared per column (n): {shown} of {len(info.get('samples', []))}.")
    return notes


def report_markdown(table: Table, agreement: dict, sanity: dict, costs: dict, info: dict) -> str:
    lines = [
        f"# Benchmark: {info.get('dataset', '?')}",
        "",
        "| Method | " + " | ".join(f"{c.label} {_arrow(c)}" for c in table.columns) + " | Failed cells |",
        "|---|" + "---|" * len(table.columns) + "---|",
    ]
    for method in table.methods:
        cells = [_cell_text(table, method, c, lambda t: f"**{t}**", lambda t: f"_{t}_") for c in table.columns]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {table.failed[method]} |")
    lines += [""] + [f"{note}  " for note in _notes(table, info)]
    if table.not_computed:
        lines += ["", "## Not computed", ""] + [f"- {what}: {why}" for what, why in table.not_computed.items()]
    excluded = [(table_col, sample, why) for table_col, samples in table.excluded.items() for sample, why in samples.items()]
    if excluded:
        lines += ["", "## Samples left out of a column", ""] + [f"- {col} / {sample}: {why}" for col, sample, why in excluded]
    if info.get("skipped"):
        lines += ["", "## Skipped samples", ""] + [f"- {s['name']}: {s['reason']}" for s in info["skipped"]]
    lines += ["", "## Inter-judge agreement (non-bound methods' cells)", ""]
    if agreement:
        lines += ["| Judges | Spearman ρ | Kendall τ | cells |", "|---|---|---|---|"]
        for (a, b), (rho, tau, n) in agreement.items():
            lines.append(f"| {a} vs {b} | {_maybe(rho)} | {_maybe(tau)} | {n} |")
    else:
        lines.append("Fewer than two judges scored this run.")
    if sanity:
        lines += ["", "Sanity check, each judge's mean score of the bounds (one measuring preset similarity rates "
                  "the reference far above the untouched source):", ""]  # fmt: skip
        lines += [f"- {judge}: " + ", ".join(f"{bound} {mean:.2f}" for bound, mean in means.items()) for judge, means in sanity.items()]
    lines += ["", "## API cost", "", _cost_line(costs), ""]
    return "\n".join(lines)


def _maybe(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report_latex(table: Table, info: dict) -> str:
    """A booktabs table for papers: means only, best in bold, ties underlined, "--" where not computed."""

    def cell(method: str, col: Column) -> str:
        est = table.cells.get((method, col.key))
        if est is None:
            return "--"
        text = "$\\infty$" if math.isinf(est.mean) else _number(est.mean, col)
        if table.best.get(col.key) == method:
            return f"\\textbf{{{text}}}"
        return f"\\underline{{{text}}}" if method in table.tied.get(col.key, ()) else text

    def escape(text: str) -> str:
        return text.replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")

    header = " & ".join(["Method"] + [f"{escape(c.label)} $\\{'uparrow' if c.higher_is_better else 'downarrow'}$" for c in table.columns])
    rows = [" & ".join([escape(m)] + [cell(m, c) for c in table.columns]) + " \\\\" for m in table.methods]
    caption = (
        f"Quantitative comparison on {escape(str(info.get('dataset', '')))}. Bold: best, significant under a paired "
        "bootstrap (95\\%); underlined: not significantly worse than the best."
    )
    return "\n".join(
        [
            "% requires \\usepackage{booktabs}",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{caption}}}",
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


def report_html(run_dir: Path, table: Table, agreement: dict, sanity: dict, costs: dict, info: dict, records: dict) -> str:
    """One page: the table, the transfer/preservation scatter, score distributions, and a grid per sample."""
    esc = html.escape
    head = "".join(f"<th>{esc(c.label)} {_arrow(c)}</th>" for c in table.columns)
    body = "".join(
        f"<tr><th>{esc(m)}</th>"
        + "".join(f"<td>{_cell_text(table, m, c, lambda t: f'<b>{t}</b>', lambda t: f'<i>{t}</i>')}</td>" for c in table.columns)
        + f"<td>{table.failed[m]}</td></tr>"
        for m in table.methods
    )
    notes = "".join(f"<p class=note>{esc(note).replace('**Bold**', '<b>Bold</b>').replace('_italic_', '<i>italic</i>')}</p>" for note in _notes(table, info))
    not_computed = "".join(f"<li>{esc(w)}: {esc(r)}</li>" for w, r in table.not_computed.items())
    excluded = "".join(f"<li>{esc(c)} / {esc(s)}: {esc(w)}</li>" for c, samples in table.excluded.items() for s, w in samples.items())
    agreement_rows = "".join(
        f"<tr><td>{esc(a)} vs {esc(b)}</td><td>{_maybe(rho)}</td><td>{_maybe(tau)}</td><td>{n}</td></tr>"
        for (a, b), (rho, tau, n) in agreement.items()
    )
    sanity_items = "".join(
        f"<li>{esc(j)}: " + ", ".join(f"{esc(b)} {m:.2f}" for b, m in means.items()) + "</li>" for j, means in sanity.items()
    )
    plots = "".join(
        f'<figure><img alt="{esc(c.label)} per method" src="data:image/png;base64,{png}"><figcaption>{esc(c.label)}</figcaption></figure>'
        for c in table.columns
        if (png := _distribution_plot(table.values[c.key], c))
    )
    scatter = _tradeoff_plot(table.values)
    return _PAGE.format(
        title=esc(f"Benchmark: {info.get('dataset', '')}"),
        intro=esc(f"{len(info.get('samples', []))} samples."),
        head=head,
        body=body,
        notes=notes,
        not_computed=f"<h2>Not computed</h2><ul>{not_computed}</ul>" if not_computed else "",
        excluded=f"<h2>Samples left out of a column</h2><ul>{excluded}</ul>" if excluded else "",
        agreement=(
            "<h2>Inter-judge agreement (non-bound methods)</h2><table><tr><th>judges</th><th>Spearman ρ</th>"
            f"<th>Kendall τ</th><th>cells</th></tr>{agreement_rows}</table>"
            if agreement_rows
            else ""
        ),
        sanity=f"<p>Sanity check, each judge's mean score of the bounds:</p><ul>{sanity_items}</ul>" if sanity_items else "",
        cost=esc(_cost_line(costs)),
        scatter=(
            "<h2>Transfer against preservation</h2><div class=plots><figure><img alt=\"color against structure "
            f"per method\" src=\"data:image/png;base64,{scatter}\"><figcaption>Each dot a sample, each cross a method's "
            "mean: left is closer to the reference's colours, up keeps more of the source's structure.</figcaption>"
            "</figure></div>"
            if scatter
            else ""
        ),
        plots=f"<h2>Score distributions</h2><div class=plots>{plots}</div>" if plots else "",
        grids=_sample_grids(run_dir, table, info, records),
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    _pyplot().close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _distribution_plot(values: dict[str, dict[str, float]], col: Column) -> str | None:
    """A box plot of the column's per-sample values per method, as base64 PNG (None: nothing to show).

    Infinite values (the PSNR of an exact copy) cannot be drawn and are left out of the plot only.
    """
    finite = {m: np.array([v for v in per_sample.values() if math.isfinite(v)]) for m, per_sample in values.items()}
    finite = {m: v for m, v in finite.items() if v.size}  # arrays: matplotlib converts lists slowly
    if not finite or col.key == "success":
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(1.2 + 0.9 * len(finite), 3.2), dpi=100)
    axes.boxplot(list(finite.values()), showmeans=True)
    axes.set_xticks(range(1, len(finite) + 1), list(finite), rotation=30, ha="right")
    axes.set_title(f"{col.label} ({'higher' if col.higher_is_better else 'lower'} is better)")
    return _png(figure)


def _tradeoff_plot(per_column: dict[str, dict[str, dict[str, float]]]) -> str | None:
    """``color`` (x, to the reference) against ``structure`` (y, to the source) per method, as base64 PNG.

    Each cross is a method's mean over all its samples; at most `MAX_PLOTTED_DOTS` of them are drawn as dots,
    evenly spread over the samples' order."""
    if "color" not in per_column or "structure" not in per_column:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for i, method in enumerate(per_column["color"]):
        color, structure = per_column["color"][method], per_column["structure"][method]
        samples = [s for s in color if s in structure]
        if not samples:
            continue
        x, y = np.array([color[s] for s in samples]), np.array([structure[s] for s in samples])
        shown = np.linspace(0, len(samples) - 1, min(len(samples), MAX_PLOTTED_DOTS)).round().astype(int)
        dots = axes.scatter(x[shown], y[shown], s=14, alpha=0.35, color=f"C{i % 10}")
        axes.scatter([x.mean()], [y.mean()], s=120, marker="X", color=dots.get_facecolor()[0][:3], label=method, edgecolors="black")
    axes.set_xlabel("color distance to the reference (lower: closer)")
    axes.set_ylabel("structure kept from the source (higher: more)")
    axes.legend(fontsize=8, loc="best")
    axes.grid(alpha=0.3)
    return _png(figure)


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
            output = record.get("output") if record.get("keys", {}).get("generate") == info["keys"]["methods"].get(method) else None
            cells.append(_figure(run_dir, output or "", method, _caption(record, table, info, method), _reasoning(record)))
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


def _caption(record: dict, table: Table, info: dict, method: str) -> str:
    parts = []
    for col in table.columns:
        if record.get("keys", {}).get(col.cell) == cell_key(info["keys"], method, col.cell):
            value = col.value(record)
            if value is not None:
                value /= col.scale
                parts.append(f"{col.label} {'∞' if math.isinf(value) else f'{value:.3g}'}")
    current = set(_current_cells(info))
    errors = "; ".join(f"{k}: {v}" for k, v in record["errors"].items() if k in current)
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
.note {{ font-size: 13px; color: #444; margin: 2px 0; }}
.placeholder {{ width: 220px; height: 140px; background: #eee; display: flex; align-items: center; justify-content: center; }}
</style></head><body>
<h1>{title}</h1>
<p>{intro}</p>
<table><tr><th>Method</th>{head}<th>Failed cells</th></tr>{body}</table>
{notes}
{not_computed}
{excluded}
{agreement}
{sanity}
<p>API cost: {cost}</p>
{scatter}
{plots}
{grids}
</body></html>
"""
