"""Hardware: specs (GPU, fabric, network, node, cluster), presets and the roofline cost model."""

from moesim.hardware.cost import RooflineCostModel
from moesim.hardware.interface import CollectiveDemand, CostModel
from moesim.hardware.presets import (
    list_gpu_presets,
    list_node_presets,
    load_cluster,
    load_gpu,
    load_node,
)
from moesim.hardware.resources import ResourceMap
from moesim.hardware.specs import (
    ClusterSpec,
    CostParams,
    DType,
    FabricTopology,
    GPUSpec,
    IntraNodeFabric,
    NetworkSpec,
    NodeSpec,
)

__all__ = [
    "ClusterSpec",
    "CollectiveDemand",
    "CostModel",
    "CostParams",
    "DType",
    "FabricTopology",
    "GPUSpec",
    "IntraNodeFabric",
    "NetworkSpec",
    "NodeSpec",
    "ResourceMap",
    "RooflineCostModel",
    "list_gpu_presets",
    "list_node_presets",
    "load_cluster",
    "load_gpu",
    "load_node",
]
