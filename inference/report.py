"""Turn results rows into frontier metrics, markdown tables and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from inference.evaluate import BASELINE
from inference.metrics import (
    MATCH_TOLERANCE, area_under_frontier, cost_for_gap_fraction, matches, paired_difference, speedup_at_matched_quality,
)

CONFIDENCE = 0.95  # level of the paired intervals of each point's quality difference from the target


def references(rows: list[dict]) -> dict[str, dict]:
    """The target-only, drafter-only and best lossless speculative rows, by name."""
    out = {}
    for row in rows:
        if row["mode"] == BASELINE:
            out[row["rule"]] = row
        elif row["rule"] == "speculative":
            best = out.get("speculative")
            if best is None or row["relative_latency"] < best["relative_latency"]:
                out["speculative"] = row
    return out


def curves(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Rows of each swept (rule, mode), every K together, sorted by relative latency."""
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        if row["mode"] != BASELINE and row["rule"] != "speculative":
            grouped[(row["rule"], row["mode"])].append(row)
    return {key: sorted(group, key=lambda r: r["relative_latency"]) for key, group in grouped.items()}


def frontier_summary(group: list[dict], refs: dict[str, dict]) -> dict:
    """Speed-up at matched target quality, area under the quality-latency frontier (over budgets
    from the drafter's latency to the target's), deferral rate for 50% / 80% of the quality gap."""
    target, drafter = refs["target"], refs["drafter"]
    latency_points = [(r["relative_latency"], r["quality"]) for r in group]
    anchors = [(drafter["relative_latency"], drafter["quality"]), (1.0, target["quality"])]
    rate_points = [(r["deferral_rate"], r["quality"]) for r in group if r["deferral_rate"] is not None]
    rate_points += [(0.0, drafter["quality"]), (1.0, target["quality"])]
    low = min(drafter["relative_latency"], 1.0 - 1e-9)
    matched = [r for r in group if matches(r["quality"], target["quality"])]
    fastest = min(matched, key=lambda r: r["relative_latency"]) if matched else {}
    return {
        "speedup_at_target_quality": speedup_at_matched_quality(latency_points, target["quality"]),
        "speedup_at_target_quality_low": _inverse(fastest.get("relative_latency_high")),
        "speedup_at_target_quality_high": _inverse(fastest.get("relative_latency_low")),
        "area_under_frontier": area_under_frontier(latency_points + anchors, low, 1.0),
        "deferral_rate_50pct_gap": cost_for_gap_fraction(rate_points, drafter["quality"], target["quality"], 0.5),
        "deferral_rate_80pct_gap": cost_for_gap_fraction(rate_points, drafter["quality"], target["quality"], 0.8),
        "best_quality": max(r["quality"] for r in group),
        "points": len(group),
    }


def summaries(rows: list[dict]) -> dict[tuple[str, str], dict]:
    refs = references(rows)
    if "target" not in refs or "drafter" not in refs:
        return {}
    return {key: frontier_summary(group, refs) for key, group in curves(rows).items()}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _inverse(value: float | None) -> float | None:
    return 1.0 / value if value else None


def _knob(row: dict) -> str:
    return "—" if row["knob"] is None else f"{row['knob_name']}={row['knob']:g}"


UNSETTLED = "~"  # marks a ratio whose spread over the timing repeats crosses 1.0


def crosses_one(low: float | None, high: float | None) -> bool:
    """True when a ratio's spread has values on both sides of 1.0: faster or slower is not established."""
    return low is not None and high is not None and low < 1.0 < high


def ratio_cell(value: float | None, low: float | None, high: float | None, digits: int) -> str:
    """A ratio with its spread, `0.95 (0.91–1.02) ~` (marked: the spread crosses 1.0), or `0.95 (1 run)`
    when it has none (the sweep's single pass)."""
    if value is None:
        return "—"
    if low is None or high is None:
        return f"{value:.{digits}f} (1 run)"
    mark = f" {UNSETTLED}" if crosses_one(low, high) else ""
    return f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f}){mark}"


