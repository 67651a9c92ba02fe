"""The validation harness (installed as ``moesim.validation``): runs ExecutionPlans for real through
torch.distributed, microbenchmarks a machine for calibration, and compares predictions with
measurements. Needs the ``validation`` extra (torch); nothing in the simulator core imports it.
"""
