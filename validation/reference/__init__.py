"""The reference model: a plain PyTorch MoE transformer built from a Workload and trained for real
(``model``), its torchrun worker that times training steps (``train``), and the attribution of one
profiled step's time to the op names of moesim's graph (``attribution``). Needs torch.
"""
