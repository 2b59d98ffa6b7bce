"""Option groups shared by several commands, defined once so that `run` and the stages agree."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

import click
import yaml
from unsamflow.pipeline.cluster import (
    LOOPBACK,
    ClusterConfig,
    check_scheduler_address,
    check_slurm_commands,
    check_tls,
)
from unsamflow.pipeline.errors import BadInputError
from unsamflow.pipeline.segmenters.base import SegmenterSpec


def parse_kv(items: tuple[str, ...], what: str) -> dict:
    """KEY=VALUE pairs; VALUE is parsed as JSON when it can be (numbers, lists, true/false)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInputError(f"{what}: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def parse_size(value: str | int | None, what: str) -> int | None:
    """'2GiB', '500MB', a number of bytes, or 'auto' (None)."""
    from dask.utils import parse_bytes

    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        size = int(parse_bytes(value))
    except (ValueError, TypeError):
        raise BadInputError(f"{what}: a size such as 2GiB or 500MB, or auto; got {value!r}") from None
    if size <= 0:
        raise BadInputError(f"{what}: must be positive, got {value!r}")
    return size


LAYOUT_OPTION_HELP = (
    "Layout option KEY=VALUE (repeatable), the same syntax in every command: split=training|test (sintel), "
    "split=training|testing (kitti*); passes=clean,final,albedo (sintel; default clean,final); "
    "multiview=true (kitti*: every frame of the multi-view download, not only the 10 -> 11 pair); "
    "gray=true (kitti2012: image_0/; middlebury: other-data-gray/); split=all|train|val (flyingchairs); "
    "list=FILE (pairs: the list inside --root; or give the list file as --root).")


def layout_options(required: bool):
    """--layout (a choice; ptlflow's names too) and -l/--layout-option KEY=VALUE (kwargs layout_opts)."""
    from unsamflow.pipeline.layouts import layout_names

    def deco(f):
        f = click.option("-l", "--layout-option", "layout_opts", multiple=True, metavar="KEY=VALUE",
                         help=LAYOUT_OPTION_HELP)(f)
        return click.option(
            "--layout", required=required, default=None, type=click.Choice(layout_names()),
            help="Dataset layout; ptlflow's names sintel-clean, sintel-final (= sintel -l passes=...), "
                 "kitti-2015, kitti-2012 and every dataset name evaluate and train take are accepted too."
                 + ("" if required else " Not needed with --manifest."),
        )(f)

    return deco


def segmenter_options(f):
    """--segmenter, --checkpoint, --model-type and free -o KEY=VALUE options -> kwargs['spec']."""

    @click.option("--segmenter", default="graph", show_default=True,
                  help="sam, graph (weight-free default), an entry point name, or module:factory.")
    @click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                  help="SAM checkpoint (.pth); implies --segmenter sam.")
    @click.option("--model-type", default=None, metavar="TYPE",
                  help="SAM model type matching --checkpoint: vit_h, vit_l or vit_b (the README's checkpoint "
                       "table); vit_tiny for a smoke-test checkpoint from `segmenters --tiny-checkpoint`.")
    @click.option("-o", "--segmenter-option", "seg_opts", multiple=True, metavar="KEY=VALUE",
                  help="Any segmenter option, e.g. -o points_per_side=32 -o pred_iou_thresh=0.86 "
                       "(see `pipeline segmenters`).")
    @functools.wraps(f)
    def wrapper(*args, segmenter, checkpoint, model_type, seg_opts, **kwargs):
        options = parse_kv(seg_opts, "--segmenter-option")
        if checkpoint:
            segmenter = "sam" if segmenter == "graph" else segmenter
            options["checkpoint"] = str(Path(checkpoint).resolve())
        if model_type:
            options["model_type"] = model_type
        kwargs["spec"] = SegmenterSpec(segmenter, options)
        return f(*args, **kwargs)

    return wrapper


