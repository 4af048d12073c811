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
from .selector import acquisition_for_round

__all__ = ["RunMetrics", "percent"]


def percent(value) -> str:
    """An mIoU in percent, or "n/a" where it was not measured (no validation masks)."""
    return "n/a" if value is None else f"{100 * value:.2f}"


class RunMetrics:
    """The metrics files of ``run``; ``title`` heads the plot, ``class_names`` the IoU columns."""

    def __init__(self, run: RunDir, class_names, *, acquisition: str, title: str, stage2: bool, warn_damaged):
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
            "percent_full_cost": math.nan if full_cost is None else 100.0 * cum / max(full_cost, 1),
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
        """Rewrite a damaged CSV or plot from the records (rank 0)."""
        if not metrics or not dist.is_main():
            return
        for path in (self.run.metrics_csv, self.run.plot):
            try:
                self.run.manifest.verify(path)
            except DamagedFileError as err:
                self.warn_damaged(err, "writing it again")
                self._write(metrics)
                break

    def _write(self, metrics: list[dict]) -> None:
        self.run.write_json(self.run.metrics_json, {"class_names": self.class_names, "rounds": metrics})
        buf = io.StringIO()
        cols = ["round", "acquisition", "clicks", "cumulative_clicks", "percent_full_cost", "labeled_regions",
                "labeled_images", "miou", "stage1_miou", "stage2_miou", "pseudo_label_accuracy"]
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
        lines = [head, "-" * len(head)]
        for m in metrics:
            line = (f"{m['round']:>5} {m['clicks']:>8} {m['cumulative_clicks']:>10} {m['percent_full_cost']:>7.2f} "
                    f"{m['labeled_regions']:>8} {percent(m['miou']):>7}")
            if self.stage2:
                line += f" {percent(m['stage1_miou']):>7} {percent(m.get('stage2_miou', math.nan)):>7}"
            lines.append(line)
        return "\n".join(lines)
