"""GUI building blocks without the window: decimation, QImage conversion, chain recording, workers."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")

from ddpm_studio.gui import jobs  # noqa: E402
from ddpm_studio.gui.panels.forward_panel import q_sample_numpy, to_u8, to_unit  # noqa: E402
from ddpm_studio.gui.qimage import to_qimage  # noqa: E402
from ddpm_studio.gui.widgets.loss_plot import LossPlot, decimate_minmax  # noqa: E402
from ddpm_studio.errors import Cancelled  # noqa: E402
from ddpm_studio.gui.workers import Task, running_tasks  # noqa: E402


def test_decimate_minmax_keeps_extremes_and_bounds_size():
    rng = np.random.default_rng(0)
    x = np.arange(100_000, dtype=np.float64)
    y = rng.random(100_000)
    y[12_345] = 50.0  # a spike a stride would miss
    y[77_777] = -50.0
    xs, ys = decimate_minmax(x, y, 1000)
    assert len(xs) <= 2 * 1000 + 100
    assert ys.max() == 50.0 and ys.min() == -50.0
    assert np.all(np.diff(xs) >= 0)  # still in step order
    # small inputs pass through untouched
    xs2, ys2 = decimate_minmax(x[:50], y[:50], 1000)
    assert len(xs2) == 50 and np.array_equal(ys2, y[:50])


def test_incremental_decimation_equals_decimating_everything():
    from ddpm_studio.gui.widgets.loss_plot import _Decimator

    rng = np.random.default_rng(1)
    x = np.arange(20_000, dtype=np.float64)
    y = rng.random(20_000)
    y[rng.integers(0, 20_000, 50)] = np.nan
    dec = _Decimator()
    n = 0
    while n < len(x):  # grows in uneven batches, across many changes of the run length
        n = min(len(x), n + int(rng.integers(1, 400)))
        got, want = dec(x[:n], y[:n], 100), decimate_minmax(x[:n], y[:n], 100)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1], equal_nan=True), n
    got, want = dec(x[:300], y[:300], 100), decimate_minmax(x[:300], y[:300], 100)  # a new, shorter run
    assert np.array_equal(got[1], want[1], equal_nan=True)


def test_loss_plot_hands_qt_a_bounded_number_of_points(qtbot):
    plot = LossPlot(max_bins=500)
    qtbot.addWidget(plot)
    steps = np.arange(1, 200_001)
    loss = 1.0 / np.sqrt(steps)
    for chunk in range(0, len(steps), 50_000):  # batches, as the worker delivers them
        s = slice(chunk, chunk + 50_000)
        plot.add_points(steps[s], loss[s], loss[s])
    plot.redraw()
    assert plot.num_points == 200_000
    assert 0 < plot.displayed_points() <= 2 * 500 + 500
    xs, ys = plot.smooth_curve.getData()
    assert xs[0] == 1 and xs[-1] == 200_000
    plot.set_log_scale(True)
    assert plot.plot.ctrl.logYCheck.isChecked()


def test_loss_plot_axes_change_in_jumps_and_show_every_point(qtbot):
    """A new axis range re-lays out the axis (ui-stall benchmark): not at every redraw."""
    plot = LossPlot()
    qtbot.addWidget(plot)
    rng = np.random.default_rng(0)
    steps = np.arange(1, 1001)
    loss = 0.05 + 1.0 / np.sqrt(steps) + 0.02 * rng.random(1000)
    plot.add_points(steps, loss, loss)
    plot.redraw()
    changes = {"x": 0, "y": 0}
    plot.plot.vb.sigXRangeChanged.connect(lambda *_: changes.__setitem__("x", changes["x"] + 1))
    plot.plot.vb.sigYRangeChanged.connect(lambda *_: changes.__setitem__("y", changes["y"] + 1))
    for step in range(1001, 2001, 5):  # 200 redraws of 5 new steps each
        s = np.arange(step, step + 5)
        plot.add_points(s, 0.05 + 1.0 / np.sqrt(s) + 0.02 * rng.random(5), 0.05 + 1.0 / np.sqrt(s))
        plot.redraw()
        (x0, x1), (y0, y1) = plot.plot.vb.viewRange()
        assert x0 <= 1 and x1 >= step + 4  # every step so far is in view,
        assert y0 <= 0.05 + 1.0 / np.sqrt(step + 4) and y1 >= loss[0]  # and every loss
    assert plot.redraw_count == 201
    assert changes["x"] <= 20 and changes["y"] <= 20  # auto-ranged axes changed 200 times
    assert plot.plot.vb.viewRange()[0][1] <= 2000 * 1.1  # little room to the right
    plot.plot.vb.sigRangeChangedManually.emit([True, True])  # the user pans or zooms: stop following
    before = plot.plot.vb.viewRange()
    plot.add_points([5000], [9.0], [9.0])
    plot.redraw()
    assert plot.plot.vb.viewRange() == before
    plot.clear()  # a new run: follow again
    assert plot.x_range is None and plot.y_range is None
    plot.add_points([1, 2], [9.0, 8.0], [9.0, 8.0])
    plot.redraw()
    assert plot.plot.vb.viewRange()[1][1] >= 9.0


def test_bucket_plot_shows_the_latest_buckets_at_most_a_few_times_a_second(qtbot):
    from ddpm_studio.gui.widgets.loss_plot import BucketLossPlot

    plot = BucketLossPlot(redraw_hz=4.0)
    qtbot.addWidget(plot)
    plot.set_buckets([0.5, None, 0.25], 1000)  # the first values show at once
    assert plot.redraw_count == 1 and plot.heights[0] == 0.5 and np.isnan(plot.heights[1])
    for i in range(1, 31):  # the trainer reports with every step
        plot.set_buckets([float(i), float(i), float(i)], 1000)
    assert plot.redraw_count == 1 and plot.heights[0] == 0.5  # not yet
    qtbot.waitUntil(lambda: plot.redraw_count == 2, timeout=2000)
    assert list(plot.heights) == [30.0, 30.0, 30.0]  # the latest won
    qtbot.wait(400)
    assert plot.redraw_count == 2  # nothing new: no redraw
    plot.set_buckets([1.0, 2.0, 3.0], 1000)
    plot.clear()
    assert plot.heights is None


def test_qimage_owns_its_pixels():
    a = np.zeros((5, 7, 3), dtype=np.uint8)
    a[2, 3] = (10, 200, 30)
    img = to_qimage(a)
    a[:] = 255  # the array changes (or goes away) after the QImage is built
    assert (img.width(), img.height()) == (7, 5)
    c = img.pixelColor(3, 2)
    assert (c.red(), c.green(), c.blue()) == (10, 200, 30)
    g = to_qimage(np.full((4, 4, 1), 77, dtype=np.uint8))
    assert g.pixelColor(0, 0).red() == 77
    with pytest.raises(ValueError, match="uint8"):
        to_qimage(np.zeros((4, 4, 3), dtype=np.float32))


def test_chain_stride_respects_the_memory_budget():
    frame = 2 * 16 * 256 * 256 * 3  # x_t and x_0 grids of 16 images at 256 px
    assert jobs.chain_stride(50, frame, 300 * 2**20) == 1  # DDIM 50 fits: every step
    k = jobs.chain_stride(1000, frame, 300 * 2**20)
    assert k > 1 and (1000 / k) * frame <= 300 * 2**20
    kept = [i for i in range(1000) if jobs.recorded(i, 1000, k)]
    assert kept[0] == 0 and kept[-1] == 999


def test_forward_explorer_follows_eq_4():
    x0 = to_unit(np.full((8, 8, 3), 255, dtype=np.uint8))
    eps = np.random.default_rng(0).standard_normal(x0.shape)
    xt, added = q_sample_numpy(x0, 0.25, eps)
    assert np.allclose(xt, 0.5 * x0 + np.sqrt(0.75) * eps)
    assert np.allclose(added, np.sqrt(0.75) * eps)
    assert to_u8(np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def _wait_done(qtbot, task):
    with qtbot.waitSignal(task.finished, timeout=10_000):
        pass


def test_task_relays_items_in_order_and_throttles(qtbot):
    got, results = [], []

    def job(state):
        for i in range(2000):
            state.emit(i)
        return "done"

    task = Task(job, name="t", max_rate=30)
    task.items.connect(got.append)
    task.succeeded.connect(results.append)
    with qtbot.waitSignal(task.finished, timeout=10_000):
        task.start()
    flat = [i for batch in got for i in batch]
    assert flat == list(range(2000))  # every item, in order, the last included
    assert len(got) < 2000  # batched
    assert results == ["done"]
    assert task not in running_tasks()


def test_task_cancel_from_ui_thread_stops_a_busy_worker(qtbot):
    started = threading.Event()

    def job(state):
        started.set()
        while not state.should_stop():
            time.sleep(0.001)  # a busy worker: a queued slot would never run here
        raise Cancelled()

    task = Task(job, name="busy")
    cancelled = []
    task.cancelled.connect(lambda: cancelled.append(True))
    task.start()
    assert started.wait(5)
    with qtbot.waitSignal(task.finished, timeout=5_000):
        task.cancel()
    assert cancelled == [True] and not task.is_running()


def test_task_reports_errors_in_plain_words_with_details(qtbot):
    def job(state):
        raise ValueError("data.image_size must be from 8 to 256; got 4")

    task = Task(job, name="bad")
    failures = []
    task.failed.connect(lambda m, d: failures.append((m, d)))
    with qtbot.waitSignal(task.finished, timeout=5_000):
        task.start()
    (msg, details), = failures
    assert msg == "data.image_size must be from 8 to 256; got 4"
    assert "Traceback" in details and "ValueError" in details


def test_many_void_qt_calls_do_not_exhaust_none():
    """PySide6 6.12.0 on CPython 3.11 leaks a reference to None per void call (see gui/_compat.py).

    A session of live plotting makes hundreds of thousands of such calls; without the guard the
    interpreter aborts once None's count reaches zero.
    """
    import sys

    from PySide6.QtWidgets import QLabel

    label = QLabel()
    before = sys.getrefcount(None)
    for i in range(200_000):
        label.setText("x")
    import gc

    gc.collect()
    assert sys.getrefcount(None) > 0
    assert before - sys.getrefcount(None) < before  # still far from zero


def test_window_workers_use_every_core_only_when_they_run_below_the_ui():
    from ddpm_studio.gui.jobs import threads_for_workers

    class FakeTorch:
        def __init__(self, n):
            self.n = n

        def get_num_threads(self):
            return self.n

        def set_num_threads(self, n):
            self.n = n

    assert threads_for_workers(FakeTorch(1), True, environ={}, cpu_count=2) == 2  # below the UI: every core
    assert threads_for_workers(FakeTorch(8), False, environ={}, cpu_count=8) == 7  # same priority: one left
    assert threads_for_workers(FakeTorch(2), False, environ={}, cpu_count=2) == 1
    assert threads_for_workers(FakeTorch(1), False, environ={}, cpu_count=1) == 1  # one core: nothing to leave
    assert threads_for_workers(FakeTorch(4), False, environ={"OMP_NUM_THREADS": "4"}, cpu_count=4) == 4  # user's
    assert threads_for_workers(FakeTorch(3), True, environ={"OMP_NUM_THREADS": "3"}, cpu_count=8) == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_a_task_runs_on_a_thread_below_the_uis_priority(qtbot):
    import os
    import threading

    from ddpm_studio.gui.workers import BACKGROUND_NICE, Task, lower_this_threads_priority, runs_below_the_ui

    def job(state):
        tid = threading.get_native_id()
        return os.getpriority(os.PRIO_PROCESS, tid), runs_below_the_ui()

    ui_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    task = Task(job, name="nice")
    with qtbot.waitSignal(task.succeeded, timeout=10000) as got:
        task.start()
    nice, below = got.args[0]
    assert nice == min(19, ui_nice + BACKGROUND_NICE) and below == (ui_nice < 19)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == ui_nice  # the UI thread is untouched
    assert not runs_below_the_ui()  # asked on the UI thread itself

    def refuse(*a):
        raise PermissionError("not allowed")

    assert lower_this_threads_priority(setpriority=refuse, getpriority=lambda *a: 0, tid=1) is False


def test_the_workers_nice_can_be_chosen_and_nonsense_is_ignored():
    from ddpm_studio.gui.workers import _worker_nice

    assert _worker_nice({}) == 2
    assert _worker_nice({"DDPM_STUDIO_WORKER_NICE": "0"}) == 0  # the UI's own priority
    assert _worker_nice({"DDPM_STUDIO_WORKER_NICE": "5"}) == 5
    assert _worker_nice({"DDPM_STUDIO_WORKER_NICE": "25"}) == 2
    assert _worker_nice({"DDPM_STUDIO_WORKER_NICE": "x"}) == 2


def test_grid_axis_looks_like_pyqtgraphs_grid_and_lies_beneath_the_data(qtbot):
    """GridAxis draws the grid cheaply (no per-pixel blended lines) but with the same pixels."""
    import pyqtgraph as pg
    from PySide6.QtGui import QImage

    from ddpm_studio.gui.widgets import plotting

    def render(axis_items):
        plotting.configure()
        w = pg.PlotWidget(axisItems=axis_items)
        qtbot.addWidget(w)
        w.resize(420, 260)
        plot = w.getPlotItem()
        plotting.style_plot(plot, left="loss", bottom="step")
        plot.setXRange(0, 1000, padding=0)
        plot.setYRange(0, 1, padding=0)
        w.show()
        qtbot.waitExposed(w)
        img = w.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
        a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[:, : 3 * img.width()]
        view = plot.vb.mapRectToScene(plot.vb.boundingRect()).toAlignedRect().adjusted(2, 2, -2, -2)
        return w, a.reshape(img.height(), img.width(), 3)[view.top():view.bottom(),
                                                          view.left():view.right()].astype(int)

    _, reference = render(None)  # pyqtgraph's own axes: translucent grid lines
    w, ours = render(plotting.grid_axes())
    plot = w.getPlotItem()
    assert reference.shape == ours.shape and reference.std() > 0  # there is a grid to compare
    assert np.abs(reference - ours).max() <= 2  # same pixels inside the view
    assert plot.getAxis("bottom").zValue() < plot.vb.zValue()  # opaque vertical lines under the curves
    assert plot.getAxis("left").zValue() > plot.vb.zValue()  # translucent horizontal lines over them, as before


def test_heavy_imports_run_without_gc_passes_and_end_frozen():
    """A full GC pass over torch's objects, on a worker, stalls the UI thread (ui-stall benchmark)."""
    import gc

    from ddpm_studio.gui.jobs import collector_paused_then_frozen

    assert gc.isenabled()
    try:
        with collector_paused_then_frozen():
            assert not gc.isenabled()
            with collector_paused_then_frozen():  # two workers importing at once
                assert not gc.isenabled()
            assert not gc.isenabled()  # the other one is still importing
            alive = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= len(alive)  # out of the collector's reach from now on
        gc.disable()
        with collector_paused_then_frozen():
            pass
        assert not gc.isenabled()  # a collector switched off stays off
    finally:
        gc.enable()
        gc.unfreeze()
