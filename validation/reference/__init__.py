"""The reference model: a plain PyTorch MoE transformer built from a Workload and trained for real
(``model``), its torchrun worker that times training steps (``train``), the attribution of one profiled
step's time to the op names of moesim's graph (``attribution``, torch-free, also for Kineto traces via
``from_kineto``), and the commands built on them (``trace``: moesim trace; ``validate``: validate
--reference). ``model`` and ``train`` need torch; the others import it only in the ranks they launch.
"""
