"""Whole-slide pipeline: blocks, stitching, resume, cluster, bad slides.

Small synthetic slides (512^2 px at 0.5 um/px) with small blocks (192 + halo
48) and a cheap segmenter double (per-pixel colour deconvolution), so each
run takes about a second.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from her2kit.errors import Her2kitError, InputError
from her2kit.wsi.blocks import make_grid, select_blocks, tissue_fractions
from her2kit.wsi.pipeline import run_slide, run_slides
from her2kit.wsi.stain_segmenter import StainSegmenter

BLOCK, HALO = 192, 48
GLASS = np.array([238, 242, 236], np.uint8)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, str]:
    """A 512^2 synthetic 2+ slide as OME-Zarr and as OME-TIFF."""
    from her2kit.synth.slide import make_slide

    d = tmp_path_factory.mktemp("slides")
    zarr_path, tiff_path = str(d / "s.zarr"), str(d / "s.ome.tif")
    make_slide(zarr_path, (512, 512), "2+", seed=3, chunk=256, tiff=tiff_path, progress=False)
    return {"zarr": zarr_path, "tiff": tiff_path}


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory) -> Path:
    """An uninterrupted 3 x 3-block run of the Zarr slide."""
    out = tmp_path_factory.mktemp("ref") / "s"
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    return out


def read_cells(path: Path) -> dict[str, np.ndarray]:
    with open(path / "cells.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def stable_json(path: Path) -> dict:
    """score.json without the "run" section (timings, blocks resumed: differ by design)."""
    d = json.loads((path / "score.json").read_text())
    d.pop("run")
    return d


def label_level0(path: Path, name: str) -> np.ndarray:
    import zarr

    return zarr.open_array(str(path / "labels.zarr" / "labels" / name / "0"), mode="r")[:]


def test_end_to_end_zarr(reference):
    out = reference
    for name in ("score.json", "cells.csv", "cells.geojson", "overlay.png", "report.html"):
        assert (out / name).is_file(), name
    assert not (out / ".her2kit-work").exists()
    s = json.loads((out / "score.json").read_text())
    assert s["score"] in ("0", "1+", "2+", "3+")
    assert s["wsi"]["blocks_total"] == 9 and s["wsi"]["blocks_tissue"] == 9
    assert s["run"]["blocks_run"] == 9 and "blocks" in s["run"]["timings_s"]
    assert abs(sum(s["percent"].values()) - 100) < 1e-6
    cells = read_cells(out)
    assert s["cells_detected"] == len(cells["id"]) > 100
    # labels: full resolution, multiscale, ids = cells.csv ids
    lab = label_level0(out, "cells")
    sem = label_level0(out, "semantic")
    assert lab.shape == sem.shape == (512, 512)
    assert set(np.unique(sem)) <= {0, 1, 2}
    assert set(np.unique(lab)) - {0} == set(cells["id"].astype(np.int64).tolist())
    import zarr

    g = zarr.open_group(str(out / "labels.zarr" / "labels" / "cells"), mode="r")
    ms = g.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and len(ms["datasets"]) >= 2
    assert g["1"].shape == (256, 256)
    # the labels stand alone: no image-label "source" pointing at a root without an image
    assert g.attrs["image-label"] == {"version": "0.4"}
    gj = json.loads((out / "cells.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) >= 0.95 * len(cells["id"])
    f = gj["features"][0]
    assert f["properties"]["objectType"] == "cell" and f["geometry"]["type"] == "Polygon"
    html = (out / "report.html").read_text()
    assert "HER2 score" in html and "local score map" in html and "data:image/png;base64" in html
    # as an image's report (QA: a slide's had no histograms)
    assert 'alt="completeness histogram"' in html and 'alt="intensity histogram"' in html
    assert "9 run now, 0 finished by an earlier, interrupted run" in html
    from her2kit.scoring.exports import StainingHistograms

    hist = StainingHistograms()
    hist.add(cells)
    assert hist.completeness.sum() == hist.intensity.sum() == s["cells_total"]
    assert hist.completeness.sum(axis=1).tolist() == [s["counts"][str(k)] for k in range(4)]


def test_cells_on_block_borders_counted_once(reference):
    cells = read_cells(reference)
    ids = cells["id"].astype(np.int64)
    assert len(np.unique(ids)) == len(ids)
    # no duplicates under another id: two cells never share a centroid
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.stack([cells["y"], cells["x"]], 1)).query_pairs(2.0)
    assert not pairs
    # ids encode the owning block: block index * 2^20 + rank
    grid = make_grid((512, 512), 1.0, BLOCK, HALO)
    owner = ids // grid.id_stride()
    assert owner.max() < len(grid) and len(np.unique(owner)) == 9
    # cells cut by a block border are whole in labels/cells (the seam pass):
    # some ids have pixels on both sides of the first vertical border
    lab = label_level0(reference, "cells")
    b = grid.block0
    left, right = set(np.unique(lab[:, b - 3:b])) - {0}, set(np.unique(lab[:, b:b + 3])) - {0}
    straddling = left & right
    assert len(straddling) >= 3
    for cid in straddling:  # each is one cell, owned by one block, in cells.csv once
        assert (ids == cid).sum() == 1


def test_blocks_equal_whole(slides, reference, tmp_path):
    """Scoring in 9 blocks equals scoring in one block (the whole image).

    Tolerance: same score; cell count within 2 %; >= 97 % of the cells of
    one run have a cell of the other within 3 px with the same category.
    Not exact because cell finding is not perfectly local: the compact
    watershed breaks ties by pixel order, and a large cell territory can be
    cut by the halo edge (halo 48 px here, 128 by default).
    """
    whole = tmp_path / "whole"
    run_slide(slides["zarr"], whole, StainSegmenter(), block=512, halo=HALO, progress=False)
    a, b = stable_json(reference), stable_json(whole)
    assert b["wsi"]["blocks_total"] == 1
    assert a["score"] == b["score"]
    ca, cb = read_cells(reference), read_cells(whole)
    assert abs(len(ca["id"]) - len(cb["id"])) <= 0.02 * len(cb["id"])
    from scipy.spatial import cKDTree

    d, j = cKDTree(np.stack([cb["y"], cb["x"]], 1)).query(np.stack([ca["y"], ca["x"]], 1))
    same = (d <= 3.0) & (ca["category"] == cb["category"][j])
    assert same.mean() >= 0.97
    for k in "0123":
        assert abs(a["percent"][k] - b["percent"][k]) <= 3.0


def test_end_to_end_ome_tiff_matches_zarr(slides, reference, tmp_path):
    out = tmp_path / "t"
    s = run_slide(slides["tiff"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert s["wsi"]["blocks_total"] == 9
    # the same pixels through another reader give the same cells
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert s["score"] == json.loads((reference / "score.json").read_text())["score"]


class CrashAfter:
    """A segmenter double that raises in its n-th call (a crash mid-run)."""

    def __init__(self, n: int):
        from her2kit.inference import model_fingerprint

        self.inner = StainSegmenter()
        self.mpp, self.name, self.n, self.calls = self.inner.mpp, self.inner.name, n, 0
        self.fingerprint = model_fingerprint(self.inner)  # the same model, crashing

    def predict(self, rgb):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("simulated crash")
        return self.inner.predict(rgb)


def test_crash_and_resume_in_process(slides, reference, tmp_path, monkeypatch):
    out = tmp_path / "r"
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(slides["zarr"], out, CrashAfter(5), block=BLOCK, halo=HALO, progress=False)
    blocks = sorted((out / ".her2kit-work" / "blocks").glob("*.npz"))
    assert len(blocks) == 4 and not (out / "score.json").exists()
    # a second crash inside a block's label write (labels half written, no record)
    from her2kit.wsi import labelstore

    real = labelstore.write_region
    calls = {"n": 0}

    def torn_write(path, y, x, semantic, cells):
        calls["n"] += 1
        if calls["n"] == 2:
            labelstore.open_level(path, "semantic")[y:y + 8, x:x + 8] = 1
            raise RuntimeError("killed mid-write")
        real(path, y, x, semantic, cells)

    monkeypatch.setattr(labelstore, "write_region", torn_write)
    with pytest.raises(Her2kitError, match="killed mid-write"):
        run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    monkeypatch.setattr(labelstore, "write_region", real)
    # the torn block has no record; blocks already queued behind it may have finished
    recorded = len(list((out / ".her2kit-work" / "blocks").glob("*.npz")))
    assert 5 <= recorded < 9
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert s["run"]["blocks_resumed"] == recorded and s["run"]["blocks_run"] == 9 - recorded
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert stable_json(out) | {"input": 0} == stable_json(reference) | {"input": 0}
    np.testing.assert_array_equal(label_level0(out, "cells"), label_level0(reference, "cells"))
    np.testing.assert_array_equal(label_level0(out, "semantic"), label_level0(reference, "semantic"))


def test_a_forced_run_killed_half_way_resumes(slides, reference, tmp_path):
    """QA: a --force run killed half-way started over at every rerun (and a plain
    rerun skipped the slide as complete, from the older outputs)."""
    out = tmp_path / "f"
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(slides["zarr"], out, CrashAfter(5), block=BLOCK, halo=HALO, progress=False, force=True)
    done = len(list((out / ".her2kit-work" / "blocks").glob("*.npz")))
    assert done >= 3
    from her2kit.scoring.commands import _made_differently

    said = _made_differently(out, slides["zarr"], None, StainSegmenter)["other"]
    assert "an unfinished run's blocks are in .her2kit-work (--force resumes them)" in said
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False, force=True)
    assert s["run"]["blocks_resumed"] == done and s["run"]["blocks_run"] == 9 - done
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert not (out / ".her2kit-work").exists()


def test_an_output_that_cannot_be_written_is_named_and_the_blocks_kept(slides, reference, tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "cells.csv").mkdir()  # a name taken by a folder
    (out / "labels.zarr").write_text("a file where the labels go")
    with pytest.raises(Her2kitError, match=r"cannot write cells.csv: .*run again to finish"):
        run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert len(list((out / ".her2kit-work" / "blocks").glob("*.npz"))) == 9
    (out / "cells.csv").rmdir()
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert s["run"]["blocks_resumed"] == 9
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no .labels.zarr.old


def test_a_slide_without_tissue_says_so(tmp_path):
    import zarr

    arr = zarr.open_array(str(tmp_path / "blank.zarr"), mode="w", shape=(300, 300, 3), dtype="uint8",
                          chunks=(128, 128, 3))
    arr[...] = 246
    arr.attrs["mpp"] = 0.5
    s = run_slide(str(tmp_path / "blank.zarr"), tmp_path / "o", StainSegmenter(), block=BLOCK, halo=HALO,
                  progress=False)
    assert s["score"] is None and s["wsi"]["blocks_tissue"] == 0
    assert s["note"] == "no tissue found; no tumour cells found"  # what an image says (docs/scoring.md)


def test_a_slide_replaced_at_the_same_path_does_not_reuse_old_blocks(slides, tmp_path):
    """Review: with --force keeping an identical plan's blocks, a slide rewritten
    at the same path must change the plan (its size and mtime are in it)."""
    import os
    import shutil

    src = tmp_path / "s.zarr"
    shutil.copytree(slides["zarr"], src)
    out = tmp_path / "w"
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(str(src), out, CrashAfter(5), block=BLOCK, halo=HALO, progress=False)
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten
    s = run_slide(str(src), out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False, force=True)
    assert s["run"]["blocks_resumed"] == 0 and s["run"]["blocks_run"] == 9


def test_mpp_given_wins_over_a_slide_resolution_no_scan_has(tmp_path):
    """Review: on slides the file's 10 um/px still won over --mpp."""
    import zarr

    rng = np.random.default_rng(0)
    arr = zarr.open_array(str(tmp_path / "ten.zarr"), mode="w", shape=(300, 300, 3), dtype="uint8",
                          chunks=(128, 128, 3))
    arr[...] = rng.integers(90, 200, (300, 300, 3), dtype=np.uint8)
    arr.attrs["mpp"] = 10.0
    s = run_slide(str(tmp_path / "ten.zarr"), tmp_path / "o", StainSegmenter(), mpp=0.5, block=BLOCK,
                  halo=HALO, progress=False)
    assert s["mpp"] == 0.5 and s["mpp_from"] == "--mpp"


