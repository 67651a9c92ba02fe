"""Presets load by name or path; every user mistake is a one-line MoesimError naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.errors import MoesimError
from moesim.hardware import (
    DType,
    FabricTopology,
    list_gpu_presets,
    list_node_presets,
    load_cluster,
    load_gpu,
    load_node,
)
from moesim.hardware import presets as presets_module

GPUS = {
    "V100-SXM2-32GB",
    "A100-SXM4-40GB",
    "A100-SXM4-80GB",
    "H100-SXM5-80GB",
    "H200-SXM-141GB",
    "B200",
    "MI300X",
}
NODES = {
    "p3dn.24xlarge",
    "p4d.24xlarge",
    "p4de.24xlarge",
    "p5.48xlarge",
    "dgx-a100",
    "dgx-h100",
    "hgx-h200",
    "hgx-b200",
    "mi300x-8",
}
NODE_YAML = """\
name: custom
gpu: A100-SXM4-80GB
gpus_per_node: 4
intra: {topology: nvswitch, bandwidth_gb_per_s: 300, latency_us: 3}
network: {nics_per_node: 2, nic_gbps: 200, latency_us: 5}
"""


def test_every_gpu_preset_is_listed_and_loads() -> None:
    assert set(list_gpu_presets()) == GPUS
    for name in GPUS:
        gpu = load_gpu(name)
        assert gpu.name == name
        # the Lancet models train in FP32, so every part needs an FP32 peak, below its tensor peaks
        assert DType.FP32 in gpu.peak_tflops
        assert all(peak >= gpu.peak_tflops[DType.FP32] for peak in gpu.peak_tflops.values())


def test_every_node_preset_is_listed_and_loads() -> None:
    assert set(list_node_presets()) >= NODES
    for name in NODES:
        cluster = load_cluster(name, nodes=2)
        assert cluster.node.name == name
        assert cluster.num_gpus == 2 * cluster.node.gpus_per_node


def test_lancet_clusters_match_the_paper() -> None:
    p3dn = load_node("p3dn.24xlarge")
    assert (p3dn.gpu.name, p3dn.gpus_per_node, p3dn.intra.topology) == (
        "V100-SXM2-32GB",
        8,
        FabricTopology.HYBRID_CUBE_MESH,
    )
    assert p3dn.network.nics_per_node * p3dn.network.nic_gbps == 100
    p4de = load_node("p4de.24xlarge")
    assert (p4de.gpu.name, p4de.intra.topology) == ("A100-SXM4-80GB", FabricTopology.NVSWITCH)
    assert p4de.network.nics_per_node * p4de.network.nic_gbps == 400
    assert load_node("p5.48xlarge").network.nics_per_node * load_node("p5.48xlarge").network.nic_gbps == 3200


def test_a_node_yaml_loads_by_path(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(NODE_YAML)
    for hardware in (path, str(path)):
        cluster = load_cluster(hardware, nodes=3)
        assert (cluster.node.name, cluster.num_gpus) == ("custom", 12)
        assert cluster.node.gpu.name == "A100-SXM4-80GB"


def test_a_node_yaml_may_inline_its_gpu(tmp_path: Path) -> None:
    inline = NODE_YAML.replace(
        "gpu: A100-SXM4-80GB",
        "gpu: {name: host, device: cpu, peak_tflops: {fp32: 0.5}, hbm_gib: 64, hbm_gb_per_s: 40}",
    )
    path = tmp_path / "host.yaml"
    path.write_text(inline)
    assert load_node(path).gpu.device == "cpu"


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(MoesimError, match="unknown node preset 'p9.huge'") as info:
        load_cluster("p9.huge")
    assert "p4de.24xlarge" in str(info.value)


def test_a_gpu_preset_is_not_a_node() -> None:
    with pytest.raises(MoesimError, match="GPU preset") as info:
        load_cluster("H100-SXM5-80GB")
    assert "dgx-h100" in str(info.value)


def test_unknown_gpu_preset_lists_the_available_ones() -> None:
    with pytest.raises(MoesimError, match="V100-SXM2-32GB"):
        load_gpu("K80")


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("bandwidth_gb_per_s: 300", "bandwidth_gb_per_s: -300"), "intra.bandwidth_gb_per_s"),
        (("topology: nvswitch", "topology: torus"), "intra.topology"),
        (("nic_gbps: 200", "nic_gbs: 200"), "network.nic_gbps"),  # the required field goes missing
        (("gpus_per_node: 4", "gpus_per_node: 4\nextra_knob: 1"), "extra_knob"),
        (("gpu: A100-SXM4-80GB", "gpu: A999"), "gpu"),
    ],
)
def test_a_bad_field_is_named_in_one_line(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(NODE_YAML.replace(*edit))
    with pytest.raises(MoesimError) as info:
        load_cluster(path)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_malformed_yaml_and_missing_files_are_user_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(MoesimError, match="not valid YAML"):
        load_cluster(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(MoesimError, match="mapping"):
        load_cluster(listed)
    with pytest.raises(MoesimError, match="no such file"):
        load_cluster(tmp_path / "absent.yaml")


@pytest.mark.parametrize("nodes", [0, -2, 1.5])
def test_nodes_must_be_a_positive_integer(nodes: int) -> None:
    with pytest.raises(MoesimError, match="nodes"):
        load_cluster("p4de.24xlarge", nodes=nodes)


def test_load_cluster_applies_overrides_last() -> None:
    cluster = load_cluster("p4de.24xlarge", 2, {"node.network.nic_gbps": 200, "num_nodes": 4})
    assert (cluster.node.network.nic_gbps, cluster.num_nodes) == (200, 4)
    with pytest.raises(MoesimError, match="hardware.node.network.oversubscription"):
        load_cluster("p4de.24xlarge", 2, {"node.network.oversubscription": 0.5}, where="hardware.")
    with pytest.raises(MoesimError, match="'node.nics'"):
        load_cluster("p4de.24xlarge", 2, {"node.nics": 8})


def test_calibrated_files_resolve_after_hand_written_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for folder, name, gpus in (("nodes", "a", 2), ("calibrated", "a", 6), ("calibrated", "b", 3)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{name}.yaml").write_text(
            NODE_YAML.replace("gpus_per_node: 4", f"gpus_per_node: {gpus}")
        )
    (tmp_path / "gpus").mkdir()
    (tmp_path / "gpus" / "A100-SXM4-80GB.yaml").write_text(
        "name: A100-SXM4-80GB\npeak_tflops: {fp32: 19.5}\nhbm_gib: 80\nhbm_gb_per_s: 2039\nsm_count: 108\n"
    )
    monkeypatch.setattr(presets_module, "_specs_root", lambda: tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # no ./hardware_specs/calibrated here
    assert list_node_presets() == ["a", "b"]
    assert load_node("a").gpus_per_node == 2
    assert load_node("b").gpus_per_node == 3
    # then the working directory's calibrations, which `moesim calibrate` writes outside the package
    (workdir / "hardware_specs" / "calibrated").mkdir(parents=True)
    (workdir / "hardware_specs" / "calibrated" / "c.yaml").write_text(
        NODE_YAML.replace("gpus_per_node: 4", "gpus_per_node: 5"))
    assert list_node_presets() == ["a", "b", "c"]
    assert load_node("c").gpus_per_node == 5
