"""Where training metrics go: `metrics.jsonl` always, Weights & Biases when asked, a loss-curve PNG at the end."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .fileio import atomic_open, save_png


class Tracker:
    """Appends one JSON record per event to out_dir/metrics.jsonl and mirrors it to wandb if enabled."""

    def __init__(self, out_dir: Path, resume_at: int | None = None, run_config: dict | None = None,
                 wandb: tuple[str, str] | None = None, wandb_id: str = ""):
        """`resume_at`: the iteration a resumed run continues from (later records are dropped); `wandb`:
        (project, run name) to mirror to Weights & Biases, continuing run `wandb_id` when given."""
        self.path = Path(out_dir) / "metrics.jsonl"
        if resume_at is not None:
            self._rewind(resume_at)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self.file = open(self.path, "a")
        self.wandb = None
        self.wandb_id = wandb_id
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise UserError("--wandb_log=true needs the wandb package; pip install wandb") from None
            project, name = wandb
            self.wandb = wandb_lib.init(project=project, name=name or None, config=run_config, dir=str(out_dir),
                                        id=wandb_id or None, resume="allow")
            self.wandb_id = self.wandb.id

    def _rewind(self, step: int) -> None:
        """Drop records past the checkpoint we resume from: a resumed run logs exactly what a straight one does."""
        if not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("iter", 0) <= step:
                keep.append(line)
        with atomic_open(self.path, "w") as f:
            f.write("".join(line + "\n" for line in keep))

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "iter"}, step=record["iter"])

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_losses(metrics_path: str | Path, png_path: str | Path) -> Path:
    """Train (per log line and per eval) and val loss against iteration, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["iter"], r["loss"]) for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train:
        ax.plot(*zip(*train), lw=0.8, alpha=0.6, label="train (batch)")
    if evals:
        ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train (estimate)")
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val (estimate)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, png_path, "the loss plot")
