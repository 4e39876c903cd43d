"""The first crop-mode decision after a model switch, with and without the embedder preload.

    .venv/bin/python bench/embedder_preload.py [--target facenet-casia-20180408-fixed-flip] [--samples 40] [--repeat 3]

Starts the embedded PostgreSQL (``bench/_stack.py``), registers and signs the versions (as a
promotion requires), then, each in a fresh process (a decision worker after a promotion):

1. cold load of each version's embedder (``recognition.engine.version_embedder``: the bundle's
   verification, then the build; facenet-casia once without its converted weights, once with them),
   and the first and a warm embedding of one crop;
2. the first decision's model work after the switch to ``--target`` (the active version read
   again, its embedder, one crop embedded) in a worker on sface: without the preload, and with it
   (``recognition.embedder_preload``: a promotion of the target under way, the preloader's pass done
   before the switch); and, while the preloader loads the target in its thread, the latency of the
   sface embeddings the worker's main thread keeps doing (what the load costs the decisions meanwhile);
3. the cost of one preloader pass with nothing to load (its queries and reconnection), which runs
   in the preloader's thread every ``RECOGNITION_PRELOAD_CHECK_S``, not on the decision path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _stack
from faceengine.backends.sface import SFACE_MODEL_VERSION as SFACE

FLIP = "facenet-casia-20180408-fixed-flip"


def _crop(embedder: object) -> object:
    import numpy as np

    size = embedder.input_size  # type: ignore[attr-defined]
    return np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _switch(version: str) -> None:
    """Make ``version`` active by a bare update (the gallery is not what is measured here)."""
    from recognition.model_registry import active_model_cache_clear
    from recognition.models import ModelVersion

    ModelVersion.objects.filter(state="active").update(state="retired")
    ModelVersion.objects.filter(model_version=version).update(state="active")
    active_model_cache_clear()  # what the active model's per-process cache does within 5 s


def child_cold(version: str) -> dict:
    from recognition.engine import version_embedder
    from recognition.model_registry import model_version_verified

    start = time.perf_counter()
    model_version_verified(version)
    verify = _ms(start)
    start = time.perf_counter()
    embedder = version_embedder(version)
    build = _ms(start)
    crop = _crop(embedder)
    start = time.perf_counter()
    embedder.embed(crop)
    first = _ms(start)
    start = time.perf_counter()
    embedder.embed(crop)
    return {"verify_ms": verify, "build_ms": build, "first_embed_ms": first, "warm_embed_ms": _ms(start)}


def child_switch(target: str, preload: bool, samples: int) -> dict:
    from recognition.embedder_preload import EmbedderPreloader
    from recognition.engine import active_embedder
    from recognition.models import GalleryMigration, ModelVersion

    active = active_embedder()  # the worker at start, on the active version (sface)
    crop = _crop(active)
    active.embed(crop)
    out: dict = {"rss_mb_before": _rss_mb()}
    if preload:
        model = ModelVersion.objects.get(model_version=target)
        GalleryMigration.objects.update_or_create(model=model, defaults={"activate": True, "state": "running"})
        preloader = EmbedderPreloader(interval_s=0.1, retry_s=60)
        # The decisions go on in the main thread while the preloader's thread loads the target.
        latencies: list[float] = []
        load_start = time.perf_counter()
        preloader.start()
        while target not in preloader.loaded:
            start = time.perf_counter()
            active.embed(crop)
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(0.05)
        out["preload_s"] = round(time.perf_counter() - load_start, 2)
        preloader.stop()
        out["preloaded"] = sorted(preloader.loaded)
        out["rss_mb_preloaded"] = _rss_mb()
        out["embeds_during_load"] = len(latencies)
        if latencies:
            out["embed_ms_during_load_p50_max"] = [round(statistics.median(latencies), 1), round(max(latencies), 1)]
        steady = []
        for _ in range(samples):
            start = time.perf_counter()
            active.embed(crop)
            steady.append((time.perf_counter() - start) * 1000)
        out["embed_ms_steady_p50_max"] = [round(statistics.median(steady), 1), round(max(steady), 1)]
        passes = []
        for _ in range(samples):  # a pass with nothing to load, as the thread runs it (it reconnects each time)
            from django.db import connection

            start = time.perf_counter()
            preloader.check()
            connection.close()
            passes.append((time.perf_counter() - start) * 1000)
        out["idle_pass_ms_p50_max"] = [round(statistics.median(passes), 2), round(max(passes), 2)]
    _switch(target)
    start = time.perf_counter()
    embedder = active_embedder()
    out["first_decision_lookup_ms"] = _ms(start)  # the active version read again, its embedder
    embedder.embed(_crop(embedder))
    out["first_decision_model_ms"] = _ms(start)
    out["active_after"] = embedder.model_version
    out["rss_mb_after_switch"] = _rss_mb()
    start = time.perf_counter()
    embedder.embed(_crop(embedder))
    out["second_decision_model_ms"] = _ms(start)
    return out


def _child(args: list[str], env: dict[str, str]) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(f"child {args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reset() -> None:
    from recognition.model_registry import model_version_register
    from recognition.models import GalleryMigration, ModelVersion

    GalleryMigration.objects.all().delete()
    ModelVersion.objects.exclude(model_version=SFACE).filter(state__in=["active", "retired"]).update(state="candidate")
    ModelVersion.objects.filter(model_version=SFACE).update(state="active")
    model_version_register(backend="sface", model_version=SFACE)
    model_version_register(backend="facenet-casia", model_version=FLIP, options={"flip": True})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=FLIP)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per switch scenario")
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        import django

        django.setup()
        kind, version = args.child[0], args.child[1]
        if kind == "cold":
            print(json.dumps(child_cold(version)))
        else:
            print(json.dumps(child_switch(version, kind == "preload", args.samples)))
        return

    with tempfile.TemporaryDirectory(prefix="accessctl-preload-bench-") as tmp:
        services = _stack.services_start(Path(tmp))
        try:
            _stack.django_ready()
            os.environ["ACCESSCTL_MODELS_DIR"] = str(Path(tmp) / "models")  # no converted weights yet
            _reset()
            env = dict(os.environ)
            print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
            print("cold load in a fresh process (verify = the bundle's signature and file hashes):")
            for label, version in (("facenet-casia, weights not converted yet", FLIP),
                                   ("facenet-casia, converted weights cached", FLIP), ("sface", SFACE)):  # fmt: skip
                print(f"  {label:42s} {_child(['cold', version], env)}")
            for kind in ("lazy", "preload"):
                firsts, lookups, seconds = [], [], []
                for _ in range(args.repeat):
                    _reset()
                    run = _child([kind, args.target], env)
                    firsts.append(run["first_decision_model_ms"])
                    lookups.append(run["first_decision_lookup_ms"])
                    seconds.append(run["second_decision_model_ms"])
                    print(f"switch sface -> {args.target}, {kind}: {run}")
                print(f"  {kind}, medians of {args.repeat}: first decision's model work after the switch "
                      f"{statistics.median(firsts):.0f} ms (finding the embedder {statistics.median(lookups):.1f} ms), "
                      f"the second's {statistics.median(seconds):.0f} ms")  # fmt: skip
            print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        finally:
            _reset()
            services.stop()


if __name__ == "__main__":
    main()