def test_a_lost_scheduler_is_one_error_saying_to_resume():
    """QA: a scheduler killed mid-run printed the client's tracebacks and an
    'internal error: FutureCancelledError'."""
    import threading
    import time

    from distributed import LocalCluster

    from her2kit.wsi.cluster import SchedulerLost, make_executor

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, scheduler_port=0,
                           protocol="tcp", dashboard_address=None)
    ex = make_executor(scheduler=cluster.scheduler_address)
    threading.Timer(0.5, cluster.close).start()
    with pytest.raises(SchedulerLost, match="lost the dask scheduler .*run again to resume"):
        list(ex.run(time.sleep, [(3,), (3,)]))
    ex.close()


def test_resume_with_other_weights_starts_over(slides, tmp_path):
    """Blocks finished by one model are not reused by another of the same
    name (QA: a resume with other weights mixed two models' cells)."""
    out = tmp_path / "w"
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(slides["zarr"], out, CrashAfter(5), block=BLOCK, halo=HALO, progress=False)
    class OtherWeights(StainSegmenter):
        fingerprint = "other-weights"

    s = run_slide(slides["zarr"], out, OtherWeights(), block=BLOCK, halo=HALO, progress=False)
    assert s["run"]["blocks_resumed"] == 0 and s["run"]["blocks_run"] == 9
    assert s["model_fingerprint"] == "other-weights"


def test_resume_after_the_default_parameters_changed_starts_over(slides, tmp_path, monkeypatch):
    """The plan holds every cell parameter, defaults too: an upgraded her2kit
    (new defaults) does not mix its blocks with an interrupted run's."""
    from her2kit.scoring import cells as cells_module

    out = tmp_path / "d"
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(slides["zarr"], out, CrashAfter(5), block=BLOCK, halo=HALO, progress=False)
    @dataclasses.dataclass
    class NewDefaults(cells_module.CellParams):
        lymphocyte_h_od: float = 0.3

    monkeypatch.setattr(cells_module, "CellParams", NewDefaults)
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert s["run"]["blocks_resumed"] == 0 and s["run"]["blocks_run"] == 9


def test_overlap_crash_and_resume_equals_reference(slides, reference, tmp_path):
    """Cell finding in a second thread (overlapping the next block's prediction):
    a crash mid-run leaves the blocks finished before it, and the resumed run
    ends with the reference's cells, score and labels."""
    out = tmp_path / "o"
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(slides["zarr"], out, CrashAfter(5), block=BLOCK, halo=HALO, progress=False,
                  overlap=True)
    assert len(list((out / ".her2kit-work" / "blocks").glob("*.npz"))) == 4
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
                  overlap=True)
    assert s["run"]["overlap"] is True and s["run"]["blocks_run"] == 5
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert stable_json(out) | {"input": 0} == stable_json(reference) | {"input": 0}
    np.testing.assert_array_equal(label_level0(out, "cells"), label_level0(reference, "cells"))


