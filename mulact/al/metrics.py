"""What a run reports: ``metrics.json`` (every round's record), ``metrics.csv``, the
mIoU-vs-clicks plot and the summary table printed at the end.

A damaged metrics file means "evaluate the finished rounds again" (with a warning); a damaged
CSV or plot is rewritten from the records. Rank 0 of a job reads and writes; the other ranks
receive its records.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from mulact import distributed as dist
from mulact.runstore import DamagedFileError, RunDir

from .pool import RegionPool
from .reference import clicks_to_fraction
from .selector import acquisition_for_round

__all__ = ["RunMetrics", "describe_clicks_to", "percent", "share_of_full_cost"]


def share_of_full_cost(rec: dict) -> str:
    """A record's cumulative clicks as "% of the full cost", or "n/a" where that is unknown."""
    v = rec.get("percent_full_cost")
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}"


def percent(value) -> str:
    """An mIoU in percent, or "n/a" where it was not measured (no validation masks)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def describe_clicks_to(res: dict) -> str:
    """One line for a :func:`~mulact.al.reference.clicks_to_fraction` result."""
    if not res.get("reached"):
        return "not reached" + (f" ({res['reason']})" if res.get("reason") else "")
    pct = res.get("percent_full_cost")
    where = "" if pct is None or not math.isfinite(pct) else f" ({pct:.2f}% of the full cost)"
    bound = "at most " if res.get("bound") == "at most" else ""
    return f"{bound}{res['clicks']:.0f}{where}, round {res['round']}"


class RunMetrics:
    """The metrics files of ``run``; ``title`` heads the plot, ``class_names`` the IoU columns."""

    def __init__(self, run: RunDir, class_names, *, acquisition: str, title: str, stage2: bool, warn_damaged,
                 reference: dict | None = None):
        self.reference = reference  # the full-supervision reference (mulact.al.reference), or None
        self.run = run
        self.class_names = list(class_names)
        self.acquisition = acquisition
        self.title = title
        self.stage2 = stage2
        self.warn_damaged = warn_damaged

    # -- records ----------------------------------------------------------------------------
    def round_record(self, t: int, pool: RegionPool, full_cost, ev: dict, s1: dict) -> dict:
        """Round ``t``'s record after stage 1 (``ev``: its evaluation, ``s1``: its training)."""
        upto = (pool.round > 0) & (pool.round <= t)
        cum = int(pool.cost[upto].sum())
        return {
            "round": t,
            "acquisition": acquisition_for_round(t, self.acquisition),
            "clicks": pool.clicks(t),
            "cumulative_clicks": cum,
            # null when the full cost is unknown (human oracle: nobody answered every region)
            "percent_full_cost": None if full_cost is None else 100.0 * cum / max(full_cost, 1),
            "full_annotation_cost": full_cost,
            "labeled_regions": int(upto.sum()),
            "labeled_images": len(np.unique(pool.image_of(np.flatnonzero(upto)))),
            "miou": ev["miou"],
            "iou": ev["iou"],
            "stage1_miou": ev["miou"],
            "stage1_iou": ev["iou"],
            "miou_measured": ev.get("miou_measured", True),
            "stage1_seconds": s1.get("seconds"),
            "stage1_final_loss": s1.get("last_loss"),
        }

    @staticmethod
    def full_record(full_cost, regions: int, images: int, ev: dict, s1: dict) -> dict:
        """The one record of a ``--labeling full`` run: every region of the train split labeled."""
        return {
            "round": 1, "acquisition": "all", "clicks": full_cost, "cumulative_clicks": full_cost,
            "percent_full_cost": 100.0, "full_annotation_cost": full_cost, "labeled_regions": int(regions),
            "labeled_images": int(images), "miou": ev["miou"], "iou": ev["iou"], "stage1_miou": ev["miou"],
            "stage1_iou": ev["iou"], "miou_measured": ev.get("miou_measured", True),
            "stage1_seconds": s1.get("seconds"), "stage1_final_loss": s1.get("last_loss"),
        }

    def annotate(self, metrics: list[dict]) -> dict:
        """Each record's mIoU as % of the reference (``percent_of_reference``) and the run's
        Table 1 figure; the metrics file's ``reference`` and ``clicks_to_95`` entries."""
        ref = self.reference
        ref_miou = None if ref is None else ref.get("miou")
        for m in metrics:
            m.pop("reference_miou", None)
            m.pop("percent_of_reference", None)
            if ref_miou is not None:
                m["reference_miou"] = ref_miou
                m["percent_of_reference"] = (None if m.get("miou") is None or ref_miou <= 0
                                             else 100.0 * m["miou"] / ref_miou)
        if ref is None:
            return {}
        return {"reference": ref, "clicks_to_95": clicks_to_fraction(metrics, ref_miou, 0.95)}

    @staticmethod
    def add_stage2(rec: dict, ev: dict, s2: dict) -> None:
        """Stage 2's evaluation ``ev`` and training ``s2`` into ``rec`` (its mIoU is the round's)."""
        rec.update(stage2_miou=ev["miou"], stage2_iou=ev["iou"], miou=ev["miou"], iou=ev["iou"],
                   pseudo_label_accuracy=s2["pseudo"]["accuracy"],
                   pseudo_localized_pixels=s2["pseudo"]["localized"],
                   pseudo_expanded_pixels=s2["pseudo"]["expanded"],
                   stage2_seconds=s2.get("seconds"))

    # -- files ------------------------------------------------------------------------------
    def load(self) -> list[dict]:
        """The records of the finished rounds (rank 0 decides; a damaged file counts as none)."""
        return dist.broadcast_object(self._read() if dist.is_main() else None, what="metrics lookup")

    def _read(self) -> list[dict]:
        try:
            return self.run.recorded_rounds()
        except DamagedFileError as err:
            self.warn_damaged(err, "evaluating the finished rounds again")
            return []

    def save(self, t: int, metrics: list[dict]) -> None:
        """Write the records after round ``t`` (rank 0; the others wait)."""
        if dist.is_main():
            self._write(metrics)
        dist.barrier(f"round {t}: metrics saved")

    def check_files(self, metrics: list[dict]) -> None:
        """Rewrite a damaged CSV or plot from the records (rank 0), and the metrics files when
        the reference changed (``--reference`` may change on a rerun)."""
        if not metrics or not dist.is_main():
            return
        try:
            held = self.run.read_metrics()
        except DamagedFileError:
            held = None
        if held is None or held.get("reference") != self.reference:
            self._write(metrics)
            return
        for path in (self.run.metrics_csv, self.run.plot):
            try:
                self.run.manifest.verify(path)
            except DamagedFileError as err:
                self.warn_damaged(err, "writing it again")
                self._write(metrics)
                break

    def _write(self, metrics: list[dict]) -> None:
        extra = self.annotate(metrics)
        self.run.write_json(self.run.metrics_json, {"class_names": self.class_names, "rounds": metrics, **extra})
        buf = io.StringIO()
        cols = ["round", "acquisition", "clicks", "cumulative_clicks", "percent_full_cost", "labeled_regions",
                "labeled_images", "miou", "stage1_miou", "stage2_miou", "pseudo_label_accuracy"]
        cols += ["percent_of_reference"] if self.reference is not None else []
        cols += [k for k in ("planned_clicks", "annotation_seconds", "seconds_per_query", "seconds_per_click")
                 if any(k in m for m in metrics)]
        w = csv.writer(buf)
        w.writerow(cols + [f"iou_{n}" for n in self.class_names])
        for m in metrics:
            w.writerow([m.get(k, "") for k in cols] + list(m["iou"]))
        self.run.write_bytes(self.run.metrics_csv, buf.getvalue().encode())
        self.run.write_bytes(self.run.plot, self._plot(metrics))

    def _plot(self, metrics: list[dict]) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
        x = [m["cumulative_clicks"] for m in metrics]

        def pct(v):
            return math.nan if v is None else 100 * v

        ax.plot(x, [pct(m["stage1_miou"]) for m in metrics], "o-", label="stage 1")
        if any("stage2_miou" in m for m in metrics):
            ax.plot(x, [pct(m.get("stage2_miou", math.nan)) for m in metrics], "s-", label="stage 2")
        ref = None if self.reference is None else self.reference.get("miou")
        if ref is not None:
            ax.axhline(100 * ref, color="0.3", ls="--", lw=1, label="full supervision")
            ax.axhline(95 * ref, color="0.3", ls=":", lw=1, label="95 % of it")
        if not all(m.get("miou_measured", True) for m in metrics):
            ax.text(0.5, 0.5, "mIoU not measured\n(no validation masks)", transform=ax.transAxes, ha="center")
        ax.set_xlabel("clicks (cumulative)")
        ax.set_ylabel("mIoU (%)")
        ax.set_title(self.title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        return buf.getvalue()

    def summary_table(self, metrics: list[dict]) -> str:
        head = f"{'round':>5} {'clicks':>8} {'cumulative':>10} {'% full':>7} {'regions':>8} {'mIoU':>7}"
        if self.stage2:
            head += f" {'stage1':>7} {'stage2':>7}"
        ref = None if self.reference is None else self.reference.get("miou")
        if ref is not None:
            head += f" {'% ref':>6}"
        lines = [head, "-" * len(head)]
        for m in metrics:
            line = (f"{m['round']:>5} {m['clicks']:>8} {m['cumulative_clicks']:>10} {share_of_full_cost(m):>7} "
                    f"{m['labeled_regions']:>8} {percent(m['miou']):>7}")
            if self.stage2:
                line += f" {percent(m['stage1_miou']):>7} {percent(m.get('stage2_miou', math.nan)):>7}"
            if ref is not None:
                share = "n/a" if m.get("miou") is None else f"{100 * m['miou'] / ref:.1f}"
                line += f" {share:>6}"
            lines.append(line)
        if ref is not None:
            lines.append(f"full-supervision reference: mIoU {percent(ref)} ({self.reference['run_dir']}); "
                         f"clicks to 95 % of it: {describe_clicks_to(clicks_to_fraction(metrics, ref, 0.95))}")
        return "\n".join(lines)
