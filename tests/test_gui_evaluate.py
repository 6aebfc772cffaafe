"""The Evaluate tab and the dataset doctor in the Dataset panel (issue 17), driven with pytest-qt."""

from __future__ import annotations

import shutil

import pytest
from evaluation_support import blobs, trained_run, write_pngs


def run_copy(tmp_path, steps=(10, 100, 200)):
    """A copy of the shared run holding only the checkpoints of ``steps`` (its own evaluation.jsonl)."""
    src = trained_run()
    dst = tmp_path / "run"
    (dst / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "run.json", "metrics.jsonl"):
        shutil.copy(src / name, dst / name)
    shutil.copytree(src / "samples", dst / "samples")
    for s in steps:
        for p in (src / "checkpoints").glob(f"step_{s:07d}.*"):
            shutil.copy(p, dst / "checkpoints" / p.name)
    return dst


@pytest.fixture
def panel(qtbot, window, tmp_path):
    p = window.evaluate_panel
    run = run_copy(tmp_path)
    p.ask_run_folder = lambda: str(run)
    with qtbot.waitSignal(p.run_opened, timeout=30_000) as blocker:
        assert p.open_button.isEnabled()
        p.open_button.click()
    assert blocker.args[0] is not None
    return p


def test_open_run_lists_checkpoints_and_plots_the_loss(panel, window):
    assert window.tabs.tabText(window.tabs.indexOf(panel)) == "Evaluate"
    assert [panel.checkpoint_combo.itemText(i) for i in range(panel.checkpoint_combo.count())] == [
        "Newest good checkpoint", "Step 200", "Step 100", "Step 10"]
    x, y = panel.loss_curve.getData()
    assert len(x) == 200 and y[-1] < y[0]
    assert "3 checkpoint(s), 4 preview grid(s)" in panel.run_label.text()
    assert "dpmpp-2m" in panel.cost_label.text() and "Estimated: about" in panel.cost_label.text()
    assert panel.run.seconds_per_sample > 0


def test_evaluate_fills_the_table_with_the_floor(qtbot, panel):
    panel.num_spin.setValue(16)
    with qtbot.waitSignal(panel.evaluation_finished, timeout=60_000) as blocker:
        panel.evaluate_button.click()
        assert not panel.evaluate_button.isEnabled()  # busy while it runs
    res = blocker.args[0]
    assert res is not None and res.readouts[0].step == 200 and res.readouts[0].num_samples == 16
    assert panel.table.rowCount() == 7
    assert panel.table.item(0, 0).text() == "KID (conv features)"
    assert panel.table.horizontalHeaderItem(2).text() == "Floor (real vs real)"
    assert "KID" in panel.summary.text() and "floor" in panel.summary.text()
    x, _ = panel.kid_points()
    assert list(x) == [200]
    assert panel.evaluate_button.isEnabled() and "Last time's pace" in panel.cost_label.text()


def test_every_checkpoint_plots_kid_per_step(qtbot, panel):
    panel.num_spin.setValue(16)
    panel.all_check.setChecked(True)
    assert "Costs 3 x 16 samples" in panel.cost_label.text()
    with qtbot.waitSignal(panel.evaluation_finished, timeout=90_000) as blocker:
        panel.evaluate()
    assert [r.step for r in blocker.args[0].readouts] == [10, 100, 200]
    x, y = panel.kid_points()
    assert list(x) == [10, 100, 200] and y[-1] < y[0]
    assert panel.floor_line.isVisible()
    box = panel.kid_bars.boundingRect()  # the interval bars are drawable (pyqtgraph raised here once)
    assert box.width() >= 190 and box.height() > 0


def test_a_chosen_checkpoint_is_the_one_scored(qtbot, panel):
    panel.num_spin.setValue(16)
    panel.checkpoint_combo.setCurrentIndex(3)  # step 10
    with qtbot.waitSignal(panel.evaluation_finished, timeout=60_000) as blocker:
        panel.evaluate()
    assert blocker.args[0].readouts[0].step == 10


def test_check_for_copies_shows_each_sample_beside_its_neighbours(qtbot, panel):
    with qtbot.waitSignal(panel.nearest_finished, timeout=60_000) as blocker:
        panel.nearest_button.click()
    res = blocker.args[0]
    assert res is not None and len(res.samples) == 64
    assert panel.nearest_table.rowCount() == 64
    assert panel.nearest_table.cellWidget(0, 0).pixmap() is not None
    assert panel.nearest_table.cellWidget(0, 1).toolTip().endswith(".png")  # a training file
    assert "of 64 samples" in panel.nearest_summary.text()
    assert panel.views.currentIndex() == 1