def test_early_seams_follow_the_last_neighbour(monkeypatch, tmp_path):
    """In overlapped runs a block is stitched as soon as it and its neighbours
    with tissue are written (once each), not after the whole slide."""
    from her2kit.wsi import pipeline, worker
    from her2kit.wsi.resume import Ledger

    grid = make_grid((3 * 512, 3 * 512), 1.0, 512, 32)  # 3 x 3 blocks
    selected = [0, 1, 2, 3, 4, 5, 6, 7]  # block 8 has no tissue (it still takes spill)
    ledger = Ledger(tmp_path)
    ran = []
    monkeypatch.setattr(worker, "seam_block",
                        lambda plan, t, sources: ran.append((t, sorted(sources))) or {"index": t})
    seams = pipeline._EarlySeams({}, grid, selected, ledger, done=set())
    after = {}
    for i in selected:
        seams({"index": i})
        after[i] = [t for t, _ in ran]
    assert after[3] == []  # block 0's neighbour 4 is not written yet
    assert after[4] == [0]  # 0 and its neighbours 1, 3, 4
    assert after[5] == [0, 1, 2]
    assert sorted(t for t, _ in ran) == list(range(9))  # every block once, 8 included
    assert dict(ran)[8] == [4, 5, 7]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_cells_thread_runs_at_lowest_priority(slides, tmp_path, monkeypatch):
    """On a CPU, overlapped cell finding runs at nice 19 (in the gaps the network
    leaves) while the network's thread keeps its priority."""
    import os
    import threading

    from her2kit.wsi import worker

    seen = []
    real = worker.find_block_cells

    def spy(*args, **kw):
        seen.append((threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return real(*args, **kw)

    monkeypatch.setattr(worker, "find_block_cells", spy)
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    run_slide(slides["zarr"], tmp_path / "n", StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
              overlap=True, segment_only=True)
    # the last block may have been queued when the network finished: it then
    # starts at once in a thread of its own, at normal priority
    assert len(seen) == 9 and {nice for _, nice in seen[:-1]} == {19}
    assert seen[-1][1] in (19, main_nice)
    assert threading.get_native_id() not in {tid for tid, _ in seen}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice


def test_queued_blocks_start_when_the_network_is_done(monkeypatch):
    """A block still queued behind the busy cell thread when prediction ends
    starts at once in a thread of its own (it does not wait for the busy one)."""
    import threading
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from her2kit.wsi import worker

    release, started = threading.Event(), []

    def finish(plan, stage, after):
        started.append(stage["i"])
        if stage["i"] == 0:
            assert release.wait(10)
        return {"index": stage["i"]}

    monkeypatch.setattr(worker, "_finish_then", finish)
    pool = ThreadPoolExecutor(1)
    stages = [{"i": 0}, {"i": 1}]
    pending = deque((pool.submit(worker._finish_then, {}, s, None), s) for s in stages)
    tail = worker._run_queued_now(pending, {}, None)
    try:
        assert tail is not None
        assert pending[1][0].result(timeout=10) == {"index": 1}  # while block 0 still runs
        assert not pending[0][0].done()
    finally:
        release.set()
        pool.shutdown()
        tail.shutdown()
    assert pending[0][0].result() == {"index": 0} and sorted(started) == [0, 1]
    assert worker._run_queued_now(pending, {}, None) is None  # nothing queued: no new threads


def test_a_slow_block_does_not_idle_the_other_cell_threads(monkeypatch):
    """With several cell threads, the next block is submitted as soon as any
    thread is free, not when the oldest block is done; blocks still come out
    in order. (Block 0 here finishes only after block 3 has: waiting for the
    oldest would never submit block 3.)"""
    import threading

    from her2kit.wsi import worker

    block3_done, finished = threading.Event(), []

    def finish(plan, stage, after):
        if stage["i"] == 0:
            assert block3_done.wait(10), "block 3 was never submitted while block 0 ran"
        finished.append(stage["i"])
        if stage["i"] == 3:
            block3_done.set()
        return {"index": stage["i"]}

    monkeypatch.setattr(worker, "read_stage", lambda plan, i: {"i": i})
    monkeypatch.setattr(worker, "predict_block",
                        lambda plan, i, seg, read: {"i": i, "rgb": np.zeros((8, 8, 3), np.uint8)})
    monkeypatch.setattr(worker, "_finish_then", finish)
    out = [r["index"] for r in worker.iter_blocks({}, list(range(8)), None, overlap=True, cell_workers=2)]
    assert out == list(range(8))
    assert finished.index(3) < finished.index(0)


def test_finished_blocks_waiting_their_turn_drop_their_pixels():
    from collections import deque
    from concurrent.futures import Future

    from her2kit.wsi import worker

    done, running = Future(), Future()
    done.set_result({"index": 1})
    pending = deque([(running, {"rgb": 0}), (done, {"rgb": 1})])
    assert worker._busy(pending) == 1
    assert pending[0][1] == {"rgb": 0} and pending[1] == (done, None)


def test_release_memory_trims_growth_not_the_working_set(monkeypatch):
    """The heap is trimmed only when the process, between blocks, is the slack
    above its working set (the size at the first call); a size back above the
    mark within one block of a trim becomes the new mark, untrimmed."""
    import her2kit.wsi.cluster as cluster

    trims = []
    sizes = iter([1000, 1030, 1063, 1070, 600, 1040, 1080, 1300, 1310, 1320, 1390])
    monkeypatch.setattr(cluster, "_malloc_trim", lambda pad: trims.append(calls[0]))
    monkeypatch.setattr(cluster, "_rss_mb", lambda: next(sizes))
    monkeypatch.setattr(cluster, "_working_set_mb", None)
    monkeypatch.setattr(cluster, "_trimmed_last", False)
    calls = [0]
    for calls[0] in range(11):
        cluster.release_memory(64.0)
    # 1000: the mark; 1070 (>= 1064): growth, trimmed; 1080 after an untrimmed
    # block: trimmed; 1300 right after that trim: the new mark; 1390 (>= 1364): trimmed
    assert trims == [3, 6, 10]
    assert cluster._working_set_mb == 1300


def test_block_segmenter_one_pass_per_block():
    """A her2kit Segmenter covers a block + halo in one network pass when it holds
    no more pixels than one of its batches; larger blocks get the fewest tiles."""
    from her2kit.inference import tile_starts
    from her2kit.wsi.worker import block_segmenter

    class Seg:
        tile, overlap, batch = 512, 128, 4

        def predict(self, rgb):
            return rgb

    seg = Seg()
    one = block_segmenter(seg, (640, 576))
    assert one is not seg and one.tile == 640 and seg.tile == 512
    assert block_segmenter(seg, (640, 576)) is one  # cached: the network is shared
    big = block_segmenter(seg, (2304, 2304))
    n = len(tile_starts(2304, big.tile, big.overlap))
    assert n == 3 and big.batch * big.tile ** 2 <= 4 * 512 ** 2 < 9 * 512 ** 2
    assert block_segmenter(seg, (300, 200)) is seg
    assert block_segmenter(StainSegmenter(), (640, 640)).__class__ is StainSegmenter


def test_block_segmenter_batches_the_tiles_on_a_gpu():
    """On a GPU a block's tiles (the same as on a CPU) go through the network in
    one batch; on a CPU the batch stays within the segmenter's pixels."""
    from her2kit.wsi.worker import block_segmenter

    class Seg:
        tile, overlap, batch, device = 512, 128, 4, "cpu"

        def predict(self, rgb):
            return rgb

    class GpuSeg(Seg):
        device = "cuda:0"

    cpu, gpu = block_segmenter(Seg(), (2304, 2304)), block_segmenter(GpuSeg(), (2304, 2304))
    assert gpu.tile == cpu.tile and gpu.overlap == cpu.overlap
    assert cpu.batch == 1 and gpu.batch == 9  # 3 x 3 tiles
    small = block_segmenter(GpuSeg(), (640, 576))  # one pass anyway: nothing more to batch
    assert small.tile == 640 and small.batch == block_segmenter(Seg(), (640, 576)).batch


def test_batched_tiles_predict_as_one_after_another():
    """Batching the tiles changes nothing but the speed: same tiles, same blending."""
    import copy

    import torch

    from her2kit.inference import Segmenter

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 5, padding=2)

        def forward(self, x):
            return {"pixel": self.conv(x) * x.mean(dim=(1, 2, 3), keepdim=True)}  # tile-dependent

    torch.manual_seed(0)
    one = Segmenter(Net().eval(), {"mpp": 0.5}, "net", "cpu", tile=96, overlap=32, batch=1)
    batched = copy.copy(one)
    batched.batch = 9
    rgb = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(batched.predict(rgb), one.predict(rgb), rtol=0, atol=1e-6)
    # blended by torch on the model's device (as on a GPU): the same values as numpy's
    on_device = copy.copy(batched)
    on_device._blends_with_numpy = lambda: False
    np.testing.assert_array_equal(on_device.predict(rgb), batched.predict(rgb))


def test_a_batch_out_of_gpu_memory_is_halved(monkeypatch):
    """A block view whose batch runs out of GPU memory predicts with half the
    batch, the same values, and keeps the smaller batch for the next blocks."""
    import torch

    from her2kit.inference import Segmenter
    from her2kit.wsi import worker

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (test)")
            return {"pixel": self.conv(x)}

    torch.manual_seed(0)
    seg = Segmenter(Net().eval(), {"mpp": 0.5}, "net", "cpu", tile=64, overlap=16, batch=4)
    monkeypatch.setattr(worker, "uses_gpu", lambda *a, **k: True)
    view = worker.block_segmenter(seg, (200, 200))
    assert view.tile == 108 and view.batch == 4  # 2 x 2 tiles, all at once
    rgb = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    probs = worker._predict(view, rgb)
    assert view.batch == 2
    one = worker.block_segmenter(seg, (200, 200))
    assert one is view  # the next block gets the smaller batch
    view.batch = 1
    np.testing.assert_allclose(probs, seg.__class__.predict(view, rgb), rtol=0, atol=1e-6)
    big = Segmenter(Net().eval(), {"mpp": 0.5}, "net", "cpu", tile=64, overlap=16, batch=4)
    with pytest.raises(torch.OutOfMemoryError):  # not a block view: not ours to change
        worker._predict(big, rgb)
    assert big.batch == 4


def test_overlap_default(monkeypatch):
    """On by default on a GPU and in-process with a spare core; off for local worker processes."""
    import os

    from her2kit.wsi.cluster import SyncExecutor
    from her2kit.wsi.pipeline import _default_overlap

    class OnGpu(StainSegmenter):
        device = "cuda:0"

    class Cluster:
        kind = "local 2 processes"

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _default_overlap(SyncExecutor(), StainSegmenter(), None)
    assert not _default_overlap(Cluster(), StainSegmenter(), None)
    assert _default_overlap(Cluster(), OnGpu(), None)
    assert _default_overlap(Cluster(), StainSegmenter(), "cuda")
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert not _default_overlap(SyncExecutor(), StainSegmenter(), None)


KILLER = textwrap.dedent("""
    import os, signal, sys
    from her2kit.wsi.pipeline import run_slide
    from her2kit.wsi.stain_segmenter import StainSegmenter

    class KillAt(StainSegmenter):
        calls = 0
        def predict(self, rgb):
            KillAt.calls += 1
            if KillAt.calls == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)
            return super().predict(rgb)

    if __name__ == "__main__":
        run_slide(sys.argv[1], sys.argv[2], KillAt(), block=int(sys.argv[4]),
                  halo=int(sys.argv[5]), progress=False)
""")


def test_kill_9_and_resume(slides, reference, tmp_path):
    out = tmp_path / "k"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    p = subprocess.run([sys.executable, str(script), slides["zarr"], str(out), "7", str(BLOCK), str(HALO)],
                       capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL
    # killed in the 7th prediction: 6 blocks done, or 4-5 when the cells of the
    # 5th and 6th blocks were still queued for or being found in the second
    # thread (overlap, the in-process default)
    done = len(list((out / ".her2kit-work" / "blocks").glob("*.npz")))
    assert done in (4, 5, 6)
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert s["run"]["blocks_resumed"] == done
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert stable_json(out) == stable_json(reference)
    assert (out / "cells.geojson").read_bytes() == (reference / "cells.geojson").read_bytes()


TERMINATOR = textwrap.dedent("""
    import os, signal, sys
    import her2kit.inference
    from her2kit.cli import main
    from her2kit.wsi.stain_segmenter import StainSegmenter

    class TermAt(StainSegmenter):
        calls = 0
        def predict(self, rgb):
            TermAt.calls += 1
            if TermAt.calls == 1 and os.environ.get("TERM_AT_FIRST"):
                os.kill(os.getpid(), signal.SIGTERM)
            return super().predict(rgb)

    her2kit.inference.load_segmenter = lambda *a, **k: TermAt()
    sys.exit(main(sys.argv[1:]))
""")


def test_sigterm_ends_the_run_in_one_line_and_it_resumes(slides, tmp_path):
    """SIGTERM (a batch system's stop) ends `score` like Ctrl-C: one line, exit 143,
    no traceback, no outputs in place; the next run finishes the slide."""
    out = tmp_path / "t"
    script = tmp_path / "terminator.py"
    script.write_text(TERMINATOR)
    args = [sys.executable, str(script), "score", slides["zarr"], "--out", str(out)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TERM_AT_FIRST": "1"})
    assert p.returncode == 143, p.stderr[-2000:]
    assert "her2kit: terminated" in p.stderr and "Traceback" not in p.stderr
    assert (out / "s" / ".her2kit-work" / "plan.json").is_file()
    assert not (out / "s" / "score.json").exists()
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and (out / "s" / "score.json").is_file(), p.stderr[-2000:]


def test_rerun_does_nothing_unless_force(slides, tmp_path):
    out = tmp_path / "f"
    run_slide(slides["zarr"], out, StainSegmenter(), block=512, halo=HALO, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_slide(slides["zarr"], out, CrashAfter(1), block=512, halo=HALO, progress=False)
    assert again["skipped"] and again["score"] is not None
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    old_csv = (out / "cells.csv").read_bytes()
    forced = run_slide(slides["zarr"], out, StainSegmenter(), block=512, halo=HALO, progress=False,
                       force=True)
    assert not forced.get("skipped") and forced["run"]["blocks_run"] == 1
    assert (out / "score.json").stat().st_mtime_ns > before["score.json"]
    assert (out / "cells.csv").read_bytes() == old_csv


def test_forced_run_killed_while_moving_outputs_leaves_no_mix(slides, tmp_path, monkeypatch):
    """A --force run killed after its new labels.zarr replaced the old one, before
    its score.json: the folder is not "complete" with the old score.json beside
    the new labels (QA), and the next run redoes it consistently."""
    from her2kit.wsi import pipeline

    out = tmp_path / "m"
    run_slide(slides["zarr"], out, StainSegmenter(), block=512, halo=HALO, progress=False)

    class OtherWeights(StainSegmenter):
        fingerprint = "other-weights"

    real = pipeline._replace_dir

    def killed_after(src, dst):
        real(src, dst)
        raise RuntimeError("killed while moving outputs")

    monkeypatch.setattr(pipeline, "_replace_dir", killed_after)
    with pytest.raises(RuntimeError, match="killed while moving"):
        run_slide(slides["zarr"], out, OtherWeights(), block=512, halo=HALO, progress=False, force=True)
    monkeypatch.setattr(pipeline, "_replace_dir", real)
    assert not (out / "score.json").exists()
    s = run_slide(slides["zarr"], out, OtherWeights(), block=512, halo=HALO, progress=False)
    assert not s.get("skipped")
    labels_about = json.loads((out / "labels.zarr" / ".zattrs").read_text())["her2kit"]
    assert json.loads((out / "score.json").read_text())["model_fingerprint"] == "other-weights"
    assert labels_about["model_fingerprint"] == "other-weights"


def test_segment_only_writes_labels_only(slides, reference, tmp_path, monkeypatch):
    import her2kit.scoring.cells as cells

    asked = []  # staining asked of find_cells per block
    find_cells = cells.find_cells
    monkeypatch.setattr(cells, "find_cells", lambda rgb, probs, mpp, params=None: (
        asked.append(params.staining), find_cells(rgb, probs, mpp, params))[1])
    out = tmp_path / "seg"
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
                  segment_only=True)
    assert (out / "labels.zarr").is_dir() and not (out / "score.json").exists()
    assert not (out / "cells.csv").exists() and "score" not in s
    assert label_level0(out, "cells").max() > 0
    # without measuring the staining: the labels of a score run, to the pixel
    assert asked and not any(asked)
    for name in ("cells", "semantic"):
        np.testing.assert_array_equal(label_level0(out, name), label_level0(reference, name))


def test_cluster_tcp(slides, reference, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, scheduler_port=0,
                      protocol="tcp", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://")
        out = tmp_path / "c"
        s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO,
                      scheduler=cluster.scheduler_address, progress=False)
        # blocks pipelined inside the worker (a few blocks per task)
        s2 = run_slide(slides["zarr"], tmp_path / "c2", StainSegmenter(), block=BLOCK, halo=HALO,
                       scheduler=cluster.scheduler_address, progress=False, overlap=True)
    assert s["run"]["executor"].startswith("scheduler tcp://")
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    assert stable_json(out) == stable_json(reference)
    assert s2["run"]["overlap"] is True and s2["run"]["blocks_run"] == 9
    assert (tmp_path / "c2" / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()


def test_one_scheduler_client_per_run(slides, tmp_path, monkeypatch):
    """`her2kit segment A B --scheduler ADDR`: one client for the whole run."""
    import argparse

    import distributed
    from distributed import LocalCluster

    from her2kit.scoring import commands
    from her2kit.wsi import cluster as wsi_cluster

    made = []

    class CountingClient(distributed.Client):
        def __init__(self, *a, **kw):
            made.append(a)
            super().__init__(*a, **kw)

    monkeypatch.setattr(distributed, "Client", CountingClient)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, scheduler_port=0,
                      protocol="tcp", dashboard_address=None) as lc:
        second = tmp_path / "t.zarr"
        shutil.copytree(slides["zarr"], second)
        args = argparse.Namespace(inputs=[slides["zarr"], str(second)], out=str(tmp_path / "o"),
                                  model=None, mpp=None, workers=1, scheduler=lc.scheduler_address,
                                  force=False, device=None, roi=None, scorer=None)
        with wsi_cluster.shared_executors():
            rc = commands.run(args, segment_only=True, get_segmenter=StainSegmenter)
            assert len(made) == 1 and wsi_cluster._SCOPE
        assert wsi_cluster._SCOPE is None
    assert rc == 0
    for stem in ("s", "t"):
        attrs = json.loads((tmp_path / "o" / stem / "labels.zarr" / ".zattrs").read_text())
        assert attrs["her2kit"]["run"]["executor"].startswith("scheduler tcp://")


def test_one_local_cluster_per_run(monkeypatch):
    """--workers N: the local cluster is made once per shared_executors block and
    closed at its end; outside one, each make_executor call owns its own."""
    import distributed

    from her2kit.wsi import cluster as wsi_cluster

    events = []

    class FakeCluster:
        def __init__(self, **kw):
            events.append("cluster")

        def close(self):
            events.append("cluster closed")

    class FakeClient:
        def __init__(self, cluster):
            pass

        def scheduler_info(self, n_workers=-1):
            return {"workers": {"a": {}, "b": {}}}

        def close(self):
            events.append("client closed")

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", FakeClient)
    with wsi_cluster.shared_executors():
        a = wsi_cluster.make_executor(workers=2)
        a.close()
        b = wsi_cluster.make_executor(workers=2)
        b.close()
        assert events == ["cluster"] and a.workers == 2 and a.kind == "local 2 processes"
        assert wsi_cluster.make_executor(workers=1).kind == "in-process"
    assert events == ["cluster", "client closed", "cluster closed"]
    wsi_cluster.make_executor(workers=2).close()
    assert events[3:] == ["cluster", "client closed", "cluster closed"]


def test_cli_score_and_segment_share_executors(monkeypatch):
    from her2kit import cli
    from her2kit.scoring import commands
    from her2kit.wsi import cluster as wsi_cluster

    seen = []
    monkeypatch.setattr(commands, "segment", lambda args: seen.append(wsi_cluster._SCOPE is not None) or 0)
    assert cli.main(["segment", "x.png", "--out", "o", "--workers", "2"]) == 0
    assert seen == [True] and wsi_cluster._SCOPE is None


def test_unreachable_scheduler_is_one_line():
    from her2kit.wsi.cluster import make_executor

    with pytest.raises(Her2kitError, match="cannot reach dask scheduler tcp://127.0.0.1:1"):
        make_executor(scheduler="tcp://127.0.0.1:1", connect_timeout=1)


def _bad_slides(src: str, d: Path) -> dict[str, str]:
    import zarr

    corrupt = d / "corrupt.zarr"
    shutil.copytree(src, corrupt)
    level0 = corrupt / "0"
    chunks = [p for p in level0.rglob("*") if p.is_file() and not p.name.startswith(".")]
    for p in chunks:  # every level-0 chunk: whichever a block reads is garbage
        p.write_bytes(b"\x00garbage" * 10)
    missing = d / "missing.zarr"
    shutil.copytree(src, missing)
    shutil.rmtree(missing / "1")
    empty = d / "empty.zarr"
    zarr.create_array(str(empty), shape=(0, 0, 3), dtype="uint8", chunks=(64, 64, 3),
                      zarr_format=2)
    return {"corrupt": str(corrupt), "missing": str(missing), "empty": str(empty)}


def test_bad_slides_fail_alone(slides, tmp_path, capsys):
    bad = _bad_slides(slides["zarr"], tmp_path)
    inputs = [bad["corrupt"], bad["missing"], slides["zarr"], bad["empty"],
              str(tmp_path / "nothing.zarr")]
    results = run_slides(inputs, tmp_path / "out", StainSegmenter(), block=256, halo=HALO,
                         progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4, err
    for line, name in zip(err, ["corrupt", "missing", "empty", "nothing"], strict=True):
        assert line.startswith("her2kit: error: ") and name in line and "Traceback" not in line
    by = {Path(r["input"]).name: r for r in results}
    assert "error" in by["corrupt.zarr"] and "error" in by["missing.zarr"]
    assert "empty" in by["empty.zarr"]["error"] and "error" in by["nothing.zarr"]
    good = by["s.zarr"]
    assert "error" not in good and (tmp_path / "out" / "s" / "score.json").is_file()


def test_corrupt_chunk_in_a_block_is_input_error(slides, tmp_path):
    """A chunk read by a block task (the thumbnails are cached from a first,
    interrupted run): the block's one-line error names the file."""
    bad = tmp_path / "c.zarr"
    shutil.copytree(slides["zarr"], bad)
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(str(bad), tmp_path / "o", CrashAfter(2), block=256, halo=HALO, progress=False)
    for p in (bad / "0").rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            p.write_bytes(b"junk")
    with pytest.raises(InputError) as e:
        run_slide(str(bad), tmp_path / "o", CrashAfter(0), block=256, halo=HALO, progress=False)
    msg = str(e.value)
    assert msg.startswith(str(bad)) and "cannot read pixels of block" in msg and "\n" not in msg
    assert msg.count(str(bad)) == 1  # named once


def _glass_slide(src: str, path: Path, tissue_fraction: float) -> None:
    """A 1024^2 slide: glass with a tissue square covering ``tissue_fraction`` of it."""
    from her2kit import omezarr
    from her2kit.readers import open_slide

    tissue = open_slide(src).read_region(0, 0, 512, 512)
    side = int(round(1024 * tissue_fraction**0.5))
    canvas = np.empty((1024, 1024, 3), np.uint8)
    canvas[:] = GLASS
    canvas[:side, :side] = np.tile(tissue, (2, 2, 1))[:side, :side]
    root = omezarr.create_multiscale_image(str(path), (1024, 1024), 0.5, chunk=256)
    omezarr.write_region(root["0"], 0, 0, canvas)
    omezarr.build_pyramid(root)


def test_tissue_selects_fewer_blocks(slides, tmp_path):
    from her2kit.preprocess.tissue import slide_tissue_mask
    from her2kit.readers import open_slide

    path = tmp_path / "t30.zarr"
    _glass_slide(slides["zarr"], path, 0.3)
    slide = open_slide(str(path))
    mask, ds = slide_tissue_mask(slide)
    assert 0.25 <= mask.mean() <= 0.4
    grid = make_grid(slide.shape, 1.0, 256, HALO)
    chosen = select_blocks(grid, tissue_fractions(grid, mask, ds))
    # tissue covers 561^2 px: blocks rows/cols 0..2 (9 of 16), never the glass ones
    assert sorted(chosen) == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    s = run_slide(str(path), tmp_path / "o", StainSegmenter(), block=256, halo=HALO,
                  progress=False, segment_only=True)
    assert s["wsi"]["blocks_tissue"] == 9 and s["wsi"]["blocks_total"] == 16
    lab = label_level0(tmp_path / "o", "cells")
    assert lab[768:, :].max() == 0 and lab[:, 768:].max() == 0 and lab[:512, :512].max() > 0
    assert len(select_blocks(grid, None)) == 16  # without tissue detection every block runs


def test_resampling_to_model_mpp(slides, tmp_path):
    """A segmenter at 1.0 um/px on a 0.5 um/px slide: read from level 1, labels at level 0."""
    seg = StainSegmenter(mpp=1.0)
    out = tmp_path / "lo"
    s = run_slide(slides["zarr"], out, seg, block=128, halo=24, progress=False)
    assert s["wsi"]["grid"]["level"] == 1 and s["wsi"]["grid"]["scale"] == 2.0
    assert label_level0(out, "cells").shape == (512, 512)
    cells = read_cells(out)
    assert cells["y"].max() < 512 and cells["x"].max() > 256  # level-0 pixel coordinates
    lab = label_level0(out, "cells")
    assert set(np.unique(lab)) - {0} == set(cells["id"].astype(np.int64).tolist())


def test_roi_keeps_cells_inside(slides, reference, tmp_path):
    roi = [[(0, 0), (300, 0), (300, 200), (0, 200)]]  # (x, y) vertices, level-0 pixels
    out = tmp_path / "roi"
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, roi=roi,
              progress=False)
    cells, ref = read_cells(out), read_cells(reference)
    assert len(cells["id"]) and (cells["x"] < 301).all() and (cells["y"] < 201).all()
    assert len(cells["id"]) < len(ref["id"])


def test_roi_hole_keeps_its_cells_out(slides, reference, tmp_path):
    """A polygon's hole is outside the ROI on slides as on images (QA: the
    slide pipeline kept only the exterior ring)."""
    from her2kit.scoring.roi import parse_roi

    outer, hole = [[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]], [[100, 100], [300, 100], [300, 300], [100, 300], [100, 100]]
    roi = parse_roi({"type": "Polygon", "coordinates": [outer, hole]})
    out = tmp_path / "hole"
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, roi=roi, progress=False)
    cells, ref = read_cells(out), read_cells(reference)
    in_hole = (ref["x"] > 110) & (ref["x"] < 290) & (ref["y"] > 110) & (ref["y"] < 290)
    assert in_hole.sum() > 5  # the hole has cells to keep out
    assert len(cells["id"]) > 5
    assert not ((cells["x"] > 110) & (cells["x"] < 290) & (cells["y"] > 110) & (cells["y"] < 290)).any()


def test_roi_keeps_exactly_the_cells_whose_written_centroid_is_inside(slides, reference, tmp_path):
    """QA: on slides the ROI went by the nucleus centroid, on images by the cell
    centroid written to cells.csv: cells at the edge were kept outside it and
    dropped inside it. Now both paths keep exactly those whose cells.csv
    centroid (+0.5: pixel centres in the ROI's corner coordinates) is inside."""
    from her2kit.scoring.roi import inside, parse_roi

    outer = [[0, 0], [250.3, 0], [250.3, 512], [0, 512], [0, 0]]
    hole = [[60.5, 160.5], [180.5, 160.5], [180.5, 300.5], [60.5, 300.5], [60.5, 160.5]]
    roi = parse_roi({"type": "Polygon", "coordinates": [outer, hole]})
    out = tmp_path / "edge"
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, roi=roi, progress=False)
    cells, ref = read_cells(out), read_cells(reference)
    keep = inside(roi, ref["x"] + 0.5, ref["y"] + 0.5)
    assert 5 < keep.sum() < len(ref["id"])
    want = sorted(zip(ref["x"][keep].round(2), ref["y"][keep].round(2), ref["category"][keep], strict=True))
    got = sorted(zip(cells["x"].round(2), cells["y"].round(2), cells["category"], strict=True))
    assert got == want


def test_grid_geometry():
    g = make_grid((1000, 700), 2.0, 300, 50)
    assert g.block0 == 512 and g.halo0 == 100 and (g.rows, g.cols) == (2, 2)
    assert g.extent(g.block(0)) == (0, 0, 612, 612)
    assert g.extent(g.block(3)) == (412, 412, 588, 288)
    assert sorted(g.neighbours(0)) == [1, 2, 3]
    assert g.id_stride() == 2**20
    assert make_grid((10**6, 10**6), 1.0, 1024, 64).id_stride() < 2**20


def test_several_cell_workers_equal_reference_and_resume(slides, reference, tmp_path):
    """Blocks whose cells are found 3 at once (the GPU default: one thread per spare core) give the
    reference's cells; a crash leaves every block finished before it recorded."""
    out = tmp_path / "c3"
    with pytest.raises(Her2kitError, match="simulated crash"):
        run_slide(slides["zarr"], out, CrashAfter(6), block=BLOCK, halo=HALO, progress=False,
                  overlap=True, cell_workers=3)
    assert len(list((out / ".her2kit-work" / "blocks").glob("*.npz"))) == 5
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
                  overlap=True, cell_workers=3)
    assert s["run"]["blocks_run"] == 4
    assert (out / "cells.csv").read_bytes() == (reference / "cells.csv").read_bytes()
    np.testing.assert_array_equal(label_level0(out, "cells"), label_level0(reference, "cells"))