def derive_options(f):
    """Key-object thresholds (method.md section 1) -> kwargs['derive_config'] (a dict)."""
    from unsamflow.pipeline.derive import DeriveConfig

    defaults = DeriveConfig()

    @click.option("--key-min-h", type=int, default=defaults.min_h, show_default=True,
                  help="Key objects: minimum bbox height (px).")
    @click.option("--key-max-h", type=int, default=defaults.max_h, show_default=True,
                  help="Key objects: maximum bbox height (px).")
    @click.option("--key-min-w", type=int, default=defaults.min_w, show_default=True,
                  help="Key objects: minimum bbox width (px).")
    @click.option("--key-max-w", type=int, default=defaults.max_w, show_default=True,
                  help="Key objects: maximum bbox width (px).")
    @click.option("--key-min-fill", type=float, default=defaults.min_fill, show_default=True,
                  help="Key objects: minimum area / bbox area (a fraction, 0..1).")
    @click.option("--key-min-overlaps", type=int, default=defaults.min_overlaps, show_default=True,
                  help="Key objects: minimum number of masks overlapping it (a count, itself included).")
    @functools.wraps(f)
    def wrapper(*args, key_min_h, key_max_h, key_min_w, key_max_w, key_min_fill, key_min_overlaps,
                **kwargs):
        cfg = DeriveConfig(min_h=key_min_h, max_h=key_max_h, min_w=key_min_w, max_w=key_max_w,
                           min_fill=key_min_fill, min_overlaps=key_min_overlaps)
        kwargs["derive_config"] = cfg.to_dict()
        return f(*args, **kwargs)

    return wrapper


def cluster_options(f):
    """Where to run: local workers (default), --scheduler ADDRESS, or SLURM -> kwargs['cluster'].

    The local cluster listens on 127.0.0.1 only (a Dask scheduler runs any code a client sends, so
    it must not be reachable from the network); other machines take part only through an explicit
    --scheduler or SLURM, secured with --tls-ca/--tls-cert/--tls-key or Dask's own TLS config.
    The TLS options are checked here, before any stage runs.
    """

    @click.option("--workers", type=click.IntRange(min=1), default=None,
                  help="Local workers (default: one per GPU, else min(cores, 4)).")
    @click.option("--threads-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
                  help="Threads per local CPU worker: shards one worker segments at once (each holds a "
                       "frame). GPU workers run 2: tasks take turns on the GPU, one prepares as one waits.")
    @click.option("--scheduler", default=None, metavar="ADDRESS",
                  help="Use a running Dask scheduler, e.g. tls://head-node:8786 (with --tls-*). "
                       "Without it the command starts a local cluster bound to 127.0.0.1.")
    @click.option("--tls-ca", type=click.Path(dir_okay=False), default=None, metavar="PEM",
                  help="CA certificate that signed the scheduler's and workers' certificates "
                       "(Dask's --tls-ca-file). With --tls-cert and --tls-key: mutual TLS, no clear "
                       "text. Without these, Dask's config (distributed.comm.tls.*) applies.")
    @click.option("--tls-cert", type=click.Path(dir_okay=False), default=None, metavar="PEM",
                  help="This client's certificate for mutual TLS (needs --tls-ca, --tls-key).")
    @click.option("--tls-key", type=click.Path(dir_okay=False), default=None, metavar="PEM",
                  help="Private key of --tls-cert (needs --tls-ca, --tls-cert).")
    @click.option("--tls-auto", is_flag=True,
                  help="Mutual TLS without files of your own: a throw-away CA and one certificate for "
                       "scheduler, workers and this client, made in OUT/tls/ (readable by you only; SLURM "
                       "jobs read it from the shared file system). The one step that secures SLURM.")
    @click.option("--slurm-jobs", type=click.IntRange(min=1), default=None,
                  help="Run on SLURM through dask-jobqueue with this many jobs.")
    @click.option("--slurm-option", "slurm_opts", multiple=True, metavar="KEY=VALUE",
                  help="SLURMCluster option, e.g. --slurm-option queue=gpu "
                       "--slurm-option 'job_extra_directives=[\"--gres=gpu:1\"]'.")
    @click.option("--dashboard/--no-dashboard", default=True, show_default=True,
                  help="Serve the Dask dashboard of a local cluster (on 127.0.0.1).")
    @click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
                  help="Times a failed shard is retried.")
    @click.option("--worker-timeout", type=click.FloatRange(min=1), default=300, show_default=True,
                  metavar="SECONDS",
                  help="Give up (with an error) when no worker is alive for this long: at start, or after "
                       "every worker died. SLURM jobs queue: give them more.")
    @click.option("--frame-memory", default="auto", show_default=True, metavar="SIZE",
                  help="Memory one frame may use on a worker (e.g. 2GiB); a frame that needs more is "
                       "recorded bad with the numbers. auto: half the worker's memory limit.")
    @functools.wraps(f)
    def wrapper(*args, workers, threads_per_worker, scheduler, tls_ca, tls_cert, tls_key, tls_auto,
                slurm_jobs, slurm_opts, dashboard, worker_timeout, frame_memory, **kwargs):
        slurm = parse_kv(slurm_opts, "--slurm-option")
        if slurm_jobs:
            slurm["jobs"] = slurm_jobs
        elif slurm:
            raise BadInputError("--slurm-option needs --slurm-jobs N")
        if tls_auto:
            if tls_ca or tls_cert or tls_key:
                raise BadInputError("give either --tls-auto or --tls-ca/--tls-cert/--tls-key, not both")
            home = kwargs.get("out") or kwargs.get("store_dir")  # run/segment: --out; track: --stores
            if home is None:
                raise BadInputError("--tls-auto needs --out (its certificates are made there)")
            from unsamflow.pipeline.tls import TLS_DIR, throwaway_tls

            made = throwaway_tls(Path(home) / TLS_DIR)
            tls_ca, tls_cert, tls_key = (str(made[k]) for k in ("ca", "cert", "key"))
        cluster = ClusterConfig(
            scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
            dashboard=f"{LOOPBACK}:0" if dashboard else None, slurm=slurm,
            tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, worker_timeout=float(worker_timeout),
            frame_memory=parse_size(frame_memory, "--frame-memory"),
        )
        check_scheduler_address(scheduler)  # a typo fails now, not after the manifest and shard stages
        if slurm_jobs:
            check_slurm_commands()
        check_tls(cluster)
        kwargs["cluster"] = cluster
        return f(*args, **kwargs)

    return wrapper


