"""Every name that is a choice somewhere, defined once: config validation, the modules that implement
the choices, the CLI, the launcher and analysis all import them from here.

Torch-free and dependency-free, so anything can import it (`ablate status` and analysis included).
Adding a choice (a data set, an encoder, a loss, a metric, a cell state) starts here;
tests/test_names.py checks that each implementing module covers exactly these names. A registry is
itself the one list of its names: augmentation ops (ablation.augment.REGISTRY) and training methods
(ablation.methods.REGISTRY) are registered where they are implemented, and config validation and the
CLI read their names from the registry (checked one layer above config.py, in ablation/registered.py).
"""

from __future__ import annotations

# ---- cell config choices (ablation/config.py validates against these)
DATASETS = ("embedded", "cifar10", "cifar100", "stl10", "folder")
RESIDENT = ("auto", "always", "never")
SERVE_MODES = ("auto", "resident", "stream")  # image folders: held in memory or streamed
DECODERS = ("workers", "device")  # streamed folders: where JPEGs are decoded
VIEW_MODES = ("asymmetric", "symmetric")
ENCODERS = ("small_cnn", "resnet18", "resnet50")
HEADS = ("none", "linear", "nonlinear")
LOSSES = ("nt_xent", "nt_logistic", "margin")
SEMI_HARD_LOSSES = ("nt_logistic", "margin")  # the LOSSES that Table 4 also runs with semi-hard negative mining
OPTIMIZERS = ("lars", "sgd", "adamw")
LR_SCALINGS = ("linear", "sqrt")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "always", "never")
# Linear evaluation protocols (eval.linear): lbfgs, full-batch L-BFGS on standardised features of un-augmented
# images (fast, deterministic); sgd, the paper's Appendix B.6 (Nesterov SGD on the frozen encoder's features of
# cropped and flipped images); online, a linear head on detached features trained alongside pretraining (the
# reference code's way).
LBFGS, SGD, ONLINE = "lbfgs", "sgd", "online"
LINEAR_PROTOCOLS = (LBFGS, SGD, ONLINE)

# ---- experiments and launching
GRID_KINDS = ("pairwise", "product")

EXECUTORS = ("auto", "slurm", "local")
# The paper's tables and figures an experiment can reproduce, and how the paper names them.
PAPER_TABLES = {
    "figure5": "Figure 5",
    "table1": "Table 1",
    "table4": "Table 4",
    "table5": "Table 5",
    "figure8": "Figure 8",
    "tableB1": "Table B.1",
}


def pair_spec(first: str, second: str) -> str:
    """A pairwise cell's views and label (summary.csv's `label`): the op alone on the diagonal (Figure 5's
    single transformations), else the composition first+second."""
    return first if first == second else f"{first}+{second}"


# ---- result.json "status": written by the cell (corrupt: a file of the cell cannot be read)
FINISHED, FAILED, CORRUPT = "finished", "failed", "corrupt"

# ---- cell states shown by `ablate status`, in display order
DONE, RUNNING, QUEUED, UNKNOWN, TODO, CANCELLED, TIMEOUT = (
    "done",
    "running",
    "queued",
    "unknown",
    "todo",
    "cancelled",
    "timeout",
)
STATES = (DONE, RUNNING, QUEUED, UNKNOWN, TODO, FAILED, CORRUPT, CANCELLED, TIMEOUT)
RETRYABLE = (FAILED, CORRUPT, CANCELLED, TIMEOUT)  # rerun by `ablate grid --retry`
ENDED = (DONE, FAILED, CORRUPT, CANCELLED, TIMEOUT)  # a todo cell has not ended: it waits for a launch

# ---- how a launch's run of one cell ended (local workers, packs): FINISHED, INTERRUPTED (stopped by a signal
# with a checkpoint: the next launch resumes it) or "failed: why"
INTERRUPTED = "interrupted"

# ---- summary.csv "status" of a cell without a result.json: LAUNCHED (it has a job.json) or PENDING (never launched)
LAUNCHED, PENDING = "launched", "pending"

# ---- metrics in result.json
LINEAR_TOP1, LINEAR_TOP5, KNN_TOP1, RANDOM_INIT_TOP1, FINAL_LOSS = (
    "linear_top1",
    "linear_top5",
    "knn_top1",
    "random_init_top1",
    "final_loss",
)
ACCURACIES = (LINEAR_TOP1, LINEAR_TOP5, KNN_TOP1, RANDOM_INIT_TOP1)  # fractions in [0, 1]
METRICS = (*ACCURACIES, FINAL_LOSS)
PRIMARY_METRIC = LINEAR_TOP1  # what status tables, logs and figures show
PER_CLASS = "linear_top1_per_class"  # {class name: linear top-1 on that class's test images}


def protocol_metric(protocol: str) -> str:
    """The metric holding one protocol's linear top-1 (eval.compare: every protocol's, beside linear_top1)."""
    return f"{LINEAR_TOP1}_{protocol}"


# ---- result.json: how the run went, beside status and metrics (analysis reads them as columns)
EPOCHS_DONE, IMAGES_SEEN, WALL_TIME_S, IMAGES_PER_S = "epochs_done", "images_seen", "wall_time_s", "images_per_s"
RUN_STATS = (EPOCHS_DONE, IMAGES_SEEN, WALL_TIME_S, IMAGES_PER_S)

# ---- metrics.jsonl: one row per trained epoch (ablation/metrics_log.py writes them). Training: EPOCH (epochs
# done), STEP, WALL_S (seconds since the run started), TIME (unix time), LOSS, LR, IMAGES_PER_S; embedding
# statistics of a method with projections: POS_SIM, ALIGN, UNIFORM; the probes (every train.log_every epochs)
# under their result.json names (LINEAR_TOP1, LINEAR_TOP5, KNN_TOP1).
EPOCH, STEP, WALL_S, TIME, LOSS, LR = "epoch", "step", "wall_s", "time", "loss", "lr"
POS_SIM, ALIGN, UNIFORM = "pos_sim", "align", "uniform"

# result.json's "eval": how the cell's linear metrics were measured (the protocol of linear_top1 and its kin)
EVAL_RECORD, LINEAR_PROTOCOL = "eval", "linear_protocol"
# Methods whose meaning changed after cells were run with them: the revision is part of their cells' ids, so
# finished cells of an older revision are never taken for new ones (barlow_twins 1: its authors' bias lr).
METHOD_REVISIONS = {"barlow_twins": 1}