def test_cell_workers_default(monkeypatch):
    """One cell-finding thread on a CPU; on a GPU one per spare core, within memory."""
    import os

    import psutil

    from her2kit.wsi.worker import cell_workers_for

    class OnGpu(StainSegmenter):
        device = "cuda:0"

    class Memory:
        available = 64 * 2**30

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    assert cell_workers_for(StainSegmenter(), None, (2176, 2176)) == 1
    assert cell_workers_for(OnGpu(), None, (2176, 2176)) == 15
    Memory.available = 2 * 2**30  # 1 GiB for blocks of ~0.6 GiB: one at a time
    assert cell_workers_for(OnGpu(), None, (2176, 2176)) == 1
    Memory.available = 4 * 2**30
    assert cell_workers_for(OnGpu(), None, (2176, 2176)) == 3
    Memory.available = 64 * 2**30
    monkeypatch.setenv("HER2KIT_TORCH_THREADS", "4")  # a worker of a 4-process local cluster
    assert cell_workers_for(OnGpu(), None, (2176, 2176)) == 3


def test_spare_a_core_unless_openmp_waits_passively(monkeypatch):
    """torch gives a core to cell finding on a CPU, except when its OpenMP threads
    sleep while waiting (what `her2kit score` sets for in-process runs)."""
    import os

    import torch

    from her2kit.wsi.worker import _spare_a_core

    n = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    restore = _spare_a_core(StainSegmenter(), None)
    assert calls == [1]
    restore()
    assert calls == [1, 2]
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    _spare_a_core(StainSegmenter(), None)()
    assert calls == [1, 2]
    assert torch.get_num_threads() == 2 and n >= 1