def load_config(ctx: click.Context, _param, value: str | None):
    """--config FILE (YAML): its keys become the command's defaults; flags still override."""
    if value is None:
        return None
    path = Path(value)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise click.BadParameter(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a mapping of option names to values")
    # Keys are the flags' names (`shards`, `segmenter-option`, `no-hash`), as users know them.
    by_flag = {
        opt.lstrip("-").replace("-", "_"): p.name
        for p in ctx.command.params
        for opt in (*p.opts, *getattr(p, "secondary_opts", ()))
        if opt.startswith("--")
    }
    unknown = sorted(k for k in data if str(k).replace("-", "_") not in by_flag)
    if unknown:
        raise click.BadParameter(f"{path}: unknown keys {unknown}; known: {sorted(by_flag)}")
    clean = {}
    for k, v in data.items():
        flag = str(k).replace("-", "_")
        if flag.startswith("no_") and flag in by_flag and by_flag[flag] != flag:
            v = not v  # `no-dashboard: true` is `dashboard: false`
        clean[by_flag[flag]] = v
    ctx.default_map = {**(ctx.default_map or {}), **clean}
    return value


# Exit statuses, stated in every command's --help (the epilog) so that scripts can rely on them.
EXIT_CODES = ("Exit status: 0 success; 1 bad frames or failed checks (the run finished and says which); "
              "2 usage or input error (bad option, missing file, refused output).")


def quiet_option(f):
    """-q/--quiet -> kwargs['quiet']: no progress bars (they are off anyway when stderr is no terminal
    or TQDM_DISABLE is set)."""
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress bars and no dashboard link; summaries still print.")(f)


def json_option(f):
    """--json -> kwargs['as_json']: one JSON summary object on stdout; human lines go to stderr."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON summary object on stdout (the human-readable lines go to "
                             "stderr), for scripts.")(f)


def human_output(as_json: bool):
    """With --json, the human-readable lines (click.echo to stdout) go to stderr for the block, so that
    stdout carries only the JSON summary printed after it."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def emit_json(data: dict) -> None:
    """The --json summary: one object, keys sorted, on stdout."""
    click.echo(json.dumps(data, indent=1, sort_keys=True, default=str))