def latency_cells(row: dict) -> tuple[str, str]:
    """A row's relative latency and speed-up (its inverse), each with its spread; the target row is 1
    by definition."""
    value = row["relative_latency"]
    if row["rule"] == "target" and row["mode"] == BASELINE:
        return _fmt(value), _fmt(_inverse(value), 2)
    low, high = row.get("relative_latency_low"), row.get("relative_latency_high")
    return ratio_cell(value, low, high, 3), ratio_cell(_inverse(value), _inverse(high), _inverse(low), 2)


def latency_legend(rows: list[dict]) -> str:
    """One line: how the rows' relative latencies were measured, and what the mark means."""
    timed = sorted({(r["timing_repeats"], r["timing_prompts"]) for r in rows if r.get("timing_repeats")})
    parts = []
    if timed:
        setups = " or ".join(f"{n} repeats on {p} prompts" for n, p in timed)
        parts.append(f"relative latency: median over {setups} (every point decodes the same prompts, interleaved with "
                     "the others) of its seconds over the target's in the same repeat, lowest and highest in brackets; "
                     f"speed-up = 1 / relative latency; {UNSETTLED}: the spread crosses 1.0, faster or slower than the "
                     "target is not established")
    if any(not r.get("timing_repeats") and r["rule"] != "target" for r in rows):
        parts.append("(1 run): one pass over all prompts, point after point, over the target's pass: not interleaved "
                     "or repeated, so a change of load on the machine moves it unseen")
    return "; ".join(parts)


def quality_vs_target(row: dict, target: dict | None) -> tuple[float, float, float] | None:
    """(difference, low, high) of the row's quality from the target's, paired over the same prompts;
    None where either row lacks per-example scores (results written before they were recorded)."""
    mine, theirs = row.get("quality_per_example"), (target or {}).get("quality_per_example")
    if not mine or not theirs or len(mine) != len(theirs):
        return None
    return paired_difference(mine, theirs, level=CONFIDENCE)


def difference_cell(row: dict, target: dict | None) -> str:
    d = quality_vs_target(row, target)
    return "—" if d is None else f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"


def resolution_note(rows: list[dict], target: dict | None) -> str:
    """One line: how large a quality difference these prompts resolve, beside the 1% match band (the
    median half-width of the points' intervals; points that equal the target everywhere have none)."""
    paired = [quality_vs_target(row, target) for row in rows if row is not target]
    paired = [d for d in paired if d is not None]
    widths = [(high - low) / 2 for _, low, high in paired if high > low]
    if not widths:
        return "Quality - target: no point scores differently from the target on any prompt." if paired else ""
    half = sorted(widths)[len(widths) // 2]
    band = MATCH_TOLERANCE * abs(target["quality"])
    verdict = "finer than" if half < band else "coarser than"
    return (f"Quality - target: the mean difference over the same {len(target['quality_per_example'])} prompts, with a "
            f"paired bootstrap {CONFIDENCE:.0%} interval. These prompts resolve about +-{half:.4f} (median half-width), "
            f"{verdict} the match band of +-{band:.4f} (1% of the target's quality).")


ROW_COLUMNS = ["knob", "K", "quality", "quality - target [95% CI]", "relative latency", "speed-up", "tokens / target call",
               "target calls / token", "deferral rate", "acceptance", "ROUGE-L vs target", "target NLL"]


def _row_cells(row: dict, target: dict | None) -> list[str]:
    return [
        _knob(row), str(row["draft_tokens"] or "—"), _fmt(row["quality"]), difference_cell(row, target),
        *latency_cells(row),
        _fmt(row["tokens_per_target_call"], 2), _fmt(row["target_calls_per_token"]),
        _fmt(row["deferral_rate"]), _fmt(row["acceptance_rate"]),
        _fmt(row["metrics"].get("rouge_l_vs_target")), _fmt(row["metrics"].get("target_nll")),
    ]


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in body]