def test_cli_sets_passive_openmp_for_in_process_runs(monkeypatch):
    import os
    import sys

    from her2kit import cli

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `her2kit score` process
    cli._passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own choice stays
    cli._passive_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_reuse_freed_memory_stops_page_faults_on_reallocation():
    """In-process score/segment keep freed memory for the next block's arrays:
    a second image-sized array reuses the first one's pages (glibc, Linux)."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc allocator settings")
    code = (
        "import resource, sys, numpy as np\n"
        "from her2kit.wsi.cluster import reuse_freed_memory\n"
        "on = sys.argv[1] == 'on' and reuse_freed_memory()\n"
        "for _ in range(2):\n"
        "    a = np.ones(4 << 20, np.float32); b = np.ones(4 << 20, np.int32); del a, b\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "a = np.ones(4 << 20, np.float32); b = np.ones(4 << 20, np.int32)\n"
        "print(int(on), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    faults = {}
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True)
        applied, faults[mode] = (int(v) for v in out.stdout.split())
    if not applied:
        pytest.skip("not glibc")
    if faults["off"] < 100:
        pytest.skip(f"this allocator reuses the pages anyway ({faults['off']} faults)")
    assert faults["on"] * 10 < faults["off"], faults


def test_in_process_run_leaves_the_collector_thawed(slides, tmp_path):
    """Blocks run with the objects alive at their start frozen out of cycle
    collection (their outlines make ~150,000 lists per block); a run thaws them."""
    import gc

    from her2kit.wsi import cluster

    before = gc.get_freeze_count()
    with cluster.gc_frozen():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
    run_slide(slides["zarr"], tmp_path / "out", StainSegmenter(), block=BLOCK, halo=HALO,
              workers=1, progress=False)
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a host program's own frozen objects stay frozen
    try:
        host = gc.get_freeze_count()
        with cluster.gc_frozen():
            pass
        assert gc.get_freeze_count() == host > 0
    finally:
        gc.unfreeze()


def test_gathered_csv_is_the_same_from_block_text_or_records(tmp_path):
    """cells.csv copied from the blocks' own text equals cells.csv formatted from
    their records (as csv.writer writes them), including a block without a text
    file (an older run) and one whose columns differ from the slide's header."""
    import csv

    from her2kit.scoring import exports
    from her2kit.wsi import cellrows
    from her2kit.wsi.pipeline import _gather
    from her2kit.wsi.resume import Ledger

    rng = np.random.default_rng(3)

    def cols(n, extra=False):
        c = {"id": np.arange(1, n + 1, dtype=np.uint32), "y": rng.random(n) * 1e4,
             "x": rng.random(n) * 1e4, "category": rng.integers(0, 4, n).astype(np.int8),
             "tumour": rng.random(n) > 0.3, "area_um2": rng.random(n).astype(np.float32) * 90}
        if extra:
            c["note"] = np.array([f"c{i}" for i in range(n)])
        return c

    ledger = Ledger(tmp_path / "work")
    ledger.blocks_dir.mkdir(parents=True, exist_ok=True)
    blocks = {0: cols(5), 1: cols(0), 2: cols(7), 3: cols(4, extra=True)}
    for i, c in blocks.items():
        ledger.save_block(i, c, np.zeros((0, 3), np.int64), {"index": i})
        if i != 2:  # block 2: recorded without its text
            cellrows.write_block_rows(ledger.rows_path(i), c)
    counts, _, n = _gather(ledger, list(blocks), tmp_path / "cells.csv")

    names = exports.csv_columns(blocks[0])
    ref = tmp_path / "ref.csv"
    with open(ref, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        for i in (0, 2, 3):
            c = {k: np.load(ledger.block_path(i))[f"cell_{k}"] for k in names}
            for row in zip(*(c[k] for k in names), strict=True):
                w.writerow([int(v) if isinstance(v, (np.bool_, np.integer)) else f"{v:.6g}" for v in row])
    assert (tmp_path / "cells.csv").read_bytes() == ref.read_bytes()
    assert n == 16
    tumour = np.concatenate([blocks[i]["category"][blocks[i]["tumour"]] for i in blocks])
    assert counts.tolist() == np.bincount(tumour, minlength=4).tolist()
    # a block lacking a column of the header, or with a category no rule knows: one line
    for bad in ({k: v for k, v in cols(3).items() if k != "area_um2"},
                cols(3) | {"category": np.array([0.0, 2.99, 1.0])}):
        ledger.save_block(4, bad, np.zeros((0, 3), np.int64), {"index": 4})
        cellrows.write_block_rows(ledger.rows_path(4), bad)
        with pytest.raises(Her2kitError, match="block 4: "):
            _gather(ledger, [0, 4], tmp_path / "bad.csv")


def test_geojson_concatenation_skips_empty_and_missing_blocks(tmp_path):
    import json

    from her2kit.wsi import features

    feats = [{"type": "Feature", "id": i, "properties": {"k": i}} for i in range(5)]
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    features.write_block_features(a, [json.dumps(f) for f in feats[:2]])
    features.write_block_features(b, [])
    features.write_block_features(c, [json.dumps(f) for f in feats[2:]])
    n = features.concatenate([a, b, tmp_path / "missing.jsonl", c], tmp_path / "out.geojson")
    doc = json.loads((tmp_path / "out.geojson").read_text())
    assert n == 5 and doc["type"] == "FeatureCollection" and doc["features"] == feats
    assert features.concatenate([b], tmp_path / "empty.geojson") == 0
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []


def test_csv_rows_text_is_what_csv_writer_writes():
    """The fast path for numeric columns gives csv.writer's text of the same
    formatted values; other columns (strings with commas) go through csv.writer."""
    import csv
    import io

    from her2kit.scoring import exports

    cols = {"id": np.array([1, 2, 3, 4, 5, 6], np.uint32),
            "big": np.array([2**40, -7, 0, 1, 2, 3], np.int64),
            "y": np.array([0.1, -0.0, np.nan, np.inf, 1e-7, 123456789.0]),
            "f32": np.array([0.1, 1 / 3, 2.5, -1e20, 7, 1e-3], np.float32),
            "flag": np.array([True, False, True, True, False, False])}
    names = exports.csv_columns(cols)

    def reference(c):
        buf = io.StringIO()
        w = csv.writer(buf)
        for row in zip(*(c[k] for k in names), strict=True):
            w.writerow([int(v) if isinstance(v, (np.bool_, np.integer)) else f"{v:.6g}" for v in row])
        return buf.getvalue()

    assert exports.csv_rows(cols, names) == reference(cols)
    assert exports.csv_rows({k: v[:0] for k, v in cols.items()}, names) == ""
    mixed = {**cols, "note": np.array(["a", "b,c", 'd"e', "f", "g", "h"])}
    text = exports.csv_rows(mixed, [*names, "note"])
    assert list(csv.reader(io.StringIO(text)))[1][-1] == "b,c"
    assert text.splitlines()[0] == reference(cols).splitlines()[0] + ",a"


def test_level1_filled_as_blocks_finish_equals_a_full_pyramid(slides, tmp_path, monkeypatch):
    """In an overlapped in-process run, level 1 of the label pyramid is filled
    block by block as each block's region is final (several blocks share a
    level-1 chunk here), and not again after the blocks; every level equals
    level 0 taken every 2^k-th pixel."""
    import zarr

    from her2kit.wsi import labelstore

    calls = []
    real = labelstore.downsample_region

    def spy(path, level, *region):
        import threading

        calls.append((level, threading.current_thread().name))
        return real(path, level, *region)

    monkeypatch.setattr(labelstore, "downsample_region", spy)
    out = tmp_path / "p"
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
              overlap=True, segment_only=True)
    level1 = [name for level, name in calls if level == 1]
    assert len(level1) == 9 and all(n.startswith("her2kit-cells") for n in level1)
    assert any(level == 2 for level, _ in calls)
    for name in ("cells", "semantic"):
        g = out / "labels.zarr" / "labels" / name
        base = zarr.open_array(str(g / "0"), mode="r")[:]
        levels = len(zarr.open_group(str(g), mode="r").attrs["multiscales"][0]["datasets"])
        assert levels == 3
        for k in range(1, levels):
            got = zarr.open_array(str(g / str(k)), mode="r")[:]
            assert np.array_equal(got, base[::2**k, ::2**k]), (name, k)
        assert base.any()