def test_timelapse_writes_gif_and_sheet(qtbot, panel, tmp_path):
    target = tmp_path / "out" / "lapse.gif"
    target.parent.mkdir()
    panel.ask_save_path = lambda *a: str(target)
    with qtbot.waitSignal(panel.timelapse_finished, timeout=30_000) as blocker:
        panel.timelapse_button.click()
    assert blocker.args[0]["frames"] == 4
    assert target.is_file() and (tmp_path / "out" / "lapse_sheet.png").is_file()


def test_cancel_stops_scoring_every_checkpoint(qtbot, panel):
    panel.num_spin.setValue(16)
    panel.all_check.setChecked(True)
    with qtbot.waitSignal(panel.evaluation_finished, timeout=90_000) as blocker:
        panel.evaluate()
        panel.task.items.connect(lambda _: panel.cancel())  # after the first checkpoint's figures
    assert blocker.args[0] is None
    qtbot.waitUntil(lambda: not panel.is_running(), timeout=10_000)
    assert panel.progress.label.text() == "Cancelled."


def test_without_a_run_the_buttons_explain_and_start_nothing(qtbot, window):
    p = window.evaluate_panel
    assert p.evaluate() is False and p.check_copies() is False and p.make_timelapse() is False
    assert p.task is None
    assert window.errors and "Open a run first" in window.errors[-1][0]
    p.ask_run_folder = lambda: "/nonexistent/run"
    with qtbot.waitSignal(p.run_opened, timeout=10_000) as blocker:
        p.open_run()
    assert blocker.args[0] is None and "not a run folder" in window.errors[-1][0]


def test_dataset_doctor_finds_duplicates_and_excludes_them(qtbot, window, tmp_path):
    files = write_pngs(blobs(40, seed=11), tmp_path / "d")
    shutil.copy(files[5], tmp_path / "d" / "img_0005 copy.png")
    dp = window.dataset_panel
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        dp.load_paths([str(tmp_path / "d")])
    assert len(dp.state.images) == 41
    doc = dp.doctor
    assert not doc.fix_button.isEnabled()
    with qtbot.waitSignal(doc.finished, timeout=30_000) as blocker:
        doc.check_button.click()
    rep = blocker.args[0]
    assert "exact_duplicates" in rep.kinds()
    titles = [doc.tree.topLevelItem(i).text(0) for i in range(doc.tree.topLevelItemCount())]
    assert any("1 exact duplicate file(s)" in t for t in titles)
    top = [doc.tree.topLevelItem(i) for i in range(doc.tree.topLevelItemCount())]
    dup = next(item for item in top if "exact" in item.text(0))
    assert dup.child(0).text(0) == "img_0005.png  =  img_0005 copy.png"  # the one kept first
    doc.tree.setCurrentItem(dup)
    assert "first file of each group" in doc.advice.text()
    assert doc.fix_button.isEnabled() and doc.fix_button.text() == "Exclude 1 Duplicate(s)"
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        doc.fix_button.click()
    assert len(dp.state.images) == 40
    assert str(tmp_path / "d" / "img_0005 copy.png") not in dp.state.images.paths
    assert str(files[5]) in dp.state.images.paths


def test_doctor_on_the_built_in_set_says_it_needs_none(window):
    doc = window.dataset_panel.doctor
    assert doc.check() is False and doc.task is None
    assert "built-in dataset needs none" in doc.status.text()


def test_a_finished_run_opens_in_evaluate_even_after_a_new_run_began(qtbot, window, tmp_path):
    """The run the finish belongs to opens, not the Training panel's current (maybe newer) run."""
    from ddpm_studio.training.events import FinishReason, TrainFinished

    run = run_copy(tmp_path, steps=(200,))
    window.training_panel.session.forget()  # the panel has moved on: no run, or a newer one
    done = TrainFinished(200, FinishReason.COMPLETED, "done", str(run / "checkpoints" / "step_0000200.safetensors"))
    with qtbot.waitSignal(window.evaluate_panel.run_opened, timeout=30_000) as blocker:
        window.training_panel.training_finished.emit(done)
    assert blocker.args[0].run_dir == str(run)
    window.training_panel.training_finished.emit(None)  # a failed run: nothing to open, nothing raised


