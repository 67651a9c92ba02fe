"""The presets ship inside the wheel: a non-editable install finds them."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("moesim-*.whl")
    return path


def test_wheel_contains_every_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in (("hardware_specs", "moesim/hardware_specs"), ("workloads", "moesim/workloads")):
        for preset in [*(ROOT / folder).rglob("*.yaml"), *(ROOT / folder).rglob("traced/*.json")]:
            assert f"{package}/{preset.relative_to(ROOT / folder).as_posix()}" in names
    for points in (ROOT / "validation" / "published").glob("*.yaml"):
        assert f"moesim/validation/published/{points.name}" in names


def test_installed_wheel_finds_presets(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import moesim.hardware.presets as h, moesim.workload.presets as w; "
            f"assert h.__file__.startswith({str(target)!r}), h.__file__; "
            "w.load_workload('traced/tiny-moe-a', num_gpus=2, gpu='cpu-rank'); "
            "import moesim.validation.published_points as p; assert len(p.load_points()) >= 40; "
            "print(len(h.list_node_presets()), len(w.list_model_presets()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    nodes, models = map(int, proc.stdout.split())
    assert nodes >= 9 and models >= 8