def test_blocks_are_read_ahead_in_their_own_thread(slides, tmp_path, monkeypatch):
    """Overlapped runs read each block once, in the reader thread (while the
    previous block is predicted), never in the network's thread."""
    import threading

    from her2kit.wsi import worker

    names = []
    real = worker.read_block

    def spy(*args, **kw):
        names.append(threading.current_thread().name)
        return real(*args, **kw)

    monkeypatch.setattr(worker, "read_block", spy)
    run_slide(slides["zarr"], tmp_path / "r", StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
              overlap=True, segment_only=True)
    assert len(names) == 9 and all(n.startswith("her2kit-read") for n in names)


def test_odd_block_side_leaves_level1_to_the_end(slides, tmp_path):
    """With an odd level-0 block side, two blocks would share level-1 pixels, so
    level 1 is made after the blocks; the pyramid is right either way."""
    import zarr

    from her2kit.wsi import labelstore, pipeline
    from her2kit.wsi.resume import Ledger

    labels = tmp_path / "labels.zarr"
    labelstore.create(labels, (512, 512), 128, None)
    for side, early in ((101, False), (100, True)):
        grid = make_grid((512, 512), 1.0, side, 16)
        seams = pipeline._EarlySeams({"labels_path": str(labels)}, grid, list(range(len(grid))),
                                     Ledger(tmp_path / "w"), set())
        assert (seams.levels >= 2) == early, side
    out = tmp_path / "odd"
    run_slide(slides["zarr"], out, StainSegmenter(), block=101, halo=16, progress=False,
              overlap=True, segment_only=True)
    g = out / "labels.zarr" / "labels" / "cells"
    base = zarr.open_array(str(g / "0"), mode="r")[:]
    assert base.any()
    assert np.array_equal(zarr.open_array(str(g / "1"), mode="r")[:], base[::2, ::2])