def _micro_training(qtbot, window, tmp_path, *, eval_every: int, eval_num: int = 16):
    """A 8 px folder loaded, the micro network, checkpoints every 10 of 20 steps; the quality knobs set in the
    Training panel's "More settings" form."""
    from ddpm_studio.gui import testing

    dp, tp = window.dataset_panel, window.training_panel
    folder = testing.write_image_folder(tmp_path / "imgs", count=24, size=8)
    dp.size_combo.setCurrentIndex(dp.size_combo.findData(8))
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        dp.load_paths([str(folder)])
    tp.overrides = testing.micro_overrides(steps=20, timesteps=20)
    tp.overrides["train"]["checkpoint_every"] = 10
    tp.advanced.widgets["eval_num"].setValue(eval_num)
    tp.advanced.widgets["eval_every"].setValue(eval_every)
    return tp


def test_quality_while_training_is_plotted_and_kept_where_the_evaluate_tab_reads(qtbot, window, tmp_path):
    from PySide6.QtCore import Qt

    from ddpm_studio.config import RunConfig
    from ddpm_studio.evaluation.metrics import read_results

    tp = _micro_training(qtbot, window, tmp_path, eval_every=10)
    qp = tp.quality_plot
    assert not qp.isHidden()  # shown once eval_every > 0
    # before Start: the cost, from the same estimate the CLI prints
    qtbot.waitUntil(lambda: "samples, about" in qp.caption.text(), timeout=30_000)
    assert qp.caption.text().startswith("quality every 10 steps: 16 samples, about")
    with qtbot.waitSignal(tp.training_finished, timeout=120_000) as blocker:
        qtbot.mouseClick(tp.start_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: qp.num_points >= 1, timeout=120_000)
    assert blocker.args[0] is not None and blocker.args[0].reason == "completed"
    steps, kid = qp.points()
    assert list(steps) == [10.0, 20.0] and all(k == k for k in kid)  # both checkpoints scored, no NaN
    saved = read_results(tp.run_dir)  # RUN/evaluation.jsonl: what the Evaluate tab plots
    assert [(d["step"], d["num_samples"]) for d in saved] == [(10, 16), (20, 16)]
    assert [d["kid"] for d in saved] == list(kid)
    cfg = RunConfig.load(f"{tp.run_dir}/config.json")
    assert (cfg.train.eval_every, cfg.train.eval_num) == (10, 16)  # the run records the choice
    # the Evaluate tab (opened on the finished run by the main window) shows them too
    ep = window.evaluate_panel
    qtbot.waitUntil(lambda: len(ep.kid_points()[0]) == 2, timeout=30_000)


def test_no_quality_scoring_when_eval_every_is_zero(qtbot, window, tmp_path):
    from pathlib import Path

    from PySide6.QtCore import Qt

    tp = _micro_training(qtbot, window, tmp_path, eval_every=0)
    assert tp.quality_plot.isHidden()
    with qtbot.waitSignal(tp.training_finished, timeout=120_000) as blocker:
        qtbot.mouseClick(tp.start_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0].reason == "completed"
    assert tp.quality_plot.num_points == 0 and tp.quality_plot.isHidden()
    assert list((Path(tp.run_dir) / "checkpoints").glob("step_0000010.*"))  # checkpoints were saved
    assert not (Path(tp.run_dir) / "evaluation.jsonl").exists()


def test_exclude_duplicates_sets_the_knob_the_run_records(qtbot, window, tmp_path):
    files = write_pngs(blobs(12, seed=5), tmp_path / "d")
    shutil.copy(files[3], tmp_path / "d" / "img_0003 copy.png")
    dp = window.dataset_panel
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        dp.load_paths([str(tmp_path / "d")])
    with qtbot.waitSignal(dp.doctor.finished, timeout=30_000):
        dp.doctor.check_button.click()
    with qtbot.waitSignal(dp.loaded, timeout=30_000):
        dp.doctor.fix_button.click()
    assert dp.dedup_check.isChecked() and window.state.data_config.exclude_duplicates
    assert window.state.data_config.folder == str(tmp_path / "d")  # the folder, not a list of files
    assert len(window.state.images) == 12
    rows = {dp.skipped.topLevelItem(i).text(0): dp.skipped.topLevelItem(i).text(1)
            for i in range(dp.skipped.topLevelItemCount())}
    assert rows == {str(tmp_path / "d" / "img_0003 copy.png"): "duplicate of img_0003.png"}
    assert window.training_panel.build_config().data.exclude_duplicates is True