def markdown_report(rows: list[dict], title: str) -> str:
    """A summary table over rules, the references, and one table per (rule, mode) with its knob sweep."""
    refs, groups, sums = references(rows), curves(rows), summaries(rows)
    quality_key = rows[0]["quality_key"] if rows else "quality"
    lines = [f"# {title}", "", f"Quality: `{quality_key}`. Matched quality: within 1% of the target's.", "",
             latency_legend(rows) + ".", ""]
    note = resolution_note(rows, refs.get("target"))
    if note:
        lines += [note, ""]
    lines += ["## Summary", ""]
    lines += _table(
        ["rule", "mode", "speed-up at target quality", "area under frontier", "deferral rate for 50% gap",
         "deferral rate for 80% gap", "best quality", "points"],
        [[rule, mode, ratio_cell(s["speedup_at_target_quality"], s["speedup_at_target_quality_low"],
                                 s["speedup_at_target_quality_high"], 2), _fmt(s["area_under_frontier"]),
          _fmt(s["deferral_rate_50pct_gap"]), _fmt(s["deferral_rate_80pct_gap"]), _fmt(s["best_quality"]),
          str(s["points"])] for (rule, mode), s in sums.items()],
    )
    lines += ["", "## References", ""]
    ref_rows = [r for r in rows if r["mode"] == BASELINE or r["rule"] == "speculative"]
    lines += _table(["rule"] + ROW_COLUMNS, [[r["rule"]] + _row_cells(r, refs.get("target")) for r in ref_rows])
    for (rule, mode), group in groups.items():
        lines += ["", f"## {rule} ({mode})", ""]
        lines += _table(ROW_COLUMNS, [_row_cells(r, refs.get("target")) for r in sorted(group, key=lambda r: (r["draft_tokens"], r["knob"]))])
    return "\n".join(lines) + "\n"


def _spreads(ax, rows: list[dict], x_key: str, color) -> None:
    """A horizontal bar from the lowest to the highest relative latency over the timing repeats."""
    if x_key != "relative_latency":
        return
    for row in rows:
        if row.get("relative_latency_low") is not None:
            ax.hlines(row["quality"], row["relative_latency_low"], row["relative_latency_high"], color=color,
                      linewidth=1.5, alpha=0.5)


def plot(rows: list[dict], x_key: str, x_label: str, title: str, path: Path):
    """Quality against `x_key` for every swept (rule, mode), references marked; saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for (rule, mode), group in curves(rows).items():
        group = sorted((r for r in group if r[x_key] is not None), key=lambda r: r[x_key])
        [line] = ax.plot([r[x_key] for r in group], [r["quality"] for r in group], marker="o", markersize=4,
                         linestyle="-" if mode == "speculative" else "--", label=f"{rule} ({mode})")
        _spreads(ax, group, x_key, line.get_color())
    refs = references(rows)
    markers = {"target": ("*", "black", "target only"), "drafter": ("s", "gray", "drafter only"),
               "speculative": ("D", "red", "lossless speculative")}
    for name, (marker, color, label) in markers.items():
        row = refs.get(name)
        if row is not None and row[x_key] is not None:
            ax.scatter([row[x_key]], [row["quality"]], marker=marker, color=color, s=120, zorder=5, label=label)
            _spreads(ax, [row], x_key, color)
    if "target" in refs:
        ax.axhline(refs["target"]["quality"], color="black", linestyle=":", linewidth=0.8)
    quality_key = rows[0]["quality_key"] if rows else "quality"
    ax.set_xlabel(x_label)
    ax.set_ylabel(quality_key)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def write_report(rows: list[dict], out: Path, title: str) -> dict[str, Path]:
    """Write tables.md, quality_vs_latency.png and quality_vs_deferral.png into `out`."""
    import matplotlib.pyplot as plt

    paths = {"tables": out / "tables.md", "latency_plot": out / "quality_vs_latency.png",
             "deferral_plot": out / "quality_vs_deferral.png"}
    paths["tables"].write_text(markdown_report(rows, title))
    plt.close(plot(rows, "relative_latency", "relative latency (target only = 1; bars: spread over the timing repeats)",
                   title, paths["latency_plot"]))
    plt.close(plot(rows, "deferral_rate", "deferral rate", title, paths["deferral_plot"]))
    return paths


def comparison_table(rows: list[dict]) -> str:
    """Every row in one markdown table, references first: the short view `deferral demo` prints."""
    header = ["rule", "mode"] + ROW_COLUMNS
    order = {"target": 0, "drafter": 1, "speculative": 2}
    ranked = sorted(rows, key=lambda r: (order.get(r["rule"], 3), r["rule"], r["mode"], r["knob"] or 0))
    target = references(rows).get("target")
    return "\n".join(_table(header, [[r["rule"], r["mode"]] + _row_cells(r, target) for r in ranked])) + "\n"
