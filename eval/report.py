"""The evaluation report: one Markdown file with PNGs, rebuilt from every run's results.jsonl.

For each run: each metric over kimg (one PNG per run, a panel per metric), the latest snapshot's sample
grid, reconstructions and OOD histogram, and a table of every evaluated snapshot; failures are listed;
a banner says when FIDs come from the stand-in extractor; each run names its feature extractor and
the sha256 of its weights, and the snapshots whose FID was skipped mid-fade.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from sivae.core.fileio import atomic_write_text
from sivae.core.run_dir import RunDir, latest_grid
from sivae.eval.features import STANDIN_WARNING
from sivae.eval.nightly import read_results
from sivae.eval.plots import metric_over_kimg

# The order metrics appear in (others present in the results follow).
PREFERRED = ("fid", "kid", "rfid", "mse", "psnr", "ssim", "lpips", "log_likelihood", "elbo", "auroc", "auprc",
             "fpr95", "auroc_elbo")
TABLE = ("fid", "kid", "rfid", "psnr", "ssim", "log_likelihood", "auroc", "fpr95", "jsd", "mmd_cd", "cov_cd",
         "1nna_cd", "recon_cd")
BOOKKEEPING = ("fid_num_samples", "kid_std", "kid_subset_size", "recon_num_images", "recon_unreadable",
               "iw_samples", "jsd_std", "points_reference_unreadable")


def slug(run: RunDir, runs_dir: Path) -> str:
    try:
        rel = run.root.resolve().relative_to(Path(runs_dir).resolve())
    except ValueError:
        rel = Path(run.root.name)
    return str(rel).replace("/", "__") if str(rel) != "." else run.root.name


def metric_keys(records: list[dict[str, Any]]) -> list[str]:
    present = {k for r in records for k in r.get("metrics", {}) if k not in BOOKKEEPING}
    return [k for k in PREFERRED if k in present] + sorted(present - set(PREFERRED))


def _format(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _copy(source: Path | None, target: Path) -> str | None:
    if source is None or not Path(source).is_file():
        return None
    shutil.copyfile(source, target)
    return target.name


def run_section(run: RunDir, runs_dir: Path, report_dir: Path) -> tuple[list[str], dict[str, Any], bool]:
    """Markdown lines of one run, its summary row, and whether any of its results used the stand-in."""
    name = slug(run, runs_dir)
    records = read_results(run)
    ok = sorted((r for r in records if r.get("status") == "ok"), key=lambda r: r["images"])
    failed = [r for r in records if r.get("status") != "ok"]
    lines = [f"## {name}", "", f"Run directory: `{run.root}`", ""]
    if not ok:
        lines += ["No evaluated snapshots yet.", ""]
    else:
        keys = metric_keys(ok)
        series = {k: [(r["kimg"], r["metrics"][k]) for r in ok if k in r["metrics"]] for k in keys}
        plot = metric_over_kimg(series, report_dir / f"{name}-metrics.png", title=f"{name}: metrics over kimg")
        lines += [f"![metrics over kimg]({plot.name})", ""]
        latest = ok[-1]
        level = f"{latest['resolution']}px" if latest["resolution"] is not None else "no levels"
        lines += [f"Latest snapshot: `{latest['snapshot']}` at {latest['kimg']:g} kimg, {level}.", ""]
        for extractor, digest in dict.fromkeys((r.get("extractor"), r.get("extractor_sha256")) for r in ok):
            if extractor:
                lines += [f"Features: `{extractor}`, weights sha256 `{digest or '- (no weights file)'}`.", ""]
        skipped = [r["snapshot"] for r in ok if r.get("fid_skipped")]
        if skipped:
            lines += ["FID/KID skipped (taken during a fade, eval.faded_snapshots 'skip'): " +
                      ", ".join(f"`{name}`" for name in skipped) + ".", ""]
        files = latest.get("files", {})
        samples = _copy(Path(files["samples.png"]) if "samples.png" in files else latest_grid(run.samples),
                        report_dir / f"{name}-samples.png")
        recon = _copy(Path(files["reconstructions.png"]) if "reconstructions.png" in files else None,
                      report_dir / f"{name}-reconstructions.png")
        hist = _copy(Path(files["ood_histogram.png"]) if "ood_histogram.png" in files else None,
                     report_dir / f"{name}-ood.png")
        for title, image in (("Samples", samples), ("Test images (odd rows) over reconstructions (even rows)", recon),
                             ("OOD scores", hist)):
            if image:
                lines += [f"{title}:", "", f"![{Path(image).stem}]({image})", ""]
        lines += ["| kimg | px | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for r in ok:
            lines.append(f"| {r['kimg']:g} | {r['resolution']} | " +
                         " | ".join(_format(r["metrics"].get(k)) for k in keys) + " |")
        lines.append("")
    if failed:
        lines += ["Failed snapshots:", ""] + [f"- `{r['snapshot']}`: {r.get('error', '?')}" for r in failed] + [""]
    row = {"name": name, "evaluated": len(ok), "failed": len(failed)}
    if ok:
        row |= {"kimg": ok[-1]["kimg"], **{k: ok[-1]["metrics"].get(k) for k in TABLE}}
    return lines, row, any(r.get("extractor_is_standin") for r in ok)


def render_report(runs: list[RunDir], runs_dir: Path, report_dir: Path) -> Path:
    """Write report_dir/report.md (and its PNGs) over all results of `runs`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    sections, rows, standin = [], [], False
    for run in runs:
        lines, row, used_standin = run_section(run, runs_dir, report_dir)
        sections += lines
        rows.append(row)
        standin |= used_standin
    head = ["# Evaluation report", "", f"Runs under `{runs_dir}`; generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    if standin:
        head += [f"> **WARNING**: {STANDIN_WARNING}", ""]
    head += ["| run | evaluated | failed | latest kimg | " + " | ".join(TABLE) + " |", "|---" * (len(TABLE) + 4) + "|"]
    for row in rows:
        head.append(f"| {row['name']} | {row['evaluated']} | {row['failed']} | {_format(row.get('kimg'))} | " +
                    " | ".join(_format(row.get(k)) for k in TABLE) + " |")
    head.append("")
    return atomic_write_text(report_dir / "report.md", "\n".join(head + sections) + "\n")