def test_dask_tasks_run_with_the_in_process_memory_handling(monkeypatch):
    """Block tasks in dask workers reuse freed memory (set once per process)
    and trim it after each task, as an in-process run does."""
    from her2kit.wsi import cluster

    calls = []
    monkeypatch.setattr(cluster, "_memory_settled", False)
    monkeypatch.setattr(cluster, "reuse_freed_memory", lambda: calls.append("reuse"))
    monkeypatch.setattr(cluster, "release_memory", lambda: calls.append("release"))
    assert cluster.in_worker_process(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        cluster.in_worker_process(lambda: 1 / 0)
    assert calls == ["reuse", "release", "release"]


#: score.json keys that images and slides both carry (docs/scoring.md "Outputs")
SCORE_KEYS = {"score", "subcategory", "cells_total", "percent", "counts", "h_score", "percent_complete",
              "cells_detected", "model", "her2kit_version", "mpp", "mpp_from", "model_mpp", "input",
              "input_bytes", "shape", "roi"}


def test_slide_scorer_plugin_and_the_keys_of_images(slides, reference, tmp_path):
    """QA: --scorer was ignored on slides, and score.json keys differed from an
    image's. The scorer runs on the slide's whole cell table."""
    from PIL import Image

    out = tmp_path / "h"
    s = run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
                  scorer="h-score")
    assert s["scorer"]["name"] == "h-score"
    assert s["scorer"]["value"] == pytest.approx(s["h_score"]) and s["h_score"] > 0
    slide_keys = set(json.loads((out / "score.json").read_text()))
    assert SCORE_KEYS <= slide_keys, SCORE_KEYS - slide_keys
    assert "timings_s" in s["run"] and "wsi" in slide_keys  # a slide's timings: with its blocks
    assert s["cells_detected"] == len(read_cells(out)["id"]) and s["shape"] == [512, 512]
    img = tmp_path / "img.png"
    Image.fromarray(np.asarray(Image.open(slides["tiff"]))[:200, :200, :3]).save(img)
    p = subprocess.run([sys.executable, "-m", "her2kit", "score", str(img), "--out", str(tmp_path / "i"),
                        "--mpp", "0.5", "--model", "her2net"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    image_keys = set(json.loads((tmp_path / "i" / "img" / "score.json").read_text()))
    assert SCORE_KEYS <= image_keys and "timings" in image_keys, SCORE_KEYS - image_keys


def test_a_missing_chunk_is_noted(slides, tmp_path, capsys):
    """QA: a chunk file lost from an OME-Zarr read as its fill value in silence."""
    src = tmp_path / "lost.zarr"
    shutil.copytree(slides["zarr"], src)
    chunk = next(p for p in sorted((src / "0").rglob("*"))
                 if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json")
    chunk.unlink()
    s = run_slide(str(src), tmp_path / "o", StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert "1 of" in s["storage_note"] and "missing" in s["storage_note"]
    assert "chunks of level 0 are missing" in capsys.readouterr().err
    full = run_slide(slides["zarr"], tmp_path / "f", StainSegmenter(), block=BLOCK, halo=HALO, progress=False)
    assert "storage_note" not in full


def test_segment_classes_only_is_the_network_alone(slides, tmp_path):
    """`segment --classes-only`: the same pixel classes as a full `segment`, no
    cells (labels/cells empty), no score; a rerun with cells says it differs."""
    import zarr

    def cli(*argv):
        return subprocess.run([sys.executable, "-m", "her2kit", "segment", slides["zarr"], *map(str, argv)],
                              capture_output=True, text=True, timeout=300)

    assert cli("--out", tmp_path / "c", "--classes-only", "--model", "tiny-unet").returncode == 0
    assert cli("--out", tmp_path / "f", "--model", "tiny-unet").returncode == 0
    only, full = tmp_path / "c" / "s" / "labels.zarr", tmp_path / "f" / "s" / "labels.zarr"
    sem = zarr.open_array(str(only / "labels" / "semantic" / "0"), mode="r")[:]
    assert np.array_equal(sem, zarr.open_array(str(full / "labels" / "semantic" / "0"), mode="r")[:])
    assert set(np.unique(sem)) == {0, 1, 2}
    assert not zarr.open_array(str(only / "labels" / "cells" / "0"), mode="r")[:].any()
    assert zarr.open_array(str(full / "labels" / "cells" / "0"), mode="r")[:].any()
    assert json.loads((only / ".zattrs").read_text())["her2kit"]["classes_only"] is True
    p = cli("--out", tmp_path / "c", "--model", "tiny-unet")
    assert p.returncode == 0 and "made with --classes-only, skipped" in p.stdout
    with pytest.raises(Her2kitError, match="a score needs cells"):
        run_slide(slides["zarr"], tmp_path / "x", StainSegmenter(), classes_only=True, progress=False)


def test_classes_only_on_an_image(tmp_path):
    from PIL import Image

    from her2kit.synth.images import make_patch

    img = tmp_path / "p.png"
    Image.fromarray(make_patch(7, 256, "2+").region.rgb).save(img)
    p = subprocess.run([sys.executable, "-m", "her2kit", "segment", str(img), "--out", str(tmp_path / "o"),
                        "--mpp", "0.5", "--model", "tiny-unet", "--classes-only"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    import zarr

    root = tmp_path / "o" / "p" / "labels.zarr" / "labels"
    assert set(np.unique(zarr.open_array(str(root / "semantic" / "0"), mode="r")[:])) == {0, 1, 2}
    assert not zarr.open_array(str(root / "cells" / "0"), mode="r")[:].any()
    # no score in its attributes (QA: "no tumour cells found", H-score 0, cells never looked for)
    about = json.loads((root.parent / ".zattrs").read_text())["her2kit"]
    assert about["classes_only"] is True
    assert not {"score", "h_score", "note", "cells_total", "cells_detected", "percent_complete"} & set(about)


def test_segment_force_into_a_score_folder_drops_the_old_score(tmp_path):
    """QA: `segment --force` into a folder `score` had made replaced labels.zarr but
    left score.json and cells.csv of the old labels; a later `score` called it complete."""
    from PIL import Image

    from her2kit.synth.images import make_patch

    img = tmp_path / "p.png"
    Image.fromarray(make_patch(7, 256, "2+").region.rgb).save(img)

    def cli(verb, *argv):
        return subprocess.run([sys.executable, "-m", "her2kit", verb, str(img), "--out", str(tmp_path / "o"),
                               "--mpp", "0.5", "--model", "tiny-unet", *argv],
                              capture_output=True, text=True, timeout=300)

    assert cli("score").returncode == 0
    folder = tmp_path / "o" / "p"
    assert (folder / "score.json").is_file() and (folder / "cells.csv").is_file()
    p = cli("segment", "--force", "--classes-only")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (folder / "labels.zarr").is_dir()
    assert not any((folder / n).exists() for n in ("score.json", "cells.csv", "overlay.png", "report.html"))
    p = cli("score")
    assert p.returncode == 0 and "skipped" not in p.stdout and (folder / "score.json").is_file()
    # a segment that fails before new labels exist leaves the score as it was
    before = (folder / "score.json").read_bytes()
    good = img.read_bytes()
    img.write_bytes(good[:100])
    p = cli("segment", "--force")
    assert p.returncode == 1 and (folder / "score.json").read_bytes() == before


def test_segment_force_into_a_slide_score_folder_drops_the_old_score(slides, reference, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(reference, out)
    assert (out / "score.json").is_file() and (out / "cells.csv").is_file()
    run_slide(slides["zarr"], out, StainSegmenter(), block=BLOCK, halo=HALO, progress=False,
              segment_only=True, force=True)
    assert (out / "labels.zarr").is_dir()
    assert not any((out / n).exists() for n in ("score.json", "cells.csv", "cells.geojson", "report.html"))
