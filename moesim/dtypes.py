"""Number formats: shared by the hardware specs (peaks per format) and the workload (training format)."""

from enum import StrEnum


class DType(StrEnum):
    FP32 = "fp32"
    TF32 = "tf32"  # FP32 storage, tensor-core math; PyTorch does not use it for matmul by default
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"

    @property
    def bytes(self) -> int:
        """Storage bytes per element (TF32 is stored as FP32)."""
        return _BYTES[self]

    @property
    def grad_bytes(self) -> int:
        """Bytes per parameter gradient: FP8 recipes keep weights and gradients in BF16."""
        return max(self.bytes, 2)


_BYTES = {DType.FP32: 4, DType.TF32: 4, DType.FP16: 2, DType.BF16: 2, DType.FP8: 1}
