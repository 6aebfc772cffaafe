"""The lab's commands: compare, interpolate, chain, branch — files written, checked, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from training_support import one_thread, tiny_config, tiny_images  # noqa: F401

from ddpm_studio.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from ddpm_studio.training.trainer import Trainer

    out = tmp_path_factory.mktemp("labcli") / "run"
    assert Trainer(tiny_config(steps=2), out, images=tiny_images()).run().reason == "completed"
    return out


def test_compare_board(run, tmp_path, capsys):
    board = tmp_path / "board.png"
    assert main(["compare", "--run", str(run), "--samplers", "ddim:5,dpmpp-2m:4,ddpm", "--num", "3", "--seed", "2",
                 "--out", str(board), "--device", "cpu"]) == 0
    io = capsys.readouterr()
    assert "wrote compare board" in io.out and io.err.count("s/image") == 3
    with Image.open(board) as im:
        w, h = im.size
    assert w > 3 * 64 and h > 3 * 64  # 3 rows of 3 tiles enlarged to 64 px, plus labels
    # the first row's first tile is `sample --seed 2 --sampler ddim --sampling-steps 5`'s first image
    samples = tmp_path / "s"
    assert main(["sample", "--run", str(run), "--num", "3", "--seed", "2", "--sampler", "ddim", "--sampling-steps", "5",
                 "--out", str(samples), "--quiet", "--device", "cpu"]) == 0
    ref = np.asarray(Image.open(samples / "sample_0000.png"))
    arr = np.asarray(Image.open(board))
    tile = ref.repeat(8, 0).repeat(8, 1)  # 8 px → 64 px
    found = any(np.array_equal(arr[y:y + 64, x:x + 64], tile) for y in range(80) for x in range(arr.shape[1] - 64))
    assert found


def test_compare_board_with_a_tuned_row(run, tmp_path, capsys):
    board = tmp_path / "board.png"
    args = ["compare", "--run", str(run), "--samplers", "ddim:5,unipc:3:tuned", "--num", "2", "--out", str(board)]
    assert main(args) == 1
    assert "no Tune remembered for this model with unipc at 3 steps" in capsys.readouterr().err
    assert main(["tune-steps", "--run", str(run), "--sampling-steps", "3", "--images", "8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "UniPC · 3 steps · tuned" in capsys.readouterr().err and board.is_file()


def test_interpolate_seeds_and_images(run, tmp_path, capsys):
    strip, gif = tmp_path / "strip.png", tmp_path / "walk.gif"
    assert main(["interpolate", "--run", str(run), "--seeds", "3", "9", "--frames", "4", "--sampling-steps", "5",
                 "--out", str(strip), "--gif", str(gif), "--device", "cpu"]) == 0
    assert "4 frames" in capsys.readouterr().out
    with Image.open(gif) as im:
        assert im.n_frames >= 2
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.full((16, 16, 3), 250, np.uint8)).save(a)
    Image.fromarray(np.full((8, 8, 3), 5, np.uint8)).save(b)
    assert main(["interpolate", "--run", str(run), "--images", str(a), str(b), "--t", "10", "--frames", "3",
                 "--out", str(strip), "--device", "cpu"]) == 0
    assert "wrote strip" in capsys.readouterr().out


def test_chain_sheet_gif_apng_and_branch(run, tmp_path, capsys):
    sheet, gif, apng, br = (tmp_path / n for n in ("sheet.png", "c.gif", "c.png", "branch.png"))
    assert main(["chain", "--run", str(run), "--sheet", str(sheet), "--gif", str(gif), "--apng", str(apng),
                 "--overlay-t", "--every", "5", "--device", "cpu"]) == 0
    with Image.open(apng) as im:
        assert im.is_animated and im.n_frames >= 5
    with Image.open(sheet) as im:
        assert im.size[0] > 5 * 64  # t = 19, 14, 9, 4 and the result
    assert main(["branch", "--run", str(run), "--at", "5,15", "--branches", "3", "--out", str(br),
                 "--device", "cpu"]) == 0
    assert main(["branch", "--run", str(run), "--at", "2", "--branches", "2", "--renoise-t", "8", "--sampler", "ddim",
                 "--sampling-steps", "5", "--out", str(br), "--device", "cpu"]) == 0
    assert "1 branch point(s) × 2" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["compare", "--samplers", "euler", "--out", "{tmp}/b.png"], "'euler' is not sampler"),
    (["compare", "--samplers", "ddim", "--out", "{tmp}/b.jpg"], "--out must name a .png"),
    (["interpolate", "--seeds", "1", "2", "--sampler", "ddpm", "--out", "{tmp}/s.png"], "deterministic sampler"),
    (["interpolate", "--out", "{tmp}/s.png"], "either --seeds"),
    (["interpolate", "--images", "{tmp}/none.png", "{tmp}/none.png", "--out", "{tmp}/s.png"], "none.png"),
    (["branch", "--at", "99", "--out", "{tmp}/b.png"], "steps 0 to 19"),
    (["branch", "--at", "3", "--sampler", "ddim", "--out", "{tmp}/b.png"], "adds no noise after x_T"),
])
def test_refused_input_is_one_line(run, tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([argv[0], "--run", str(run), "--device", "cpu"] + argv[1:]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_the_lab_services_import_no_qt():
    import subprocess
    import sys

    code = ("import sys; import ddpm_studio.lab.chain, ddpm_studio.lab.branch, ddpm_studio.lab.interpolate, "
            "ddpm_studio.lab.compare, ddpm_studio.lab.views, ddpm_studio.lab.cli_commands; "
            "print([m for m in sys.modules if m.startswith(('PySide6', 'pyqtgraph'))])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
